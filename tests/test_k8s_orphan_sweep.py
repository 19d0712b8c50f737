"""Orphans on Kubernetes: run monitoring sized for queued GPU runs, and the sweep that deletes
Jobs/Pods still active although their Dagster run ended.

No Kubernetes API server can run on this machine (none is obtainable from any reachable
registry; see STACK.md "Kubernetes without a cluster"), so the cluster is a stand-in object with
the kubernetes client's method names that stores real kubernetes.client models. The Jobs in it
are the exact ones dagster-k8s's K8sRunLauncher (configured from deploy/dagster/dagster.yaml)
creates; the Dagster instance is real (SQLite in a private DAGSTER_HOME), with real run statuses.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from kubernetes.client import ApiClient, V1ObjectMeta, V1Pod, V1PodStatus
from kubernetes.client.exceptions import ApiException

from aiplat.config import project_root
from aiplat.operations.k8s_orphans import RUN_ID_LABEL, sweep_orphans

DEPLOY = project_root() / "deploy"
NAMESPACE = "team-ml"
PROD_ENV = {
    "AIPLAT_K8S_NAMESPACE": NAMESPACE, "DAGSTER_PG_HOST": "postgres.internal", "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-secret", "DAGSTER_PG_DB": "dagster",
    "AIPLAT_COMPUTE_LOG_BUCKET": "aiplat-logs", "AWS_REGION": "eu-west-1",
}


def _instance_config(monkeypatch) -> dict:
    from dagster._core.instance.config import dagster_instance_config

    for name, value in PROD_ENV.items():
        monkeypatch.setenv(name, value)
    # Validates every section against Dagster's instance schema (unknown keys are refused).
    config, _ = dagster_instance_config(str(DEPLOY / "dagster"), "dagster.yaml")
    return config


def test_run_monitoring_is_sized_for_queued_gpu_runs(monkeypatch):
    monitoring = _instance_config(monkeypatch)["run_monitoring"]
    assert monitoring["enabled"] is True
    # GPU node scale-up plus a CUDA image pull: well above Dagster's 180 s default.
    assert monitoring["start_timeout_seconds"] >= 1800
    assert monitoring["cancel_timeout_seconds"] >= 300
    assert monitoring["max_resume_run_attempts"] == 0
    assert monitoring["poll_interval_seconds"] <= monitoring["start_timeout_seconds"] // 10
    assert monitoring["free_slots_after_run_end_seconds"] > 0


class StandInCluster:
    """Stands in for BatchV1Api + CoreV1Api (no API server here). Keeps what it is given; a Job
    created gets one Pod from its template, as the Job controller would; deleting a Job with
    propagation takes its pods, as the garbage collector would."""

    def __init__(self) -> None:
        self.jobs: dict[str, object] = {}
        self.pods: dict[str, V1Pod] = {}
        self.selectors: list[str] = []
        self.deleted: list[tuple[str, str]] = []

    # BatchV1Api
    def create_namespaced_job(self, body, namespace, **_kw):
        assert namespace == NAMESPACE
        self.jobs[body.metadata.name] = body
        template = body.spec.template.metadata
        self.pods[body.metadata.name + "-x1"] = V1Pod(
            metadata=V1ObjectMeta(name=body.metadata.name + "-x1", namespace=namespace,
                                  labels={**template.labels, "job-name": body.metadata.name}),
            status=V1PodStatus(phase="Pending"),
        )
        return body

    def list_namespaced_job(self, namespace, label_selector=""):
        self.selectors.append(label_selector)
        return _List([j for j in self.jobs.values() if label_selector in (j.metadata.labels or {})])

    def delete_namespaced_job(self, name, namespace, propagation_policy=None, **_kw):
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        assert propagation_policy == "Background", "pods must go with their Job"
        del self.jobs[name]
        self.deleted.append(("Job", name))
        for pod_name in [p for p, pod in self.pods.items() if pod.metadata.labels.get("job-name") == name]:
            del self.pods[pod_name]

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=""):
        self.selectors.append(label_selector)
        return _List([p for p in self.pods.values() if label_selector in (p.metadata.labels or {})])

    def delete_namespaced_pod(self, name, namespace, **_kw):
        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        del self.pods[name]
        self.deleted.append(("Pod", name))


class _List:
    def __init__(self, items):
        self.items = items


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _launcher(cluster: StandInCluster, monkeypatch, tmp_path: Path):
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
    }))
    config = process_config(K8sRunLauncher.config_type(), _instance_config(monkeypatch)["run_launcher"]["config"]).value
    config.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    return K8sRunLauncher(**config, k8s_client_batch_api=cluster)


def _launch(instance, launcher, job_name: str):
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, make_new_run_id

    origin = JobPythonOrigin(job_name=job_name, repository_origin=RepositoryPythonOrigin(
        executable_path="/usr/local/bin/python",
        code_pointer=ModuleCodePointer("platform_defs.definitions", "defs", working_directory="/app"),
        container_image="registry.internal/ai-platform:1.0.0"))
    run = instance.add_run(DagsterRun(job_name=job_name, run_id=make_new_run_id(), job_code_origin=origin,
                                      status=DagsterRunStatus.STARTING))
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return run


def _event(instance, run, event_type):
    from dagster._core.events import DagsterEvent

    instance.report_dagster_event(DagsterEvent(event_type.value, job_name=run.job_name), run_id=run.run_id)
    return instance.get_run_by_id(run.run_id)


def _runs_and_cluster(monkeypatch, tmp_path):
    from dagster._core.events import DagsterEventType

    cluster = StandInCluster()
    instance = dg.DagsterInstance.get()
    launcher = _launcher(cluster, monkeypatch, tmp_path)
    launcher.register_instance(instance)
    runs = {name: _launch(instance, launcher, "fine_tuning_job") for name in
            ("running", "succeeded_pod_stuck", "failed_start_timeout", "canceled", "succeeded_done")}
    _event(instance, runs["running"], DagsterEventType.RUN_START)
    _event(instance, runs["succeeded_pod_stuck"], DagsterEventType.RUN_START)
    _event(instance, runs["succeeded_pod_stuck"], DagsterEventType.RUN_SUCCESS)
    # Run monitoring's verdict on a pod that never started: the run FAILED, the Job still Pending.
    instance.report_run_failed(runs["failed_start_timeout"], message="run timed out before starting")
    _event(instance, runs["canceled"], DagsterEventType.RUN_START)
    instance.report_run_canceled(runs["canceled"])
    _event(instance, runs["succeeded_done"], DagsterEventType.RUN_START)
    _event(instance, runs["succeeded_done"], DagsterEventType.RUN_SUCCESS)
    for job in cluster.jobs.values():
        pod = next(p for p in cluster.pods.values() if p.metadata.labels["job-name"] == job.metadata.name)
        pod.status.phase = "Running"
    # The finished run's Job completed normally: its TTL removes it, not the sweep.
    done = next(j for j in cluster.jobs.values() if j.metadata.labels[RUN_ID_LABEL] == runs["succeeded_done"].run_id)
    from kubernetes.client import V1JobCondition, V1JobStatus

    done.status = V1JobStatus(conditions=[V1JobCondition(type="Complete", status="True")])
    next(p for p in cluster.pods.values() if p.metadata.labels["job-name"] == done.metadata.name).status.phase = "Succeeded"
    # A pod of a run this instance never heard of (another deployment's): never touched.
    cluster.pods["stranger"] = V1Pod(metadata=V1ObjectMeta(name="stranger", labels={RUN_ID_LABEL: "0" * 36}),
                                     status=V1PodStatus(phase="Running"))
    return instance, cluster, runs


def _run_of(obj) -> str:
    return obj.metadata.labels[RUN_ID_LABEL]


def test_the_sweep_deletes_active_objects_of_ended_runs_only(dagster_home, monkeypatch, tmp_path):
    instance, cluster, runs = _runs_and_cluster(monkeypatch, tmp_path)
    # The launcher's real Jobs carry the label the sweep selects on, on the Job and its pods.
    assert {_run_of(j) for j in cluster.jobs.values()} == {r.run_id for r in runs.values()}
    assert all(ApiClient().sanitize_for_serialization(j)["spec"]["template"]["metadata"]["labels"][RUN_ID_LABEL]
               for j in cluster.jobs.values())
    later = time.time() + 3600

    # Within the grace period after the runs ended nothing goes.
    early = sweep_orphans(instance, cluster, cluster, NAMESPACE, grace_seconds=7200, now=later)
    assert not cluster.deleted and all(a.action == "kept" for a in early)

    # A dry run names what would go and deletes nothing.
    dry = sweep_orphans(instance, cluster, cluster, NAMESPACE, grace_seconds=300, dry_run=True, now=later)
    assert not cluster.deleted
    would = {(a.kind, a.run_id) for a in dry if a.action == "would delete"}
    ended = {runs[n].run_id for n in ("succeeded_pod_stuck", "failed_start_timeout", "canceled")}
    assert {run_id for _, run_id in would} == ended

    actions = sweep_orphans(instance, cluster, cluster, NAMESPACE, grace_seconds=300, now=later)
    assert set(cluster.selectors) == {RUN_ID_LABEL}
    remaining_runs = {_run_of(j) for j in cluster.jobs.values()}
    assert remaining_runs == {runs["running"].run_id, runs["succeeded_done"].run_id}
    assert {_run_of(p) for p in cluster.pods.values()} == {runs["running"].run_id, runs["succeeded_done"].run_id, "0" * 36}
    by_run = {(a.kind, a.run_id): a for a in actions}
    assert by_run[("Job", runs["failed_start_timeout"].run_id)].run_status == "FAILURE"
    assert by_run[("Job", runs["canceled"].run_id)].action == "deleted"
    assert by_run[("Job", runs["running"].run_id)].reason == "run has not ended"
    assert "TTL" in by_run[("Job", runs["succeeded_done"].run_id)].reason
    assert "another deployment" in by_run[("Pod", "0" * 36)].reason

    # Idempotent: a second sweep finds nothing more to delete.
    deleted_before = list(cluster.deleted)
    sweep_orphans(instance, cluster, cluster, NAMESPACE, grace_seconds=300, now=later)
    assert cluster.deleted == deleted_before


def test_the_cli_sweeps_with_the_instance_from_dagster_home(dagster_home, monkeypatch, tmp_path):
    instance, cluster, runs = _runs_and_cluster(monkeypatch, tmp_path)
    import aiplat.commands.k8s as k8s_cmd
    from aiplat.cli import cli

    # The one replaced piece: the Kubernetes clients (no API server here), see the module docstring.
    monkeypatch.setattr(k8s_cmd, "_clients", lambda kubeconfig: (cluster, cluster))
    dry = CliRunner().invoke(cli, ["k8s", "sweep", "--namespace", NAMESPACE, "--grace-seconds", "0", "--dry-run"],
                             catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and not cluster.deleted
    result = CliRunner().invoke(cli, ["k8s", "sweep", "--namespace", NAMESPACE, "--grace-seconds", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "deleted      Job" in result.output and runs["canceled"].run_id in result.output
    assert {_run_of(j) for j in cluster.jobs.values()} == {runs["running"].run_id, runs["succeeded_done"].run_id}


def test_the_cli_refuses_without_dagster_home(monkeypatch):
    from aiplat.cli import cli

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = CliRunner().invoke(cli, ["k8s", "sweep", "--namespace", NAMESPACE])
    assert result.exit_code != 0 and "DAGSTER_HOME" in result.output


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_cronjob_runs_the_sweep_with_rights_to_delete_only_jobs_and_pods():
    docs = {d["kind"]: d for d in _documents(DEPLOY / "kubernetes" / "dagster-orphan-sweep.yaml")}
    for doc in docs.values():
        kubernetes_validate.validate(doc, "1.30", strict=True)
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["aiplat", "k8s", "sweep"]
    assert {"name": "DAGSTER_HOME", "value": container["volumeMounts"][0]["mountPath"]} in container["env"]
    assert pod["volumes"][0]["configMap"]["name"] == "dagster-instance"
    assert docs["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in docs["Role"]["rules"]}
    assert rules == {(("batch",), ("jobs",)): {"get", "list", "delete"}, (("",), ("pods",)): {"get", "list", "delete"}}
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert "kubernetes/dagster-orphan-sweep.yaml" in kustomization["resources"]
