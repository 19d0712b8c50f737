"""The Dagster webserver over its GraphQL API, as the UI uses it: the asset graph is there and
the intake of a landed file runs to success."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from aiplat.config import default_signals, project_root
from aiplat.intake.batches import batch_key
from aiplat.net import free_port, wait_for_port
from aiplat.provenance import sha256_bytes
from tests.records import jsonl, ticket

pytestmark = pytest.mark.slow

REPO = {"repositoryLocationName": "ai_platform", "repositoryName": "__repository__"}


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("webserver")
    state, home = root / "state", root / "dagster_home"
    state.mkdir()
    home.mkdir()
    # No daemon runs beside this webserver: launch runs at once instead of queueing them.
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    port = free_port()
    env = {**os.environ, "AIPLAT_STATE_DIR": str(state), "DAGSTER_HOME": str(home), "AIPLAT_ENV": "local"}
    log = open(root / "webserver.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=project_root(),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=default_signals,  # stops on SIGTERM under any launcher
    )
    try:
        if not wait_for_port("127.0.0.1", port, timeout=180):
            pytest.fail(f"dagster-webserver did not listen within 180 s:\n{(root / 'webserver.log').read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/graphql", state
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def gql(url: str, query: str, variables: dict | None = None) -> dict:
    deadline = time.monotonic() + 180
    while True:
        response = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        data = body["data"]
        # The code location loads in the background after the server listens.
        loading = any(isinstance(v, dict) and v.get("__typename") == "PythonError" and "not found" in v.get("message", "") for v in data.values())
        if not loading or time.monotonic() > deadline:
            return data
        time.sleep(2)


def test_asset_graph_is_listed(webserver):
    url, _ = webserver
    data = gql(
        url,
        """query { assetNodes { assetKey { path } groupName dependencyKeys { path } owners { ... on TeamAssetOwner { team } } } }""",
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert {"raw_tickets", "raw_tickets_quarantine", "raw_kb_articles", "raw_kb_articles_quarantine"} <= set(nodes)
    assert nodes["raw_tickets"]["groupName"] == "intake"
    assert nodes["raw_tickets"]["owners"] == [{"team": "platform"}]


def test_intake_of_a_landed_file_runs_from_the_api(webserver):
    url, state = webserver
    data = jsonl([ticket(i) for i in range(10)])
    landing = state / "landing" / "tickets"
    landing.mkdir(parents=True)
    (landing / "tickets-2026-07.jsonl").write_bytes(data)
    key = batch_key("tickets-2026-07", sha256_bytes(data))

    added = gql(
        url,
        """mutation($repo: RepositorySelector!, $key: String!) {
             addDynamicPartition(repositorySelector: $repo, partitionsDefName: "ticket_batches", partitionKey: $key) {
               __typename ... on PythonError { message } } }""",
        {"repo": REPO, "key": key},
    )
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added

    launched = gql(
        url,
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
             __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
             ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }""",
        {
            "params": {
                "selector": {**REPO, "jobName": "ingest_tickets_batch"},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
            }
        },
    )
    assert launched["launchRun"]["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["launchRun"]["run"]["runId"]

    status = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        run = gql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})
        status = run["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"

    materialized = gql(
        url,
        """query { assetOrError(assetKey: {path: ["raw_tickets"]}) { ... on Asset {
             assetMaterializations(limit: 1) { partition runId metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }""",
    )
    latest = materialized["assetOrError"]["assetMaterializations"][0]
    assert (latest["partition"], latest["runId"]) == (key, run_id)
    accepted = {e["label"]: e.get("intValue") for e in latest["metadataEntries"]}["accepted"]
    assert accepted == 10
