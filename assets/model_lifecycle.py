"""The asset factory: one model spec (models/<name>.yaml, aiplat.specs) becomes that model's whole
chain, generated, never hand-written:

  <model>/training_set -> <model>/fine_tuned_model -> <model>/eval_report (+ blocking eval_gate)
  -> <model>/champion -> <model>/served_endpoint -> <model>/endpoint_load_test, <model>/live_quality
  (classification models also <model>/predictions: batch inference per landed ticket batch)

with asset keys prefixed by the model, `owners` = its team and `group_name` = the model; plus its
fine-tuning job, promotion job and sensor, and live-quality schedule. A grounded model's training
set and endpoint also depend on kb_index (its prompts carry retrieved KB passages).

Thin: the work is aiplat.* (the CLI and the tests call the same functions). Nothing here names a
particular model or team: every name comes from the spec.
"""


from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from aiplat import config as aiplat_config
from aiplat.provenance import code_version, git_commit
from aiplat.specs import ModelSpec
from aiplat.training.prompts import PromptFormat
from resources.kubernetes import GPU_TRAINING_POOL, GpuPlacement, gpu_training_tags
from resources.mlflow import MLflowResource
from resources.operations import OperationsResource
from resources.ray import RayResource
from resources.signing import ModelSigningResource
from resources.vllm import VllmResource

BASE_MODEL = dg.AssetKey("base_model")
REDACTED_TICKETS = dg.AssetKey("redacted_tickets")
FEATURE_STAGE = [dg.AssetKey("customer_features"), dg.AssetKey("ticket_features"), dg.AssetKey("feature_registry")]
KB_INDEX = dg.AssetKey("kb_index")
RETRIEVAL_RESOURCES = {"milvus", "embeddings"}


def training_tags(spec: ModelSpec) -> dict[str, str]:
    """The GPU pool placement of the model's fine-tune, its pods labelled with the owner team."""
    return gpu_training_tags(GpuPlacement(team=spec.owner.removeprefix("team:")))


def prompt_format(spec: ModelSpec) -> PromptFormat:
    return spec.prompt_format


def owners_of(spec: ModelSpec) -> dict[str, str]:
    return {spec.name: spec.owner}


def _reap_orphans(context: dg.AssetExecutionContext, mlflow: MLflowResource, experiment: str, asset_key: str) -> None:
    """Close the MLflow runs that killed attempts left RUNNING (aiplat.training.orphans)."""
    from aiplat.training.orphans import reap_orphaned_runs

    def in_progress(run_id: str) -> bool:
        run = context.instance.get_run_by_id(run_id)
        return run is None or not run.is_finished  # a run this instance does not know: leave it

    try:
        reaped = reap_orphaned_runs(mlflow.client, experiment, asset_key, context.run_id, in_progress)
    except Exception as e:  # noqa: BLE001 - MLflow down is reported by the fine-tune's own preflight
        context.log.warning(f"could not check for orphaned MLflow runs: {type(e).__name__}: {e}")
        return
    for r in reaped:
        context.log.warning(f"MLflow run {r.run_id} marked FAILED ({r.reason})"
                            + (f"; deleted its versions {', '.join(r.deleted_versions)}" if r.deleted_versions else ""))


def _ray_cluster(ray: RayResource | None):
    """Where a Ray Train fine-tune runs: the asset's `ray` resource, else the runtime's."""
    if ray is None:
        from aiplat.commands._resources import runtime_resource

        ray = runtime_resource("ray")
    return ray.cluster()


def _latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict | None:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


# --------------------------------------------------------------------------------------------
# run config: what a launcher may choose. Gate thresholds may only be tightened (see _thresholds).


class FineTuneConfig(dg.Config):
    """Overrides of the spec's fine-tune hyperparameters (aiplat.training.lora.FineTuneParams)."""

    steps: Optional[int] = None
    learning_rate: Optional[float] = None
    warmup_steps: Optional[int] = None
    lora_r: Optional[int] = None
    lora_alpha: Optional[int] = None
    batch_size: Optional[int] = None
    max_length: Optional[int] = None
    seed: Optional[int] = None
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    device: Optional[str] = None
    ray_workers: Optional[int] = Field(default=None, ge=0, description=(
        "Ray Train DDP workers (0: train in the step's own process); default: the spec's fine_tune.ray_workers"))
    keep_local_runs: int = Field(default=3, ge=1, description=(
        "Local working copies of fine-tunes (and downloaded eval copies) kept; MLflow holds every version"))

    def params(self, spec: ModelSpec):
        from aiplat.training.lora import FineTuneParams

        overrides = {k: v for k, v in self.model_dump(exclude={"keep_local_runs"}).items() if v is not None}
        return FineTuneParams(**{**spec.fine_tune.model_dump(), **overrides})


class EvalReportConfig(dg.Config):
    """Sizes of the evaluation, and gate thresholds that may only TIGHTEN the spec and the platform
    policy (a looser value refuses the run). Canaries and the golden set are the policy's."""

    model_version: Optional[str] = Field(default=None, description="Default: the latest fine_tuned_model's")
    compare_with_base: bool = True
    max_test_examples: Optional[int] = Field(default=None, description="Default: the spec's; never below the policy's")
    max_new_tokens: Optional[int] = None
    batch_size: Optional[int] = None
    latency_samples: Optional[int] = None
    samples_in_report: Optional[int] = None
    threads: int = 0
    tighten: dict[str, Optional[float]] = Field(default_factory=dict, description=(
        "Gate rules stricter than the spec's (e.g. {min_accuracy: 0.9}); looser ones are refused"))
    # Spelled like the old run config so a launcher that still sets them is refused, not ignored.
    min_accuracy: Optional[float] = None
    min_macro_f1: Optional[float] = None
    min_golden_accuracy: Optional[float] = None
    min_reply_rouge_l: Optional[float] = None
    min_parse_rate: Optional[float] = None
    max_latency_ratio: Optional[float] = None
    min_accuracy_gain_over_base: Optional[float] = None


LEGACY_THRESHOLDS = ("min_accuracy", "min_macro_f1", "min_golden_accuracy", "min_reply_rouge_l", "min_parse_rate",
                     "max_latency_ratio", "min_accuracy_gain_over_base")


def effective_thresholds(spec: ModelSpec, config: EvalReportConfig | None, policy) -> dict:
    """Policy floor <- spec <- run config, each step only tightening; PolicyError otherwise."""
    rules = policy.tighten(spec.task, spec.evaluation.thresholds, where=f"{spec.source_file} evaluation.thresholds")
    if config is not None:
        asked = dict(config.tighten)
        asked.update({k: getattr(config, k) for k in LEGACY_THRESHOLDS if getattr(config, k) is not None})
        from aiplat.policy import PolicyError, looser_fields

        unknown = sorted(set(asked) - set(rules))
        if unknown:
            raise PolicyError(f"run config: {', '.join(unknown)} is not a gate rule of {spec.name} "
                              f"(rules: {', '.join(sorted(rules))})")
        loose = looser_fields(rules, asked)
        if loose:
            raise PolicyError("run config may only tighten the gate: " + "; ".join(loose))
        rules = {**rules, **asked}
    return rules


def eval_settings(spec: ModelSpec, config: EvalReportConfig | None, policy):
    from aiplat.evaluation.settings import EvalSettings
    from aiplat.policy import PolicyError

    e = spec.evaluation
    values = {"max_test_examples": e.max_test_examples, "max_new_tokens": e.max_new_tokens,
              "batch_size": e.batch_size, "latency_samples": e.latency_samples}
    if config is not None:
        values.update({k: getattr(config, k) for k in ("max_test_examples", "max_new_tokens", "batch_size",
                                                       "latency_samples", "samples_in_report") if getattr(config, k) is not None})
        values["threads"] = config.threads
    if values["max_test_examples"] < policy.min_test_examples:
        raise PolicyError(f"run config: max_test_examples={values['max_test_examples']} is below the platform "
                          f"policy's minimum test split of {policy.min_test_examples}")
    return EvalSettings(**values, golden_version=policy.golden_version)


class PromotionConfig(dg.Config):
    """Which version to promote on which report; unset = the latest eval_report materialization."""

    model_version: Optional[str] = None
    report_sha256: Optional[str] = None


class ServedEndpointConfig(dg.Config):
    load_sample: list[str] = Field(default_factory=list, description="Prompts the canary sends through the gateway; "
                                   "empty = the built-in load sample")


class LoadTestConfig(dg.Config):
    # Unset = the model spec's `load_test` (what "Materialize all", with no run config, runs).
    concurrencies: Optional[list[int]] = Field(default=None, description="Unset = the spec's load_test.concurrencies")
    num_prompts: Optional[int] = Field(default=None, description="Requests per concurrency; unset = the spec's, else max(sample, 2 x concurrency)")
    output_len: Optional[int] = Field(default=None, description="Unset = the spec's load_test.output_len")
    prompts: list[str] = Field(default_factory=list, description="Load sample; empty = the built-in one")


class LiveQualityConfig(dg.Config):
    rollback_on_regression: Optional[bool] = Field(
        default=None, description="Override the deployment's OperationsResource.rollback_on_quality_regression")
    max_tokens: Optional[int] = Field(default=None, ge=4, description=(
        "Generation budget per answer; default: the spec's evaluation.max_new_tokens, the budget the eval "
        "report's baseline was generated with (another budget would compare different answers)"))
    rows: Optional[int] = Field(default=None, ge=1, description=(
        "generation models: held-out tickets asked; default: the eval's first min(16, max_test_examples)"))


# --------------------------------------------------------------------------------------------


@dataclass
class ModelChain:
    spec: ModelSpec
    assets: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    jobs: list = field(default_factory=list)
    sensors: list = field(default_factory=list)
    schedules: list = field(default_factory=list)

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.spec.key_prefix, name])


def model_chain(spec: ModelSpec) -> ModelChain:
    """Every definition of one model, from its spec."""
    p = spec.key_prefix
    key = lambda name: dg.AssetKey([p, name])  # noqa: E731
    owners = [spec.owner]
    group = p
    fmt = prompt_format(spec)
    chain = ModelChain(spec)
    TRAINING_SET, FINE_TUNED, EVAL_REPORT = key("training_set"), key("fine_tuned_model"), key("eval_report")
    CHAMPION, SERVED, LIVE_QUALITY = key("champion"), key("served_endpoint"), key("live_quality")
    grounding = [KB_INDEX] if spec.grounded else []

    # ---- training set ------------------------------------------------------------------------
    @dg.asset(
        key=TRAINING_SET,
        group_name=group,
        owners=owners,
        kinds={"pandas", "parquet", "feast"} | ({"milvus"} if spec.grounded else set()),
        ins={"redacted_tickets": dg.AssetIn(key=REDACTED_TICKETS)},
        deps=[*FEATURE_STAGE, *grounding],
        io_manager_key="lake",
        # Only a grounded model's steps connect to Milvus and load the embedder.
        required_resource_keys={"feast", *(RETRIEVAL_RESOURCES if spec.grounded else ())},
        description=(
            f"{spec.name}: labeled redacted tickets joined point-in-time with the `{spec.training.feature_service}` "
            "features as of each ticket's created_at; deterministic train/validation/test split by hash of ticket_id"
            + (f"; each row carries the top {spec.training.retrieval.top_k} KB passages retrieved from kb_index."
               if spec.grounded else ".")
        ),
    )
    def training_set(context: dg.AssetExecutionContext, redacted_tickets: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        from aiplat.features import training
        from aiplat.features import store as feast_store
        from aiplat.intake.combine import current_tickets
        from aiplat.provenance import frame_hash

        feast = context.resources.feast
        current = current_tickets(redacted_tickets)
        entities = training.labeled_entities(current)
        if entities.empty:
            raise dg.Failure("no labeled tickets (category and agent reply) to build a training set from")
        service = spec.training.feature_service
        joined = feast_store.historical_features(feast.store, entities, service)
        features = feast_store.feature_columns(feast.store, service)
        df = training.finish_training_set(joined, features)
        if len(df) != len(entities):
            raise dg.Failure(f"the point-in-time join returned {len(df)} rows for {len(entities)} labeled tickets")
        extra: dict = {}
        if spec.grounded:
            from aiplat.retrieval.grounding import add_passages

            r = spec.training.retrieval
            milvus, embeddings = context.resources.milvus, context.resources.embeddings
            df = add_passages(df, milvus.store, embeddings.embedder, r.top_k, r.max_passage_chars)
            with_passages = int((df["kb_passages"].str.len() > 0).sum())
            extra = {"kb_alias": milvus.store.settings.alias, "rows_with_passages": dg.MetadataValue.int(with_passages),
                     "top_k": r.top_k}
        counts = training.split_counts(df)
        return dg.Output(df, metadata={
            "dagster/row_count": dg.MetadataValue.int(len(df)),
            "split_counts": dg.MetadataValue.json(counts),
            "content_hash": dg.MetadataValue.text(training.content_hash(df)),
            "feature_service": dg.MetadataValue.text(service),
            "feature_columns": dg.MetadataValue.json(features),
            "definitions_hash": dg.MetadataValue.text(feast.definitions().fingerprint()),
            "label_counts": dg.MetadataValue.json({k: int(v) for k, v in df["label"].value_counts().items()}),
            "dropped_unlabeled": dg.MetadataValue.int(len(current) - len(entities)),
            "upstream_rows": dg.MetadataValue.int(len(redacted_tickets)),
            "current_tickets": dg.MetadataValue.int(len(current)),
            "upstream_hash": dg.MetadataValue.text(frame_hash(redacted_tickets)),
            "model": spec.name, "owner": spec.owner, "code_version": code_version(), **extra,
        })

    # ---- fine-tune ---------------------------------------------------------------------------
    def fine_tune_step(context: dg.AssetExecutionContext, config: FineTuneConfig, mlflow: MLflowResource,
                       model_signing: ModelSigningResource, training_set: pd.DataFrame,
                       ray: RayResource | None) -> dg.MaterializeResult:
        from aiplat.models.base import prepare_base_model
        from aiplat.security.signing import SignatureError
        from aiplat.training.data import TrainingSetError, training_set_hash
        from aiplat.training.tracking import Lineage, MlflowUnavailableError, preflight, tracked_fine_tune

        params = config.params(spec)
        base = _latest_metadata(context.instance, BASE_MODEL)
        if base is None:
            raise dg.Failure("base_model has never been materialized; materialize it before fine_tuned_model")
        prepared = prepare_base_model(str(base["source"]), str(base["name"]), progress=context.log.info)
        if prepared.folder_sha256 != str(base["folder_sha256"]):
            raise dg.Failure(f"base model {base['name']} now hashes to {prepared.folder_sha256[:12]}, but base_model "
                             f"was materialized as {str(base['folder_sha256'])[:12]}; re-materialize base_model first")
        try:
            dataset_hash = training_set_hash(training_set)
            lineage = Lineage(dagster_run_id=context.run_id, asset_key=context.asset_key.to_user_string(),
                              code_version=code_version(), git_commit=git_commit(), training_set_sha256=dataset_hash,
                              base_model_sha256=prepared.folder_sha256, base_model_source=prepared.source,
                              extra={"aiplat.model_spec": spec.name})
            work_dir = aiplat_config.local_paths().models / "fine_tuned" / spec.name / context.run_id
            preflight(mlflow.client, mlflow.uri)  # fails fast (MlflowUnavailableError) before anything waits on MLflow
            _reap_orphans(context, mlflow, spec.experiment, lineage.asset_key)
            tracked = tracked_fine_tune(
                mlflow.client, mlflow.uri, spec.experiment, spec.name, lineage, prepared.path, training_set, params,
                work_dir, system_metrics_interval_s=mlflow.system_metrics_interval_s or None,
                on_step=lambda m: context.log.debug(f"step {m.step}: loss {m.loss:.4f}"),
                signing_keys=model_signing.key_pair(), owner_team=spec.owner, prompt_format=fmt,
                description=spec.description, ray_cluster=_ray_cluster(ray) if params.ray_workers else None,
            )
        except MlflowUnavailableError as e:
            raise dg.Failure(str(e)) from e
        except (TrainingSetError, SignatureError) as e:
            # Bad data or a bad signature: trying again changes nothing.
            raise dg.Failure(str(e), allow_retries=False) from e
        result, signed = tracked.result, tracked.signature
        _prune_local_copies(context, spec.name, work_dir, config.keep_local_runs)
        return dg.MaterializeResult(metadata={
            "mlflow_run": dg.MetadataValue.url(tracked.run_url),
            "mlflow_run_id": tracked.run_id,
            "registered_model": tracked.model_name,
            "model_version": tracked.model_version,
            "model_uri": f"models:/{tracked.model_name}/{tracked.model_version}",
            "model_version_link": dg.MetadataValue.url(tracked.model_version_url),
            "training_set_sha256": dataset_hash,
            "base_model_sha256": prepared.folder_sha256,
            "adapter_sha256": result.adapter_sha256,
            "final_train_loss": dg.MetadataValue.float(result.final_loss),
            "eval_loss": dg.MetadataValue.float(result.eval_loss) if result.eval_loss is not None else None,
            "train_examples": result.train_examples,
            "tokens_per_second": dg.MetadataValue.float(round(result.tokens_per_second, 1)),
            "device": result.device,
            "adapter_path": dg.MetadataValue.path(str(result.adapter_dir)),
            "hyperparameters": dg.MetadataValue.json(params.model_dump()),
            "signature_sha256": signed.signature_sha256,
            "signature_model_digest": signed.model_digest,
            "signing_key_fingerprint": signed.key_fingerprint,
            "signing_key_label": signed.key_label,
            "code_version": lineage.code_version,
            "owner": spec.owner,
        }, data_version=dg.DataVersion(result.adapter_sha256))

    fine_tune_asset = dg.asset(
        key=FINE_TUNED,
        group_name=group,
        owners=owners,
        kinds={"pytorch", "mlflow", "safetensors"},
        ins={"training_set": dg.AssetIn(key=TRAINING_SET)},
        deps=[BASE_MODEL],
        pool=GPU_TRAINING_POOL,
        op_tags=training_tags(spec),
        # MLflow unreachable for a while: the attempt fails before registering anything and a later
        # attempt (which first closes the runs dead attempts left RUNNING) trains again.
        retry_policy=dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
        description=(f"LoRA fine-tune of {spec.base_model} for {spec.name} ({spec.task}): one MLflow run in "
                     f"`{spec.experiment}`, the LoRA adapter (safetensors) as its artifact, signed, and a new "
                     f"version of the registered model `{spec.name}` tagged with its lineage"
                     + (f"; trained on Ray Train with {spec.fine_tune.ray_workers} workers."
                        if spec.fine_tune.ray_workers else ".")),
    )
    # A spec that trains on Ray (fine_tune.ray_workers > 0) gets the `ray` resource, so the chain
    # shows it and a launcher can point it at a cluster; the others need none (a run config that
    # turns Ray on for one of them joins the runtime's RayResource: _ray_cluster).
    if spec.fine_tune.ray_workers:
        @fine_tune_asset
        def fine_tuned_model(context: dg.AssetExecutionContext, config: FineTuneConfig, mlflow: MLflowResource,
                             model_signing: ModelSigningResource, ray: RayResource,
                             training_set: pd.DataFrame) -> dg.MaterializeResult:
            return fine_tune_step(context, config, mlflow, model_signing, training_set, ray)
    else:
        @fine_tune_asset
        def fine_tuned_model(context: dg.AssetExecutionContext, config: FineTuneConfig, mlflow: MLflowResource,
                             model_signing: ModelSigningResource, training_set: pd.DataFrame) -> dg.MaterializeResult:
            return fine_tune_step(context, config, mlflow, model_signing, training_set, None)

    # ---- evaluation and its blocking gate ----------------------------------------------------
    @dg.asset(
        key=EVAL_REPORT,
        group_name=group,
        owners=owners,
        kinds={"pytorch", "mlflow"},
        deps=[FINE_TUNED],
        ins={"training_set": dg.AssetIn(key=TRAINING_SET)},
        description=(f"Eval report of the newest {spec.name} version ({spec.evaluation.suite} suite) on the held-out "
                     "test split, with the leak probe, latency and throughput, against the base model and the current "
                     "champion; gated on the platform policy floor tightened by the spec. Its JSON's sha256 is the "
                     "report hash; it records the policy digest."),
    )
    def eval_report(context: dg.AssetExecutionContext, config: EvalReportConfig, mlflow: MLflowResource,
                    training_set: pd.DataFrame) -> dg.MaterializeResult:
        from aiplat.evaluation.evaluate import EvalDataError
        from aiplat.evaluation.golden import GoldenSetError
        from aiplat.evaluation.pipeline import evaluate_version
        from aiplat.evaluation.registry import ModelVersionNotFound
        from aiplat.evaluation.settings import GateThresholds
        from aiplat.policy import PolicyError, current_policy

        policy = current_policy()
        try:
            thresholds = GateThresholds.only(effective_thresholds(spec, config, policy))
            settings = eval_settings(spec, config, policy)
        except PolicyError as e:
            raise dg.Failure(f"refused: {e}") from e
        meta = _latest_metadata(context.instance, FINE_TUNED) or {}
        version = config.model_version or meta.get("model_version")
        if not version:
            raise dg.Failure(f"{FINE_TUNED.to_user_string()} has no materialization naming a model version; "
                             "materialize it first or set model_version in the run config")
        same = str(meta.get("model_version")) == str(version)
        adapter_hint = meta.get("adapter_path") if same else None
        # The prepared base: a version's adapter is evaluated over it, as an adapter server serves it.
        adapter_base = _base_folder(context)
        base_folder = adapter_base if config.compare_with_base else None
        mlflow.check_available()
        try:
            outcome = evaluate_version(
                mlflow.client, mlflow.uri, spec.name, str(version), training_set, settings, thresholds,
                base_folder=base_folder, adapter_base=adapter_base, adapter_hint=adapter_hint,
                dagster_run_id=context.run_id, progress=context.log.info,
                prompt_format=fmt, policy=policy,
            )
        except (EvalDataError, GoldenSetError, ModelVersionNotFound) as e:
            raise dg.Failure(str(e)) from e
        c = outcome.report["comparison"]
        datasets = outcome.report["datasets"]
        return dg.MaterializeResult(metadata={
            "registered_model": spec.name,
            "model_version": str(version),
            "report_sha256": outcome.sha256,
            "gate_passed": dg.MetadataValue.bool(outcome.passed),
            "gate_reasons": dg.MetadataValue.json(outcome.reasons),
            "champion_version": outcome.champion.version if outcome.champion else "",
            "eval_run": dg.MetadataValue.url(outcome.logged.run_url),
            "report_page": dg.MetadataValue.url(outcome.logged.html_url),
            "report": dg.MetadataValue.md(outcome.markdown),
            **{metric: dg.MetadataValue.float(float(row["candidate"])) for metric, row in c.items()},
            "comparison": dg.MetadataValue.json(c),
            "thresholds": dg.MetadataValue.json(outcome.report["thresholds"]),
            "policy_sha256": policy.digest,
            "test_set_sha256": datasets["test"]["sha256"],
            "training_set_sha256": datasets["test"]["training_set_sha256"],
            **({"golden_set": f"{datasets['golden']['version']}:{datasets['golden']['sha256'][:16]}"}
               if "golden" in datasets else {}),
            "model_sha256": outcome.report["model"]["model_sha256"],
            "code_version": code_version(),
            "owner": spec.owner,
        }, data_version=dg.DataVersion(outcome.sha256))

    @dg.asset_check(
        asset=eval_report,
        name="eval_gate",
        blocking=True,
        description="The report is in MLflow, intact, current (this version, this champion, this gate policy, its "
                    "golden and test sets) and its gate passed. Failing stops promotion in the same run and logs an "
                    "AIPLAT_ALERT line.",
    )
    def eval_gate(context: dg.AssetCheckExecutionContext, mlflow: MLflowResource) -> dg.AssetCheckResult:
        from aiplat.evaluation.gate import alert_line, emit_alert
        from aiplat.evaluation.promotion import PromotionRefused, champion_compared, verify_report
        from aiplat.evaluation.registry import ModelVersionNotFound, ReportMissing, model_version

        meta = _latest_metadata(context.instance, EVAL_REPORT)
        if meta is None:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                       description="eval_report has never been materialized")
        version, sha = str(meta["model_version"]), str(meta["report_sha256"])
        try:
            ref = model_version(mlflow.client, spec.name, version)
            verify_report(mlflow.client, ref, champion_compared(mlflow.client, spec.name, version), expected_sha256=sha)
        except (PromotionRefused, ModelVersionNotFound, ReportMissing) as e:
            reason = e.reason if isinstance(e, PromotionRefused) else str(e)
            emit_alert(alert_line("eval", spec.name, version, reason, report=sha[:12], run=context.run.run_id), context.log)
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=reason[:1000],
                                       metadata={"registered_model": spec.name, "model_version": version,
                                                 "report_sha256": sha, "reason": reason})
        return dg.AssetCheckResult(passed=True, metadata={"registered_model": spec.name, "model_version": version,
                                                          "report_sha256": sha})

    # ---- champion ----------------------------------------------------------------------------
    @dg.asset(
        key=CHAMPION,
        group_name=group,
        owners=owners,
        kinds={"mlflow"},
        deps=[EVAL_REPORT],
        description=f"The `champion` alias of `{spec.name}`: moved to a version only on its passing, current eval "
                    "report under the current gate policy (the old champion becomes `previous`).",
    )
    def champion(context: dg.AssetExecutionContext, config: PromotionConfig, mlflow: MLflowResource,
                 operations: OperationsResource, model_signing: ModelSigningResource) -> dg.MaterializeResult:
        from aiplat.evaluation.gate import alert_line, emit_alert
        from aiplat.evaluation.promotion import PromotionRefused, promote
        from aiplat.evaluation.registry import CHAMPION as ALIAS, ModelVersionNotFound
        from aiplat.security.access import AccessDenied, current_identity

        if config.model_version:
            version, sha = config.model_version, config.report_sha256
        else:
            meta = _latest_metadata(context.instance, EVAL_REPORT)
            if meta is None:
                raise dg.Failure(f"no eval report to promote on; materialize {EVAL_REPORT.to_user_string()} first")
            version, sha = str(meta["model_version"]), str(meta["report_sha256"])
        try:
            out = promote(mlflow.client, spec.name, version, dagster_run_id=context.run_id, actor="dagster",
                          expected_report_sha256=sha, identity=current_identity(context.run.tags),
                          owners=owners_of(spec), audit=operations.audit_log(), approver=model_signing.approver)
        except AccessDenied as e:
            raise dg.Failure(f"access denied: {e}") from e
        except (PromotionRefused, ModelVersionNotFound) as e:
            reason = e.reason if isinstance(e, PromotionRefused) else str(e)
            emit_alert(alert_line("promotion", spec.name, version, reason, run=context.run_id), context.log)
            raise dg.Failure(str(e)) from e
        context.log.info(f"{spec.name}: {out.status} ({out.detail})")
        return dg.MaterializeResult(metadata={
            "promotion_attestation_sha256": out.attestation_sha256,
            "registered_model": spec.name, "champion_version": version,
            "previous_version": out.previous_version or "", "status": out.status,
            "report_sha256": out.report_sha256 or "", "model_uri": f"models:/{spec.name}@{ALIAS}",
            "promotion_log_run_id": out.log_run_id or "", "code_version": code_version(), "owner": spec.owner,
        }, data_version=dg.DataVersion(f"{spec.name}/{version}"))

    # ---- serving -----------------------------------------------------------------------------
    @dg.asset(
        key=SERVED,
        group_name=group,
        owners=owners,
        kinds={"vllm", "kubernetes"},
        deps=[CHAMPION, *grounding],
        description=(f"The OpenAI-compatible endpoint `{spec.endpoint}`: the LoRA adapter of the `{spec.name}` version "
                     f"behind the `champion` alias on the shared vLLM server of {spec.base_model}, rolled out through "
                     "a canary measured at the gateway; a failing canary leaves the live route untouched and the "
                     "alias returns to `previous`."
                     + (" Its prompts carry KB passages retrieved from kb_index at request time." if spec.grounded else "")),
    )
    def served_endpoint(context: dg.AssetExecutionContext, config: ServedEndpointConfig, vllm: VllmResource,
                        mlflow: MLflowResource, model_signing: ModelSigningResource,
                        operations: OperationsResource) -> dg.MaterializeResult:
        from assets.serving import serve_champion

        return serve_champion(context, spec.name, spec.endpoint, spec.owner, owners_of(spec), tuple(config.load_sample),
                              spec.base_model, vllm, mlflow, model_signing, operations)

    @dg.asset(
        key=key("endpoint_load_test"),
        group_name=group,
        owners=owners,
        kinds={"vllm"},
        deps=[SERVED],
        description=f"`vllm bench serve` against `{spec.endpoint}` at several concurrencies: requests/s, output "
                    "tokens/s, time to first token and end-to-end latency p50/p95/p99.",
    )
    def endpoint_load_test(context: dg.AssetExecutionContext, config: LoadTestConfig, vllm: VllmResource) -> dg.MaterializeResult:
        from assets.serving import load_test

        return load_test(context, spec.endpoint, spec.owner, config, spec.load_test, vllm)

    # ---- live quality ------------------------------------------------------------------------
    live = dict(
        key=LIVE_QUALITY,
        group_name=group,
        owners=owners,
        kinds={"vllm", "mlflow"},
        check_specs=[dg.AssetCheckSpec("quality_holds", asset=LIVE_QUALITY, description=(
            "The live endpoint's quality is within the allowed drop of its eval report (or first reading), every "
            "request answered, and no PII or canary in the answers"))],
        description=(f"The live `{spec.endpoint}` endpoint asked through its OpenAI API (hourly schedule) and compared "
                     "with the version's eval report; a drop beyond the threshold fails the check, logs "
                     "`AIPLAT_ALERT gate=live_quality ...` and, where enabled, rolls back."),
    )
    if spec.task == "generation":
        @dg.asset(**live, deps=[SERVED, *grounding], ins={"training_set": dg.AssetIn(key=TRAINING_SET)},
                  required_resource_keys={"vllm", "mlflow", "operations", *RETRIEVAL_RESOURCES})
        def live_quality(context: dg.AssetExecutionContext, config: LiveQualityConfig,
                         training_set: pd.DataFrame) -> dg.MaterializeResult:
            from assets.operations import grounded_live_quality

            r = context.resources
            return grounded_live_quality(context, spec, fmt, config, r.vllm, r.mlflow, r.operations, training_set)
    else:
        @dg.asset(**live, deps=[SERVED])
        def live_quality(context: dg.AssetExecutionContext, config: LiveQualityConfig, vllm: VllmResource,
                         mlflow: MLflowResource, model_signing: ModelSigningResource,
                         operations: OperationsResource) -> dg.MaterializeResult:
            from assets.operations import golden_live_quality

            return golden_live_quality(context, spec, fmt, config, vllm, mlflow, model_signing, operations, LIVE_QUALITY)

    chain.assets = [training_set, fine_tuned_model, eval_report, champion, served_endpoint, endpoint_load_test,
                    live_quality]
    chain.checks = [eval_gate]
    chain.jobs, chain.sensors, chain.schedules = _automation(spec, FINE_TUNED, EVAL_REPORT, CHAMPION, SERVED, LIVE_QUALITY)
    if spec.predicts_batches:
        from assets.predictions import build_predictions

        predictions, predictions_job, predictions_sensor = build_predictions(spec, SERVED)
        chain.assets.append(predictions)
        chain.jobs.append(predictions_job)
        chain.sensors.append(predictions_sensor)
    return chain


def _base_folder(context) -> Path | None:
    from aiplat.models.base import prepare_base_model

    meta = _latest_metadata(context.instance, BASE_MODEL)
    if meta is None or "path" not in meta:
        context.log.warning("base_model has no materialization with a path: no base comparison, and a version is evaluated as its merged copy rather than its adapter over the base")
        return None
    path = Path(str(meta["path"]))
    if not path.is_dir() and meta.get("source") and meta.get("name"):
        path = prepare_base_model(str(meta["source"]), str(meta["name"]), progress=context.log.info).path
    return path


def _prune_local_copies(context, model_name: str, work_dir: Path, keep: int) -> None:
    from aiplat.evaluation.registry import model_cache_dir
    from aiplat.models.retention import prune_folders

    pruned = prune_folders(work_dir.parent, keep, protect=(work_dir,)) + prune_folders(model_cache_dir() / model_name, keep)
    if pruned:
        context.log.info(f"pruned {len(pruned)} older local model copies ({sum(p.bytes for p in pruned) / 1e9:.2f} GB); "
                         "MLflow keeps every version")


# --------------------------------------------------------------------------------------------
# per-model automation: fine-tuning job, promotion sensor (cursor + run key), live-quality schedule


def promotion_run_key(name: str, version: str, report_sha256: str) -> str:
    return f"promote:{name}:{version}:{report_sha256}"


def _run_still_promotes(instance: dg.DagsterInstance, run_id: str, champion: dg.AssetKey) -> bool:
    """True while run `run_id` has not finished and its selection includes `champion`."""
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None or run.is_finished:
        return False
    if run.asset_selection:
        return champion in run.asset_selection
    # A job run (no asset selection): its execution plan says whether the champion's step is in it.
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id) if run.execution_plan_snapshot_id else None
    step = "__".join(champion.path)
    return plan is not None and any(s.key == step for s in plan.steps)


def _automation(spec: ModelSpec, fine_tuned: dg.AssetKey, eval_report: dg.AssetKey, champion: dg.AssetKey,
                served: dg.AssetKey, live_quality: dg.AssetKey):
    p = spec.key_prefix
    fine_tuning_job = dg.define_asset_job(
        f"{p}__fine_tuning_job", selection=dg.AssetSelection.assets(fine_tuned), tags=training_tags(spec),
        description=f"Fine-tune and register {spec.name} on the GPU node pool.")
    promotion_job = dg.define_asset_job(
        f"{p}__promotion_job", selection=dg.AssetSelection.assets(champion),
        description=f"Move {spec.name}'s `champion` alias to the version named in the run config, on its passing report.")
    champion_op = f"{p}__champion"

    @dg.sensor(name=f"{p}__promotion_sensor", job=promotion_job, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"A new passing {eval_report.to_user_string()} requests one promotion run "
                           "(cursor = last storage id seen; run_key = model+version+report hash).")
    def promotion_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        after = int(context.cursor) if context.cursor else None
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=eval_report, after_storage_id=after), limit=100, ascending=True).records
        promoted = (_latest_metadata(context.instance, champion) or {}).get("report_sha256")
        requests, notes, cursor = [], [], after
        for record in records:
            meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            version, sha = meta.get("model_version"), meta.get("report_sha256")
            if meta.get("gate_passed") is True and _run_still_promotes(context.instance, record.run_id, champion):
                # The run that made the report is still going and promotes in its own next step: the
                # cursor stays before the report, and the next tick sees what that step did.
                notes.append(f"{spec.name} version {version}: report {str(sha)[:12]} is promoted by its own run "
                             f"{record.run_id[:8]}, still running; looking again next tick")
                break
            cursor = record.storage_id
            if not (version and sha):
                notes.append(f"materialization {record.storage_id} names no model version and report; ignored")
            elif meta.get("gate_passed") is not True:
                notes.append(f"{spec.name} version {version}: report {str(sha)[:12]} did not pass the gate; not promoted")
            elif sha == promoted:
                notes.append(f"{spec.name} version {version}: report {str(sha)[:12]} was already promoted on")
            else:
                requests.append(dg.RunRequest(
                    run_key=promotion_run_key(spec.name, str(version), str(sha)),
                    run_config=dg.RunConfig(ops={champion_op: PromotionConfig(model_version=str(version),
                                                                              report_sha256=str(sha))}),
                    tags={"aiplat/trigger": "promotion_sensor", "aiplat/model": spec.name,
                          "aiplat/model_version": str(version), "aiplat/report_sha256": str(sha)}))
        for note in notes:
            context.log.info(note)
        return dg.SensorResult(run_requests=requests, cursor=str(cursor) if cursor is not None else None,
                               skip_reason=None if requests else dg.SkipReason("; ".join(notes) or "no new eval report"))

    live_job = dg.define_asset_job(
        f"{p}__live_quality_job", selection=dg.AssetSelection.assets(live_quality),
        # Attribution in the audit log; the run acts as the code location's service account.
        tags={"aiplat/actor": f"schedule:{p}__hourly_live_quality"},
        description=f"Ask the live {spec.endpoint} endpoint; alert (and roll back where enabled) on a drop.")

    @dg.schedule(name=f"{p}__hourly_live_quality", job=live_job, cron_schedule="20 * * * *", execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING)
    def hourly_live_quality(context: dg.ScheduleEvaluationContext):
        if context.instance.get_latest_materialization_event(served) is None:
            return dg.SkipReason(f"{spec.endpoint} has not been served yet: nothing to ask")
        tick = context.scheduled_execution_time
        return dg.RunRequest(run_key=f"live_quality:{spec.name}:{tick.isoformat(timespec='minutes')}" if tick else None)

    return [fine_tuning_job, promotion_job, live_job], [promotion_sensor], [hourly_live_quality]


def model_chains(specs: list[ModelSpec]) -> list[ModelChain]:
    return [model_chain(spec) for spec in specs]
