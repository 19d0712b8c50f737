"""Fault drill of the metering gateway: kill -9 of the gateway process while it writes a request's
record. The gateway runs as `aiplat gateway serve` in a child process in front of the small
OpenAI-shaped upstream of tests/test_gateway.py (what is drilled is the gateway's log, not vLLM).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from aiplat.net import free_port, wait_for_port
from aiplat.operations.requests import RequestLog
from aiplat.serving.adapter_routes import AdapterRoutes
from tests.fault_drills import child_env, report, start_child
from tests.test_gateway import _stand_in_vllm, serve

pytestmark = pytest.mark.slow


def _chat(url: str, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, headers={"X-AIPLAT-Team": "team:support",
                      "X-AIPLAT-Feature": "drill"}, json={"model": "ticket-triage", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]}, **kw)


def _gateway(tmp_path: Path, state_dir: Path, upstream: str, log: Path, pause: str | None = None):
    port = free_port()
    routes = AdapterRoutes(tmp_path / "adapter-routes.json")
    routes.set("ticket-triage", upstream, {"ticket-triage@1": 100.0})
    child = start_child(tmp_path / "drill", child_env(state_dir, state_dir / "dagster_home"), pause=pause,
                        cli=["gateway", "serve", "--port", str(port), "--adapter-routes", str(routes.path),
                             "--request-log", str(log), "--no-require-attribution"])
    assert wait_for_port("127.0.0.1", port, timeout=120), child.tail()
    return child, f"http://127.0.0.1:{port}"


def test_kill9_during_request_log_write_loses_no_answered_request(state_dir: Path, tmp_path: Path):
    log = state_dir / "operations" / "requests.jsonl"
    with serve(_stand_in_vllm([])) as upstream:
        child, url = _gateway(tmp_path, state_dir, upstream, log)
        answered = [_chat(url) for _ in range(3)]
        assert [r.status_code for r in answered] == [200, 200, 200]
        child.kill9()

        # The next gateway stops inside the record of a request; it dies there.
        child, url = _gateway(tmp_path, state_dir, upstream, log, pause="aiplat.operations.requests:RequestLog.append_many")
        outcome: dict = {}

        def in_flight():
            try:
                outcome["status"] = _chat(url).status_code
            except httpx.HTTPError as e:
                outcome["error"] = type(e).__name__
        thread = threading.Thread(target=in_flight)
        thread.start()
        child.wait_marker()
        assert child.kill9() == -9
        killed_at = time.monotonic()
        thread.join(timeout=60)
        # The client of the killed request got no answer: nothing was served that the log does not hold.
        assert "status" not in outcome and outcome.get("error")
        records, rejected = RequestLog(log).read()
        assert len(records) == 3 and rejected == []  # whole lines only, every answered request there

        child, url = _gateway(tmp_path, state_dir, upstream, log)
        assert _chat(url).status_code == 200
        recovery = time.monotonic() - killed_at
        child.kill9()
    records, rejected = RequestLog(log).read()
    assert len(records) == 4 and rejected == []
    assert {(r.team, r.feature) for r in records} == {("team:support", "drill")}
    report("kill -9 during gateway request-log write", f"client of the in-flight request gets an error "
           f"({outcome['error']}), not an unrecorded answer; log keeps whole lines, all 3 answered requests; "
           "restarted gateway appends", recovery)
