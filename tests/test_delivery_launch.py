"""Delivery, the CI launch-and-wait step against the REAL Dagster webserver: `aiplat pipeline
launch` starts a job over GraphQL, waits for the run, and reads its gate (an asset check): exit 0
only when the run succeeded and the gate passed; a failed gate, an unknown job, a gate that never
reported, or bad credentials end in a non-zero exit with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aiplat.config import project_root
from aiplat.delivery.dagster_api import DagsterApi, Gate, gate_result, launch
from aiplat.intake.batches import batch_key
from aiplat.net import free_port, wait_for_port
from aiplat.provenance import sha256_bytes
from tests.records import jsonl, ticket

pytestmark = pytest.mark.slow

REPO = {"repositoryLocationName": "ai_platform", "repositoryName": "__repository__"}
GATE = "raw_tickets:quarantine_rate"


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("delivery-webserver")
    state, home = root / "state", root / "dagster_home"
    state.mkdir()
    home.mkdir()
    # No daemon beside this webserver: runs launch at once instead of queueing.
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LANG": "C.UTF-8",
           "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "AIPLAT_STATE_DIR": str(state),
           "DAGSTER_HOME": str(home), "AIPLAT_ENV": "local"}
    log = open(root / "webserver.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=project_root(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_for_port("127.0.0.1", port, timeout=180):
            pytest.fail(f"dagster-webserver did not listen within 180 s:\n{(root / 'webserver.log').read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}", state
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _land(url: str, state: Path, name: str, records: list[bytes | dict]) -> str:
    """A landed tickets file, registered as a batch partition over the API (what the sensor does)."""
    lines = [r if isinstance(r, bytes) else jsonl([r]).rstrip(b"\n") for r in records]
    data = b"\n".join(lines) + b"\n"
    landing = state / "landing" / "tickets"
    landing.mkdir(parents=True, exist_ok=True)
    (landing / f"{name}.jsonl").write_bytes(data)
    key = batch_key(name, sha256_bytes(data))
    api = DagsterApi(url)
    import time

    deadline = time.monotonic() + 180
    while True:  # the code location loads in the background after the server listens
        added = api.query(
            """mutation($repo: RepositorySelector!, $key: String!) {
                 addDynamicPartition(repositorySelector: $repo, partitionsDefName: "ticket_batches", partitionKey: $key) {
                   __typename ... on PythonError { message } } }""", {"repo": REPO, "key": key})["addDynamicPartition"]
        if added["__typename"] == "AddDynamicPartitionSuccess" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert added["__typename"] == "AddDynamicPartitionSuccess", added
    api.close()
    return key


def _cli(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "AIPLAT_DAGSTER_URL": url}
    if token:
        env["AIPLAT_DAGSTER_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "aiplat.cli", "pipeline", "launch", *args, "--poll", "1",
                           "--timeout", "300"], capture_output=True, text=True, env=env, timeout=400, cwd=project_root())


def test_launch_waits_for_the_run_and_passes_its_gate(webserver) -> None:
    url, state = webserver
    key = _land(url, state, "tickets-ci-good", [ticket(i) for i in range(10)])
    report = state.parent / "outcome.json"
    result = _cli(url, "--job", "ingest_tickets_batch", "--tag", f"dagster/partition={key}", "--gate", GATE,
                  "--output-json", str(report), token="ci-token-not-printed")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SUCCESS" in out and f"gate {GATE}: passed (SUCCEEDED" in out and "quarantine_ratio=0.0" in out
    assert "ci-token-not-printed" not in out + report.read_text()
    import json

    outcome = json.loads(report.read_text())
    assert outcome["ok"] is True and outcome["status"] == "SUCCESS"
    assert outcome["gates"] == [{"gate": GATE, "status": "SUCCEEDED", "passed": True,
                                 "metadata": {"quarantine_ratio": 0.0, "quarantined": 0, "lines_read": 10}}]


def test_a_failed_gate_fails_the_step_even_though_the_run_succeeded(webserver) -> None:
    url, state = webserver
    bad = [b'{"not": "a ticket"}'] * 8 + [b"}{ broken json"] * 2
    key = _land(url, state, "tickets-ci-bad", [ticket(0), ticket(1)] + bad)
    result = _cli(url, "--job", "ingest_tickets_batch", "--tag", f"dagster/partition={key}", "--gate", GATE)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert ": SUCCESS" in out  # the run itself succeeded (quarantine is not a crash) ...
    assert f"gate {GATE}: FAILED" in out and "quarantined=10" in out  # ... its gate did not
    assert "gates not passed: raw_tickets:quarantine_rate" in out


def test_a_gate_that_never_reported_is_not_a_pass(webserver) -> None:
    url, state = webserver
    key = _land(url, state, "tickets-ci-nogate", [ticket(i) for i in range(3)])
    api = DagsterApi(url)
    try:
        run_id = launch(api, "ingest_tickets_batch", tags={"dagster/partition": key})
        from aiplat.delivery.dagster_api import wait
        import time

        assert wait(api, run_id, time.monotonic() + 300, poll_s=1) == "SUCCESS"
        missing = gate_result(api, run_id, Gate.parse("raw_kb_articles:quarantine_rate"))
    finally:
        api.close()
    assert missing.status == "MISSING" and missing.passed is False


def test_an_unknown_job_is_refused_with_its_name(webserver) -> None:
    url, _state = webserver
    result = _cli(url, "--job", "no_such_job", "--gate", GATE)
    assert result.returncode == 1
    assert "launching no_such_job was refused: PipelineNotFoundError" in result.stderr, result.stderr


def test_an_unreachable_webserver_is_an_error_not_a_pass() -> None:
    result = _cli(f"http://127.0.0.1:{free_port()}", "--job", "ingest_tickets_batch", "--gate", GATE)
    assert result.returncode == 1 and "unreachable" in result.stderr


def test_gate_syntax_is_checked() -> None:
    with pytest.raises(ValueError, match="ASSET_PATH:CHECK_NAME"):
        Gate.parse("ticket_triage/eval_report")
    assert Gate.parse("ticket_triage/eval_report:eval_gate") == Gate(("ticket_triage", "eval_report"), "eval_gate")
