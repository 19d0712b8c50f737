"""PII guardrails through the real gateway in front of a real vLLM server (SmolLM2-135M on the CPU).

What the model received is read back with the completions API's `echo: true` (vLLM returns the
prompt it was given in front of the answer), so the prompt test sees the masked prompt as the model
saw it, and the response tests get an answer that really contains personal data.
Needs the vLLM venv (scripts/setup_vllm_env.sh): skipped on a laptop without it, a failure in CI.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiplat.operations.requests import RequestLog
from aiplat.pii.guardrails import GuardrailPolicies, GuardrailPolicy, Guardrails
from aiplat.pii.redact import Pseudonymizer
from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
from aiplat.serving.gateway import GatewaySettings, build_app
from aiplat.synth import EMAIL_ADDRESS, PERSON
from tests.conftest import built_vllm_env
from tests.test_gateway import _deploy, serve

pytestmark = pytest.mark.slow

KEY = "guardrail-test-key-0123456789abcdef"
PII_PROMPT = "Customer Ann Lee (ann.lee@example.com, +44 20 7946 0958) asks about her refund."
POLICIES = GuardrailPolicies(
    default=GuardrailPolicy(prompt="mask", response="log"),
    endpoints={"blocked": GuardrailPolicy(prompt="off", response="block"),
               "masked": GuardrailPolicy(prompt="off", response="mask")},
    teams={"team:research": GuardrailPolicy(prompt="off", response="off")},
)


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    env = built_vllm_env()
    from aiplat.models.base import prepare_base_model
    from aiplat.serving.server import ServerSettings, start_server, stop_server

    model = prepare_base_model().path  # the developer's prepared folder (shared state), before any private dir
    logs = tmp_path_factory.mktemp("vllm-state")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIPLAT_STATE_DIR", str(logs))
    record = start_server("guardrails", model, "1", "guard-served",
                          ServerSettings(enforce_eager=True, python=str(env.python), start_timeout_s=900))
    try:
        yield record
    finally:
        stop_server(record)
        mp.undo()


@pytest.fixture
def world(tmp_path, vllm_url):
    # Three endpoints on the one server, each routed to the model it serves (no adapter needed here).
    routes = AdapterRoutes(tmp_path / "adapter-routes.json")
    for name in ("open", "blocked", "masked"):
        _deploy(routes, vllm_url.url, adapter="guard-served", name=name)
    guard = Guardrails(POLICIES, Pseudonymizer(KEY))
    guard.warm_up()
    settings = GatewaySettings(resolver=AdapterRouteResolver(routes), request_log=RequestLog(tmp_path / "req.jsonl"),
                               guardrails=guard)
    with serve(build_app(settings)) as url:
        yield {"url": url, "log": RequestLog(tmp_path / "req.jsonl")}
    guard.close()


def _complete(url: str, endpoint: str, team: str = "team:support", **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", headers={"X-AIPLAT-Team": team}, timeout=120, json={
        "model": endpoint, "prompt": PII_PROMPT, "max_tokens": 4, "temperature": 0, "echo": True, **extra})


def _guard_metric(url: str) -> dict[tuple, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "aiplat_gateway_pii_guardrail_total":
                out[(s.labels["endpoint"], s.labels["direction"], s.labels["action"], s.labels["entity"])] = s.value
    return out


def test_prompt_pii_is_masked_before_the_model_with_the_pipelines_pseudonyms(world) -> None:
    answer = _complete(world["url"], "open")
    assert answer.status_code == 200, answer.text
    seen_by_model = answer.json()["choices"][0]["text"]
    for value in ("Ann Lee", "ann.lee@example.com", "7946 0958"):
        assert value not in seen_by_model
    pseudo = Pseudonymizer(KEY)
    assert pseudo.entity_token(PERSON, "Ann Lee") in seen_by_model  # the same token the redacted datasets carry
    assert pseudo.entity_token(EMAIL_ADDRESS, "ann.lee@example.com") in seen_by_model
    records, _ = world["log"].read()
    assert "prompt:mask" in records[-1].pii and "PERSON=1" in records[-1].pii
    metric = _guard_metric(world["url"])
    assert metric[("open", "prompt", "mask", "PERSON")] == 1
    assert metric[("open", "prompt", "mask", "PHONE_NUMBER")] == 1


def test_a_team_policy_off_passes_the_prompt_and_the_answer(world) -> None:
    answer = _complete(world["url"], "open", team="team:research")
    assert answer.status_code == 200
    assert "ann.lee@example.com" in answer.json()["choices"][0]["text"]
    records, _ = world["log"].read()
    assert records[-1].pii == ""


def test_an_answer_with_pii_is_blocked_and_counted(world) -> None:
    answer = _complete(world["url"], "blocked")
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "pii_in_response"
    assert "ann.lee" not in answer.text and "Ann Lee" not in answer.text
    records, _ = world["log"].read()
    assert records[-1].status == 422 and "response:block" in records[-1].pii
    assert _guard_metric(world["url"])[("blocked", "response", "block", "EMAIL_ADDRESS")] == 1


def test_an_answer_with_pii_is_masked(world) -> None:
    answer = _complete(world["url"], "masked")
    assert answer.status_code == 200
    text = answer.json()["choices"][0]["text"]
    assert "ann.lee@example.com" not in text and "Ann Lee" not in text
    assert Pseudonymizer(KEY).entity_token(PERSON, "Ann Lee") in text
    records, _ = world["log"].read()
    assert "response:mask" in records[-1].pii


def test_log_only_passes_the_answer_and_counts_it(world) -> None:
    answer = _complete(world["url"], "open", echo=False,
                       prompt="Repeat exactly: my phone is +41 44 668 18 00 and my mail is jo@example.org.")
    assert answer.status_code == 200
    records, _ = world["log"].read()
    assert records[-1].status == 200 and "prompt:mask" in records[-1].pii


def test_streaming_is_refused_where_answers_are_checked(world) -> None:
    answer = _complete(world["url"], "blocked", stream=True)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "pii_guardrail_no_stream"


def test_a_stream_under_log_goes_through_masked_and_is_recorded_with_its_usage(world) -> None:
    """vLLM's own stream (running usage asked for by the gateway) through the guardrails: the prompt
    is masked, the answer streamed as generated and scanned once it has ended."""
    with httpx.stream("POST", f"{world['url']}/v1/completions", headers={"X-AIPLAT-Team": "team:support"},
                      timeout=120, json={"model": "open", "prompt": PII_PROMPT, "max_tokens": 8, "temperature": 0,
                                         "stream": True}) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    records, _ = world["log"].read()
    assert records[-1].status == 200 and 0 < records[-1].completion_tokens <= 8
    assert records[-1].prompt_tokens > 0 and "prompt:mask" in records[-1].pii
