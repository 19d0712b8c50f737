"""LoRA fine-tuning on a tiny Llama: outputs, reproducibility, the training-set contract, and
base-model preparation (the real SmolLM2 conversion is the one slow test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from aiplat.models.base import prepare_base_model
from aiplat.models.manifest import MANIFEST_NAME, compute_manifest, pickle_files, read_manifest
from aiplat.training import prompts
from aiplat.training.data import TrainingSetError, training_set_hash, validate_training_set
from aiplat.training.lora import fine_tune
from aiplat.training.sample import sample_training_set
from tests.training_helpers import build_tiny, tiny_params

# Same seed, data and code on the same machine: per-step losses agree to this absolute tolerance.
# (CPU kernels are deterministic at a fixed thread count; the tolerance covers reduction-order
# differences across BLAS builds.)
LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return sample_training_set(60)


@pytest.fixture(scope="module")
def first_run(tiny_model: Path, data: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    return fine_tune(tiny_model, data, tiny_params(), tmp_path_factory.mktemp("run1"))


def test_fine_tune_writes_only_the_safetensors_adapter(first_run, tiny_model: Path, tmp_path_factory) -> None:
    folder = first_run.adapter_dir
    assert pickle_files(folder) == []
    assert (folder / "tokenizer.json").is_file() and (folder / "chat_template.jinja").is_file()
    assert read_manifest(folder)["folder_sha256"] == compute_manifest(folder).folder_sha256 == first_run.adapter_sha256
    # The base it was trained on, in the manifest the adapter's signature covers: servers load it only over that base.
    assert read_manifest(folder)["base_model_sha256"] == compute_manifest(tiny_model).folder_sha256
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    # No merged copy: the run folder holds the adapter and nothing of the base model's size.
    assert [p.name for p in folder.parent.iterdir()] == ["adapter"]
    assert len(first_run.losses) == 12 and first_run.eval_loss is not None
    assert first_run.device == "cpu" and first_run.tokens > 0


def test_the_adapter_over_its_base_loads_and_generates(first_run, tiny_model: Path) -> None:
    import torch

    from aiplat.evaluation.generate import load

    loaded = load(first_run.adapter_dir, base=tiny_model)
    tok, model = loaded.tokenizer, loaded.model
    text = tok.apply_chat_template(prompts.messages({"subject": "x", "message": "y"}, []), add_generation_prompt=True,
                                   tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_training_lowers_the_loss(first_run) -> None:
    losses = first_run.losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_same_seed_same_losses_other_seed_differs(tiny_model: Path, data: pd.DataFrame, first_run, tmp_path: Path) -> None:
    again = fine_tune(tiny_model, data, tiny_params(), tmp_path / "again")
    assert again.losses == pytest.approx(first_run.losses, abs=LOSS_TOLERANCE)
    assert again.eval_loss == pytest.approx(first_run.eval_loss, abs=LOSS_TOLERANCE)
    other = fine_tune(tiny_model, data, tiny_params(seed=8, steps=4), tmp_path / "other")
    assert max(abs(a - b) for a, b in zip(other.losses, first_run.losses[:4])) > LOSS_TOLERANCE


def test_answer_format_and_parsing() -> None:
    row = {"category": "billing", "agent_reply": "Sorry about that. We refunded you. " + "More words. " * 40}
    answer = prompts.target(row)
    assert answer.startswith("category: billing\nreply: Sorry about that.")
    assert len(answer.split("reply: ", 1)[1]) <= prompts.MAX_REPLY_CHARS
    assert prompts.parse_answer(answer)["category"] == "billing"


def test_training_set_errors_name_the_record() -> None:
    df = sample_training_set(10)
    with pytest.raises(TrainingSetError, match="lacks columns"):
        validate_training_set(df.drop(columns=["category"]))
    bad = df.copy()
    bad.loc[3, "split"] = "holdout"
    bad.loc[5, "message"] = " "
    with pytest.raises(TrainingSetError) as err:
        validate_training_set(bad)
    assert "T00003" in str(err.value) and "holdout" in str(err.value)
    assert "T00005" in str(err.value) and "message is empty" in str(err.value)


def test_feature_stage_column_names_are_accepted_and_hash_is_shared() -> None:
    from aiplat.features.training import content_hash

    df = sample_training_set(10).rename(columns={"category": "label", "agent_reply": "reply_target"})
    validate_training_set(df)  # no error
    assert training_set_hash(df) == content_hash(df)
    assert training_set_hash(df.iloc[::-1]) == training_set_hash(df)


def test_prepare_from_folder_is_idempotent_and_detects_tampering(tiny_model: Path, tmp_path: Path) -> None:
    first = prepare_base_model(str(tiny_model), "tiny", dest_root=tmp_path)
    assert not first.reused and first.parameters > 0
    assert json.loads((first.path / MANIFEST_NAME).read_text())["source"] == str(tiny_model)
    second = prepare_base_model(str(tiny_model), "tiny", dest_root=tmp_path)
    assert second.reused and second.folder_sha256 == first.folder_sha256
    (first.path / "config.json").write_text((first.path / "config.json").read_text() + " ")
    third = prepare_base_model(str(tiny_model), "tiny", dest_root=tmp_path)
    assert not third.reused and third.folder_sha256 == first.folder_sha256


def test_failed_preparation_keeps_the_previous_folder(tiny_model: Path, tmp_path: Path) -> None:
    good = prepare_base_model(str(tiny_model), "tiny", dest_root=tmp_path)
    broken = tmp_path / "broken-src"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors"):
        prepare_base_model(str(broken), "tiny", dest_root=tmp_path)
    assert prepare_base_model(str(tiny_model), "tiny", dest_root=tmp_path).reused
    assert compute_manifest(good.path).folder_sha256 == good.folder_sha256
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_prepare_real_smollm2_from_the_gguf_package(smollm_base: Path) -> None:
    """The base the session converted once from the GGUF package (the bootstrap's, or this session's
    first use; converting it again here cost 90 s of every CI run): what it holds, and that asking
    for it again reuses it rather than converting."""
    prepared = prepare_base_model(dest_root=smollm_base.parent)
    assert prepared.reused and prepared.path == smollm_base
    assert 134_000_000 < prepared.parameters < 135_000_000
    assert prepared.source_version == "0.1.2"
    files = {p.name for p in prepared.path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert pickle_files(prepared.path) == []
    config = json.loads((prepared.path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"


def test_unreachable_mlflow_error_is_clear_and_hides_credentials() -> None:
    from mlflow.tracking import MlflowClient

    from aiplat.net import free_port
    from aiplat.training.tracking import MlflowUnavailableError, preflight

    uri = f"http://bot:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(MlflowUnavailableError) as err:
        preflight(MlflowClient(uri), uri, timeout_s=2)
    assert "unreachable" in str(err.value) and "127.0.0.1" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_local_model_copies_are_pruned_to_the_newest_but_never_the_protected(tmp_path: Path) -> None:
    import os

    from aiplat.models.retention import prune_folders

    parent = tmp_path / "fine_tuned" / "ticket-triage"
    runs = []
    for i in range(5):
        run = parent / f"run{i}"
        (run / "adapter").mkdir(parents=True)
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * (100 + i))
        os.utime(run, (1_000_000 + i, 1_000_000 + i))  # run4 newest
        runs.append(run)
    pruned = prune_folders(parent, keep=2, protect=(runs[0],))  # the oldest is the run in progress
    assert sorted(p.path.name for p in pruned) == ["run1", "run2", "run3"]
    assert sum(p.bytes for p in pruned) == 101 + 102 + 103
    assert sorted(p.name for p in parent.iterdir()) == ["run0", "run4"]
    assert prune_folders(tmp_path / "absent", keep=2) == []
    with pytest.raises(ValueError, match="at least 1"):
        prune_folders(parent, keep=0)
