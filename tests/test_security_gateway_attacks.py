"""Attacks on the metering gateway, each one refused or detected (issue 18, item 5).

Everything runs for real: the gateway under uvicorn on a free port, in front of a real HTTP upstream
on loopback (a small OpenAI-shaped app standing in for vLLM, which answers in vLLM's shapes; a body
field `x_delay` makes it wait, so requests overlap for real). Concurrency is real threads with real
sockets. The assertions are invariants (counts, sums, bodies), never timings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from aiplat.net import free_port
from aiplat.operations.cost import CostRates
from aiplat.operations.requests import RequestLog
from aiplat.serving.budgets import InProcessLedger
from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
from aiplat.serving.gateway import GatewaySettings, build_app
from aiplat.serving.gateway_guards import RefusalLimiter
from tests.test_gateway import serve

ENDPOINT = "ticket-triage"
ML_KEY = "sk-ml-3b9f0a1c-attack-tests"


def _upstream(seen: list[dict]) -> Starlette:
    async def answer(request: Request):
        body = await request.json()
        seen.append(body)
        await asyncio.sleep(float(body.get("x_delay", 0)))
        if not body.get("stream"):
            return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}],
                                 "usage": {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}})

        async def events():  # a long answer with no running usage (what a non-vLLM server would send)
            for _ in range(body.get("max_tokens", 5)):
                yield f"data: {json.dumps({'id': 'x', 'choices': [{'index': 0, 'delta': {'content': 'x'}}]})}\n\n"
                await asyncio.sleep(0.02)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream() -> Iterator[dict]:
    seen: list[dict] = []
    with serve(_upstream(seen)) as url:
        yield {"url": url, "seen": seen}


def _deploy(routes: AdapterRoutes, url: str) -> None:
    routes.set(ENDPOINT, url, {f"{ENDPOINT}@3": 100.0})


@pytest.fixture
def world(tmp_path: Path, upstream: dict) -> dict:
    routes = AdapterRoutes(tmp_path / "adapter-routes.json")
    _deploy(routes, upstream["url"])
    upstream["seen"].clear()
    return {"routes": routes, "log": RequestLog(tmp_path / "logs" / "requests.jsonl"), "tmp": tmp_path,
            "seen": upstream["seen"]}


@contextmanager
def gateway(world: dict, **options) -> Iterator[str]:
    with serve(build_app(GatewaySettings(resolver=AdapterRouteResolver(world["routes"]), request_log=world["log"],
                                         **options))) as url:
        yield url


def _chat(url: str, headers: dict | None = None, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=headers or {}, timeout=60, json={
        "model": ENDPOINT, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 5, **extra})


def _records(world: dict) -> list:
    records, rejected = world["log"].read()
    assert rejected == []
    return records


def _metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def _keys() -> dict[str, str]:
    return {hashlib.sha256(ML_KEY.encode()).hexdigest(): "team:ml"}


# --- identity -------------------------------------------------------------------------------------


def test_a_garbage_api_key_is_401_and_never_falls_back_to_the_team_header(world: dict) -> None:
    # No --require-attribution: the key alone must decide.
    with gateway(world, api_key_teams=_keys()) as url:
        garbage = _chat(url, {"Authorization": "Bearer sk-guessed", "X-AIPLAT-Team": "team:ml"})
        known = _chat(url, {"Authorization": f"Bearer {ML_KEY}", "X-AIPLAT-Team": "team:search"})
    assert garbage.status_code == 401 and garbage.json()["error"]["code"] == "unknown_api_key"
    assert known.status_code == 200
    assert len(world["seen"]) == 1, "the refused request must never reach the endpoint"
    assert [(r.team, r.status) for r in _records(world)] == [("unattributed", 401), ("team:ml", 200)]


def test_in_prod_the_team_header_alone_grants_nothing(world: dict) -> None:
    with gateway(world, api_key_teams=_keys(), trust_team_header=False) as url:
        header_only = _chat(url, {"X-AIPLAT-Team": "team:ml"})
        with_key = _chat(url, {"Authorization": f"Bearer {ML_KEY}"})
    assert header_only.status_code == 401 and header_only.json()["error"]["code"] == "missing_api_key"
    assert with_key.status_code == 200
    assert [r.team for r in _records(world)] == ["unattributed", "team:ml"]


def test_team_ml_in_capitals_is_team_ml_and_cannot_escape_its_budget(world: dict) -> None:
    ledger = InProcessLedger(CostRates(1.0, 1.0), {"team:ml": 0.0})
    with gateway(world, ledger=ledger) as url:
        spellings = [_chat(url, {"X-AIPLAT-Team": t}) for t in ("team:ML", "ML", "Team:Ml")]
        other = _chat(url, {"X-AIPLAT-Team": "team:search"})
    assert [r.status_code for r in spellings] == [429, 429, 429]
    assert other.status_code == 200
    assert {r.team for r in _records(world)} == {"team:ml", "team:search"}


# --- malformed and oversized input ----------------------------------------------------------------


def test_a_deeply_nested_body_is_a_400_not_a_500(world: dict) -> None:
    depth = 100_000
    deep = '{"model": "%s", "messages": %s%s}' % (ENDPOINT, "[" * depth, "]" * depth)
    moderately = {"model": ENDPOINT, "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}
    node: dict = moderately["tools"][0]
    for _ in range(60):
        node["x"] = {}
        node = node["x"]
    with gateway(world) as url:
        very = httpx.post(f"{url}/v1/chat/completions", content=deep.encode(), timeout=60,
                          headers={"content-type": "application/json"})
        some = httpx.post(f"{url}/v1/chat/completions", json=moderately, timeout=60)
    assert very.status_code == 400 and "nested deeper" in very.json()["error"]["message"]
    assert some.status_code == 400 and "nested deeper" in some.json()["error"]["message"]
    assert world["seen"] == []


def test_a_body_past_the_limit_is_a_413_with_or_without_content_length(world: dict) -> None:
    big = json.dumps({"model": ENDPOINT, "messages": [{"role": "user", "content": "x" * 50_000}]}).encode()

    def chunked():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    with gateway(world, max_body_bytes=20_000) as url:
        declared = httpx.post(f"{url}/v1/chat/completions", content=big, timeout=60)
        streamed = httpx.post(f"{url}/v1/chat/completions", content=chunked(), timeout=60)
        fits = _chat(url)
    assert declared.status_code == 413 and streamed.status_code == 413
    assert "limit" in declared.json()["error"]["message"]
    assert fits.status_code == 200 and len(world["seen"]) == 1


def test_error_bodies_never_show_the_upstream_address(world: dict, tmp_path: Path) -> None:
    with gateway(world, timeout_s=0.5) as url:
        slow = _chat(url, x_delay=5)
    down_port = free_port()
    _deploy(world["routes"], f"http://127.0.0.1:{down_port}")
    with gateway(world) as url:
        down = _chat(url)
    assert slow.status_code == 504 and down.status_code == 502
    for answer in (slow, down):
        assert "127.0.0.1" not in answer.text and str(down_port) not in answer.text and "http://" not in answer.text
        assert ENDPOINT in answer.json()["error"]["message"]


# --- billing ----------------------------------------------------------------------------------------


def test_a_client_that_hangs_up_mid_stream_is_billed_for_the_tokens_it_got(world: dict) -> None:
    received = 0
    with gateway(world) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60, headers={"X-AIPLAT-Team": "ml"},
                          json={"model": ENDPOINT, "max_tokens": 400, "stream": True, "messages": []}) as response:
            for line in response.iter_lines():
                received += line.startswith("data:")
                if received == 10:
                    break
        deadline = time.monotonic() + 30  # a wait for the record, not a timing assertion
        while not _records(world) and time.monotonic() < deadline:
            time.sleep(0.05)
    [record] = _records(world)
    assert record.status == 499
    assert record.completion_tokens >= received, "tokens the client received were not billed"


def test_concurrent_requests_cannot_race_past_a_hard_budget(world: dict) -> None:
    # Each request costs exactly 5 completion tokens (0.005) and reserves the same; the budget fits 4.
    rates, budget = CostRates(prompt_per_1k_tokens=0.0, completion_per_1k_tokens=1.0), 0.0225
    with gateway(world, ledger=InProcessLedger(rates, {"team:ml": budget})) as url:
        with ThreadPoolExecutor(16) as pool:  # all in flight together: the upstream holds each 0.5 s
            answers = list(pool.map(lambda _: _chat(url, {"X-AIPLAT-Team": "ml"}, x_delay=0.5), range(16)))
        after = _chat(url, {"X-AIPLAT-Team": "ml"})
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 4 + [429] * 12
    assert after.status_code == 429 and "hard daily budget" in after.json()["error"]["message"]
    assert len(_records(world)) == 17, "every request recorded exactly once (concurrent lines share fsyncs)"
    billed = sum(r.completion_tokens for r in _records(world) if r.status == 200) / 1000 * rates.completion_per_1k_tokens
    assert billed <= budget
    assert _metric(metrics, "aiplat_gateway_refused_total", reason="hard_budget", team="team:ml") == 13

    # A restarted gateway starts from the day's request log: the spend is not forgotten.
    restarted = InProcessLedger.from_request_log(world["log"], rates, {"team:ml": budget})
    with gateway(world, ledger=restarted) as url:
        assert _chat(url, {"X-AIPLAT-Team": "ml"}).status_code == 429


def test_refusals_are_rate_limited_in_the_logs_but_all_counted(world: dict) -> None:
    with gateway(world, api_key_teams=_keys(), refusal_limiter=RefusalLimiter(per_window=5, window_s=3600)) as url:
        with httpx.Client(timeout=30) as client:
            for _ in range(60):
                answer = client.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer sk-spray"},
                                     json={"model": ENDPOINT, "messages": []})
                assert answer.status_code == 401
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert len(_records(world)) == 5
    assert _metric(metrics, "aiplat_gateway_refused_total", reason="unknown_api_key") == 60
    assert _metric(metrics, "aiplat_gateway_refusal_log_suppressed_total", reason="unknown_api_key") == 55


def test_a_request_log_that_cannot_be_written_is_never_a_silent_unbilled_request(world: dict) -> None:
    logs = world["log"].path.parent
    with gateway(world) as url:
        assert _chat(url, {"X-AIPLAT-Team": "ml"}).status_code == 200
        aside = logs.with_name("logs-unmounted")
        logs.rename(aside)
        logs.write_text("not a folder")  # a real fault: the log's folder is gone (e.g. volume unmounted)
        served = _chat(url, {"X-AIPLAT-Team": "ml"})  # answered; its record waits in memory, loudly
        health = httpx.get(f"{url}/health", timeout=10)
        refused = _chat(url, {"X-AIPLAT-Team": "ml"})
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        reached = len(world["seen"])
        logs.unlink()
        aside.rename(logs)
        recovered = _chat(url, {"X-AIPLAT-Team": "ml"})
    assert served.status_code == 200
    assert health.status_code == 503 and health.json()["unbilled_backlog"] == 1
    assert refused.status_code == 503 and reached == 2, "nothing is served while records cannot be written"
    assert _metric(metrics, "aiplat_gateway_request_log_write_failures_total") >= 1
    assert _metric(metrics, "aiplat_gateway_unbilled_backlog") == 1
    assert recovered.status_code == 200
    assert [r.status for r in _records(world)] == [200, 200, 200], "the held record was written once the log came back"


# --- the command as prod runs it ------------------------------------------------------------------


def test_the_prod_command_ignores_the_team_header_and_enforces_hard_budgets(world: dict, upstream: dict,
                                                                         tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    keys, budgets = tmp_path / "keys.json", tmp_path / "budgets.yaml"
    keys.write_text(json.dumps(_keys()))
    budgets.write_text("ML: 0.0\nteam:search: 100\n")  # `ML` is team:ml
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "AIPLAT_ENV": "prod",
           "AIPLAT_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    base = [sys.executable, "-m", "aiplat.cli", "gateway", "serve", "--port", str(port),
            "--adapter-routes", str(world["routes"].path), "--request-log", str(world["log"].path)]
    missing = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "AIPLAT_GATEWAY_API_KEY_TEAMS" in missing.stderr

    process = subprocess.Popen([*base, "--api-key-teams", str(keys), "--hard-budgets", str(budgets)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        header_only = _chat(url, {"X-AIPLAT-Team": "team:search"})
        over_budget = _chat(url, {"Authorization": f"Bearer {ML_KEY}"})
    finally:
        process.terminate()
        process.wait(timeout=30)
    # 429, not 404: the endpoint was found in the --adapter-routes file before the budget refused it.
    assert header_only.status_code == 401 and over_budget.status_code == 429
