"""Evaluation: one eval report per candidate model version, the blocking promotion gate, and the
`champion` alias it guards. The work is aiplat.evaluation; these assets only wire it up."""

from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from aiplat.evaluation.evaluate import EvalDataError
from aiplat.evaluation.gate import alert_line, emit_alert
from aiplat.evaluation.golden import DEFAULT_GOLDEN_VERSION, GoldenSetError
from aiplat.evaluation.leak import DEFAULT_CANARIES
from aiplat.evaluation.pipeline import evaluate_version
from aiplat.evaluation.promotion import PromotionRefused, promote, verify_report
from aiplat.evaluation.registry import (
    CHAMPION,
    ModelVersionNotFound,
    ReportMissing,
    alias_version,
    model_version,
)
from aiplat.evaluation.settings import EvalSettings, GateThresholds
from aiplat.models.base import prepare_base_model
from aiplat.provenance import code_version
from resources.mlflow import MLflowResource
from resources.operations import OperationsResource

OWNER = "team:ml"
GROUP = "evaluation"
FINE_TUNED_MODEL = dg.AssetKey("fine_tuned_model")
BASE_MODEL = dg.AssetKey("base_model")
EVAL_REPORT = dg.AssetKey("eval_report")
CHAMPION_MODEL = dg.AssetKey("champion_model")
_DEFAULT_SETTINGS = EvalSettings()
_DEFAULT_GATE = GateThresholds()


class EvalReportConfig(dg.Config):
    """What is evaluated, how much, and the gate's thresholds (see docs/evaluation.md)."""

    model_name: Optional[str] = Field(default=None, description="Default: the latest fine_tuned_model materialization's")
    model_version: Optional[str] = Field(default=None, description="Default: the latest fine_tuned_model materialization's")
    compare_with_base: bool = True
    max_test_examples: int = _DEFAULT_SETTINGS.max_test_examples
    max_new_tokens: int = _DEFAULT_SETTINGS.max_new_tokens
    batch_size: int = _DEFAULT_SETTINGS.batch_size
    max_prompt_tokens: int = _DEFAULT_SETTINGS.max_prompt_tokens
    latency_samples: int = _DEFAULT_SETTINGS.latency_samples
    samples_in_report: int = _DEFAULT_SETTINGS.samples_in_report
    golden_version: str = DEFAULT_GOLDEN_VERSION
    canaries: list[str] = Field(default_factory=lambda: list(DEFAULT_CANARIES))
    threads: int = 0
    min_accuracy: float = _DEFAULT_GATE.min_accuracy
    min_macro_f1: float = _DEFAULT_GATE.min_macro_f1
    min_golden_accuracy: float = _DEFAULT_GATE.min_golden_accuracy
    min_reply_rouge_l: float = _DEFAULT_GATE.min_reply_rouge_l
    min_parse_rate: float = _DEFAULT_GATE.min_parse_rate
    max_accuracy_drop: float = _DEFAULT_GATE.max_accuracy_drop
    max_macro_f1_drop: float = _DEFAULT_GATE.max_macro_f1_drop
    max_golden_accuracy_drop: float = _DEFAULT_GATE.max_golden_accuracy_drop
    max_reply_rouge_l_drop: float = _DEFAULT_GATE.max_reply_rouge_l_drop
    max_latency_ratio: Optional[float] = _DEFAULT_GATE.max_latency_ratio
    min_accuracy_gain_over_base: Optional[float] = _DEFAULT_GATE.min_accuracy_gain_over_base

    def settings(self) -> EvalSettings:
        fields = set(EvalSettings.model_fields)
        values = {k: v for k, v in self.model_dump().items() if k in fields}
        return EvalSettings(**{**values, "canaries": tuple(self.canaries)})

    def thresholds(self) -> GateThresholds:
        fields = set(GateThresholds.model_fields)
        return GateThresholds(**{k: v for k, v in self.model_dump().items() if k in fields})


def _latest_metadata(context, key: dg.AssetKey) -> dict | None:
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _candidate(context, config: EvalReportConfig) -> tuple[str, str, str | None]:
    if config.model_name and config.model_version:
        return config.model_name, config.model_version, None
    meta = _latest_metadata(context, FINE_TUNED_MODEL)
    if meta is None or "registered_model" not in meta or "model_version" not in meta:
        raise dg.Failure("fine_tuned_model has no materialization naming a registered model version; "
                         "materialize it first or set model_name and model_version in the run config")
    return str(meta["registered_model"]), str(meta["model_version"]), meta.get("merged_path")


def _base_folder(context) -> Path | None:
    meta = _latest_metadata(context, BASE_MODEL)
    if meta is None or "path" not in meta:
        context.log.warning("base_model has no materialization with a path; the report has no base comparison")
        return None
    path = Path(str(meta["path"]))
    if not path.is_dir() and meta.get("source") and meta.get("name"):
        # Another pod prepared it: prepare it here the same way (a no-op where it already is).
        path = prepare_base_model(str(meta["source"]), str(meta["name"]), progress=context.log.info).path
    return path


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"pytorch", "mlflow"},
    deps=[FINE_TUNED_MODEL],
    ins={"training_set": dg.AssetIn(key=["training_set"])},
    description=(
        "Eval report of the newest fine-tuned model version: triage accuracy and macro-F1 and reply "
        "ROUGE-L on the held-out test split, the golden set, a PII-leak probe, latency and throughput, "
        "each against the base model and the current champion. Markdown/HTML page with plots in MLflow; "
        "the sha256 of its JSON is the report hash."
    ),
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvalReportConfig, mlflow: MLflowResource, training_set: pd.DataFrame
) -> dg.MaterializeResult:
    name, version, hint = _candidate(context, config)
    base_folder = _base_folder(context) if config.compare_with_base else None
    mlflow.check_available()
    try:
        outcome = evaluate_version(
            mlflow.client, mlflow.uri, name, version, training_set, config.settings(), config.thresholds(),
            base_folder=base_folder, candidate_hint=hint, dagster_run_id=context.run_id, progress=context.log.info,
        )
    except (EvalDataError, GoldenSetError, ModelVersionNotFound) as e:
        raise dg.Failure(str(e)) from e
    c = outcome.report["comparison"]
    return dg.MaterializeResult(
        metadata={
            "registered_model": name,
            "model_version": version,
            "report_sha256": outcome.sha256,
            "gate_passed": dg.MetadataValue.bool(outcome.passed),
            "gate_reasons": dg.MetadataValue.json(outcome.reasons),
            "champion_version": outcome.champion.version if outcome.champion else "",
            "eval_run": dg.MetadataValue.url(outcome.logged.run_url),
            "report_page": dg.MetadataValue.url(outcome.logged.html_url),
            "report": dg.MetadataValue.md(outcome.markdown),
            **{f"{metric}": dg.MetadataValue.float(float(row["candidate"])) for metric, row in c.items()},
            "comparison": dg.MetadataValue.json(c),
            "test_set_sha256": outcome.report["datasets"]["test"]["sha256"],
            "golden_set": f"{outcome.report['datasets']['golden']['version']}:{outcome.report['datasets']['golden']['sha256'][:16]}",
            "model_sha256": outcome.report["model"]["model_sha256"],
            "code_version": code_version(),
            "owner": OWNER,
        },
        data_version=dg.DataVersion(outcome.sha256),
    )


@dg.asset_check(
    asset=eval_report,
    name="eval_gate",
    blocking=True,
    description="The report is in MLflow, intact, current (this version, this champion) and its gate passed. "
                "Failing stops promotion in the same run and logs an AIPLAT_ALERT line.",
)
def eval_gate(context: dg.AssetCheckExecutionContext, mlflow: MLflowResource) -> dg.AssetCheckResult:
    meta = _latest_metadata(context, EVAL_REPORT)
    if meta is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description="eval_report has never been materialized")
    name, version, sha = str(meta["registered_model"]), str(meta["model_version"]), str(meta["report_sha256"])
    try:
        ref = model_version(mlflow.client, name, version)
        verify_report(mlflow.client, ref, alias_version(mlflow.client, name, CHAMPION), expected_sha256=sha)
    except (PromotionRefused, ModelVersionNotFound, ReportMissing) as e:
        reason = e.reason if isinstance(e, PromotionRefused) else str(e)
        emit_alert(alert_line("eval", name, version, reason, report=sha[:12], run=context.run.run_id), context.log)
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, description=reason[:1000],
            metadata={"registered_model": name, "model_version": version, "report_sha256": sha, "reason": reason},
        )
    return dg.AssetCheckResult(passed=True, metadata={"registered_model": name, "model_version": version,
                                                      "report_sha256": sha})


class PromotionConfig(dg.Config):
    """Which report to promote on; unset = the latest eval_report materialization."""

    model_name: Optional[str] = None
    model_version: Optional[str] = None
    report_sha256: Optional[str] = None


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"mlflow"},
    deps=[eval_report],
    description="The registered model's `champion` alias: moved to a version only on its passing, current "
                "eval report (the old champion becomes `previous`); tagged with the report hash and run id.",
)
def champion_model(context: dg.AssetExecutionContext, config: PromotionConfig, mlflow: MLflowResource,
                   operations: OperationsResource) -> dg.MaterializeResult:
    from aiplat.security.access import AccessDenied, current_identity

    if config.model_name and config.model_version:
        name, version, sha = config.model_name, config.model_version, config.report_sha256
    else:
        meta = _latest_metadata(context, EVAL_REPORT)
        if meta is None:
            raise dg.Failure("no eval_report to promote on; materialize eval_report first")
        name, version, sha = str(meta["registered_model"]), str(meta["model_version"]), str(meta["report_sha256"])
    try:
        out = promote(mlflow.client, name, version, dagster_run_id=context.run_id, actor="dagster",
                      expected_report_sha256=sha, identity=current_identity(context.run.tags),
                      owners=operations.model_owner_teams, audit=operations.audit_log())
    except AccessDenied as e:
        raise dg.Failure(f"access denied: {e}") from e
    except (PromotionRefused, ModelVersionNotFound) as e:
        reason = e.reason if isinstance(e, PromotionRefused) else str(e)
        emit_alert(alert_line("promotion", name, version, reason, run=context.run_id), context.log)
        raise dg.Failure(str(e)) from e
    context.log.info(f"{name}: {out.status} ({out.detail})")
    return dg.MaterializeResult(
        metadata={
            "registered_model": name,
            "champion_version": version,
            "previous_version": out.previous_version or "",
            "status": out.status,
            "report_sha256": out.report_sha256 or "",
            "model_uri": f"models:/{name}@{CHAMPION}",
            "promotion_log_run_id": out.log_run_id or "",
            "code_version": code_version(),
            "owner": OWNER,
        },
        data_version=dg.DataVersion(f"{name}/{version}"),
    )
