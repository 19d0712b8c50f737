"""Group `operations`: how every endpoint behaves (endpoint_metrics) and what it costs whom
(cost_report), downstream of every model's served endpoint; and the live-quality readings each
model's chain runs (golden_live_quality, grounded_live_quality; assets/model_lifecycle.py).

Thin: aiplat.operations does the work; `aiplat cost report` calls the same functions.
"""

import time
from datetime import date, datetime, timedelta, timezone
from typing import Optional

import dagster as dg
from pydantic import Field

from aiplat.provenance import code_version
from resources.mlflow import MLflowResource
from resources.operations import OperationsResource
from resources.signing import ModelSigningResource
from resources.vllm import VllmResource

GROUP = "operations"
OWNERS = ["team:platform"]


class EndpointMetricsConfig(dg.Config):
    window_minutes: int = Field(default=60, ge=1, description="How much of the request log to summarize")


class CostReportConfig(dg.Config):
    day: Optional[str] = Field(default=None, description="UTC day to report (YYYY-MM-DD); unset = yesterday")


BUDGET_CHECK = "within_team_budgets"


def build_operations_assets(served: list[dg.AssetKey]) -> list[dg.AssetsDefinition]:
    """endpoint_metrics and cost_report, downstream of every model's served endpoint."""

    @dg.asset(
        group_name=GROUP,
        owners=OWNERS,
        kinds={"prometheus", "vllm"},
        deps=served,
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
        # One server per base model; vLLM counts its adapters' traffic under the base model, so the
        # per-endpoint figures are the request log's below. Prod: none here; Prometheus scrapes the pods.
        servers = vllm.live_servers()
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

        prometheus_series, prometheus_errors = 0, []
        if operations.prometheus_url:
            from aiplat.operations.prometheus import PrometheusError
            from aiplat.operations.prometheus import endpoint_metrics as from_prometheus

            try:
                per_key = from_prometheus(operations.prometheus_url, f"{config.window_minutes}m", operations.scrape_timeout_s)
            except PrometheusError as e:
                prometheus_errors.append(str(e))
                per_key = {}
            for key, numbers in per_key.items():
                prometheus_series += 1
                for name, value in numbers.items():
                    metadata[f"{key}/{name}"] = dg.MetadataValue.float(float(value))

        now = datetime.now(timezone.utc)
        since = now - timedelta(minutes=config.window_minutes)
        records, rejected = operations.request_log().read(since.date(), now.date())
        recent = [r for r in records if r.timestamp >= since]
        for endpoint, numbers in request_log_metrics(recent, config.window_minutes * 60).items():
            for name, value in numbers.items():
                metadata[f"{endpoint}/{name}"] = dg.MetadataValue.float(float(value))

        scraped = len(servers) - len(errors)
        errors += prometheus_errors
        if errors and not (metadata or recent):
            raise dg.Failure("no endpoint could be scraped and the request log is empty: " + "; ".join(errors))
        for problem in errors:
            context.log.warning(problem)
        metadata.update({
            "endpoints_scraped": scraped,
            "prometheus_series": prometheus_series,
            "scrape_errors": dg.MetadataValue.json(errors),
            "request_log_lines_rejected": len(rejected),
            "window_minutes": config.window_minutes,
            "code_version": code_version(),
            "owner": OWNERS[0],
        })
        return dg.MaterializeResult(metadata=metadata)


    @dg.asset(
        group_name=GROUP,
        owners=OWNERS,
        kinds={"pandas", "matplotlib"},
        deps=served,
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
                      "budgets": dg.MetadataValue.json(operations.budgets())},
            description="; ".join(alerts) or "every team within its daily budget",
        )
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return [endpoint_metrics, cost_report]


LIVE_QUALITY_CHECK = "quality_holds"


def golden_live_quality(context: dg.AssetExecutionContext, spec, fmt, config, vllm: VllmResource,
                        mlflow: MLflowResource, model_signing: ModelSigningResource,
                        operations: OperationsResource, asset_key: dg.AssetKey) -> dg.MaterializeResult:
    """A classification model's reading: the policy's golden set asked of its live endpoint, judged
    against the version's eval report (or its first live reading); rollback where enabled."""
    from aiplat.policy import current_policy

    from aiplat.evaluation.gate import alert_line, emit_alert
    from aiplat.evaluation.golden import GoldenSetError, load_golden
    from aiplat.operations.quality import ask_golden, baseline_from_readings, judge, score
    from aiplat.operations.textfile import write_live_quality
    from aiplat.serving.backend import EndpointNotFound

    name, endpoint = spec.name, spec.endpoint
    try:
        champion = _alias_version(mlflow, name, "champion")
    except Exception as e:  # noqa: BLE001 - the registry being down must not stop the reading itself
        context.log.warning(f"model registry unreachable, reading the endpoint without it: {type(e).__name__}: {e}")
        champion = None
    try:
        target = vllm.live_target(endpoint, champion)
        golden = load_golden(current_policy().golden_version)
    except (EndpointNotFound, GoldenSetError) as e:
        raise dg.Failure(f"no golden-set reading: {e}") from e
    context.log.info(f"asking {len(golden.rows)} golden tickets of {target.endpoint} version {target.model_version}")
    answers = ask_golden(target, golden, max_tokens=config.max_tokens or spec.evaluation.max_new_tokens,
                         concurrency=operations.live_quality_concurrency,
                         record=operations.request_log().append, progress=context.log.info, fmt=fmt)
    quality = score(target, golden, answers)
    baseline = _report_baseline(mlflow, name, quality.model_version, golden) or baseline_from_readings(
        _earlier_readings(context.instance, asset_key), quality)
    verdict = judge(quality, baseline, operations.quality_thresholds())
    # The same reading as gauges for Prometheus (alert LiveQualityRegressed, deploy/observability).
    textfile = write_live_quality(operations.reports_path(), endpoint=target.endpoint, model=name,
                                  model_version=quality.model_version, accuracy=quality.accuracy,
                                  baseline_accuracy=baseline.accuracy if baseline else None,
                                  max_drop=operations.live_quality_max_golden_drop, measured_at=time.time())

    rollback = "not needed"
    if not verdict.passed:
        enabled = operations.rollback_on_quality_regression if config.rollback_on_regression is None \
            else config.rollback_on_regression
        emit_alert(alert_line("live_quality", name, quality.model_version, verdict.summary(), endpoint=target.endpoint,
                              action="rollback" if enabled else "alert"), context.log)
        rollback = _roll_back(context, spec, quality.model_version, champion, vllm, mlflow, model_signing, operations) \
            if enabled else "disabled (alert only)"
        context.log.warning(f"rollback: {rollback}")

    metadata: dict = {
        "endpoint": target.endpoint,
        "model_version": quality.model_version,
        "prometheus_textfile": str(textfile),
        "champion_version": champion or "",
        "golden_version": quality.golden_version,
        "golden_sha256": quality.golden_sha256,
        "max_tokens": config.max_tokens or spec.evaluation.max_new_tokens,  # the eval's budget unless set
        "golden_accuracy": dg.MetadataValue.float(quality.accuracy),
        "golden_macro_f1": dg.MetadataValue.float(quality.macro_f1),
        "parse_rate": dg.MetadataValue.float(quality.parse_rate),
        "error_rate": dg.MetadataValue.float(quality.error_rate),
        "latency_p50_ms": dg.MetadataValue.float(quality.latency_p50_ms),
        "latency_p95_ms": dg.MetadataValue.float(quality.latency_p95_ms),
        "leak_findings": len(quality.leak_findings),
        "misses": dg.MetadataValue.json(quality.misses),
        "baseline_accuracy": dg.MetadataValue.float(baseline.accuracy) if baseline else "none yet",
        "baseline_source": baseline.source if baseline else "this reading",
        "baseline_eligible": verdict.passed,
        "verdict": verdict.summary(),
        "rollback": rollback,
        "code_version": code_version(),
        "owner": spec.owner,
    }
    if verdict.drop is not None:
        metadata["golden_accuracy_drop"] = dg.MetadataValue.float(verdict.drop)
    check = dg.AssetCheckResult(
        check_name=LIVE_QUALITY_CHECK, passed=verdict.passed, severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.summary(),
        metadata={"reasons": dg.MetadataValue.json(verdict.reasons), "rollback": rollback,
                  "findings": dg.MetadataValue.json(quality.leak_findings)},
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _alias_version(mlflow: MLflowResource, name: str, alias: str) -> Optional[str]:
    from aiplat.evaluation.registry import alias_version

    ref = alias_version(mlflow.client, name, alias)
    return ref.version if ref else None


def _report_baseline(mlflow: MLflowResource, name: str, version: str, golden):
    """The golden accuracy the version's eval report measured; None for a version without one."""
    from aiplat.evaluation.registry import ModelVersionNotFound, ReportMissing, model_version, version_report
    from aiplat.operations.quality import baseline_from_report

    try:
        report, sha, _ = version_report(mlflow.client, model_version(mlflow.client, name, version))
    except (ModelVersionNotFound, ReportMissing):
        return None  # a drill served from a folder, or a version evaluated before reports existed
    except Exception:  # noqa: BLE001 - registry down: the live readings still give a baseline
        return None
    return baseline_from_report(report, sha, golden)


def _earlier_readings(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> list[dict]:
    """The latest readings, newest first; each carries the baseline it was judged against."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key), limit=200,
                                              ascending=False).records
    return [{**{k: v.value for k, v in r.asset_materialization.metadata.items()}, "run_id": r.run_id} for r in records]


def _roll_back(context: dg.AssetExecutionContext, spec, version: str, champion: Optional[str],
               vllm: VllmResource, mlflow: MLflowResource, model_signing: ModelSigningResource,
               operations: OperationsResource) -> str:
    """Serve the endpoint's previous version again and, when the regressed version is the champion,
    move the alias back too. Access-controlled and audited like a rollback by hand; any refusal
    leaves the live endpoint as it is and says why."""
    from aiplat.security.access import AccessDenied, current_identity
    from aiplat.security.signing import SignatureError
    from aiplat.serving.adapters import AdapterError
    from aiplat.serving.champion import PREVIOUS, MlflowAdapterSource, ModelResolutionError, restore_previous_alias
    from aiplat.serving.control import Caller, Change, controlled
    from aiplat.serving.backend import EndpointNotFound
    from aiplat.serving.server import ServerStartError

    name, endpoint = spec.name, spec.endpoint
    why = "live quality regression"
    caller = Caller(current_identity(context.run.tags), operations.audit_log(), {spec.name: spec.owner},
                    {"trigger": why, "dagster_run_id": context.run_id})
    previous_adapter = lambda: MlflowAdapterSource(mlflow.client, name, spec.base_model, PREVIOUS,  # noqa: E731
                                                   tracking_uri=mlflow.uri,
                                                   store_prefix=vllm.adapter_store_prefix()).resolve()

    def act():
        serving = vllm.roll_back(endpoint, model_signing.serving_keys(), adapter_previous=previous_adapter)
        alias = restore_previous_alias(mlflow.client, name) if champion == version else "champion alias not involved"
        return serving, alias

    try:
        # The version rolled away from is the one decided on (the previous one is verified as it starts).
        serving, alias = controlled(caller, Change("rollback", name, version, endpoint, done="endpoint rolled back"),
                                    act, details=lambda done: {"serving_version": done[0], "from_version": version,
                                                               "alias": done[1]})
    except AccessDenied as e:
        return f"refused: {e}"
    except (SignatureError, EndpointNotFound, ServerStartError, ModelResolutionError, AdapterError, ValueError) as e:
        return f"failed, version {version} still serves: {e}"
    return f"{endpoint} now serves version {serving} (was {version}); {alias}"


def grounded_live_quality(context: dg.AssetExecutionContext, spec, fmt, config, vllm: VllmResource,
                          mlflow: MLflowResource, operations: OperationsResource,
                          training_set) -> dg.MaterializeResult:
    """A generation model's reading: held-out tickets from its training set, grounded NOW in the
    live KB index (serving-time retrieval), asked of its endpoint; ROUGE-L against the held-out
    replies is judged against the version's eval report; groundedness and leaks are reported."""
    from aiplat.evaluation.gate import alert_line, emit_alert
    from aiplat.operations.draft_quality import ask_drafts, judge_drafts
    from aiplat.retrieval.grounding import add_passages
    from aiplat.serving.backend import EndpointNotFound
    from aiplat.training.data import normalize_columns

    try:
        champion = _alias_version(mlflow, spec.name, "champion")
    except Exception as e:  # noqa: BLE001 - the registry being down must not stop the reading itself
        context.log.warning(f"model registry unreachable, reading the endpoint without it: {type(e).__name__}: {e}")
        champion = None
    try:
        target = vllm.live_target(spec.endpoint, champion)
    except EndpointNotFound as e:
        raise dg.Failure(f"no live reading: {e}") from e
    held_out = normalize_columns(training_set)
    held_out = held_out[held_out["split"] == "test"].sort_values("ticket_id").head(
        config.rows or min(16, spec.evaluation.max_test_examples))
    r = spec.training.retrieval
    held_out = add_passages(held_out.drop(columns=["kb_passages"], errors="ignore"), context.resources.milvus.store,
                            context.resources.embeddings.embedder, r.top_k, r.max_passage_chars)
    quality = ask_drafts(target, held_out.to_dict("records"), fmt,
                         max_tokens=config.max_tokens or spec.evaluation.max_new_tokens,
                         record=operations.request_log().append)
    baseline = _report_rouge(mlflow, spec.name, quality.model_version)
    reasons = judge_drafts(quality, baseline, operations.live_quality_max_golden_drop, operations.live_quality_max_error_rate)
    summary = "; ".join(reasons) or "live drafts hold the eval report's quality"
    if reasons:
        emit_alert(alert_line("live_quality", spec.name, quality.model_version, summary, endpoint=spec.endpoint,
                              action="alert"), context.log)
    check = dg.AssetCheckResult(check_name=LIVE_QUALITY_CHECK, passed=not reasons, severity=dg.AssetCheckSeverity.ERROR,
                                description=summary, metadata={"reasons": dg.MetadataValue.json(reasons),
                                                               "findings": dg.MetadataValue.json(quality.leak_findings)})
    return dg.MaterializeResult(metadata={
        "endpoint": spec.endpoint, "model_version": quality.model_version, "champion_version": champion or "",
        "rows": quality.rows, "max_tokens": config.max_tokens or spec.evaluation.max_new_tokens,
        "reply_rouge_l": dg.MetadataValue.float(quality.reply_rouge_l),
        "groundedness": dg.MetadataValue.float(quality.groundedness),
        "error_rate": dg.MetadataValue.float(quality.error_rate),
        "latency_p50_ms": dg.MetadataValue.float(quality.latency_p50_ms),
        "leak_findings": len(quality.leak_findings),
        "baseline_rouge_l": dg.MetadataValue.float(baseline) if baseline is not None else "none",
        "baseline_source": "eval report" if baseline is not None else "none",
        "verdict": summary, "code_version": code_version(), "owner": spec.owner,
    }, check_results=[check])


def _report_rouge(mlflow: MLflowResource, name: str, version: str) -> Optional[float]:
    from aiplat.evaluation.registry import model_version, version_report

    try:
        report, _, _ = version_report(mlflow.client, model_version(mlflow.client, name, version))
    except Exception:  # noqa: BLE001 - no report (a drill) or registry down: no baseline
        return None
    return ((report.get("comparison") or {}).get("reply_rouge_l") or {}).get("candidate")
