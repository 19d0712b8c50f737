"""PII guardrails at inference time: what the gateway does to prompts and answers, per team or endpoint.

- Prompts: `mask` replaces PII in chat messages and completion prompts before the model sees them,
  with the pipeline's redaction (same scanner, same keyed HMAC pseudonyms, so "Ann Lee" becomes the
  same `<PERSON_...>` token a fine-tuning set made from redacted tickets carries); `off` passes them.
- Answers: `mask` redacts PII in the generated text, `block` replaces the answer by an error, `log`
  only counts what it found; `off` does nothing. A streamed answer cannot be taken back once sent,
  so an endpoint whose answers are masked or blocked refuses `stream: true` with a clear error; a
  stream under `log` is scanned once it has ended (its text put together per choice) and counted.

Policy: the endpoint's entry wins over the team's, the team's over the default. Every action is
counted per endpoint, team, direction, action and entity type in the gateway's /metrics, and the
request log line of the request carries a summary ("prompt:mask PERSON=1; response:log
PHONE_NUMBER=2"). Never a value: only entity types and counts.

The policy file (YAML or JSON): {"default": {"prompt": "mask", "response": "log"},
"teams": {"team:support": {...}}, "endpoints": {"support-bot": {...}}}.
"""

from __future__ import annotations

import json
from collections import Counter as Tally
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aiplat.pii.config import PiiConfig
from aiplat.pii.engine import Finding, PiiScanError, Scanner
from aiplat.pii.redact import Pseudonymizer, redact_text

PromptAction = Literal["mask", "off"]
ResponseAction = Literal["mask", "block", "log", "off"]


class GuardrailPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: PromptAction = "mask"
    response: ResponseAction = "log"


class GuardrailPolicies(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    default: GuardrailPolicy = GuardrailPolicy()
    teams: dict[str, GuardrailPolicy] = Field(default_factory=dict)
    endpoints: dict[str, GuardrailPolicy] = Field(default_factory=dict)

    def policy_for(self, team: str, endpoint: str) -> GuardrailPolicy:
        if endpoint in self.endpoints:
            return self.endpoints[endpoint]
        return self.teams.get(team, self.default)


def load_policies(path: Path) -> GuardrailPolicies:
    """Read a policy file; an unreadable or invalid one is an error naming the file (fail closed)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix in (".yaml", ".yml") \
            else json.loads(path.read_text(encoding="utf-8"))
        return GuardrailPolicies.model_validate(raw or {})
    except (OSError, ValueError) as e:
        raise ValueError(f"guardrail policy file {path}: {type(e).__name__}: {e}") from None


def inference_config() -> PiiConfig:
    """Prompts and answers are free text of any kind: every entity, no dataset allow list."""
    return PiiConfig(dataset="inference", id_field="", text_fields=("text",))


# The summary of this request's guardrail actions, for its request-log line. A context variable so
# that the gateway's `record` reads it without every call site passing it along.
_NOTE: ContextVar[str] = ContextVar("aiplat_pii_guardrail_note", default="")


def request_note() -> str:
    return _NOTE.get()


def _summary(direction: str, action: str, counts: Mapping[str, int]) -> str:
    found = ",".join(f"{e}={n}" for e, n in sorted(counts.items()))
    return f"{direction}:{action} {found}".strip()


@dataclass
class Verdict:
    """What the gateway does next: send `body` on, or answer `error` (status, message, code)."""

    body: dict | bytes
    error: tuple[int, str, str] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""


async def check_prompt(guardrails: Guardrails, body: dict, team: str, endpoint: str) -> Verdict:
    """The gateway's hook for a request body: scans in a worker thread, notes the action for the log."""
    from starlette.concurrency import run_in_threadpool

    try:
        verdict = await run_in_threadpool(guardrails.on_prompt, body, team, endpoint)
    except PiiScanError as e:  # fail closed: an unscanned prompt is not forwarded
        _NOTE.set("prompt:unavailable")
        return Verdict(body, (503, f"the PII guardrail could not scan the prompt ({e}); nothing was sent to the model",
                              "pii_guardrail_unavailable"))
    _NOTE.set(verdict.note)
    return verdict


async def check_response(guardrails: Guardrails, content: bytes, team: str, endpoint: str) -> Verdict:
    """The gateway's hook for a non-streamed answer."""
    from starlette.concurrency import run_in_threadpool

    try:
        verdict = await run_in_threadpool(guardrails.on_response, content, team, endpoint)
    except PiiScanError as e:  # fail closed: an unchecked answer is withheld
        verdict = Verdict(content, (503, f"the PII guardrail could not check the answer ({e}); it was withheld",
                                    "pii_guardrail_unavailable"), note="response:unavailable")
    if verdict.note:
        _NOTE.set(f"{_NOTE.get()}; {verdict.note}" if _NOTE.get() else verdict.note)
    return verdict


async def check_streamed(guardrails: Guardrails, texts: list[str], team: str, endpoint: str) -> Verdict:
    """The gateway's hook for a streamed answer, once sent: counts (log) what it carried."""
    from starlette.concurrency import run_in_threadpool

    try:
        verdict = await run_in_threadpool(guardrails.on_streamed, texts, team, endpoint)
    except PiiScanError:  # already sent: nothing to withhold, but the log line says it went unchecked
        verdict = Verdict(b"", note="response:unavailable")
    if verdict.note:
        _NOTE.set(f"{_NOTE.get()}; {verdict.note}" if _NOTE.get() else verdict.note)
    return verdict


class Guardrails:
    """Scans prompts and answers with one warm scanner; counts into the gateway's metrics registry."""

    def __init__(self, policies: GuardrailPolicies, pseudonymizer: Pseudonymizer,
                 config: PiiConfig | None = None) -> None:
        self.policies = policies
        self.pseudonymizer = pseudonymizer
        self.config = config or inference_config()
        self.scanner = Scanner(self.config, workers=1, batch_size=16)
        self.actions = None

    def bind_metrics(self, registry) -> None:
        """Count into the gateway app's own Prometheus registry (one per app)."""
        from prometheus_client import Counter

        self.actions = Counter("aiplat_gateway_pii_guardrail", "PII guardrail actions at the gateway, per entity found",
                               ["endpoint", "team", "direction", "action", "entity"], registry=registry)

    def warm_up(self) -> None:
        self.scanner.warm_up()
        self.scanner.scan(["warm up: Ann Lee, ann@example.com, +44 20 7946 0958"])

    def _count(self, endpoint: str, team: str, direction: str, action: str, counts: Mapping[str, int]) -> str:
        if self.actions is not None:
            for entity, n in counts.items():
                self.actions.labels(endpoint, team, direction, action, entity).inc(n)
        return _summary(direction, action, counts) if counts else ""

    def _scan(self, texts: list[str]) -> list[list[Finding]]:
        return self.scanner.scan(texts) if texts else []

    def on_prompt(self, body: dict, team: str, endpoint: str) -> Verdict:
        """Mask PII in `messages[].content` (text or text parts) and `prompt` (text or list of text)."""
        policy = self.policies.policy_for(team, endpoint)
        if policy.response in ("mask", "block") and body.get("stream"):
            return Verdict(body, (400, f"endpoint {endpoint!r} checks answers for personal data "
                                       f"(response policy {policy.response!r}) and cannot stream them; "
                                       "send the request without `stream: true`", "pii_guardrail_no_stream"))
        if policy.prompt == "off":
            return Verdict(body)
        body = json.loads(json.dumps(body))  # a copy: the caller's dict stays as the client sent it
        slots = _prompt_slots(body)
        if not slots:
            return Verdict(body)
        texts = [c[k] for c, k in slots]  # type: ignore[index]
        counts: Tally[str] = Tally()
        for (container, key), text, found in zip(slots, texts, self._scan(texts)):
            if found:
                container[key] = redact_text(text, found, self.config, self.pseudonymizer)  # type: ignore[index]
                counts.update(f.entity_type for f in found)
        note = self._count(endpoint, team, "prompt", "mask", counts)
        return Verdict(body, counts=dict(counts), note=note)

    def on_response(self, content: bytes, team: str, endpoint: str) -> Verdict:
        """Check a non-streamed OpenAI answer: `choices[].message.content` or `choices[].text`."""
        policy = self.policies.policy_for(team, endpoint)
        if policy.response == "off":
            return Verdict(content)
        try:
            payload = json.loads(content)
        except ValueError:
            return Verdict(content)
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list):
            return Verdict(content)
        slots: list[tuple[dict, str]] = []
        for c in choices:
            if not isinstance(c, dict):
                continue
            if isinstance(c.get("message"), dict) and isinstance(c["message"].get("content"), str):
                slots.append((c["message"], "content"))
            elif isinstance(c.get("text"), str):
                slots.append((c, "text"))
        texts = [c[k] for c, k in slots]
        counts: Tally[str] = Tally()
        results = self._scan(texts)
        for found in results:
            counts.update(f.entity_type for f in found)
        note = self._count(endpoint, team, "response", policy.response, counts)
        if not counts or policy.response == "log":
            return Verdict(content, counts=dict(counts), note=note)
        if policy.response == "block":
            kinds = ", ".join(sorted(counts))
            return Verdict(content, (422, f"the answer of endpoint {endpoint!r} contained personal data ({kinds}) and "
                                          "was withheld by the endpoint's PII policy", "pii_in_response"),
                           dict(counts), note)
        for (container, key), text, found in zip(slots, texts, results):
            if found:
                container[key] = redact_text(text, found, self.config, self.pseudonymizer)
        return Verdict(json.dumps(payload).encode(), counts=dict(counts), note=note)

    def on_streamed(self, texts: list[str], team: str, endpoint: str) -> Verdict:
        """Count the PII of an answer that was streamed (already sent: only a `log` policy lets one through)."""
        policy = self.policies.policy_for(team, endpoint)
        if policy.response == "off":
            return Verdict(b"")
        counts: Tally[str] = Tally()
        for found in self._scan([t for t in texts if t]):
            counts.update(f.entity_type for f in found)
        return Verdict(b"", counts=dict(counts), note=self._count(endpoint, team, "response", "log", counts))

    def close(self) -> None:
        self.scanner.close()


def _prompt_slots(body: dict) -> list[tuple[object, object]]:
    """(container, key) of every prompt text: chat message contents (text or text parts), `prompt`."""
    out: list[tuple[object, object]] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, str):
                out.append((m, "content"))
            elif isinstance(content, list):
                out.extend((part, "text") for part in content
                           if isinstance(part, dict) and isinstance(part.get("text"), str))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out.append((body, "prompt"))
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        out.extend((prompt, i) for i in range(len(prompt)))
    return out


def guardrails_for_gateway(policy_file: Path, presidio) -> Guardrails:  # presidio: resources.presidio.PresidioResource
    """The gateway's guardrails from a policy file, with the pipeline's own Presidio resource: its
    pseudonymization key (prod: AIPLAT_PII_HMAC_KEY, never empty nor the development key, which the
    resource refuses with MissingSecret; tokens that differ from the datasets' would break the joins)
    and its NER model. Warm before the first request."""
    pseudonymizer = presidio.pseudonymizer
    config = inference_config().with_nlp(engine=presidio.nlp_engine, model_name=presidio.model_name,
                                         spacy_model=presidio.spacy_model)
    guard = Guardrails(load_policies(policy_file), pseudonymizer, config)
    guard.warm_up()
    return guard
