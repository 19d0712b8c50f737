"""Where the PII guardrails sit in the hardened gateway's request flow (issue 15 on top of issue 18):
authentication -> body limits -> prompt guardrail -> budget reservation -> upstream -> answer
guardrail -> settle and record.

The gateway runs under uvicorn on a free port in front of a real HTTP upstream on loopback (a small
OpenAI-shaped app standing in for vLLM whose answers carry personal data, which the small real model
does not say on demand); the guardrails use the platform's real scanner. The gateway + real vLLM
path is tests/test_pii_guardrails.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from aiplat.operations.cost import CostRates
from aiplat.operations.requests import RequestLog
from aiplat.pii.guardrails import GuardrailPolicies, GuardrailPolicy, Guardrails, inference_config
from aiplat.pii.redact import Pseudonymizer
from aiplat.serving.budgets import InProcessLedger, token_cost
from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
from aiplat.serving.gateway import GatewaySettings, build_app
from aiplat.synth import PERSON
from tests.test_gateway import serve

KEY = "flow-test-key-0123456789abcdef"
API_KEY = "sk-support-flow-tests-5c1d"
PII_PROMPT = "I am Ingrid Solberg, mail ingrid.solberg@example.org, my parcel never came."
# The answer's phone number arrives split over two stream chunks: only the whole text shows it.
ANSWER_PARTS = ["We will call you at +44 20 79", "46 0958 tomorrow."]
USAGE = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
RATES = CostRates(prompt_per_1k_tokens=1.0, completion_per_1k_tokens=1.0)


def _upstream(seen: list[dict]) -> Starlette:
    async def answer(request: Request):
        body = await request.json()
        seen.append(body)
        if not body.get("stream"):
            return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant",
                                                                      "content": "".join(ANSWER_PARTS)}}],
                                 "usage": USAGE})

        async def events():
            for part in ANSWER_PARTS:
                yield f"data: {json.dumps({'id': 'x', 'choices': [{'index': 0, 'delta': {'content': part}}]})}\n\n"
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': USAGE})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream() -> Iterator[dict]:
    seen: list[dict] = []
    with serve(_upstream(seen)) as url:
        yield {"url": url, "seen": seen}


@pytest.fixture(scope="module")
def guard() -> Iterator[Guardrails]:
    g = Guardrails(GuardrailPolicies(default=GuardrailPolicy(prompt="mask", response="log"),
                                     endpoints={"blocked": GuardrailPolicy(prompt="mask", response="block")}),
                   Pseudonymizer(KEY))
    g.warm_up()
    yield g
    g.close()


@pytest.fixture
def world(tmp_path: Path, upstream: dict) -> dict:
    routes = AdapterRoutes(tmp_path / "adapter-routes.json")
    for name in ("open", "blocked"):
        routes.set(name, upstream["url"], {f"{name}@1": 100.0})
    upstream["seen"].clear()
    return {"routes": routes, "log": RequestLog(tmp_path / "requests.jsonl"), "seen": upstream["seen"]}


@contextmanager
def gateway(world: dict, guard: Guardrails, **options) -> Iterator[str]:
    with serve(build_app(GatewaySettings(resolver=AdapterRouteResolver(world["routes"]), request_log=world["log"],
                                         guardrails=guard, **options))) as url:
        yield url


def _chat(url: str, endpoint: str = "open", headers: dict | None = None, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60,
                      headers=headers if headers is not None else {"X-AIPLAT-Team": "team:support"},
                      json={"model": endpoint, "messages": [{"role": "user", "content": PII_PROMPT}],
                            "max_tokens": 16, **extra})


def _guard_counts(url: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "aiplat_gateway_pii_guardrail_total":
                out[(s.labels["endpoint"], s.labels["direction"], s.labels["action"], s.labels["entity"])] = s.value
    return out


def test_an_unauthenticated_prompt_is_refused_before_it_is_scanned(world: dict, guard: Guardrails) -> None:
    keys = {hashlib.sha256(API_KEY.encode()).hexdigest(): "team:support"}
    with gateway(world, guard, api_key_teams=keys, trust_team_header=False) as url:
        refused = _chat(url, headers={"Authorization": "Bearer sk-guessed", "X-AIPLAT-Team": "team:support"})
        counts_after_refusal = _guard_counts(url)
        served = _chat(url, headers={"Authorization": f"Bearer {API_KEY}"})
        counts = _guard_counts(url)
    assert refused.status_code == 401 and counts_after_refusal == {}
    assert served.status_code == 200 and counts[("open", "prompt", "mask", "PERSON")] == 1
    assert len(world["seen"]) == 1
    records, _ = world["log"].read()
    assert [(r.status, r.pii.split(" ")[0]) for r in records] == [(401, ""), (200, "prompt:mask")]


def test_the_model_gets_the_masked_prompt_and_the_budget_is_settled_on_it(world: dict, guard: Guardrails) -> None:
    ledger = InProcessLedger(RATES, {"team:support": 10.0})
    with gateway(world, guard, ledger=ledger) as url:
        answer = _chat(url)
    assert answer.status_code == 200
    sent = world["seen"][0]["messages"][0]["content"]
    assert "Ingrid Solberg" not in sent and "ingrid.solberg@example.org" not in sent
    assert Pseudonymizer(KEY).entity_token(PERSON, "Ingrid Solberg") in sent
    assert ledger.committed("team:support") == (pytest.approx(token_cost(RATES, 20, 9)), 0.0)


def test_a_blocked_answer_is_withheld_billed_and_its_reservation_settled(world: dict, guard: Guardrails) -> None:
    ledger = InProcessLedger(RATES, {"team:support": 10.0})
    with gateway(world, guard, ledger=ledger) as url:
        answer = _chat(url, "blocked")
        counts = _guard_counts(url)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "pii_in_response"
    assert "7946" not in answer.text
    assert ledger.committed("team:support") == (pytest.approx(token_cost(RATES, 20, 9)), 0.0)  # the model ran
    records, _ = world["log"].read()
    assert (records[-1].status, records[-1].prompt_tokens, records[-1].completion_tokens) == (422, 20, 9)
    assert "response:block PHONE_NUMBER=1" in records[-1].pii
    assert counts[("blocked", "response", "block", "PHONE_NUMBER")] == 1


def test_a_stream_under_log_is_passed_whole_and_counted_when_it_ends(world: dict, guard: Guardrails) -> None:
    with gateway(world, guard) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60, headers={"X-AIPLAT-Team": "team:support"},
                          json={"model": "open", "messages": [{"role": "user", "content": PII_PROMPT}],
                                "max_tokens": 16, "stream": True}) as response:
            assert response.status_code == 200
            body = response.read().decode()
        counts = _guard_counts(url)
    assert "+44 20 79" in body and "46 0958" in body  # log only: what was sent is the model's text
    assert counts[("open", "response", "log", "PHONE_NUMBER")] == 1
    records, _ = world["log"].read()
    assert records[-1].status == 200 and "prompt:mask" in records[-1].pii
    assert "response:log PHONE_NUMBER=1" in records[-1].pii


def test_a_stream_is_refused_before_any_budget_where_answers_are_blocked(world: dict, guard: Guardrails) -> None:
    ledger = InProcessLedger(RATES, {"team:support": 10.0})
    with gateway(world, guard, ledger=ledger) as url:
        answer = _chat(url, "blocked", stream=True)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "pii_guardrail_no_stream"
    assert world["seen"] == [] and ledger.committed("team:support") == (0.0, 0.0)


def _broken(policies: GuardrailPolicies) -> Guardrails:
    """A real scanner that cannot load (its NER model is not installed): every scan fails."""
    return Guardrails(policies, Pseudonymizer(KEY),
                      config=inference_config().with_nlp(model_name="en_core_web_definitely_not_installed"))


def test_a_guardrail_that_cannot_scan_keeps_the_prompt_from_the_model(world: dict) -> None:
    broken = _broken(GuardrailPolicies())
    try:
        with gateway(world, broken) as url:
            answer = _chat(url)
    finally:
        broken.close()
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "pii_guardrail_unavailable"
    assert "Ingrid" not in answer.text and world["seen"] == []
    records, _ = world["log"].read()
    assert (records[-1].status, records[-1].pii) == (503, "prompt:unavailable")


def test_an_answer_that_cannot_be_checked_is_withheld_and_billed(world: dict) -> None:
    broken = _broken(GuardrailPolicies(default=GuardrailPolicy(prompt="off", response="mask")))
    ledger = InProcessLedger(RATES, {"team:support": 10.0})
    try:
        with gateway(world, broken, ledger=ledger) as url:
            answer = _chat(url)
    finally:
        broken.close()
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "pii_guardrail_unavailable"
    assert "7946" not in answer.text and len(world["seen"]) == 1
    assert ledger.committed("team:support") == (pytest.approx(token_cost(RATES, 20, 9)), 0.0)
    records, _ = world["log"].read()
    assert (records[-1].status, records[-1].pii) == (503, "response:unavailable")
