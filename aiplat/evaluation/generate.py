"""Batched greedy generation with transformers on the CPU (or a GPU where there is one), timed.

Prompts are built exactly as the fine-tune builds them: aiplat.training.prompts.messages through
the model's own chat template, with the same feature columns, and over-long prompts cut the same
way (head kept, last few tokens with the assistant header kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiplat.training import prompts

# aiplat.training.lora.encode_examples keeps this many tail tokens when it cuts a prompt.
PROMPT_TAIL_TOKENS = 8


@dataclass
class LoadedModel:
    folder: Path
    tokenizer: object
    model: object
    eos_ids: list[int]


@dataclass
class Generations:
    texts: list[str]
    seconds: float
    new_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def load(folder: Path, threads: int = 0, base: Path | None = None) -> LoadedModel:
    """A model folder, or with `base`: the LoRA adapter `folder` applied to the base model `base`
    (PEFT, merged in memory: the numbers are the adapter's over that base, computed at full speed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aiplat.models.manifest import assert_no_pickles

    if threads:
        torch.set_num_threads(threads)
    assert_no_pickles(folder)
    if base is not None:
        assert_no_pickles(base)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    else:
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
        model = PeftModel.from_pretrained(model, folder, use_safetensors=True).merge_and_unload()
    model.eval()
    eos = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None and im_end != tokenizer.unk_token_id:
        eos.add(im_end)
    return LoadedModel(folder, tokenizer, model, sorted(e for e in eos if e is not None))


def prompt_ids(tokenizer, row: Mapping, features: Sequence[str], max_prompt_tokens: int,
               fmt: prompts.PromptFormat | None = None) -> list[int]:
    text = tokenizer.apply_chat_template(prompts.messages(row, features, fmt), add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_prompt_tokens:
        ids = ids[: max_prompt_tokens - PROMPT_TAIL_TOKENS] + ids[-PROMPT_TAIL_TOKENS:]
    return ids


def generate(
    lm: LoadedModel,
    rows: Sequence[Mapping],
    features: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    max_prompt_tokens: int,
    on_batch: Callable[[int], None] | None = None,
    fmt: prompts.PromptFormat | None = None,
) -> Generations:
    import torch

    tok = lm.tokenizer
    texts: list[str] = []
    new_tokens = 0
    seconds = 0.0
    for start in range(0, len(rows), batch_size):
        batch = [prompt_ids(tok, r, features, max_prompt_tokens, fmt) for r in rows[start : start + batch_size]]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=input_ids.to(lm.model.device),
                attention_mask=mask.to(lm.model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tok.pad_token_id,
                eos_token_id=lm.eos_ids,
            )
        seconds += time.perf_counter() - t0
        for seq in out[:, width:].tolist():
            kept = []
            for token in seq:
                if token in lm.eos_ids:
                    break
                kept.append(token)
            new_tokens += len(kept)
            texts.append(tok.decode(kept, skip_special_tokens=True))
        if on_batch is not None:
            on_batch(len(batch))
    return Generations(texts, seconds, new_tokens)


def latencies_ms(
    lm: LoadedModel, rows: Sequence[Mapping], features: Sequence[str], max_new_tokens: int, max_prompt_tokens: int,
    fmt: prompts.PromptFormat | None = None,
) -> list[float]:
    """Wall time of one request at a time, as a user of a single-stream endpoint would see it."""
    return [
        generate(lm, [row], features, max_new_tokens, 1, max_prompt_tokens, fmt=fmt).seconds * 1000.0 for row in rows
    ]
