"""The live golden-set monitor's pure parts: scoring answers, choosing the baseline, the verdict,
and the hourly schedule's decision to ask at all (build_schedule_context on a real instance)."""

from __future__ import annotations

import dagster as dg
import pytest

from aiplat.evaluation.golden import load_golden
from aiplat.evaluation.report import build_report
from aiplat.operations.quality import (Baseline, LiveAnswer, Target, Thresholds, baseline_from_readings,
                                       baseline_from_report, judge, score)

GOLDEN = load_golden()
TARGET = Target("ticket-triage", "http://127.0.0.1:9", "ticket-triage", "4")


def _answers(right: int, failed: int = 0, text: str = "category: billing") -> list[LiveAnswer]:
    out = []
    for i, row in enumerate(GOLDEN.rows):
        if i < failed:
            out.append(LiveAnswer(row["id"], row["category"], "(unparsed)", 503, 3.0, error="HTTP 503: overloaded"))
        elif i < failed + right:
            out.append(LiveAnswer(row["id"], row["category"], row["category"], 200, 10.0 + i, text=text))
        else:
            wrong = "general" if row["category"] != "general" else "billing"
            out.append(LiveAnswer(row["id"], row["category"], wrong, 200, 10.0 + i, text=text))
    return out


def test_score_counts_unanswered_rows_as_wrong() -> None:
    quality = score(TARGET, GOLDEN, _answers(right=12, failed=4))
    assert quality.rows == len(GOLDEN.rows) and quality.answered == len(GOLDEN.rows) - 4
    assert quality.accuracy == pytest.approx(12 / len(GOLDEN.rows))
    assert quality.error_rate == pytest.approx(4 / len(GOLDEN.rows)) and "503" in quality.first_error
    assert len(quality.misses) == len(GOLDEN.rows) - 12
    assert quality.latency_p50_ms > 3.0  # failed requests' latency is not a latency of answers


def test_pii_in_a_live_answer_fails_the_verdict_whatever_the_accuracy() -> None:
    quality = score(TARGET, GOLDEN, _answers(right=len(GOLDEN.rows), text="category: billing\nreply: mail jane.doe@example.com"))
    assert quality.accuracy == 1.0 and {f["kind"] for f in quality.leak_findings} == {"email"}
    assert all("jane.doe@example.com" not in str(f) for f in quality.leak_findings)  # findings are masked
    verdict = judge(quality, Baseline(0.5, "eval report abc"), Thresholds())
    assert not verdict.passed and "PII/canary" in verdict.reasons[0]


def test_drop_beyond_the_threshold_fails_and_within_it_passes() -> None:
    n = len(GOLDEN.rows)
    baseline = Baseline(18 / n, "eval report 0123456789ab")
    within = judge(score(TARGET, GOLDEN, _answers(right=16)), baseline, Thresholds(max_golden_accuracy_drop=0.10))
    assert within.passed and within.drop == pytest.approx(2 / n)
    beyond = judge(score(TARGET, GOLDEN, _answers(right=12)), baseline, Thresholds(max_golden_accuracy_drop=0.10))
    assert not beyond.passed and beyond.drop == pytest.approx(6 / n)
    assert "below the baseline" in beyond.summary() and "eval report 0123456789ab" in beyond.summary()


def test_failed_requests_fail_the_verdict_even_without_a_baseline() -> None:
    verdict = judge(score(TARGET, GOLDEN, _answers(right=20, failed=1)), None, Thresholds())
    assert not verdict.passed and not verdict.established_baseline and "1/24 golden requests failed" in verdict.reasons[0]
    first = judge(score(TARGET, GOLDEN, _answers(right=20)), None, Thresholds())
    assert first.passed and first.established_baseline


def test_baseline_from_report_only_for_the_same_golden_set() -> None:
    report = build_report(model={"name": "m", "version": "4"}, candidate=_headline_result(0.75), base=None,
                          champion=None, champion_version=None, gate={"passed": True, "reasons": [], "rules": []},
                          settings={}, thresholds={}, dagster_run_id=None, code_version="x",
                          datasets={"golden": {"version": "v1", "rows": len(GOLDEN.rows), "sha256": GOLDEN.sha256}})
    assert baseline_from_report(report, "f" * 64, GOLDEN) == Baseline(0.75, "eval report ffffffffffff")
    report["datasets"]["golden"]["sha256"] = "0" * 64  # the report asked another golden set
    assert baseline_from_report(report, "f" * 64, GOLDEN) is None


def _headline_result(golden_accuracy: float) -> dict:
    return {"test": {"accuracy": 0.5, "macro_f1": 0.4, "parse_rate": 1.0, "reply_rouge_l": 0.2},
            "golden": {"accuracy": golden_accuracy}, "leak": {"findings": []},
            "speed": {"latency_p50_ms": 10.0, "tokens_per_second": 5.0}}


def test_baseline_comes_forward_from_the_newest_reading_of_the_same_version() -> None:
    quality = score(TARGET, GOLDEN, _answers(right=12))
    same = {"endpoint": "ticket-triage", "model_version": "4", "golden_sha256": GOLDEN.sha256}
    first = {**same, "golden_accuracy": 0.6, "baseline_accuracy": "none yet", "baseline_source": "this reading",
             "baseline_eligible": True, "run_id": "first4ok"}
    later = {**same, "golden_accuracy": 0.55, "baseline_accuracy": 0.6, "baseline_source": "first live reading first4ok",
             "baseline_eligible": True, "run_id": "later4ok"}
    failed = {**same, "golden_accuracy": 0.1, "baseline_accuracy": "none yet", "baseline_source": "this reading",
              "baseline_eligible": False, "run_id": "failed01"}  # a failed reading never becomes the baseline
    other_version = {**same, "model_version": "3", "golden_accuracy": 0.9, "baseline_eligible": True, "run_id": "v3"}
    other_golden = {**same, "golden_sha256": "0" * 64, "golden_accuracy": 0.9, "baseline_eligible": True, "run_id": "g"}
    newest_first = [other_version, later, other_golden, first]
    assert baseline_from_readings(newest_first, quality) == Baseline(0.6, "first live reading first4ok")
    assert baseline_from_readings([failed, first], quality) == Baseline(0.6, "first live reading first4ok")
    assert baseline_from_readings([failed, other_version, other_golden], quality) is None


def test_schedule_skips_until_something_is_served_then_asks_once_per_tick() -> None:
    from tests.chain_helpers import chain_for

    (schedule,) = chain_for("ticket-triage").schedules
    with dg.instance_for_test() as instance:
        from datetime import datetime, timezone

        tick = datetime(2026, 11, 27, 9, 20, tzinfo=timezone.utc)
        skipped = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
        assert not skipped.run_requests and "nothing to ask" in skipped.skip_message
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["ticket_triage", "served_endpoint"])))
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
        [request] = data.run_requests
        assert request.run_key == "live_quality:ticket-triage:2026-11-27T09:20+00:00"
    # Its runs act as the service account (rollbacks pass access control as the platform's); the
    # tag only says who asked, and no team tag is set that a reader could take for a right.
    assert schedule.job.tags["aiplat/actor"].startswith("schedule:") and "aiplat/team" not in schedule.job.tags
