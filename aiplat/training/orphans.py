"""MLflow runs left RUNNING by a training process that died without a word (kill -9, the OOM
killer, a lost node).

A run can mark itself FAILED only while its process lives. So a fine-tune, before it starts,
ends the runs that dead attempts of the same asset left RUNNING, and deletes any model version
such a run created: a version whose run never finished was never vetted by it.

A RUNNING run is judged dead when
- it belongs to the current Dagster run: an earlier attempt of this very step (a retry starts only
  after the previous attempt ended);
- its Dagster run is no longer in progress (in prod, run monitoring fails a run whose pod died);
- or it ran on this host and its process is gone (tags `aiplat.host`, `aiplat.pid`).
Anything else is left alone: it may be training right now.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable

HOST_TAG, PID_TAG = "aiplat.host", "aiplat.pid"


def process_tags() -> dict[str, str]:
    """Tags that let a later fine-tune tell whether this run's process still lives."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


@dataclass(frozen=True)
class ReapedRun:
    run_id: str
    reason: str
    deleted_versions: tuple[str, ...]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def why_dead(tags: dict[str, str], current_dagster_run_id: str, dagster_run_in_progress: Callable[[str], bool]) -> str | None:
    owner = tags.get("dagster.run_id")
    if owner and owner == current_dagster_run_id:
        return f"an earlier attempt of Dagster run {owner} ended without closing it"
    if owner and not dagster_run_in_progress(owner):
        return f"its Dagster run {owner} is no longer in progress"
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return f"its process {pid} on {tags[HOST_TAG]} is gone"
    return None


def reap_orphaned_runs(client, experiment_name: str, asset_key: str, current_dagster_run_id: str,
                       dagster_run_in_progress: Callable[[str], bool]) -> list[ReapedRun]:
    """Marks dead RUNNING runs of `asset_key` FAILED (tag `aiplat.failure` says why) and deletes the
    model versions they registered."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"attributes.status = 'RUNNING' and tags.`dagster.asset_key` = '{asset_key}'")
    reaped = []
    for run in runs:
        reason = why_dead(run.data.tags, current_dagster_run_id, dagster_run_in_progress)
        if reason is None:
            continue
        deleted = []
        for version in client.search_model_versions(f"run_id='{run.info.run_id}'"):
            client.delete_model_version(version.name, version.version)
            deleted.append(f"{version.name}/{version.version}")
        client.set_tag(run.info.run_id, "aiplat.failure", f"orphaned: {reason}")
        client.set_terminated(run.info.run_id, "FAILED")
        reaped.append(ReapedRun(run.info.run_id, reason, tuple(deleted)))
    return reaped
