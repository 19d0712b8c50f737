"""Adapter routes and the per-model canary decision (no server: the live path is in
tests/test_serving_adapters_live.py)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from aiplat.operations.requests import RequestRecord
from aiplat.serving import adapter_canary
from aiplat.serving.adapter_routes import AdapterRoute, AdapterRouteResolver, AdapterRoutes, adapter_figures
from aiplat.serving.gateway_routing import UnknownEndpoint

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def _record(model: str, latency: float, status: int = 200, endpoint: str = "triage", at: datetime = NOW) -> RequestRecord:
    return RequestRecord(at, endpoint, model, "team:ml", "f", 10, 5 if status == 200 else 0, latency, status)


def test_a_route_needs_adapters_with_positive_distinct_weights() -> None:
    with pytest.raises(ValueError, match="no adapter"):
        AdapterRoute("e", "http://x", ())
    with pytest.raises(ValueError, match="> 0"):
        AdapterRoute("e", "http://x", (("a@1", 100.0), ("a@2", 0.0)))
    with pytest.raises(ValueError, match="twice"):
        AdapterRoute("e", "http://x", (("a@1", 50.0), ("a@1", 50.0)))
    assert AdapterRoute("e", "http://x", (("a@1", 90.0), ("a@2", 10.0))).share("a@2") == pytest.approx(0.1)


def test_the_resolver_splits_by_weight_and_knows_only_routed_endpoints(tmp_path: Path) -> None:
    routes = AdapterRoutes(tmp_path / "routes.json")
    routes.set("triage", "http://shared/", {"triage@3": 90, "triage@4": 10})
    routes.set("drafts", "http://shared", {"drafts@1": 100})
    resolver = AdapterRouteResolver(routes, rng=random.Random(7))
    drawn = Counter(resolver.resolve("triage").served_model_name for _ in range(4000))
    assert set(drawn) == {"triage@3", "triage@4"} and 0.08 < drawn["triage@4"] / 4000 < 0.12
    up = resolver.resolve("drafts")
    assert (up.base_url, up.served_model_name, up.model_label) == ("http://shared", "drafts@1", "drafts@1")
    assert resolver.endpoints() == ["drafts", "triage"]
    with pytest.raises(UnknownEndpoint) as unknown:
        resolver.resolve("nothing")
    assert unknown.value.known == ["drafts", "triage"]


def test_figures_come_per_adapter_version_from_the_request_log() -> None:
    records = [_record("triage@3", 100 + i) for i in range(10)] + [_record("triage@4", 200, 500)] + \
              [_record("triage@4", 150)] + [_record("drafts@1", 5, endpoint="drafts")] + \
              [_record("triage@3", 9999, at=NOW - timedelta(hours=2))]
    figures = adapter_figures(records, "triage", since=NOW - timedelta(minutes=5))
    assert set(figures) == {"triage@3", "triage@4"}
    assert (figures["triage@3"].requests, figures["triage@3"].completion_tokens) == (10, 50)
    assert figures["triage@3"].latency_p95_ms < 200  # the old request is outside the window
    assert (figures["triage@4"].errors, figures["triage@4"].error_rate) == (1, 0.5)


def test_the_canary_verdict_needs_traffic_and_fails_on_errors_or_latency() -> None:
    policy = adapter_canary.AdapterCanaryPolicy(weight=10, min_requests=5, max_error_rate=0.1, max_p95_ratio=1.5)
    live = [_record("t@1", 100) for _ in range(20)]
    undecided = adapter_canary.judge(live + [_record("t@2", 100)] * 4, "triage", "t@1", "t@2", policy)
    assert undecided.passed is None and "4 of 5" in undecided.reasons[0]
    good = adapter_canary.judge(live + [_record("t@2", 120)] * 5, "triage", "t@1", "t@2", policy)
    assert good.passed is True and good.reasons == ()
    failing = adapter_canary.judge(live + [_record("t@2", 100)] * 4 + [_record("t@2", 1, 404)] * 2,
                                   "triage", "t@1", "t@2", policy)
    assert failing.passed is False and "error rate" in failing.reasons[0]
    slow = adapter_canary.judge(live + [_record("t@2", 400)] * 5, "triage", "t@1", "t@2", policy)
    assert slow.passed is False and "4.00x" in slow.reasons[0]


def test_finish_switches_or_rolls_back_one_endpoint_only(tmp_path: Path) -> None:
    routes = AdapterRoutes(tmp_path / "routes.json")
    routes.set("drafts", "http://shared", {"drafts@1": 100})
    policy = adapter_canary.AdapterCanaryPolicy(weight=20, min_requests=1)
    adapter_canary.start(routes, "triage", "http://shared", "t@1", "t@2", policy)
    assert dict(routes.get("triage").split) == {"t@1": 80.0, "t@2": 20.0}
    unloaded: list[str] = []
    ok = adapter_canary.AdapterVerdict("triage", "t@1", "t@2", True, ())
    assert dict(adapter_canary.finish(routes, ok, unloaded.append).split) == {"t@2": 100.0} and unloaded == []
    adapter_canary.start(routes, "triage", "http://shared", "t@2", "t@3", policy)
    bad = adapter_canary.AdapterVerdict("triage", "t@2", "t@3", False, ("error rate",))
    assert dict(adapter_canary.finish(routes, bad, unloaded.append).split) == {"t@2": 100.0} and unloaded == ["t@3"]
    assert dict(routes.get("drafts").split) == {"drafts@1": 100.0}
    with pytest.raises(ValueError, match="undecided"):
        adapter_canary.finish(routes, adapter_canary.AdapterVerdict("triage", "t@2", "t@4", None, ("0 of 1",)),
                              unloaded.append)
