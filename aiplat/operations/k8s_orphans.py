"""Orphaned Kubernetes Jobs and Pods: cluster objects still holding a node (often a GPU) although
the Dagster run they were made for has ended.

How they arise: run monitoring marks a run FAILED when its pod did not start within
`start_timeout_seconds`, but the Job stays and its Pending pod may still be scheduled hours later;
a run canceled while its worker was unreachable ends CANCELED after `cancel_timeout_seconds` with
the pod still Running; a run worker killed mid-run leaves step Jobs of k8s_job_executor behind.
`ttl_seconds_after_finished` only removes Jobs that *finished*, none of these.

The sweep lists Jobs and Pods by the `dagster/run-id` label that dagster-k8s puts on every run and
step Job (and their pod templates), asks the Dagster instance for each run's status, and deletes
the still-active Jobs/Pods of runs that ended more than `grace_seconds` ago. It never touches a
run's objects while the run is queued, starting or running, nor objects of runs this instance does
not know (another deployment's), and leaves finished Jobs/Pods to their TTL (their logs stay).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import dagster as dg

RUN_ID_LABEL = "dagster/run-id"
ACTIVE_POD_PHASES = ("Pending", "Running", "Unknown")
DEFAULT_GRACE_SECONDS = 300


@dataclass(frozen=True)
class SweepAction:
    kind: str  # Job | Pod
    name: str
    run_id: str
    run_status: str
    action: str  # deleted | would delete | kept
    reason: str

    def line(self) -> str:
        return f"{self.action:12s} {self.kind:3s} {self.name}  run {self.run_id} ({self.run_status}): {self.reason}"


def _job_active(job: Any) -> bool:
    status = job.status
    if status is None:
        return True
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return False
    return True


def _pod_active(pod: Any) -> bool:
    return (pod.status.phase if pod.status else "Unknown") in ACTIVE_POD_PHASES


def _run_verdict(instance: dg.DagsterInstance, run_id: str, grace_seconds: float, now: float) -> tuple[bool, str, str]:
    """(may delete, run status, reason)."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return False, "unknown", "no such run in this Dagster instance (another deployment's?); left alone"
    run = record.dagster_run
    status = run.status.value
    if not run.is_finished:
        return False, status, "run has not ended"
    ended = record.end_time or (record.update_timestamp.timestamp() if record.update_timestamp else None)
    if ended is not None and now - ended < grace_seconds:
        return False, status, f"run ended {now - ended:.0f} s ago, within the {grace_seconds:.0f} s grace"
    return True, status, "run ended; object still holds its node"


def sweep_orphans(
    instance: dg.DagsterInstance,
    batch_api: Any,
    core_api: Any,
    namespace: str,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    now: float | None = None,
) -> list[SweepAction]:
    """Delete active Jobs/Pods of ended runs in `namespace`; return what was done to each object.

    `batch_api` / `core_api` are kubernetes.client.BatchV1Api / CoreV1Api (or objects with the same
    methods). Jobs are deleted with propagation "Background" so their pods go too.
    """
    from kubernetes.client.exceptions import ApiException

    now = time.time() if now is None else now
    jobs = batch_api.list_namespaced_job(namespace, label_selector=RUN_ID_LABEL).items
    pods = core_api.list_namespaced_pod(namespace, label_selector=RUN_ID_LABEL).items
    verdicts: dict[str, tuple[bool, str, str]] = {}
    actions: list[SweepAction] = []

    def verdict(run_id: str) -> tuple[bool, str, str]:
        if run_id not in verdicts:
            verdicts[run_id] = _run_verdict(instance, run_id, grace_seconds, now)
        return verdicts[run_id]

    def delete(kind: str, name: str, fn) -> str:
        if dry_run:
            return "would delete"
        try:
            fn()
        except ApiException as exc:
            if exc.status != 404:  # already gone (e.g. the Job's deletion took its pod): fine
                raise
        return "deleted"

    for job in jobs:
        name, run_id = job.metadata.name, job.metadata.labels[RUN_ID_LABEL]
        may_delete, status, reason = verdict(run_id)
        if may_delete and not _job_active(job):
            may_delete, reason = False, "Job finished; its TTL removes it"
        action = "kept"
        if may_delete:
            action = delete("Job", name, lambda name=name: batch_api.delete_namespaced_job(
                name, namespace, propagation_policy="Background"))
        actions.append(SweepAction("Job", name, run_id, status, action, reason))

    for pod in pods:
        name, run_id = pod.metadata.name, pod.metadata.labels[RUN_ID_LABEL]
        may_delete, status, reason = verdict(run_id)
        if may_delete and not _pod_active(pod):
            may_delete, reason = False, f"Pod {pod.status.phase}; removed with its Job"
        action = "kept"
        if may_delete:
            action = delete("Pod", name, lambda name=name: core_api.delete_namespaced_pod(name, namespace))
        actions.append(SweepAction("Pod", name, run_id, status, action, reason))
    return actions
