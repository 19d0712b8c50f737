"""Group `operations`: how every endpoint behaves (endpoint_metrics) and what it costs whom (cost_report).

Thin: aiplat.operations does the work; `aiplat cost report` calls the same functions.
"""

import time
from datetime import date, datetime, timedelta, timezone
from typing import Optional

import dagster as dg
from pydantic import Field

from aiplat.provenance import code_version
from resources.operations import OperationsResource
from resources.vllm import VllmResource

GROUP = "operations"
OWNERS = ["team:platform"]
SERVED_ENDPOINT = dg.AssetKey("served_endpoint")


class EndpointMetricsConfig(dg.Config):
    window_minutes: int = Field(default=60, ge=1, description="How much of the request log to summarize")


def _live_servers(vllm: VllmResource) -> list:
    manager = getattr(vllm, "manager", None)
    if manager is None:  # prod: Prometheus scrapes the pods (deploy/observability); the log still counts
        return []
    return [(record.name, record.live) for record in manager.list() if record.live is not None]


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"prometheus", "vllm"},
    deps=[SERVED_ENDPOINT],
    description=(
        "Per endpoint and model: latency and time-to-first-token percentiles from vLLM's /metrics histograms, "
        "token throughput since the last scrape, HTTP error rate, and the same seen from the request log. "
        "Float metadata, so each number is plotted over time."
    ),
)
def endpoint_metrics(context: dg.AssetExecutionContext, config: EndpointMetricsConfig, vllm: VllmResource,
                     operations: OperationsResource) -> dg.MaterializeResult:
    from aiplat.operations.metrics import ScrapeError, add_rates, request_log_metrics, scrape, server_metrics

    metadata: dict = {}
    errors: list[str] = []
    servers = _live_servers(vllm)
    for endpoint, live in servers:
        try:
            per_model = server_metrics(scrape(live.url, operations.scrape_timeout_s))
        except ScrapeError as e:
            errors.append(f"{endpoint}: {e}")
            continue
        for model, numbers in per_model.items():
            numbers = add_rates(f"{live.url}|{model}", time.time(), numbers)
            for name, value in numbers.items():
                metadata[f"{endpoint}/{model}/{name}"] = dg.MetadataValue.float(float(value))
            metadata[f"{endpoint}/{model}/model_version"] = live.model_version

    now = datetime.now(timezone.utc)
    since = now - timedelta(minutes=config.window_minutes)
    records, rejected = operations.request_log().read(since.date(), now.date())
    recent = [r for r in records if r.timestamp >= since]
    for endpoint, numbers in request_log_metrics(recent, config.window_minutes * 60).items():
        for name, value in numbers.items():
            metadata[f"{endpoint}/{name}"] = dg.MetadataValue.float(float(value))

    if servers and len(errors) == len(servers) and not recent:
        raise dg.Failure("no endpoint could be scraped and the request log is empty: " + "; ".join(errors))
    for problem in errors:
        context.log.warning(problem)
    metadata.update({
        "endpoints_scraped": len(servers) - len(errors),
        "scrape_errors": dg.MetadataValue.json(errors),
        "request_log_lines_rejected": len(rejected),
        "window_minutes": config.window_minutes,
        "code_version": code_version(),
        "owner": OWNERS[0],
    })
    return dg.MaterializeResult(metadata=metadata)


class CostReportConfig(dg.Config):
    day: Optional[str] = Field(default=None, description="UTC day to report (YYYY-MM-DD); unset = yesterday")


BUDGET_CHECK = "within_team_budgets"


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pandas", "matplotlib"},
    deps=[SERVED_ENDPOINT],
    check_specs=[dg.AssetCheckSpec(BUDGET_CHECK, asset="cost_report",
                                   description="No team spent more than its daily budget")],
    description=(
        "One UTC day of token cost and GPU-hours from the request log, attributed to team and feature "
        "(rows add up to the whole), with a chart. A team over its daily budget fails the check and logs "
        "`AIPLAT_ALERT budget team=...`."
    ),
)
def cost_report(context: dg.AssetExecutionContext, config: CostReportConfig,
                operations: OperationsResource) -> dg.MaterializeResult:
    from aiplat.operations.cost import emit_budget_alerts, markdown_table, write_chart

    try:
        day = date.fromisoformat(config.day) if config.day else None
    except ValueError:
        raise dg.Failure(f"cost_report config day={config.day!r} is not a date (YYYY-MM-DD)") from None
    report = operations.cost_report(day, day)
    first, _ = report.window
    folder = operations.reports_path()
    chart = write_chart(report, folder / f"cost-{first}.png", title=f"Cost by team and feature, {first}")
    table_path = folder / f"cost-{first}.csv"
    report.rows.to_csv(table_path, index=False)
    for bad in report.rejected:
        context.log.warning(f"request log line skipped: {bad.reason}")

    alerts = emit_budget_alerts(report, context.log)
    t = report.totals
    metadata: dict = {
        "day": str(first),
        "total_cost": dg.MetadataValue.float(t["total_cost"]),
        "token_cost": dg.MetadataValue.float(t["token_cost"]),
        "gpu_hours": dg.MetadataValue.float(t["gpu_hours"]),
        "gpu_cost": dg.MetadataValue.float(t["gpu_cost"]),
        "requests": dg.MetadataValue.int(int(t["requests"])),
        "request_log_lines_rejected": len(report.rejected),
        "attribution": dg.MetadataValue.md(markdown_table(report.rows)),
        "chart": dg.MetadataValue.path(str(chart)),
        "table": dg.MetadataValue.path(str(table_path)),
        "request_log": dg.MetadataValue.path(str(operations.request_log().path)),
        "code_version": code_version(),
        "owner": OWNERS[0],
    }
    for team_row in report.by_team().itertuples(index=False):
        metadata[f"{team_row.team}/total_cost"] = dg.MetadataValue.float(float(team_row.total_cost))
        metadata[f"{team_row.team}/gpu_hours"] = dg.MetadataValue.float(float(team_row.gpu_hours))
    check = dg.AssetCheckResult(
        check_name=BUDGET_CHECK,
        passed=not report.breaches,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"alerts": dg.MetadataValue.json(alerts),
                  "budgets": dg.MetadataValue.json(dict(operations.team_daily_budgets))},
        description="; ".join(alerts) or "every team within its daily budget",
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
