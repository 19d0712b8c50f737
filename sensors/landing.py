"""The landing sensor: every new landed file becomes one ingest run for its own batch."""


import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from aiplat.intake.combine import SNAPSHOT_DATASETS
from aiplat.intake.landing import SOURCE_SHA_TAG, LandingCursor, find_new_batches, intake_status
from resources.landing_zone import LandingZone


def build_landing_sensor(
    jobs: dict[str, UnresolvedAssetJobDefinition],
    partitions: dict[str, dg.DynamicPartitionsDefinition],
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """`jobs` and `partitions` map each dataset (tickets, kb_articles) to its ingest job and batches."""

    @dg.sensor(
        name="landing_zone_sensor",
        jobs=list(jobs.values()),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers each new landed file as a batch partition and launches its ingest run "
        "(run_key = content hash: the same file landed twice makes one run; a copy of content whose "
        "earlier runs all failed is a new attempt with its own run key).",
    )
    def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZone) -> dg.SensorResult:
        cursor = LandingCursor.parse(context.cursor)
        batches, notes = find_new_batches(
            landing_zone, list(jobs), cursor,
            intake_status(context.instance, {d: partitions[d].name for d in jobs if d in SNAPSHOT_DATASETS}),
        )
        for note in notes:
            (context.log.warning if note.startswith("IGNORED") else context.log.info)(note)
        add_requests = []
        for dataset in jobs:
            keys = [b.key for b in batches if b.dataset == dataset]
            if keys:
                add_requests.append(partitions[dataset].build_add_request(keys))
        run_requests = [
            dg.RunRequest(
                run_key=b.run_key,
                job_name=jobs[b.dataset].name,
                partition_key=b.key,
                tags={"aiplat/source_uri": b.uri, SOURCE_SHA_TAG: b.sha256, "aiplat/trigger": "landing_sensor"},
            )
            for b in batches
        ]
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=add_requests,
            cursor=cursor.serialize(),
            skip_reason=None if run_requests else dg.SkipReason(f"no new files in {landing_zone.describe()}"),
        )

    return landing_zone_sensor
