"""Reindex the KB whenever a new redacted KB snapshot lands."""

from __future__ import annotations

import dagster as dg

from assets.retrieval import retrieval_assets

REDACTED_KB = dg.AssetKey(["redacted_kb_articles"])

kb_reindex_job = dg.define_asset_job(
    "kb_reindex",
    selection=dg.AssetSelection.assets(*retrieval_assets),
    description="Chunks, embeddings (changed chunks only), index (incremental or rebuild + swap), backup.",
)


@dg.asset_sensor(
    asset_key=REDACTED_KB,
    job=kb_reindex_job,
    name="kb_reindex_sensor",
    minimum_interval_seconds=30,
    # The platform relies on it: a newly landed KB snapshot must reach the index without anyone
    # finding a switch in the UI first.
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A new materialization of redacted_kb_articles requests one kb_reindex run.",
)
def kb_reindex_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    # asset_sensor keeps the cursor (the last event's storage id). The run key names that one
    # event (its run and partition), so a re-evaluated tick never requests a second run for it.
    event = asset_event.dagster_event
    partition = (event.partition if event is not None else None) or ""
    return dg.RunRequest(
        run_key=f"kb-reindex:{asset_event.run_id}:{partition or 'unpartitioned'}",
        tags={"aiplat/trigger": "redacted_kb_articles", "aiplat/kb_batch": partition, "aiplat/source_run": asset_event.run_id},
    )
