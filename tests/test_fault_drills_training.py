"""Fault drills of the fine-tune: kill -9 of the run's process mid-training (and after it has
registered a version, before closing its run), and the MLflow server going down mid-training. A
real `mlflow server` of the drill's own and a tiny Llama (seconds to train); the fine-tune runs as
a generated chain's fine_tuned_model asset (assets/model_lifecycle.py: the demo triage spec under
the drill's own model name, in a private AIPLAT_MODELS_DIR) in a child process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from aiplat.config import project_root
from aiplat.net import free_port
from aiplat.training.sample import sample_training_set
from platform_defs.definitions import build_definitions
from resources.mlflow import MLflowResource
from tests.fault_drills import PrivateServer, child_env, report, start_child
from tests.training_helpers import TINY_PARAMS, build_tiny

pytestmark = pytest.mark.slow

# The MLflow client's own HTTP retries (7 by default, minutes of backoff) would hide the outage
# from the step; the drill turns them down so the Dagster RetryPolicy is what recovers.
QUICK_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
CHAMPION = "champion"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    # Not the session's shared_mlflow: the MLflow-down drill kills this one.
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


class Drill:
    """One drill's model: its spec (the demo triage spec, the drill's name, a few tiny fine-tune
    steps) in a private models folder, base_model materialized, a training set in the lake."""

    def __init__(self, state_dir: Path, tiny_model: Path, server: PrivateServer, model_name: str):
        self.server, self.name = server, model_name
        self.models = state_dir / "models_specs"
        self.models.mkdir()
        spec = yaml.safe_load((project_root() / "models" / "ticket-triage.yaml").read_text())
        spec |= {"name": model_name, "endpoint": model_name, "fine_tune": TINY_PARAMS}
        (self.models / f"{model_name}.yaml").write_text(yaml.safe_dump(spec))
        self.home = state_dir / "dagster_home"
        self.home.mkdir()
        self.prefix = model_name.replace("-", "_")
        self.asset = f"{self.prefix}/fine_tuned_model"
        self.experiment = f"{model_name}-fine-tuning"
        # The training_set asset has its own tests; the drill writes its output where the lake keeps it.
        lake = state_dir / "lake" / self.prefix
        lake.mkdir(parents=True)
        sample_training_set(60).to_parquet(lake / "training_set.parquet", index=False)
        self.mlflow_cfg = {"tracking_uri": _uri(server), "system_metrics_interval_s": 0}
        defs = build_definitions({"mlflow": MLflowResource(**self.mlflow_cfg)}, models_dir=self.models)
        assert dg.AssetKey.from_user_string(self.asset) in {k for a in defs.assets for k in a.keys}
        self.instance = dg.DagsterInstance.from_config(str(self.home))
        self.job = defs.resolve_implicit_global_asset_job_def()
        base = {"base_model": {"config": {"source": str(tiny_model), "name": "tiny"}}}
        assert self.job.execute_in_process(instance=self.instance, asset_selection=[dg.AssetKey("base_model")],
                                           run_config={"ops": base}).success
        self.env = child_env(state_dir, self.home, AIPLAT_MODELS_DIR=str(self.models), **QUICK_CLIENT)

    def fine_tune_here(self):
        """The fine-tune in this process, as an operator's re-run."""
        return self.job.execute_in_process(instance=self.instance, raise_on_error=False,
                                           asset_selection=[dg.AssetKey.from_user_string(self.asset)])

    def fine_tune_in_child(self, work: Path, pause: str, hold: bool = True):
        return start_child(work, self.env, assets=[self.asset], pause=pause, hold=hold,
                           resources={"mlflow": {"kind": "mlflow", **self.mlflow_cfg}})

    def runs(self) -> list:
        client = _client(self.server)
        experiment = client.get_experiment_by_name(self.experiment)
        return client.search_runs([experiment.experiment_id], filter_string=f"tags.`dagster.asset_key` = '{self.asset}'")

    def versions(self) -> dict[str, str]:
        """version -> the MLflow run that registered it."""
        return {v.version: v.run_id for v in _client(self.server).search_model_versions(f"name='{self.name}'")}

    def champion(self) -> str:
        return _client(self.server).get_model_version_by_alias(self.name, CHAMPION).version


# Where the killed process stands: mid-training (no version yet), or with a version registered and
# its run not yet closed (the version's run never vouched for it: the reaper must delete it).
KILL_POINTS = {"training": "aiplat.training.tracking:fine_tune",
               "registered": "aiplat.training.tracking:_wait_ready"}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill9_during_fine_tune_run_ends_failed_nothing_registered(point, mlflow_server, tiny_model, state_dir,
                                                                   tmp_path):
    drill = Drill(state_dir, tiny_model, mlflow_server, f"drill-kill9-{point}")
    # A champion before the drill (set by hand: promotion has its own tests): the kill must not move it.
    first = drill.fine_tune_here()
    assert first.success
    (champion,) = drill.versions()
    _client(mlflow_server).set_registered_model_alias(drill.name, CHAMPION, champion)

    child = drill.fine_tune_in_child(tmp_path / "drill", KILL_POINTS[point])
    child.wait_marker()
    assert child.kill9() == -9
    killed_at = time.monotonic()
    (orphan,) = [r for r in drill.runs() if r.info.status == "RUNNING"]
    # What a dead process leaves: a run it could not close (and, killed after registering, its version).
    orphan_versions = {v for v, run in drill.versions().items() if run == orphan.info.run_id}
    assert len(orphan_versions) == (1 if point == "registered" else 0)
    assert drill.champion() == champion

    result = drill.fine_tune_here()
    recovery = time.monotonic() - killed_at
    assert result.success
    runs = {r.info.run_id: r for r in drill.runs()}
    assert runs[orphan.info.run_id].info.status == "FAILED"
    assert f"its process {child.proc.pid}" in runs[orphan.info.run_id].data.tags["aiplat.failure"]
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED", "FINISHED"]
    versions = drill.versions()
    # Nothing of the killed run left in the registry; the champion's version and the re-run's only.
    assert orphan.info.run_id not in versions.values() and len(versions) == 2
    meta = result.asset_materializations_for_node(f"{drill.prefix}__fine_tuned_model")[0].metadata
    assert versions[meta["model_version"].value] == meta["mlflow_run_id"].value != orphan.info.run_id
    assert drill.champion() == champion
    report(f"kill -9 during fine-tune ({point})",
           "killed run marked FAILED by the next fine-tune (its process is gone)"
           + ("; the version it had registered deleted" if orphan_versions else "; nothing registered by it")
           + "; champion alias unmoved; the re-run registers a new version", recovery)


def test_mlflow_down_mid_fine_tune_retry_policy_recovers(mlflow_server, tiny_model, state_dir, tmp_path):
    drill = Drill(state_dir, tiny_model, mlflow_server, "drill-mlflow-down")
    child = drill.fine_tune_in_child(tmp_path / "drill", KILL_POINTS["training"], hold=False)
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
    runs = drill.runs()
    statuses = sorted(r.info.status for r in runs)
    # The attempt that met the outage could not close its run; the retry closed it before training.
    assert statuses.count("FINISHED") == 1 and statuses.count("RUNNING") == 0
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and all("earlier attempt" in r.data.tags["aiplat.failure"] for r in failed)
    (finished,) = [r for r in runs if r.info.status == "FINISHED"]
    assert drill.versions() == {"1": finished.info.run_id}
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
