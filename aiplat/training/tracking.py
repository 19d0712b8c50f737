"""One tracked fine-tune: an MLflow run with lineage tags, params, per-step and system metrics,
artifacts, and, only after all of that succeeded, a new registered model version.

The version is the fine-tune's LoRA adapter over the tagged base model: no merged copy is made.
The adapter folder is signed (aiplat.security.signing) before it is uploaded, so `model.sig` lies
beside the weights in the artifact store, and the signature's digest is tagged on the version (as
the version's model signature and as its adapter's: they are the same bytes).

Failure rules: MLflow unreachable -> MlflowUnavailableError before any training. A failure after
the run was created marks the run FAILED and deletes any model version this call created, so the
registry never holds a version whose artifacts are incomplete.

`params.ray_workers` > 0 trains on Ray Train (aiplat.training.distributed.fine_tune_on_ray) instead
of in this process: the same run, per-step metrics, signing, registration and rollback; the Ray
cluster is joined before the run is created (unreachable: DistributedTrainingError, no run), and
the run is tagged with where it trained and, when known, the Ray dashboard's URL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from aiplat.security.mlflow_auth import sync_registry_grants
from aiplat.security.signing import KeyPair, SignedModel, sign_model, tag_model_version
from aiplat.training.data import normalize_columns, validate_training_set
from aiplat.training.lora import FineTuneParams, FineTuneResult, StepMetrics, fine_tune
from aiplat.training.orphans import process_tags

log = logging.getLogger(__name__)

ADAPTER_ARTIFACT = "adapter"  # the LoRA adapter folder (safetensors), the version's source


class MlflowUnavailableError(RuntimeError):
    """MLflow could not be reached or failed; nothing was registered."""


def redact_uri(uri: str) -> str:
    """The URI without user:password, for logs, tags and metadata."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def preflight(
    client, tracking_uri: str, timeout_s: float = 5.0, consequence: str = "nothing was trained or registered"
) -> None:
    """Fail fast, with a message an operator can act on, before minutes of training are spent."""
    shown = redact_uri(tracking_uri)
    tail = f"; {consequence}" if consequence else ""
    if tracking_uri.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as e:
            raise MlflowUnavailableError(
                f"MLflow tracking server {shown} is unreachable ({type(e).__name__}); "
                f"start it (`aiplat stack up`) or fix the tracking_uri{tail}"
            ) from None
        if response.status_code != 200:
            raise MlflowUnavailableError(
                f"MLflow tracking server {shown} answered /health with HTTP {response.status_code}{tail}"
            )
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means the same thing to the caller
        if getattr(e, "error_code", None) == "UNAUTHENTICATED":
            raise MlflowUnavailableError(
                f"MLflow at {shown} did not accept this process's credential (HTTP 401): the CLI signs in "
                "with your platform token (AIPLAT_TOKEN_FILE or AIPLAT_TOKEN), a Dagster step with the "
                f"service account's{tail}"
            ) from None
        raise MlflowUnavailableError(f"MLflow at {shown} failed a basic query: {e}{tail}") from e


@dataclass(frozen=True)
class Lineage:
    """Where a model version came from; becomes tags on the run and on the model version."""

    dagster_run_id: str
    asset_key: str
    code_version: str
    git_commit: str
    training_set_sha256: str
    base_model_sha256: str
    base_model_source: str
    extra: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {
            "dagster.run_id": self.dagster_run_id,
            "dagster.asset_key": self.asset_key,
            "aiplat.code_version": self.code_version,
            "mlflow.source.git.commit": self.git_commit,
            "aiplat.git_commit": self.git_commit,
            "aiplat.training_set_sha256": self.training_set_sha256,
            "aiplat.base_model_sha256": self.base_model_sha256,
            "aiplat.base_model_source": self.base_model_source,
            **self.extra,
        }


@dataclass(frozen=True)
class TrackedFineTune:
    result: FineTuneResult
    experiment_id: str
    run_id: str
    run_url: str
    model_name: str
    model_version: str
    model_version_url: str
    signature: SignedModel | None = None


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{redact_uri(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(tracking_uri: str, name: str, version: str) -> str:
    return f"{redact_uri(tracking_uri).rstrip('/')}/#/models/{name}/versions/{version}"


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name)


def _ensure_registered_model(client, name: str, description: str, owner_team: str | None = None,
                             task: str | None = None) -> None:
    """Create the registered model (tagged with its owner team) unless it exists.

    The `owner_team` tag is a label for the MLflow UI: the access checks read the model spec, never
    the tag (any MLflow visitor can edit it), so each training run sets it back to the spec's owner.
    """
    from mlflow.exceptions import MlflowException

    from aiplat.security.access import OWNER_TAG

    try:
        existing = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        tags = {**({"aiplat.task": task} if task else {}), **({OWNER_TAG: owner_team} if owner_team else {})}
        try:
            client.create_registered_model(name, description=description, tags=tags)
        except MlflowException as race:  # another run created it meanwhile
            if race.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return
    # A label for the MLflow UI only (access checks read the spec): put back whatever a visitor edited.
    if owner_team and (existing.tags or {}).get(OWNER_TAG) != owner_team:
        client.set_registered_model_tag(name, OWNER_TAG, owner_team)


def _wait_ready(client, name: str, version: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise MlflowUnavailableError(f"model version {name}/{version} ended in status {mv.status}")
        time.sleep(0.5)


def tracked_fine_tune(
    client,
    tracking_uri: str,
    experiment_name: str,
    model_name: str,
    lineage: Lineage,
    base_dir: Path,
    training_set: pd.DataFrame,
    params: FineTuneParams,
    work_dir: Path,
    system_metrics_interval_s: float | None = 5.0,
    on_step: Callable[[StepMetrics], None] | None = None,
    signing_keys: KeyPair | None = None,
    owner_team: str | None = None,
    prompt_format=None,
    description: str = "LoRA fine-tunes",
    ray_cluster=None,
) -> TrackedFineTune:
    """Train, sign (when `signing_keys` are given: the Dagster asset always passes them), upload,
    register. `owner_team` becomes the registered model's `owner_team` tag when it has none;
    `prompt_format` (aiplat.training.prompts.PromptFormat) is the model's task and prompt.
    `ray_cluster` (aiplat.scale.ray_cluster.RayCluster; default: the local one) is where a fine-tune
    with `params.ray_workers` > 0 runs."""
    from mlflow.entities import Metric, Param

    # Bad data and an unreachable server (MLflow, or Ray when asked for) are all known before a run
    # exists: fail without one.
    validate_training_set(normalize_columns(training_set))
    preflight(client, tracking_uri)
    ray_tags: dict[str, str] = {}
    if params.ray_workers:
        from aiplat.scale.ray_cluster import RayCluster
        from aiplat.training.distributed import DistributedTrainingError

        ray_cluster = ray_cluster or RayCluster()
        try:
            joined = ray_cluster.connect()
        except Exception as e:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, ValueError, ...
            raise DistributedTrainingError(
                f"cannot reach the Ray cluster at {ray_cluster.address or 'the local Ray'} ({type(e).__name__}: {e}); "
                "nothing was trained or registered") from None
        ray_tags = {"aiplat.trained_on": f"Ray Train, {params.ray_workers} workers, {joined.describe()}"}
        if joined.dashboard_url:
            ray_tags["aiplat.ray_dashboard"] = joined.dashboard_url
    try:
        experiment_id = _experiment_id(client, experiment_name)
        run = client.create_run(
            experiment_id, run_name=f"{model_name}-{lineage.dagster_run_id[:8]}",
            tags={**lineage.tags(), **process_tags(), **ray_tags},
        )
    except Exception as e:
        if not _is_mlflow_error(e):
            raise
        raise MlflowUnavailableError(
            f"MLflow at {redact_uri(tracking_uri)} could not start a run in experiment {experiment_name!r}: {e}; "
            "nothing was trained or registered"
        ) from e
    run_id = run.info.run_id
    stage = "logging parameters"
    monitor = None
    created_version: str | None = None
    signed: SignedModel | None = None
    try:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in _flat_params(params, training_set).items()])
        if system_metrics_interval_s:
            monitor = _start_system_metrics(run_id, tracking_uri, system_metrics_interval_s)

        stage = "training"

        def report(m: StepMetrics) -> None:
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[
                    Metric("train_loss", m.loss, now, m.step),
                    Metric("learning_rate", m.learning_rate, now, m.step),
                    Metric("tokens_per_second", m.tokens / m.seconds if m.seconds else 0.0, now, m.step),
                    Metric("examples_per_second", m.examples / m.seconds if m.seconds else 0.0, now, m.step),
                ],
            )
            if on_step is not None:
                on_step(m)

        if params.ray_workers:
            from aiplat.training.distributed import fine_tune_on_ray

            stage = "training on Ray Train"
            result = fine_tune_on_ray(base_dir, training_set, params, work_dir, on_step=report, fmt=prompt_format,
                                      cluster=ray_cluster)
        else:
            result = fine_tune(base_dir, training_set, params, work_dir, on_step=report, fmt=prompt_format)

        stage = "logging results"
        now = int(time.time() * 1000)
        final = {
            "final_train_loss": result.final_loss,
            "train_tokens_per_second": result.tokens_per_second,
            "train_seconds": result.train_seconds,
            "trainable_parameters": float(result.trainable_parameters),
        }
        if result.eval_loss is not None:
            final["eval_loss"] = result.eval_loss
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, params.steps) for k, v in final.items()])
        client.set_tag(run_id, "aiplat.adapter_sha256", result.adapter_sha256)
        client.set_tag(run_id, "aiplat.device", result.device)

        if signing_keys is not None:
            stage = "signing the model"
            signed = sign_model(result.adapter_dir, signing_keys)
            client.set_tag(run_id, "aiplat.signature.sha256", signed.signature_sha256)

        stage = "uploading artifacts"
        client.log_artifacts(run_id, str(result.adapter_dir), ADAPTER_ARTIFACT)
        if monitor is not None:
            _finish_system_metrics(monitor)
            monitor = None

        stage = "registering the model version"
        _ensure_registered_model(client, model_name, description, owner_team,
                                 task=prompt_format.task if prompt_format is not None else None)
        stage = "granting the owner team its model"
        # Before the version exists: a failure here leaves no registration behind.
        sync_registry_grants(tracking_uri, {model_name: owner_team or ""}, models=[model_name])
        stage = "registering the model version"
        artifact_uri = client.get_run(run_id).info.artifact_uri
        url = run_url(tracking_uri, experiment_id, run_id)
        version_tags = {
            **lineage.tags(),
            "mlflow.run_id": run_id,
            "aiplat.run_url": url,
            "aiplat.adapter_sha256": result.adapter_sha256,
            "aiplat.adapter_artifact": f"{artifact_uri}/{ADAPTER_ARTIFACT}",
            "aiplat.final_train_loss": f"{result.final_loss:.6f}",
        }
        mv = client.create_model_version(
            model_name,
            # The version is its LoRA adapter over the tagged base model (what an adapter server
            # loads and evaluation judges).
            source=f"{artifact_uri}/{ADAPTER_ARTIFACT}",
            run_id=run_id,
            tags=version_tags,
            description=f"LoRA r={params.lora_r} on {lineage.base_model_source}, {params.steps} steps",
        )
        created_version = str(mv.version)
        if signed is not None:
            tag_model_version(client, model_name, created_version, signed, adapter=signed)
        _wait_ready(client, model_name, created_version)
        client.set_terminated(run_id, "FINISHED")
    except BaseException as e:
        if monitor is not None:
            monitor.finish()
        _roll_back(client, run_id, model_name, created_version, stage, e)
        if _is_mlflow_error(e) and not isinstance(e, MlflowUnavailableError):
            raise MlflowUnavailableError(
                f"MLflow at {redact_uri(tracking_uri)} failed while {stage} (run {run_id}): {e}; "
                "no model version was registered"
            ) from e
        raise
    return TrackedFineTune(
        result=result,
        experiment_id=experiment_id,
        run_id=run_id,
        run_url=url,
        model_name=model_name,
        model_version=created_version,
        model_version_url=model_version_url(tracking_uri, model_name, created_version),
        signature=signed,
    )


def _is_mlflow_error(e: BaseException) -> bool:
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(e, (MlflowException, requests.RequestException, ConnectionError))


def _roll_back(client, run_id: str, model_name: str, version: str | None, stage: str, error: BaseException) -> None:
    """Best effort: MLflow may be the thing that failed. The version is deleted first."""
    if version is not None:
        try:
            client.delete_model_version(model_name, version)
        except Exception as cleanup:  # noqa: BLE001
            log.error("could not delete half-registered %s/%s: %s", model_name, version, cleanup)
    try:
        client.set_tag(run_id, "aiplat.failure", f"{stage}: {type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception as cleanup:  # noqa: BLE001
        log.error("could not mark MLflow run %s as FAILED: %s", run_id, cleanup)


def _start_system_metrics(run_id: str, tracking_uri: str, interval_s: float):
    """CPU/memory/disk/network (and GPU when pynvml is present) as system/* metrics of the run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as e:  # noqa: BLE001 - system metrics are a nice-to-have, never a reason to fail
        log.warning("system metrics are off for run %s: %s", run_id, e)
        return None


def _finish_system_metrics(monitor) -> None:
    """Stop the monitor after one last sample, logged before it stops: its thread publishes only
    after a full sampling interval, so a run shorter than that (or a loaded machine) would
    otherwise end with no system/* metrics at all."""
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
    except Exception as e:  # noqa: BLE001 - as in _start_system_metrics
        log.warning("last system metrics sample not logged: %s", e)
    monitor.finish()


def _flat_params(params: FineTuneParams, training_set: pd.DataFrame) -> dict[str, object]:
    flat = {k: (",".join(v) if isinstance(v, list) else v) for k, v in params.model_dump().items()}
    counts = training_set["split"].value_counts()  # all rows; the fine-tune may use fewer (max_*_examples)
    for split in ("train", "validation", "test"):
        flat[f"rows_{split}"] = int(counts.get(split, 0))
    return flat


