"""The fine-tune as a Dagster asset against a real MLflow server: one run with lineage tags,
params, per-step and system metrics, artifacts, a registered version; and no half-registered
version when MLflow is down or fails mid-way. The merged model is signed before upload (model.sig
among the artifacts, the digest on the version) and the model is tagged with its owner team. Also `aiplat models list|show` over that registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from aiplat.cli import cli as aiplat_cli
from aiplat.net import free_port
from aiplat.training.data import training_set_hash
from aiplat.training.lora import FineTuneParams
from aiplat.training.sample import sample_training_set
from aiplat.training.tracking import Lineage, MlflowUnavailableError, tracked_fine_tune
from assets.training import base_model
from resources.lake import LakeIOManager
from resources.mlflow import MLflowResource
from resources.signing import ModelSigningResource
from tests.training_helpers import TINY_PARAMS, build_tiny, tiny_params

MLFLOW_BIN = Path(sys.executable).parent / "mlflow"
# A real MLflow server takes 10-60 s to start on 2 busy cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(shared_mlflow: str) -> str:
    return shared_mlflow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _versions(uri: str, name: str) -> list:
    return list(_client(uri).search_model_versions(f"name='{name}'"))


def _chain(model_name: str, folder: Path):
    """The model's chain from its spec (the demo triage spec under another name), as the platform builds it."""
    import yaml

    from aiplat.config import project_root
    from aiplat.specs import load_spec
    from assets.model_lifecycle import model_chain

    spec = yaml.safe_load((project_root() / "models" / "ticket-triage.yaml").read_text())
    spec |= {"name": model_name, "endpoint": model_name, "fine_tune": TINY_PARAMS}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model_name}.yaml").write_text(yaml.safe_dump(spec))
    return model_chain(load_spec(folder / f"{model_name}.yaml"))


def _materialize(uri: str, tiny_model: Path, lake: Path, model_name: str, **overrides):
    chain = _chain(model_name, lake.parent / "models")
    prefix = chain.spec.key_prefix
    (fine_tuned_model,) = [a for a in chain.assets if a.key.path[-1] == "fine_tuned_model"]

    # A stand-in for the model's training_set (its own test covers that asset).
    @dg.asset(key=[prefix, "training_set"])
    def upstream_training_set() -> pd.DataFrame:
        return sample_training_set(60)

    return dg.materialize(
        [upstream_training_set, base_model, fine_tuned_model],
        resources={
            "mlflow": MLflowResource(tracking_uri=uri, system_metrics_interval_s=1),
            "io_manager": LakeIOManager(base_uri=str(lake)),
            "model_signing": ModelSigningResource(),  # the dev key pair under the private state dir
        },
        run_config=dg.RunConfig(
            ops={
                "base_model": {"config": {"source": str(tiny_model), "name": "tiny"}},
                f"{prefix}__fine_tuned_model": {"config": overrides},
            }
        ),
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def materialized(mlflow_server: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        state = tmp_path_factory.mktemp("state")
        mp.setenv("AIPLAT_STATE_DIR", str(state))
        mp.setenv("AIPLAT_ENV", "local")
        result = _materialize(mlflow_server, tiny_model, state / "lake", "triage-tiny")
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = result.asset_materializations_for_node("triage_tiny__fine_tuned_model")[0].metadata
    return result, {k: v.value for k, v in meta.items()}


def test_materialization_registers_a_version_with_lineage(mlflow_server: str, materialized) -> None:
    result, meta = materialized
    client = _client(mlflow_server)
    assert meta["registered_model"] == "triage-tiny" and meta["model_version"] == "1"
    mv = client.get_model_version("triage-tiny", "1")
    assert mv.status == "READY" and mv.run_id == meta["mlflow_run_id"]
    expected_hash = training_set_hash(sample_training_set(60))
    assert meta["training_set_sha256"] == expected_hash
    for tags in (mv.tags, client.get_run(mv.run_id).data.tags):
        assert tags["dagster.run_id"] == result.run_id
        assert tags["dagster.asset_key"] == "triage_tiny/fine_tuned_model"
        assert tags["aiplat.training_set_sha256"] == expected_hash
        assert tags["aiplat.base_model_sha256"] == meta["base_model_sha256"]
        assert tags["aiplat.code_version"] and tags["aiplat.git_commit"]
    assert mv.tags["aiplat.adapter_sha256"] == meta["adapter_sha256"]
    assert "aiplat.merged_sha256" not in mv.tags and "aiplat.merged_artifact" not in mv.tags  # no merged copy
    assert meta["mlflow_run"].startswith(mlflow_server) and meta["mlflow_run_id"] in meta["mlflow_run"]


def test_run_has_params_step_metrics_system_metrics_and_artifacts(mlflow_server: str, materialized) -> None:
    _, meta = materialized
    client = _client(mlflow_server)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["lora_r"] == str(FineTuneParams().lora_r) and run.data.params["steps"] == str(TINY_PARAMS["steps"])
    assert run.data.params["rows_train"] == "48"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, TINY_PARAMS["steps"] + 1))
    assert history[-1].value == pytest.approx(meta["final_train_loss"])
    assert any(k.startswith("system/cpu") for k in run.data.metrics)
    # The run's artifact is the adapter, a few MB; no merged copy of the base model is uploaded.
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id)} == {"adapter"}
    adapter = client.list_artifacts(run.info.run_id, "adapter")
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {Path(a.path).name for a in adapter}
    assert not [a for a in adapter if a.path.endswith((".bin", ".pt", ".pkl"))]


def test_registered_model_is_signed_and_owned(mlflow_server: str, materialized, tmp_path: Path, state_dir: Path) -> None:
    import mlflow.artifacts

    from aiplat.security import signing

    _, meta = materialized
    client = _client(mlflow_server)
    mv = client.get_model_version("triage-tiny", meta["model_version"])
    assert mv.tags[signing.TAG_SIGNATURE_SHA] == meta["signature_sha256"]
    assert mv.tags[signing.TAG_MODEL_DIGEST] == meta["signature_model_digest"]
    assert mv.tags[signing.TAG_KEY_LABEL] == "dev-local" and int(mv.tags[signing.TAG_SIGNED_FILES]) >= 3
    registered = client.get_registered_model("triage-tiny")
    assert registered.tags["owner_team"] == "team:ml" and registered.tags["aiplat.task"] == "classification"
    assert client.get_experiment_by_name("triage-tiny-fine-tuning") is not None
    adapter_files = {Path(a.path).name for a in client.list_artifacts(mv.run_id, "adapter")}
    assert signing.SIGNATURE_NAME in adapter_files
    # What the registry holds verifies under the key that signed it, and is exactly this version:
    # the version is its LoRA adapter (what a shared multi-adapter server loads).
    assert mv.source == mv.tags["aiplat.adapter_artifact"]
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "dl"),
                                                      tracking_uri=mlflow_server))
    state = Path(meta["adapter_path"]).parents[4]  # <state>/models/fine_tuned/<name>/<run>/adapter
    public = state / "security" / "dev-signing-key" / "public.pem"
    assert signing.check_against_version(client, "triage-tiny", meta["model_version"], folder, public) == \
        meta["signature_model_digest"] == mv.tags[signing.TAG_ADAPTER_DIGEST]
    assert signing.check_against_version(client, "triage-tiny", meta["model_version"], folder, public, adapter=True)
    # model.sig in the folder does not change the adapter hash evaluation and serving check downloads against.
    from aiplat.models.manifest import compute_manifest

    assert compute_manifest(folder).folder_sha256 == mv.tags["aiplat.adapter_sha256"]
    (folder / "adapter_model.safetensors").write_bytes(b"\0" + (folder / "adapter_model.safetensors").read_bytes()[1:])
    with pytest.raises(signing.SignatureError, match="changed since signing: adapter_model.safetensors"):
        signing.verify_model(folder, public)


def test_mlflow_down_fails_before_training(mlflow_server: str, tiny_model: Path, state_dir: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = _materialize(closed, tiny_model, state_dir / "lake", "triage-down")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    # The step's RetryPolicy tries again first; the final error carries the reason as its cause.
    error, messages = failure.step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    message = " ".join(messages)
    assert "unreachable" in message and "nothing was trained" in message
    # Nothing was trained (no work folder) and nothing reached the real registry.
    assert not (state_dir / "models" / "fine_tuned").exists()
    assert _versions(mlflow_server, "triage-down") == []


def _lineage(df: pd.DataFrame) -> Lineage:
    return Lineage("test-run", "fine_tuned_model", "0+gtest", "test", training_set_hash(df), "x", "tiny")


def test_failure_mid_training_leaves_a_failed_run_and_no_version(mlflow_server: str, tiny_model: Path,
                                                                tmp_path: Path) -> None:
    df = sample_training_set(60)

    def crash(m) -> None:
        # Injected fault: the process dying mid-training (OOM, preemption) cannot be caused
        # safely inside a test process.
        if m.step == 2:
            raise RuntimeError("simulated crash at step 2")

    with pytest.raises(RuntimeError, match="simulated crash"):
        tracked_fine_tune(_client(mlflow_server), mlflow_server, "tests", "triage-crash", _lineage(df), tiny_model,
                          df, tiny_params(), tmp_path, system_metrics_interval_s=None, on_step=crash)
    client = _client(mlflow_server)
    assert _versions(mlflow_server, "triage-crash") == []
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                              filter_string="tags.`dagster.run_id` = 'test-run'")
    assert runs and all(r.info.status == "FAILED" for r in runs)
    assert "simulated crash" in runs[0].data.tags["aiplat.failure"]


class _RegistryFailsAfterCreate:
    """The real client, except that reading the new version back fails: a registry error between
    creating a version and its READY state cannot be caused on a healthy server."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_model_version(self, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        raise MlflowException("simulated registry outage")


def test_registry_failure_deletes_the_version_it_created(mlflow_server: str, tiny_model: Path, tmp_path: Path) -> None:
    df = sample_training_set(60)
    client = _RegistryFailsAfterCreate(_client(mlflow_server))
    with pytest.raises(MlflowUnavailableError, match="registering the model version.*no model version was registered"):
        tracked_fine_tune(client, mlflow_server, "tests", "triage-half", _lineage(df), tiny_model, df,
                          FineTuneParams(**{**TINY_PARAMS, "steps": 2}), tmp_path, system_metrics_interval_s=None)
    assert _versions(mlflow_server, "triage-half") == []


def test_cli_list_and_show(mlflow_server: str, materialized, state_dir: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(aiplat_cli, ["models", "list", "--tracking-uri", mlflow_server, "--json"])
    assert listed.exit_code == 0, listed.output
    models = {m["name"]: m for m in json.loads(listed.output)}
    assert models["triage-tiny"]["versions"] == 1

    _client(mlflow_server).set_registered_model_alias("triage-tiny", "champion", "1")
    shown = runner.invoke(aiplat_cli, ["models", "show", "triage-tiny", "--tracking-uri", mlflow_server])
    assert shown.exit_code == 0, shown.output
    assert "v1 [champion]  READY" in shown.output
    assert "final_train_loss" in shown.output and "aiplat.training_set_sha256" in shown.output

    missing = runner.invoke(aiplat_cli, ["models", "show", "nope", "--tracking-uri", mlflow_server])
    assert missing.exit_code != 0 and "no registered model named 'nope'" in missing.output
    down = runner.invoke(aiplat_cli, ["models", "list", "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    assert down.exit_code != 0 and "unreachable" in down.output


def test_bad_training_set_fails_without_creating_a_run(mlflow_server: str, tiny_model: Path, tmp_path: Path) -> None:
    from aiplat.training.data import TrainingSetError

    df = sample_training_set(20)
    df.loc[4, "split"] = "holdout"
    client = _client(mlflow_server)
    experiment = client.get_experiment_by_name("tests")
    before = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    with pytest.raises(TrainingSetError, match="T00004"):
        tracked_fine_tune(client, mlflow_server, "tests", "triage-bad", _lineage(df), tiny_model, df,
                          tiny_params(), tmp_path, system_metrics_interval_s=None)
    experiment = client.get_experiment_by_name("tests")
    after = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    assert after == before and _versions(mlflow_server, "triage-bad") == []
