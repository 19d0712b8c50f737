"""The fine-tune on Ray Train (aiplat.training.distributed): 2 CPU DDP workers on a private local Ray
instance, the tiny Llama. The adapter is the single-process path's (same files, a valid PEFT LoRA
adapter in safetensors, same bytes for the same seed); every step reaches the caller; and through
the generated chain's fine_tuned_model asset (spec `fine_tune.ray_workers: 2`) against a real MLflow:
the same run, per-step metrics, signed registered version as tests/test_training_tracking.py asserts
for the single path, and a worker failure leaves a FAILED run and no version."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from aiplat.models.manifest import compute_manifest, pickle_files, read_manifest
from aiplat.training.data import training_set_hash
from aiplat.training.lora import FineTuneParams, fine_tune
from aiplat.training.sample import sample_training_set
from aiplat.training.tracking import Lineage, tracked_fine_tune
from tests.training_helpers import TINY_PARAMS, build_tiny, tiny_params

# Each Ray Train run starts a controller and 2 worker processes that import torch and load the
# model (about 20 s on 2 busy cores); a real MLflow server starts once per session.
pytestmark = pytest.mark.slow

WORKERS = 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One private local Ray instance (2 CPUs: one per worker) for the module."""
    from aiplat.scale.ray_cluster import RayCluster, shutdown

    shutdown()  # a connection another module left behind
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIPLAT_ENV", "local")
        mp.setenv("AIPLAT_STATE_DIR", str(tmp_path_factory.mktemp("ray-state")))  # no stack head to join
        cluster = RayCluster(num_cpus=WORKERS)
        cluster.connect()
    yield cluster
    shutdown()


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return sample_training_set(60)


@pytest.fixture(scope="module")
def single(tiny_model: Path, data: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    return fine_tune(tiny_model, data, tiny_params(), tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def on_ray(cluster, tiny_model: Path, data: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    from aiplat.training.distributed import fine_tune_on_ray

    seen: list = []
    result = fine_tune_on_ray(tiny_model, data, tiny_params(ray_workers=WORKERS), tmp_path_factory.mktemp("ray"),
                              on_step=seen.append, cluster=cluster)
    return result, seen


def test_the_adapter_is_the_single_paths_peft_lora_adapter(on_ray, single, tiny_model: Path) -> None:
    import torch
    from peft import LoraConfig
    from safetensors import safe_open

    from aiplat.evaluation.generate import load

    result, _ = on_ray
    folder = result.adapter_dir
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in single.adapter_dir.iterdir())
    assert [p.name for p in folder.parent.iterdir()] == ["adapter"]  # nothing of Ray's beside it
    assert pickle_files(folder) == [] and (folder / "adapter_model.safetensors").is_file()
    assert read_manifest(folder)["folder_sha256"] == compute_manifest(folder).folder_sha256 == result.adapter_sha256
    config = LoraConfig.from_pretrained(str(folder))
    assert config.r == FineTuneParams().lora_r and sorted(config.target_modules) == sorted(FineTuneParams().target_modules)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as mine, \
            safe_open(str(single.adapter_dir / "adapter_model.safetensors"), "pt") as theirs:
        assert sorted(mine.keys()) == sorted(theirs.keys())
        assert all(mine.get_tensor(k).shape == theirs.get_tensor(k).shape for k in mine.keys())
    assert result.trainable_parameters == single.trainable_parameters
    assert result.train_examples == single.train_examples and result.eval_examples == single.eval_examples
    loaded = load(folder, base=tiny_model)  # loads over its base, as evaluation and serving do
    with torch.no_grad():
        assert loaded.model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] > 0


def test_every_step_reaches_the_caller_once_in_order_and_the_loss_falls(on_ray) -> None:
    result, seen = on_ray
    steps = TINY_PARAMS["steps"]
    assert [m.step for m in seen] == list(range(1, steps + 1))
    assert seen == result.history and [m.loss for m in seen] == result.losses
    assert all(math.isfinite(m.loss) and m.learning_rate >= 0 and m.tokens > 0 for m in seen)
    # batch_size is the global batch: the 2 workers' shards add up to it at every step.
    assert {m.examples for m in seen} == {TINY_PARAMS["batch_size"]}
    losses = result.losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.eval_loss is not None and math.isfinite(result.eval_loss) and result.device == "cpu"


def test_a_batch_that_does_not_split_over_the_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size 4 is the global batch and must be a multiple of ray_workers 3"):
        tiny_params(ray_workers=3)


def test_adapter_config_does_not_depend_on_the_hash_seed(single) -> None:
    # peft writes target_modules from a set; sorted, the same seed gives the same bytes in any process.
    modules = json.loads((single.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules)


# ---- through the asset, against a real MLflow ---------------------------------------------------

def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _versions(uri: str, name: str) -> list:
    return list(_client(uri).search_model_versions(f"name='{name}'"))


def _chain(model_name: str, folder: Path, fine_tune: dict):
    import yaml

    from aiplat.config import project_root
    from aiplat.specs import load_spec
    from assets.model_lifecycle import model_chain

    spec = yaml.safe_load((project_root() / "models" / "ticket-triage.yaml").read_text())
    spec |= {"name": model_name, "endpoint": model_name, "fine_tune": fine_tune}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model_name}.yaml").write_text(yaml.safe_dump(spec))
    return model_chain(load_spec(folder / f"{model_name}.yaml"))


@pytest.fixture(scope="module")
def materialized(shared_mlflow: str, cluster, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    from assets.training import base_model
    from resources.lake import LakeIOManager
    from resources.mlflow import MLflowResource
    from resources.ray import RayResource
    from resources.signing import ModelSigningResource

    with pytest.MonkeyPatch.context() as mp:
        state = tmp_path_factory.mktemp("state")
        mp.setenv("AIPLAT_STATE_DIR", str(state))
        mp.setenv("AIPLAT_ENV", "local")
        chain = _chain("triage-ray", state / "models-specs", {**TINY_PARAMS, "ray_workers": WORKERS})
        prefix = chain.spec.key_prefix
        (fine_tuned_model,) = [a for a in chain.assets if a.key.path[-1] == "fine_tuned_model"]
        assert "ray" in fine_tuned_model.required_resource_keys

        @dg.asset(key=[prefix, "training_set"])
        def upstream_training_set() -> pd.DataFrame:
            return sample_training_set(60)

        result = dg.materialize(
            [upstream_training_set, base_model, fine_tuned_model],
            resources={
                "mlflow": MLflowResource(tracking_uri=shared_mlflow, system_metrics_interval_s=1),
                "io_manager": LakeIOManager(base_uri=str(state / "lake")),
                "model_signing": ModelSigningResource(),
                "ray": RayResource(num_cpus=WORKERS),  # joins the module's private instance
            },
            run_config=dg.RunConfig(ops={"base_model": {"config": {"source": str(tiny_model), "name": "tiny"}}}),
            raise_on_error=False,
        )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = result.asset_materializations_for_node(f"{prefix}__fine_tuned_model")[0].metadata
    return result, {k: v.value for k, v in meta.items()}


def test_the_ray_run_is_tracked_like_the_single_path(shared_mlflow: str, materialized, on_ray) -> None:
    _, meta = materialized
    client = _client(shared_mlflow)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["ray_workers"] == str(WORKERS) and run.data.params["steps"] == str(TINY_PARAMS["steps"])
    assert run.data.params["rows_train"] == "48"
    assert run.data.tags["aiplat.trained_on"].startswith(f"Ray Train, {WORKERS} workers, a private local Ray instance")
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, TINY_PARAMS["steps"] + 1))
    assert history[-1].value == pytest.approx(meta["final_train_loss"])
    assert len(client.get_metric_history(run.info.run_id, "examples_per_second")) == TINY_PARAMS["steps"]
    assert any(k.startswith("system/cpu") for k in run.data.metrics)
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id)} == {"adapter"}
    adapter = client.list_artifacts(run.info.run_id, "adapter")
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {Path(a.path).name for a in adapter}
    assert not [a for a in adapter if a.path.endswith((".bin", ".pt", ".pkl"))]
    # Seeded: the same seed, data and worker count give the same adapter weights, byte for byte, as
    # the module's first run (the folder's hash differs: its manifest and config name another base path).
    weights = "adapter_model.safetensors"
    assert (Path(meta["adapter_path"]) / weights).read_bytes() == (on_ray[0].adapter_dir / weights).read_bytes()


def test_the_ray_version_is_registered_signed_and_owned(shared_mlflow: str, materialized, tmp_path: Path) -> None:
    import mlflow.artifacts

    from aiplat.security import signing

    result, meta = materialized
    client = _client(shared_mlflow)
    mv = client.get_model_version("triage-ray", meta["model_version"])
    assert mv.status == "READY" and mv.run_id == meta["mlflow_run_id"]
    assert mv.tags["dagster.run_id"] == result.run_id and mv.tags["aiplat.adapter_sha256"] == meta["adapter_sha256"]
    assert mv.tags["aiplat.training_set_sha256"] == meta["training_set_sha256"]
    assert mv.tags[signing.TAG_SIGNATURE_SHA] == meta["signature_sha256"]
    assert mv.tags[signing.TAG_MODEL_DIGEST] == meta["signature_model_digest"]
    assert mv.tags[signing.TAG_KEY_LABEL] == "dev-local" and int(mv.tags[signing.TAG_SIGNED_FILES]) >= 3
    assert client.get_registered_model("triage-ray").tags["owner_team"] == "team:ml"
    assert mv.source == mv.tags["aiplat.adapter_artifact"]
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "dl"),
                                                      tracking_uri=shared_mlflow))
    assert signing.SIGNATURE_NAME in {p.name for p in folder.iterdir()}
    state = Path(meta["adapter_path"]).parents[4]  # <state>/models/fine_tuned/<name>/<run>/adapter
    public = state / "security" / "dev-signing-key" / "public.pem"
    assert signing.check_against_version(client, "triage-ray", meta["model_version"], folder, public, adapter=True)
    assert compute_manifest(folder).folder_sha256 == mv.tags["aiplat.adapter_sha256"]


def _lineage(df: pd.DataFrame) -> Lineage:
    return Lineage("test-ray-run", "fine_tuned_model", "0+gtest", "test", training_set_hash(df), "x", "tiny")


def test_a_worker_failure_fails_the_run_and_registers_nothing(shared_mlflow: str, cluster, tiny_model: Path,
                                                             data: pd.DataFrame, tmp_path: Path) -> None:
    from aiplat.training.distributed import DistributedTrainingError

    # A bad param only the workers find out: no such module in the model, so every worker raises
    # (the first failure ends the run: the other rank's may or may not be in by then).
    params = tiny_params(ray_workers=WORKERS, target_modules=["nope_proj"])
    with pytest.raises(DistributedTrainingError, match=r"worker rank\(s\) (0, 1|0|1) of 2: .*nope_proj.*not found"):
        tracked_fine_tune(_client(shared_mlflow), shared_mlflow, "tests-ray", "triage-ray-bad", _lineage(data),
                          tiny_model, data, params, tmp_path, system_metrics_interval_s=None, ray_cluster=cluster)
    client = _client(shared_mlflow)
    assert _versions(shared_mlflow, "triage-ray-bad") == []
    runs = client.search_runs([client.get_experiment_by_name("tests-ray").experiment_id],
                              filter_string="tags.`dagster.run_id` = 'test-ray-run'")
    assert runs and all(r.info.status == "FAILED" for r in runs)
    failure = runs[0].data.tags["aiplat.failure"]
    assert failure.startswith("training on Ray Train: DistributedTrainingError") and "nope_proj" in failure
    assert runs[0].data.params["ray_workers"] == str(WORKERS)


def test_a_failure_in_the_caller_stops_the_workers_and_the_run_fails(shared_mlflow: str, cluster, tiny_model: Path,
                                                                     data: pd.DataFrame, tmp_path: Path) -> None:
    import ray

    def crash(m) -> None:  # MLflow failing mid-run, as test_training_tracking injects it
        if m.step == 2:
            raise RuntimeError("simulated crash at step 2")

    params = tiny_params(ray_workers=WORKERS, steps=400)  # far longer than the test waits
    with pytest.raises(RuntimeError, match="simulated crash"):
        tracked_fine_tune(_client(shared_mlflow), shared_mlflow, "tests-ray", "triage-ray-crash", _lineage(data),
                          tiny_model, data, params, tmp_path, system_metrics_interval_s=None, on_step=crash,
                          ray_cluster=cluster)
    assert _versions(shared_mlflow, "triage-ray-crash") == []
    assert not (tmp_path / "adapter").exists()  # rank 0 never got to write it: the workers were stopped
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU") != WORKERS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU") == WORKERS  # and their CPUs are free again
