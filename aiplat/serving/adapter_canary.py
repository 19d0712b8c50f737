"""A canary per model on a shared adapter server: split, measure from the gateway's records, decide.

1. `start`: the candidate adapter version (already verified and loaded, aiplat.serving.adapters)
   gets `policy.weight` percent of the endpoint's traffic through its route; the live version keeps
   the rest. Other endpoints' routes are not touched.
2. Real traffic flows through the gateway, which records each request under the adapter version
   that answered it.
3. `judge`: the candidate's error rate and p95 latency against the live version's, over the same
   window. Both versions run in the same server process and the same batches, so their latencies
   are comparable on a busy machine (two whole-model servers were not: their p95 ratio swung with
   which process the OS favoured); the ratio still gets slack (`max_p95_ratio`).
4. `finish`: passed -> the candidate takes 100% and the old live version stays loaded as the
   rollback target; failed -> the live version takes 100% again and the candidate is unloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aiplat.operations.requests import RequestRecord
from aiplat.serving.adapter_routes import AdapterFigures, AdapterRoute, AdapterRoutes, adapter_figures


@dataclass(frozen=True)
class AdapterCanaryPolicy:
    weight: float = 10.0  # percent of the endpoint's requests the candidate answers
    min_requests: int = 20  # candidate requests before any verdict
    max_error_rate: float = 0.02
    max_p95_ratio: float = 1.5  # candidate p95 / live p95

    def __post_init__(self) -> None:
        if not 0 < self.weight < 100:
            raise ValueError(f"canary weight {self.weight} must be between 0 and 100 (exclusive)")


@dataclass(frozen=True)
class AdapterVerdict:
    endpoint: str
    live: str
    candidate: str
    passed: bool | None  # None: not enough candidate traffic yet
    reasons: tuple[str, ...]
    figures: dict[str, AdapterFigures] = field(default_factory=dict)

    def summary(self) -> str:
        state = {True: "passed", False: "failed", None: "undecided"}[self.passed]
        return f"{self.endpoint}: canary {self.candidate} {state}" + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def canary_split(endpoint: str, live: str, candidate: str, policy: AdapterCanaryPolicy) -> dict[str, float]:
    if live == candidate:
        raise ValueError(f"{endpoint}: the candidate {candidate} is already live")
    return {live: 100.0 - policy.weight, candidate: policy.weight}


def decided_split(verdict: AdapterVerdict) -> dict[str, float]:
    """The route after the canary: all to the candidate if it passed, back to the live version if
    not. Undecided verdicts are refused: a canary ends on a measurement, not on a timer."""
    if verdict.passed is None:
        raise ValueError(verdict.summary())
    return {verdict.candidate if verdict.passed else verdict.live: 100.0}


def start(routes: AdapterRoutes, endpoint: str, base_url: str, live: str, candidate: str,
          policy: AdapterCanaryPolicy) -> AdapterRoute:
    return routes.set(endpoint, base_url, canary_split(endpoint, live, candidate, policy))


def judge(records: Sequence[RequestRecord], endpoint: str, live: str, candidate: str, policy: AdapterCanaryPolicy,
          since: datetime | None = None) -> AdapterVerdict:
    figures = adapter_figures(records, endpoint, since)
    new, old = figures.get(candidate), figures.get(live)
    if new is None or new.requests < policy.min_requests:
        got = new.requests if new else 0
        return AdapterVerdict(endpoint, live, candidate, None,
                              (f"{got} of {policy.min_requests} candidate requests so far",), figures)
    reasons = []
    if new.error_rate > policy.max_error_rate:
        reasons.append(f"error rate {new.error_rate:.1%} > {policy.max_error_rate:.1%} "
                       f"({new.errors} of {new.requests} requests failed)")
    if old is not None and old.latency_p95_ms > 0 and new.requests > new.errors:
        ratio = new.latency_p95_ms / old.latency_p95_ms
        if ratio > policy.max_p95_ratio:
            reasons.append(f"p95 latency {new.latency_p95_ms:.0f} ms = {ratio:.2f}x the live version's "
                           f"{old.latency_p95_ms:.0f} ms > {policy.max_p95_ratio}x")
    return AdapterVerdict(endpoint, live, candidate, not reasons, tuple(reasons), figures)


def finish(routes: AdapterRoutes, verdict: AdapterVerdict, unload: Callable[[str], None]) -> AdapterRoute:
    """Switch to the candidate or roll back to the live version (see the module doc)."""
    split = decided_split(verdict)
    route = routes.get(verdict.endpoint)
    if route is None:
        raise ValueError(f"{verdict.endpoint}: no adapter route")
    switched = routes.set(verdict.endpoint, route.base_url, split)
    if not verdict.passed:
        unload(verdict.candidate)
    return switched
