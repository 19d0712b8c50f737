"""Batch inference for classification models: `<model>/predictions`, every open ticket of each landed
batch scored by the model's live champion, partitioned like redacted_tickets.

Thin: aiplat.scale.batch_inference does the work (Ray Data batches against the live adapter on its
base model's vLLM server). A new batch costs the scoring of that batch only: the sensor asks for the
partitions whose redacted tickets changed, and for every partition again when the endpoint starts
serving another version (new champion, new predictions). A batch in which any request failed is not
written (the step fails naming the count and the first error; RetryPolicy tries again).
"""


import json
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from aiplat.provenance import code_version, frame_hash
from aiplat.specs import ModelSpec
from assets.intake import BATCHES
from resources.operations import OperationsResource
from resources.ray import RayResource
from resources.vllm import VllmResource

REDACTED_TICKETS = dg.AssetKey("redacted_tickets")
FEATURE = "batch-predictions"  # the request log's feature label: what the owner team is billed for


class PredictionsConfig(dg.Config):
    workers: Optional[int] = Field(default=None, ge=1, description="Ray actors sending requests; unset = the vllm "
                                   "resource's batch_workers")
    concurrency: Optional[int] = Field(default=None, ge=1, description="Requests in flight per actor; unset = the "
                                       "vllm resource's batch_concurrency")
    batch_size: int = Field(default=32, ge=1, description="Tickets per Ray Data batch")
    max_tokens: int = Field(default=12, ge=4, description="Generation budget per ticket (the category line)")


def predictions_run_key(model: str, partition: str, model_version: str, redacted_storage_id: int,
                        served_storage_id: int) -> str:
    return f"predict:{model}:{partition}:{model_version}:{redacted_storage_id}:{served_storage_id}"


def build_predictions(spec: ModelSpec, served: dg.AssetKey):
    """(asset, job, sensor) of `spec`'s batch predictions, downstream of its served endpoint."""
    p = spec.key_prefix
    key = dg.AssetKey([p, "predictions"])
    partitions = BATCHES["tickets"]

    @dg.asset(
        key=key,
        group_name=p,
        owners=[spec.owner],
        kinds={"ray", "vllm", "pandas", "parquet"},
        ins={"redacted_tickets": dg.AssetIn(key=REDACTED_TICKETS)},
        deps=[served],
        partitions_def=partitions,
        io_manager_key="lake",
        retry_policy=dg.RetryPolicy(max_retries=2, delay=15),
        description=(f"Every open ticket of one landed batch scored by the live `{spec.endpoint}` champion "
                     "(category, answer, latency and tokens per ticket), in Ray Data batches through vLLM's "
                     "OpenAI API; throughput in the metadata. Billed to the owner team as feature "
                     f"`{FEATURE}`."),
    )
    def predictions(context: dg.AssetExecutionContext, config: PredictionsConfig, redacted_tickets: pd.DataFrame,
                    vllm: VllmResource, ray: RayResource, operations: OperationsResource) -> dg.Output:
        return score_batch(context, spec, config, redacted_tickets, vllm, ray, operations)

    job = dg.define_asset_job(f"{p}__predictions_job", selection=dg.AssetSelection.assets(key),
                              partitions_def=partitions,
                              description=f"Score one landed ticket batch with {spec.name}'s live champion.")

    @dg.sensor(name=f"{p}__predictions_sensor", job=job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=(f"Scores each ticket batch whose redacted tickets changed; after {spec.endpoint} is "
                            "served again, every batch without predictions by the version now serving (cursor = "
                            "storage ids seen; run_key = model, batch, version and both storage ids)."))
    def predictions_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests, cursor, note = predictions_requests(context.instance, spec, served, cursor)
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor),
                               skip_reason=None if requests else dg.SkipReason(note))

    return predictions, job, predictions_sensor


def _latest_by_partition(instance: dg.DagsterInstance, key: dg.AssetKey, after: int | None = None) -> dict:
    """{partition: its newest materialization record} of `key` (after storage id `after`), every page."""
    latest, page = {}, None
    while True:
        result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, after_storage_id=after),
                                                 limit=1000, cursor=page, ascending=True)
        for record in result.records:
            if record.partition_key:
                latest[record.partition_key] = record
        if not result.has_more:
            return latest
        page = result.cursor


def predictions_requests(instance: dg.DagsterInstance, spec: ModelSpec, served: dg.AssetKey,
                         cursor: dict) -> tuple[list[dg.RunRequest], dict, str]:
    """The sensor's decision, a plain function: which batches to score, and the new cursor.

    Between two materializations of the served endpoint, each batch whose redacted tickets changed.
    After one (a new version, or the same version served again after an incident), every batch that
    has no predictions by the version now serving since its tickets last changed: new versions
    re-score everything, and a batch that failed while the endpoint was down is asked again."""
    served_records = instance.fetch_materializations(served, limit=1, ascending=False).records
    if not served_records:
        return [], cursor, f"{spec.endpoint} is not served yet: nothing to score with"
    version = str(served_records[0].asset_materialization.metadata.get("model_version", dg.MetadataValue.text("?")).value)
    served_id = served_records[0].storage_id
    key = dg.AssetKey([spec.key_prefix, "predictions"])
    if cursor.get("served") == served_id:
        todo = _latest_by_partition(instance, REDACTED_TICKETS, cursor.get("redacted"))
        why = "no ticket batch changed since the last tick"
    else:
        redacted = _latest_by_partition(instance, REDACTED_TICKETS)
        scored = _latest_by_partition(instance, key)
        todo = {p: r for p, r in redacted.items()
                if not (p in scored and scored[p].storage_id > r.storage_id
                        and str(scored[p].asset_materialization.metadata.get(
                            "model_version", dg.MetadataValue.text("")).value) == version)}
        why = f"every batch already has predictions by version {version}"
    requests = [dg.RunRequest(run_key=predictions_run_key(spec.name, partition, version, record.storage_id, served_id),
                              partition_key=partition,
                              tags={"aiplat/trigger": "predictions_sensor", "aiplat/model": spec.name,
                                    "aiplat/model_version": version})
                for partition, record in sorted(todo.items())]
    newest = instance.fetch_materializations(REDACTED_TICKETS, limit=1, ascending=False).records
    new_cursor = {"served": served_id, "redacted": newest[0].storage_id if newest else cursor.get("redacted")}
    return requests, new_cursor, "" if requests else why


def score_batch(context: dg.AssetExecutionContext, spec: ModelSpec, config: PredictionsConfig,
                redacted_tickets: pd.DataFrame, vllm: VllmResource, ray: RayResource,
                operations: OperationsResource) -> dg.Output:
    from datetime import datetime, timezone

    from aiplat.operations.requests import RequestRecord
    from aiplat.scale.batch_inference import ScoringTarget, open_tickets, score_tickets
    from aiplat.scale.ray_cluster import LoggedProgress, RayMapError
    from aiplat.serving.backend import EndpointNotFound

    batch = context.partition_key
    tickets = open_tickets(redacted_tickets)
    try:
        live = vllm.live_target(spec.endpoint)
    except EndpointNotFound as e:
        # Not a wait-and-retry fault: a dead or unrouted endpoint comes back when served_endpoint is
        # materialized again, and the sensor then asks for this batch again (it has no predictions).
        raise dg.Failure(f"{spec.name} batch {batch}: nothing scored: {e}", allow_retries=False) from e
    target = ScoringTarget(live.url, live.served_model_name, live.model_version, live.headers, config.max_tokens,
                           concurrency=config.concurrency or vllm.batch_concurrency,
                           prompt_format=spec.prompt_format.key())
    workers = config.workers or vllm.batch_workers
    progress = LoggedProgress(context.log.info, f"{spec.name} batch {batch}: predictions")
    context.log.info(f"{spec.name} batch {batch}: {len(tickets)} open of {len(redacted_tickets)} tickets, "
                     f"asked of {spec.endpoint} version {live.model_version} by {workers} Ray worker(s)")
    try:
        scored = score_tickets(tickets, target, ray.cluster(), workers=workers, batch_size=config.batch_size,
                               progress=progress)
    except RayMapError as e:
        raise dg.Failure(f"{spec.name} batch {batch}: the Ray job failed ({e}); nothing was written") from None

    log = operations.request_log()
    now = datetime.now(timezone.utc)
    for p in scored.predictions:  # what the owner team is billed for, as the gateway would record it
        log.append(RequestRecord(now, spec.endpoint, live.model_version, spec.owner, FEATURE, p.prompt_tokens,
                                 p.completion_tokens, p.latency_ms, p.status or 599))
    failed = scored.failed
    if failed:
        raise dg.Failure(f"{spec.name} batch {batch}: {len(failed)} of {len(scored.predictions)} tickets got no "
                         f"answer (first: ticket {failed[0].ticket_id}: {failed[0].error}); the batch was not written",
                         metadata={"failed": len(failed), "scored": len(scored.predictions)})
    frame = scored.frame().assign(model=spec.name, model_version=live.model_version, endpoint=spec.endpoint)
    counts = frame["category"].fillna("(unparsed)").value_counts().to_dict()
    return dg.Output(frame, metadata={
        "dagster/row_count": len(frame),
        "tickets_in_batch": len(redacted_tickets),
        "open_tickets": len(tickets),
        "model_version": live.model_version,
        "endpoint": spec.endpoint,
        "tickets_per_s": dg.MetadataValue.float(round(scored.tickets_per_s, 3)),
        "seconds": dg.MetadataValue.float(round(scored.seconds, 3)),
        "completion_tokens": int(frame["completion_tokens"].sum()) if len(frame) else 0,
        "workers": workers,
        "upstream_redacted_hash": frame_hash(redacted_tickets),
        "code_version": code_version(),
        "owner": spec.owner,
        **{f"categories/{name}": int(n) for name, n in sorted(counts.items())},
        **progress.metadata(url=dg.MetadataValue.url),
    })
