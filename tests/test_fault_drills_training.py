"""Fault drills of the fine-tune: kill -9 of the run's process mid-training, and the MLflow server
going down mid-training. A real `mlflow server` of the drill's own and a tiny Llama (seconds to
train); the fine-tune runs as the platform's fine_tuned_model asset in a child process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import pytest

from aiplat.net import free_port
from aiplat.training.sample import sample_training_set
from platform_defs.definitions import build_definitions
from resources.mlflow import MLflowResource
from tests.fault_drills import PrivateServer
from tests.training_helpers import TINY_PARAMS, build_tiny

pytestmark = pytest.mark.slow

ASSET = "fine_tuned_model"
# The MLflow client's own HTTP retries (7 by default, minutes of backoff) would hide the outage
# from the step; the drill turns them down so the Dagster RetryPolicy is what recovers.
QUICK_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    with PrivateServer("mlflow", argv, port, root / "server.log", ready_timeout=180) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def _uri(server: PrivateServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def _client(server: PrivateServer):
    from mlflow.tracking import MlflowClient

    return MlflowClient(_uri(server), registry_uri=_uri(server))


def _wait_healthy(server: PrivateServer) -> None:
    import requests

    from tests.fault_drills import wait_until

    def ok() -> bool:
        try:
            return requests.get(f"{_uri(server)}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    wait_until(ok, 120, "MLflow /health")


def _prepare(state_dir: Path, tiny_model: Path, server: PrivateServer, model_name: str):
    """base_model materialized, a training set in the lake; returns (defs, instance, run_config, mlflow cfg)."""
    home = state_dir / "dagster_home"
    home.mkdir()
    lake = state_dir / "lake"
    lake.mkdir()
    sample_training_set(60).to_parquet(lake / "training_set.parquet", index=False)
    # An experiment per drill: the module's server is shared, the runs each drill counts are its own.
    mlflow_cfg = {"tracking_uri": _uri(server), "experiment_name": model_name, "system_metrics_interval_s": 0}
    defs = build_definitions({"mlflow": MLflowResource(**mlflow_cfg)})
    instance = dg.DagsterInstance.from_config(str(home))
    run_config = {"ops": {"base_model": {"config": {"source": str(tiny_model), "name": "tiny"}},
                          ASSET: {"config": {**TINY_PARAMS, "registered_model_name": model_name}}}}
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("base_model")],
                                  run_config={"ops": {"base_model": run_config["ops"]["base_model"]}}).success
    return job, instance, {"ops": {ASSET: run_config["ops"][ASSET]}}, mlflow_cfg, home


def _runs(server: PrivateServer, experiment_name: str) -> list:
    client = _client(server)
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`dagster.asset_key` = '{ASSET}'")


def _versions(server: PrivateServer, name: str) -> list[str]:
    return sorted(v.version for v in _client(server).search_model_versions(f"name='{name}'"))


# The two fine-tune drills (kill -9 mid fine-tune; MLflow down mid fine-tune, RetryPolicy recovers)
# ran against the hand-written fine_tuned_model asset (figures in README "Fault drills"); the
# per-model factory replaced that asset in the same round, and porting them to a generated chain
# (a spec in a private AIPLAT_MODELS_DIR, the chain's experiment and asset key) is open on issue 19.
# The orphan reaping they exercised runs in the factory's fine-tune and is unit-tested below.


def test_why_dead_reaps_only_runs_that_cannot_be_training() -> None:
    import os
    import socket

    from aiplat.training.orphans import HOST_TAG, PID_TAG, why_dead

    here, alive = socket.gethostname(), str(os.getpid())
    finished = {"old-run": False, "running-run": True}.__getitem__
    assert "earlier attempt" in why_dead({"dagster.run_id": "me"}, "me", finished)
    assert "no longer in progress" in why_dead({"dagster.run_id": "old-run"}, "me", finished)
    # Its Dagster run still says in progress, but its process on this host is gone (kill -9).
    gone = {"dagster.run_id": "running-run", HOST_TAG: here, PID_TAG: "999999999"}
    assert "is gone" in why_dead(gone, "me", finished)
    # Alive here, or on another host whose processes this one cannot see: left alone.
    assert why_dead({"dagster.run_id": "running-run", HOST_TAG: here, PID_TAG: alive}, "me", finished) is None
    assert why_dead({"dagster.run_id": "running-run", HOST_TAG: "gpu-node-7", PID_TAG: "999999999"}, "me",
                    finished) is None
