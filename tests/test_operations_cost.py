"""Cost attribution from the request log: labels, totals that add up, GPU-hours, budgets, chart, CLI."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiplat.operations.cost import CostRates, attribute, busy_seconds, write_chart
from aiplat.operations.requests import RequestLog, key_fingerprint, labels_for_request
from tests.operations_helpers import T0, record

RATES = CostRates(prompt_per_1k_tokens=0.5, completion_per_1k_tokens=1.0, gpu_hour=3600.0, gpus_per_endpoint=2)


def test_labels_from_headers_then_api_key_mapping() -> None:
    mapping = {key_fingerprint("sk-search-123"): "search"}
    assert labels_for_request({"X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "triage"}, mapping) == ("team:ml", "triage")
    assert labels_for_request({"Authorization": "Bearer sk-search-123"}, mapping) == ("team:search", "unattributed")
    assert labels_for_request({"Authorization": "Bearer sk-unknown"}, mapping) == ("unattributed", "unattributed")
    # A mapped key decides the team: its header cannot bill another team.
    spoofed = {"Authorization": "Bearer sk-search-123", "X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "faq"}
    assert labels_for_request(spoofed, mapping) == ("team:search", "faq")
    assert "sk-search-123" not in json.dumps(mapping)  # the mapping holds fingerprints, not keys


def test_busy_time_counts_overlapping_requests_once() -> None:
    assert busy_seconds([(0, 10), (5, 12), (20, 25)]) == 17
    assert busy_seconds([]) == 0


def test_rows_add_up_to_the_whole() -> None:
    records = [
        record(10, "team:ml", "triage", 2000),
        record(11, "team:ml", "summary", 4000, prompt=300, completion=10),   # overlaps the first
        record(30, "team:search", "answers", 1000, status=503),
        record(40, "team:search", "answers", 3000, endpoint="kb-answers", completion=200),
        record(90000, "team:ml", "triage", 1000),                              # the next day
    ]
    report = attribute(records, RATES)
    rows = report.rows
    assert len(rows) == 4 and rows["day"].nunique() == 2  # search/answers spans two endpoints, one row
    for column in ("requests", "prompt_tokens", "completion_tokens", "token_cost", "gpu_hours", "gpu_cost", "total_cost"):
        assert rows[column].sum() == pytest.approx(report.totals[column], rel=1e-12), column
    # ticket-triage on day 1 was busy over [7 s, 11 s] and [29 s, 30 s]: 5 s on 2 GPUs.
    assert report.endpoint_gpu_hours[(date(2026, 11, 25), "ticket-triage")] == pytest.approx(10 / 3600)
    # token cost by hand: prompt 0.5/1k, completion 1.0/1k
    ml_summary = rows[(rows.team == "team:ml") & (rows.feature == "summary")].iloc[0]
    assert ml_summary.token_cost == pytest.approx(0.3 * 0.5 + 0.01 * 1.0)
    assert rows[rows.team == "team:search"]["errors"].sum() == 1


def test_budget_over_the_limit_breaches_with_a_stable_line() -> None:
    records = [record(i, "team:ml", "triage", 1000) for i in range(0, 100, 10)] + [record(5, "team:search", "answers", 10)]
    report = attribute(records, RATES, budgets={"team:ml": 1.0, "team:search": 1000.0})
    (breach,) = report.breaches
    assert breach.team == "team:ml" and breach.cost > 1.0
    assert breach.alert_line().startswith("AIPLAT_ALERT budget team=team:ml day=2026-11-25 cost=")


def test_unreadable_lines_are_reported_not_dropped(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "requests.jsonl")
    log.append(record(1, "team:ml", "triage", 500))
    with log.path.open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"timestamp": T0.isoformat(), "endpoint": "e"}) + "\n")
    records, rejected = log.read()
    assert len(records) == 1
    assert [r.line for r in rejected] == [2, 3]
    assert "missing fields" in rejected[1].reason and "requests.jsonl:3" in rejected[1].reason


def test_chart_is_a_png(tmp_path: Path) -> None:
    report = attribute([record(1, "team:ml", "triage", 500), record(2, "team:search", "answers", 500)], RATES)
    path = write_chart(report, tmp_path / "cost.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_cli_report_team_since_and_budget_exit(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from aiplat.commands.cost import cli

    log = RequestLog()
    for i in range(20):
        log.append(record(i * 5, "team:ml" if i % 2 else "team:search", "triage", 4000, completion=500))
    log.append(record(-86400 * 3, "team:ml", "old", 4000))  # before --since
    runner = CliRunner()
    ok = runner.invoke(cli, ["report", "--since", "2026-11-25", "--until", "2026-11-25", "--team", "search"])
    assert ok.exit_code == 0, ok.output
    assert "team:search" in ok.output and "team:ml |" not in ok.output and "| old |" not in ok.output
    assert "whole total:" in ok.output

    log.append(record(100, "team:ml", "triage", 60_000_000, completion=10_000_000))  # a runaway day for team:ml
    with caplog.at_level(logging.ERROR, logger="aiplat.alerts"):
        over = runner.invoke(cli, ["report", "--since", "2026-11-25", "--until", "2026-11-25"])
    assert over.exit_code == 1
    assert "over budget" in over.output
    assert any(r.getMessage().startswith("AIPLAT_ALERT budget team=team:ml") for r in caplog.records)
    bad = runner.invoke(cli, ["report", "--since", "yesterday"])
    assert bad.exit_code == 2 and "is not a date" in bad.output


def test_a_day_without_traffic_reports_zero_float_totals(tmp_path):
    import dagster as dg

    from assets.operations import build_operations_assets
    from resources.operations import OperationsResource

    _, cost_report = build_operations_assets([])

    result = dg.materialize(
        [cost_report],
        resources={"operations": OperationsResource(request_log_path=str(tmp_path / "empty.jsonl"),
                                                    audit_log_path=str(tmp_path / "audit.jsonl"),
                                                    reports_dir=str(tmp_path / "reports"))},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("cost_report")[0].metadata
    assert metadata["total_cost"].value == 0.0
