"""Guardrail policy and body handling, called directly (the gateway + real vLLM path is in
tests/test_pii_guardrails.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiplat.pii.guardrails import GuardrailPolicies, GuardrailPolicy, Guardrails, guardrails_for_gateway, load_policies
from aiplat.config import MissingSecret
from aiplat.pii.redact import Pseudonymizer
from resources.presidio import LOCAL_DEV_HMAC_KEY, PresidioResource
from aiplat.synth import PERSON

KEY = "policy-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def guard():
    g = Guardrails(GuardrailPolicies(default=GuardrailPolicy(prompt="mask", response="mask"),
                                     teams={"team:labs": GuardrailPolicy(prompt="off", response="block")},
                                     endpoints={"open-bot": GuardrailPolicy(prompt="off", response="off")}),
                   Pseudonymizer(KEY))
    yield g
    g.close()


def test_endpoint_policy_wins_over_team_and_team_over_default(guard) -> None:
    p = guard.policies
    assert p.policy_for("team:labs", "open-bot") == GuardrailPolicy(prompt="off", response="off")
    assert p.policy_for("team:labs", "any") == GuardrailPolicy(prompt="off", response="block")
    assert p.policy_for("team:other", "any") == GuardrailPolicy(prompt="mask", response="mask")


def test_policy_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("default: {prompt: scramble}\n")
    with pytest.raises(ValueError, match="policy.yaml"):
        load_policies(bad)
    good = tmp_path / "policy.json"
    good.write_text(json.dumps({"endpoints": {"x": {"response": "block"}}}))
    assert load_policies(good).policy_for("t", "x").response == "block"


@pytest.mark.parametrize("key", ["", LOCAL_DEV_HMAC_KEY])
def test_prod_guardrails_need_the_pipelines_key(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway takes the key from the pipeline's Presidio resource, which in prod refuses an empty
    key and the public development key (whose pseudonyms anyone can recompute)."""
    policy = tmp_path / "p.json"
    policy.write_text("{}")
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    with pytest.raises(MissingSecret, match="AIPLAT_PII_HMAC_KEY"):
        guardrails_for_gateway(policy, PresidioResource(hmac_key=key))


def test_gateway_serve_in_prod_without_the_pii_key_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from aiplat.cli import cli

    policy, keys = tmp_path / "p.json", tmp_path / "keys.json"
    policy.write_text("{}")
    keys.write_text(json.dumps({"0" * 64: "team:support"}))
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("AIPLAT_PII_HMAC_KEY", raising=False)
    result = CliRunner().invoke(cli, ["gateway", "serve", "--port", "9", "--api-key-teams", str(keys),
                                      "--adapter-routes", str(tmp_path / "adapter-routes.json"),
                                      "--request-log", str(tmp_path / "req.jsonl"), "--pii-policy", str(policy)])
    assert result.exit_code != 0 and "AIPLAT_PII_HMAC_KEY" in result.output, result.output


def test_chat_text_parts_are_masked_and_the_callers_body_is_left_alone(guard) -> None:
    body = {"model": "m", "messages": [
        {"role": "system", "content": "You are a support assistant."},
        {"role": "user", "content": [{"type": "text", "text": "I am Ingrid Solberg, card 3782 822463 10005."},
                                     {"type": "image_url", "image_url": {"url": "https://example.invalid/x.png"}}]}]}
    original = json.dumps(body)
    verdict = guard.on_prompt(body, "team:support", "bot")
    assert json.dumps(body) == original
    parts = verdict.body["messages"][1]["content"]
    assert Pseudonymizer(KEY).entity_token(PERSON, "Ingrid Solberg") in parts[0]["text"]
    assert "822463" not in parts[0]["text"] and parts[1] == body["messages"][1]["content"][1]
    assert verdict.counts == {"PERSON": 1, "CREDIT_CARD": 1}
    assert verdict.note == "prompt:mask CREDIT_CARD=1,PERSON=1"


def test_completion_prompt_lists_are_masked(guard) -> None:
    verdict = guard.on_prompt({"model": "m", "prompt": ["call +41 44 512 37 90", "nothing here"]}, "t", "bot")
    assert verdict.body["prompt"][1] == "nothing here" and "512 37 90" not in verdict.body["prompt"][0]


def test_a_clean_answer_passes_a_blocking_policy_unchanged(guard) -> None:
    content = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Restart the router."}}]})
    verdict = guard.on_response(content.encode(), "team:labs", "any")
    assert verdict.error is None and verdict.body == content.encode() and verdict.note == ""


def test_streaming_is_refused_only_where_answers_are_masked_or_blocked(guard) -> None:
    assert guard.on_prompt({"model": "m", "prompt": "hi", "stream": True}, "t", "bot").error[2] == "pii_guardrail_no_stream"
    assert guard.on_prompt({"model": "m", "prompt": "hi", "stream": True}, "t", "open-bot").error is None


def test_a_scanner_that_cannot_load_fails_closed() -> None:
    import asyncio

    from aiplat.pii.guardrails import check_prompt, check_response, inference_config

    broken = Guardrails(GuardrailPolicies(), Pseudonymizer(KEY),
                        config=inference_config().with_nlp(model_name="en_core_web_definitely_not_installed"))
    verdict = asyncio.run(check_prompt(broken, {"model": "m", "prompt": "I am Ingrid Solberg"}, "t", "bot"))
    assert verdict.error[0] == 503 and "Ingrid" not in verdict.error[1]
    answer = json.dumps({"choices": [{"text": "Ingrid Solberg"}]}).encode()
    assert asyncio.run(check_response(broken, answer, "t", "bot")).error[0] == 503
