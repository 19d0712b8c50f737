"""Fault drills of the fine-tune: kill -9 of the run's process mid-training, and the MLflow server
going down mid-training. A real `mlflow server` of the drill's own and a tiny Llama (seconds to
train); the fine-tune runs as the platform's fine_tuned_model asset in a child process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from aiplat.net import free_port
from aiplat.training.sample import sample_training_set
from platform_defs.definitions import build_definitions
from resources.mlflow import MLflowResource
from tests.fault_drills import PrivateServer, child_env, report, start_child
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


def test_kill9_during_fine_tune_run_ends_failed_nothing_registered(mlflow_server, tiny_model, state_dir, tmp_path):
    name = "drill-kill9"
    job, instance, run_config, mlflow_cfg, home = _prepare(state_dir, tiny_model, mlflow_server, name)
    child = start_child(tmp_path / "drill", child_env(state_dir, home, **QUICK_CLIENT), assets=[ASSET],
                        run_config=run_config, resources={"mlflow": {"kind": "mlflow", **mlflow_cfg}},
                        pause="aiplat.training.tracking:fine_tune")
    child.wait_marker()
    assert child.kill9() == -9
    killed_at = time.monotonic()
    (orphan,) = [r for r in _runs(mlflow_server, name)]
    # What a dead process leaves: a run it could not close, and no version.
    assert orphan.info.status == "RUNNING" and _versions(mlflow_server, name) == []

    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(ASSET)], run_config=run_config)
    recovery = time.monotonic() - killed_at
    assert result.success
    runs = {r.info.run_id: r for r in _runs(mlflow_server, name)}
    assert runs[orphan.info.run_id].info.status == "FAILED"
    assert f"its process {child.proc.pid}" in runs[orphan.info.run_id].data.tags["aiplat.failure"]
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]
    assert _versions(mlflow_server, name) == ["1"]
    version = _client(mlflow_server).get_model_version(name, "1")
    assert version.run_id != orphan.info.run_id
    report("kill -9 during fine-tune", "killed run marked FAILED by the next fine-tune (its process is gone); "
           "nothing registered by it; the re-run registers version 1", recovery)


def test_mlflow_down_mid_fine_tune_retry_policy_recovers(mlflow_server, tiny_model, state_dir, tmp_path):
    name = "drill-mlflow-down"
    _, instance, run_config, mlflow_cfg, home = _prepare(state_dir, tiny_model, mlflow_server, name)
    child = start_child(tmp_path / "drill", child_env(state_dir, home, **QUICK_CLIENT), assets=[ASSET],
                        run_config=run_config, resources={"mlflow": {"kind": "mlflow", **mlflow_cfg}},
                        pause="aiplat.training.tracking:fine_tune", hold=False)
    child.wait_marker()
    mlflow_server.kill()
    child.let_go()
    # The restart begins at once: the attempt meets the outage within its first training step (a
    # server start takes longer), and the retries (5, 10, 20 s) find it back. `retries >= 1` below
    # shows the outage was met.
    mlflow_server.start()
    _wait_healthy(mlflow_server)
    back = time.monotonic()
    summary = child.result()
    recovery = time.monotonic() - back
    assert summary["success"], summary
    assert summary["retries"] >= 1
    log = child.log.read_text(errors="replace")
    assert f"MLflow at {_uri(mlflow_server)} failed while training" in log or "is unreachable" in log
    runs = _runs(mlflow_server, name)
    statuses = sorted(r.info.status for r in runs)
    # The attempt that met the outage could not close its run; the retry closed it before training.
    assert statuses.count("FINISHED") == 1 and statuses.count("RUNNING") == 0
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and all("earlier attempt" in r.data.tags["aiplat.failure"] for r in failed)
    assert _versions(mlflow_server, name) == ["1"]
    report("MLflow down mid fine-tune", "step fails naming the server ('failed while training'); RetryPolicy "
           f"trains again once MLflow is back ({summary['retries']} retries); the dead attempt's run FAILED, "
           "exactly one version registered", recovery)



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
