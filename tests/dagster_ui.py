"""The Dagster UI as a newcomer drives it, over the same GraphQL API the browser uses.

`DagsterDev` runs `dagster dev` (webserver + daemon, the second README command's process) on a
private DAGSTER_HOME and a free port, with an explicit environment. `materialize_all` does what
the UI's "Materialize all" button does on a graph with partitioned assets: one asset backfill of
every materializable asset over all of its partitions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from aiplat.config import child_env, default_signals, project_root
from aiplat.net import free_port, wait_for_port

REPO = {"repositoryLocationName": "ai_platform", "repositoryName": "__repository__"}
DONE_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
ACTIVE_RUN_STATUSES = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING", "MANAGED"]


class GraphQLError(RuntimeError):
    pass


def gql(url: str, query: str, variables: dict | None = None, timeout: float = 120) -> dict:
    response = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=timeout)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise GraphQLError(str(body["errors"])[:2000])
    return body["data"]


@dataclass
class DagsterDev:
    """`dagster dev -w workspace.yaml` as a child process; `env` adds to the allow-listed
    environment (aiplat.config.child_env), e.g. AIPLAT_STATE_DIR and service ports."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    @property
    def log_path(self) -> Path:
        return self.home / "dagster-dev.log"

    def start(self, timeout: float = 300) -> DagsterDev:
        self.home.mkdir(parents=True, exist_ok=True)
        instance_yaml = self.home / "dagster.yaml"
        if not instance_yaml.exists():
            instance_yaml.write_text((project_root() / "platform_defs" / "dagster.local.yaml").read_text())
        env = child_env({"DAGSTER_HOME": str(self.home), "PYTHONUNBUFFERED": "1", **self.env})
        bin_dir = Path(sys.executable).parent
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=project_root(), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # A CI launcher's ignored SIGINT/SIGTERM would pass to `dagster dev` and its daemon and
            # webserver, which then sit out its shutdown: the CI run's teardown waited 62 s for the kill.
            start_new_session=True, preexec_fn=default_signals,
        )
        log.close()
        deadline = time.monotonic() + timeout
        if not wait_for_port("127.0.0.1", self.port, timeout=timeout):
            self.stop()
            raise RuntimeError(f"dagster dev did not listen within {timeout:.0f} s:\n{self.log_tail()}")
        # The code location loads after the server listens.
        while time.monotonic() < deadline:
            data = gql(self.url, """{ workspaceOrError { ... on Workspace { locationEntries {
                        name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e["locationOrLoadError"] for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    raise RuntimeError(f"the code location failed to load: {errors}")
                return self
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"the code location did not load within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> DagsterDev:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def materializable_asset_keys(url: str) -> list[list[str]]:
    data = gql(url, "{ assetNodes { assetKey { path } isMaterializable } }")
    return [n["assetKey"]["path"] for n in data["assetNodes"] if n["isMaterializable"]]


def materialize_all(url: str, run_config: dict | None = None) -> str:
    """What "Materialize all" launches on a partitioned graph: one asset backfill, every asset,
    all partitions. Returns the backfill id."""
    params: dict = {"assetSelection": [{"path": p} for p in materializable_asset_keys(url)], "allPartitions": True}
    if run_config is not None:
        params["runConfigData"] = run_config
    data = gql(url, """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
                 __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack }
                 ... on PartitionKeysNotFoundError { message } ... on PartitionSetNotFoundError { message } } }""",
               {"params": params})
    result = data["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(f"backfill not launched: {result}")
    return result["backfillId"]


def backfill_status(url: str, backfill_id: str) -> str:
    data = gql(url, """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
                 __typename ... on PartitionBackfill { status } ... on PythonError { message } } }""", {"id": backfill_id})
    node = data["partitionBackfillOrError"]
    if node["__typename"] != "PartitionBackfill":
        raise GraphQLError(f"backfill {backfill_id}: {node}")
    return node["status"]


def runs(url: str, statuses: list[str] | None = None, tags: dict[str, str] | None = None) -> list[dict]:
    run_filter: dict = {}
    if statuses:
        run_filter["statuses"] = statuses
    if tags:
        run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
    data = gql(url, """query($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results {
                 runId jobName status tags { key value } } } } }""", {"filter": run_filter})
    return data["runsOrError"]["results"]


def wait_until_idle(url: str, timeout: float, settle: float = 20.0, progress=print) -> None:
    """Until no run is queued or in progress for `settle` seconds (sensors may launch more)."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        active = runs(url, ACTIVE_RUN_STATUSES)
        if active:
            quiet_since = None
            progress(f"{len(active)} run(s) active: {sorted({r['jobName'] for r in active})}")
        else:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle:
                return
        time.sleep(5)
    raise TimeoutError(f"runs still active after {timeout:.0f} s: {[r['jobName'] for r in runs(url, ACTIVE_RUN_STATUSES)]}")


def wait_for_backfill(url: str, backfill_id: str, timeout: float, progress=print) -> str:
    deadline = time.monotonic() + timeout
    status = backfill_status(url, backfill_id)
    while time.monotonic() < deadline:
        status = backfill_status(url, backfill_id)
        if status not in ("REQUESTED", "CANCELING"):
            return status
        active = runs(url, ACTIVE_RUN_STATUSES)
        progress(f"backfill {backfill_id}: {status}; active runs: {sorted(r['jobName'] for r in active)}")
        time.sleep(10)
    raise TimeoutError(f"backfill {backfill_id} still {status} after {timeout:.0f} s")


def failure_messages(url: str, run_id: str, limit: int = 5) -> list[str]:
    """The step failures and run failure of one run, as the UI's run page shows them."""
    data = gql(url, """query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection { events {
                 __typename ... on ExecutionStepFailureEvent { stepKey error { message } }
                 ... on RunFailureEvent { message } } } } }""", {"id": run_id})
    events = data["logsForRun"].get("events", [])
    out = []
    for e in events:
        if e["__typename"] == "ExecutionStepFailureEvent":
            out.append(f"{e['stepKey']}: {(e.get('error') or {}).get('message', '')[:800]}")
        elif e["__typename"] == "RunFailureEvent":
            out.append(f"run: {e.get('message', '')[:400]}")
    return out[:limit]
