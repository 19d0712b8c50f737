"""Running the graph without the UI: what `aiplat ingest` and `aiplat materialize` do.

The same jobs and the same instance as the UI, so every run here shows up there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import dagster as dg

from aiplat.intake.landing import SOURCE_SHA_TAG, LandingCursor, NewBatch, find_new_batches, intake_status
from aiplat.intake.combine import SNAPSHOT_DATASETS
from assets.intake import BATCHES


# Step events at INFO: the CLI shows progress without Dagster's DEBUG chatter.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass(frozen=True)
class RunSummary:
    job: str
    partition: str | None
    success: bool
    run_id: str
    materialized: list[str]
    failed_checks: list[str]


def _summarize(job_name: str, partition: str | None, result) -> RunSummary:
    materialized = sorted(
        {e.asset_key.to_user_string() for e in result.all_events if e.is_step_materialization and e.asset_key}
    )
    failed_checks = sorted(
        f"{c.asset_key.to_user_string()}:{c.check_name}" for c in result.get_asset_check_evaluations() if not c.passed
    )
    return RunSummary(job_name, partition, result.success, result.run_id, materialized, failed_checks)


def landing_zone(defs: dg.Definitions):
    return defs.resources["landing_zone"]


def pending_batches(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[NewBatch]:
    """Landed files whose content is not yet a registered batch partition (or whose runs all failed)."""
    with dg.build_resources({"landing_zone": landing_zone(defs)}) as resources:
        batches, _ = find_new_batches(
            resources.landing_zone, list(BATCHES), LandingCursor(),
            intake_status(instance, {d: BATCHES[d].name for d in BATCHES if d in SNAPSHOT_DATASETS}),
        )
    return [b for b in batches if b.attempt or not instance.has_dynamic_partition(BATCHES[b.dataset].name, b.key)]


def ingest_batch(defs: dg.Definitions, instance: dg.DagsterInstance, batch: NewBatch) -> RunSummary:
    instance.add_dynamic_partitions(BATCHES[batch.dataset].name, [batch.key])
    job_name = f"ingest_{batch.dataset}_batch"
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        partition_key=batch.key,
        raise_on_error=False,
        run_config=QUIET,
        tags={"aiplat/source_uri": batch.uri, SOURCE_SHA_TAG: batch.sha256, "aiplat/trigger": "cli"},
    )
    return _summarize(job_name, batch.key, result)


def materialize_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    on_run: Callable[[RunSummary], None] = lambda s: None,
    downstream_config: dict | None = None,
) -> list[RunSummary]:
    """Ingest every landed batch not yet taken in, then rebuild everything downstream.

    `downstream_config` is run config for the downstream job (e.g. fewer training steps).
    """
    summaries = []
    for batch in pending_batches(defs, instance):
        summaries.append(ingest_batch(defs, instance, batch))
        on_run(summaries[-1])
    if any(job.name == "refresh_downstream" for job in defs.jobs or []):
        downstream = defs.resolve_job_def("refresh_downstream")
        result = downstream.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={**QUIET, **(downstream_config or {})},
            tags={"aiplat/trigger": "cli"},
        )
        summaries.append(_summarize("refresh_downstream", None, result))
        on_run(summaries[-1])
    return summaries


def reindex_kb(
    defs: dg.Definitions, instance: dg.DagsterInstance, confirm_deletions: int | None = None,
    requested_by: str | None = None,
) -> tuple[RunSummary, list[str]]:
    """One kb_reindex run (what the sensor launches), optionally confirming the deletion guard's
    count; returns the run's summary and what the guard said."""
    from aiplat.retrieval.guard import GUARD_CHECK, confirm_run_config

    run_config = {**QUIET, **(confirm_run_config(confirm_deletions) if confirm_deletions is not None else {})}
    result = defs.resolve_job_def("kb_reindex").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config, tags={"aiplat/trigger": "cli", **({"aiplat/actor": requested_by} if requested_by else {})}
    )
    guard = [c.description or "" for c in result.get_asset_check_evaluations() if c.check_name == GUARD_CHECK]
    return _summarize("kb_reindex", None, result), guard
