"""A fine-tuned version is evaluated as its LoRA adapter over the base model it was trained on
(issue 14: eval loads base + adapter), against a real MLflow server with a real tracked fine-tune
of the tiny model: the same answers as a merged copy made here, the report names the adapter and the base,
promotion refuses a report whose adapter or base is not the version's, and an adapter whose bytes in
the registry are not the registered ones is never evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiplat.evaluation import promotion
from aiplat.evaluation.evaluate import evaluate_model, prepare_inputs
from aiplat.evaluation.pipeline import evaluate_version
from aiplat.evaluation.registry import TAG_ADAPTER_SHA, TAG_BASE_SHA
from aiplat.models.manifest import compute_manifest
from aiplat.security.signing import dev_key_pair
from aiplat.training.data import training_set_hash
from aiplat.training.sample import sample_training_set
from aiplat.training.tracking import Lineage, tracked_fine_tune
from tests.evaluation_helpers import TEST_SETTINGS, TEST_THRESHOLDS, write_test_policy
from tests.identity_helpers import act_as
from tests.training_helpers import build_tiny, tiny_params

pytestmark = pytest.mark.slow
NAME = "triage-adapter-eval"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def trained(shared_mlflow: str, tiny: Path, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    act_as(monkeypatch, "team:platform", "tester")
    monkeypatch.setenv("AIPLAT_GATE_POLICY", str(write_test_policy(tmp_path / "policy.yaml")))
    client = MlflowClient(shared_mlflow, registry_uri=shared_mlflow)
    df = sample_training_set(60)
    # Its own experiment and run id: other modules search the shared server's "tests" experiment.
    lineage = Lineage("adapter-eval-run", "fine_tuned_model", "0+gtest", "test", training_set_hash(df),
                      compute_manifest(tiny).folder_sha256, "tiny")
    done = tracked_fine_tune(client, shared_mlflow, "adapter-eval-tests", NAME, lineage, tiny, df, tiny_params(),
                             tmp_path / "work",
                             system_metrics_interval_s=None, signing_keys=dev_key_pair())
    return client, done, df


def _merged_copy(adapter: Path, base: Path, dest: Path) -> Path:
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    model.save_pretrained(dest, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, dest / name)
    return dest


def test_a_version_is_evaluated_as_its_adapter_over_its_base_with_a_merged_copys_answers(
        shared_mlflow: str, tiny: Path, trained, tmp_path: Path) -> None:
    client, done, df = trained
    outcome = evaluate_version(client, shared_mlflow, NAME, done.model_version, df, TEST_SETTINGS, TEST_THRESHOLDS,
                               adapter_base=tiny, dagster_run_id="test-run")
    model = outcome.report["model"]
    tags = client.get_model_version(NAME, done.model_version).tags
    assert model["evaluated"] == "adapter"
    assert model["model_sha256"] == tags[TAG_ADAPTER_SHA] == done.result.adapter_sha256
    assert model["base_model_sha256"] == tags[TAG_BASE_SHA] == compute_manifest(tiny).folder_sha256
    # The adapter over the base answers as a merged copy does (the merge is the same arithmetic); the
    # platform writes none, so the test merges one.
    merged = evaluate_model(_merged_copy(done.result.adapter_dir, tiny, tmp_path / "merged"),
                            prepare_inputs(df, TEST_SETTINGS), TEST_SETTINGS)
    candidate = outcome.report["results"]["candidate"]
    for part in ("test", "golden"):
        assert {k: v for k, v in candidate[part].items() if "second" not in k} == \
            {k: v for k, v in merged[part].items() if "second" not in k}, part

    # A version whose base tag no longer matches what the report evaluated: the report is stale.
    client.set_model_version_tag(NAME, done.model_version, TAG_BASE_SHA, "0" * 64)
    with pytest.raises(promotion.PromotionRefused, match="evaluated another adapter or base"):
        promotion.promote(client, NAME, done.model_version, dagster_run_id="run-a", actor="test")
    # ... and is no longer evaluated over this base at all.
    with pytest.raises(ValueError, match="refusing to evaluate its adapter over another base"):
        evaluate_version(client, shared_mlflow, NAME, done.model_version, df, TEST_SETTINGS, TEST_THRESHOLDS,
                         adapter_base=tiny)


def test_an_adapter_whose_registered_bytes_differ_is_not_evaluated(shared_mlflow: str, tiny: Path, trained,
                                                                   tmp_path: Path) -> None:
    client, done, df = trained
    client.set_model_version_tag(NAME, done.model_version, TAG_ADAPTER_SHA, "f" * 64)
    with pytest.raises(ValueError, match="refusing to use other bytes than were registered"):
        evaluate_version(client, shared_mlflow, NAME, done.model_version, df, TEST_SETTINGS, TEST_THRESHOLDS,
                         adapter_base=tiny)
    # Without the prepared base at hand there is nothing to evaluate (no merged copy exists): a
    # clear error naming the base, and no report.
    with pytest.raises(ValueError, match="is a LoRA adapter over base model .* not prepared here"):
        evaluate_version(client, shared_mlflow, NAME, done.model_version, df, TEST_SETTINGS, TEST_THRESHOLDS)
    assert "aiplat.eval.run_id" not in client.get_model_version(NAME, done.model_version).tags


def test_a_champion_is_served_as_its_adapter_and_nothing_else_was_made(shared_mlflow: str, trained,
                                                                         tmp_path: Path) -> None:
    """The run uploaded only the adapter, and what serving resolves for the champion is that adapter,
    downloaded and checked against the version's adapter digest, over the base the spec names."""
    from aiplat.evaluation.registry import TAG_ADAPTER_SHA
    from aiplat.models.manifest import compute_manifest
    from aiplat.serving.champion import MlflowAdapterSource

    client, done, _ = trained
    run_artifacts = {a.path for a in client.list_artifacts(done.run_id)}
    assert run_artifacts == {"adapter"}  # no merged copy was made or uploaded
    client.set_registered_model_alias(NAME, "champion", done.model_version)
    adapter = MlflowAdapterSource(client, NAME, "tiny-base", download_root=tmp_path / "served",
                                  tracking_uri=shared_mlflow).resolve()
    assert (adapter.model, adapter.version, adapter.base) == (NAME, str(done.model_version), "tiny-base")
    folder = Path(adapter.folder)
    assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").exists()
    tags = client.get_model_version(NAME, done.model_version).tags
    assert compute_manifest(folder).folder_sha256 == tags[TAG_ADAPTER_SHA]
