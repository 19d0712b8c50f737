"""Canary: a candidate version beside the live one, compared on the same traffic, then switch or
roll back.

The canary client replays a probe set plus a configurable share of a load sample against both
servers (one after the other, with the same concurrency, so they do not slow each other down on
the same CPU) with greedy decoding, and compares error rate, p95 latency and answer agreement.
Pass: the endpoint switches to the candidate and the old server stops. Fail: the candidate is
stopped, the live server and its registry entry never change, and `rollback` (injected: e.g.
moving the MLflow `champion` alias back to `previous`) runs. The verdict says why.
"""

from __future__ import annotations

import difflib
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import httpx

from aiplat.serving.champion import ModelRef
from aiplat.serving.manager import EndpointManager
from aiplat.serving.registry import ServerRecord
from aiplat.serving.server import ServerStartError

# Support-desk questions of the kind the triage model answers; always replayed in full.
DEFAULT_PROBES: tuple[str, ...] = (
    "What is the capital of France? Answer in one word.",
    "A customer cannot log in after resetting their password. Which team should handle the ticket?",
    "Classify this ticket as billing, technical or account: 'I was charged twice this month.'",
    "Write one polite sentence acknowledging a delayed order.",
    "Summarize in five words: the mobile app crashes when uploading a photo.",
    "Is 'refund not received after 10 days' a billing issue? Answer yes or no.",
)


@dataclass(frozen=True)
class CanaryPolicy:
    """Thresholds of the comparison, and how much traffic the canary replays."""

    load_share: float = 0.25  # share of the load sample replayed beside the probes
    max_tokens: int = 24
    concurrency: int = 4
    request_timeout_s: float = 120.0
    max_error_rate: float = 0.0  # candidate errors allowed, as a share of its requests
    max_p95_ratio: float = 1.5  # candidate p95 <= live p95 * ratio + slack
    p95_slack_ms: float = 500.0  # so that jitter on tiny latencies does not fail a canary
    min_agreement: float = 0.8  # share of prompts whose answers agree
    agree_similarity: float = 0.9  # two answers agree when difflib's ratio reaches this
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.load_share <= 1.0:
            raise ValueError(f"load_share={self.load_share} must be within 0..1")
        if not 0.0 <= self.min_agreement <= 1.0 or not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError("min_agreement and max_error_rate are shares within 0..1")
        if self.concurrency < 1 or self.max_tokens < 1:
            raise ValueError("concurrency and max_tokens must be at least 1")


@dataclass(frozen=True)
class Reply:
    prompt: str
    ok: bool
    latency_ms: float
    text: str = ""
    error: str = ""


@dataclass(frozen=True)
class ReplayStats:
    requests: int
    errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    first_error: str = ""


@dataclass(frozen=True)
class CanaryVerdict:
    endpoint: str
    passed: bool
    action: str  # switched | rolled back
    reasons: list[str]
    live_version: str
    candidate_version: str
    prompts: int = 0
    live: ReplayStats | None = None
    candidate: ReplayStats | None = None
    agreement: float = 0.0
    rollback: str = ""
    disagreements: list[dict] = field(default_factory=list)

    @property
    def summary(self) -> str:
        head = (f"canary of {self.endpoint} version {self.candidate_version} against live version "
                f"{self.live_version}: {'PASSED' if self.passed else 'FAILED'}, {self.action}")
        return head + "".join(f"\n- {r}" for r in self.reasons) + (f"\n- rollback: {self.rollback}" if self.rollback else "")

    def to_dict(self) -> dict:
        return asdict(self)


def canary_prompts(probes: Sequence[str], load_sample: Sequence[str], share: float, seed: int = 0) -> list[str]:
    """All probes, then a deterministic `share` of the load sample (at least one when share > 0)."""
    sample = list(load_sample)
    random.Random(seed).shuffle(sample)
    take = min(len(sample), math.ceil(share * len(sample))) if share > 0 else 0
    return list(probes) + sample[:take]


def _ask(client: httpx.Client, server: ServerRecord, prompt: str, policy: CanaryPolicy) -> Reply:
    body = {"model": server.served_model_name, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": policy.max_tokens, "temperature": 0.0, "seed": policy.seed}
    start = time.perf_counter()
    try:
        response = client.post(f"{server.url}/v1/chat/completions", json=body, timeout=policy.request_timeout_s)
        latency = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            return Reply(prompt, False, latency, error=f"HTTP {response.status_code}: {response.text[:200]}")
        text = response.json()["choices"][0]["message"]["content"] or ""
        return Reply(prompt, True, latency, text=text)
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        return Reply(prompt, False, (time.perf_counter() - start) * 1000, error=f"{type(e).__name__}: {e}")


def replay(server: ServerRecord, prompts: Sequence[str], policy: CanaryPolicy) -> list[Reply]:
    """Send every prompt to the server, `policy.concurrency` at a time; replies in prompt order."""
    limits = httpx.Limits(max_connections=policy.concurrency)
    with httpx.Client(limits=limits) as client, ThreadPoolExecutor(policy.concurrency) as pool:
        return list(pool.map(lambda p: _ask(client, server, p, policy), prompts))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def stats(replies: Sequence[Reply]) -> ReplayStats:
    errors = [r for r in replies if not r.ok]
    latencies = [r.latency_ms for r in replies if r.ok]
    return ReplayStats(
        requests=len(replies), errors=len(errors),
        error_rate=len(errors) / len(replies) if replies else 0.0,
        p50_ms=round(percentile(latencies, 50), 1), p95_ms=round(percentile(latencies, 95), 1),
        first_error=errors[0].error if errors else "",
    )


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def agreement(live: Sequence[Reply], candidate: Sequence[Reply], similarity: float) -> tuple[float, list[dict]]:
    """Share of prompts both answered with answers at least `similarity` alike; and the rest."""
    agreed, differing = 0, []
    for a, b in zip(live, candidate, strict=True):
        if a.ok and b.ok:
            ratio = difflib.SequenceMatcher(None, _normalize(a.text), _normalize(b.text)).ratio()
            if ratio >= similarity:
                agreed += 1
                continue
        differing.append({"prompt": a.prompt[:120], "live": a.text[:120] or a.error[:120],
                          "candidate": b.text[:120] or b.error[:120]})
    return (agreed / len(live) if live else 0.0), differing


def compare(live: Sequence[Reply], candidate: Sequence[Reply], policy: CanaryPolicy) -> tuple[list[str], ReplayStats, ReplayStats, float, list[dict]]:
    """The reasons the candidate fails the policy (empty = it passes), with the numbers."""
    live_stats, cand_stats = stats(live), stats(candidate)
    agree, differing = agreement(live, candidate, policy.agree_similarity)
    reasons = []
    if cand_stats.error_rate > policy.max_error_rate:
        reasons.append(f"error rate {cand_stats.error_rate:.1%} > allowed {policy.max_error_rate:.1%} "
                       f"(live {live_stats.error_rate:.1%}; first error: {cand_stats.first_error})")
    limit = live_stats.p95_ms * policy.max_p95_ratio + policy.p95_slack_ms
    if cand_stats.requests > cand_stats.errors and cand_stats.p95_ms > limit:
        reasons.append(f"p95 latency {cand_stats.p95_ms:.0f} ms > {limit:.0f} ms "
                       f"(live p95 {live_stats.p95_ms:.0f} ms x {policy.max_p95_ratio} + {policy.p95_slack_ms:.0f} ms)")
    if agree < policy.min_agreement:
        reasons.append(f"answer agreement {agree:.0%} < required {policy.min_agreement:.0%} "
                       f"({len(differing)} of {len(live)} prompts differ)")
    return reasons, live_stats, cand_stats, agree, differing


Rollback = Callable[[], str]


def run_canary(
    manager: EndpointManager,
    name: str,
    candidate_model: ModelRef,
    policy: CanaryPolicy = CanaryPolicy(),
    probes: Sequence[str] = DEFAULT_PROBES,
    load_sample: Sequence[str] = (),
    rollback: Rollback | None = None,
) -> CanaryVerdict:
    """Start the candidate beside the live server, compare, and switch or roll back."""
    live_server = manager.get(name).live
    prompts = canary_prompts(probes, load_sample, policy.load_share, policy.seed)
    if not prompts:
        raise ValueError("the canary has no prompts: give probes or a load sample with load_share > 0")

    def fail(reasons: list[str], **numbers) -> CanaryVerdict:
        manager.discard_candidate(name, reason="; ".join(reasons), version=candidate_model.version)
        note = rollback() if rollback else ""
        return CanaryVerdict(name, False, "rolled back", reasons, live_server.model_version,
                             candidate_model.version, len(prompts), rollback=note, **numbers)

    try:
        candidate = manager.start_candidate(name, candidate_model, live_server.served_model_name)
    except ServerStartError as e:
        return fail([f"candidate did not start: {e.cause} (log: {e.log_file})"])

    try:
        live_replies = replay(live_server, prompts, policy)
        cand_replies = replay(candidate, prompts, policy)
        reasons, live_stats, cand_stats, agree, differing = compare(live_replies, cand_replies, policy)
    except BaseException:
        manager.discard_candidate(name, reason="canary interrupted")
        raise
    numbers = dict(live=live_stats, candidate=cand_stats, agreement=round(agree, 3), disagreements=differing[:5])
    if reasons:
        return fail(reasons, **numbers)
    manager.promote_candidate(name, reason=f"canary passed on {len(prompts)} prompts")
    return CanaryVerdict(name, True, "switched", [
        f"error rate {cand_stats.error_rate:.1%}, p95 {cand_stats.p95_ms:.0f} ms (live {live_stats.p95_ms:.0f} ms), "
        f"agreement {agree:.0%} on {len(prompts)} prompts"], live_server.model_version, candidate_model.version,
        len(prompts), **numbers)
