"""Shared by the training tests: a tiny Llama built once per module from the sample triage data."""

from __future__ import annotations

from pathlib import Path

from aiplat.models.tiny import build_tiny_llama
from aiplat.training import prompts
from aiplat.training.lora import FineTuneParams
from aiplat.training.sample import sample_training_set

# Small enough to train in a couple of seconds on 2 cores; lr high enough that loss visibly drops.
TINY_PARAMS = dict(steps=12, learning_rate=5e-3, warmup_steps=1, batch_size=4, max_length=160,
                   max_train_examples=48, max_eval_examples=8, seed=7)


def tiny_params(**overrides) -> FineTuneParams:
    return FineTuneParams(**{**TINY_PARAMS, **overrides})


def build_tiny(folder: Path) -> Path:
    df = sample_training_set(60)
    corpus = [prompts.SYSTEM_PROMPT] + [prompts.user_prompt(r, ["product"]) + "\n" + prompts.target(r) for r in df.to_dict("records")]
    build_tiny_llama(folder, corpus)
    return folder
