"""Promote a model version when a new passing eval report appears.

The cursor is the storage id of the last eval_report materialization looked at, so each report is
considered once. The run key is model + version + report hash: a report is promoted at most once,
however often the sensor is evaluated. The promotion run itself re-verifies the report in MLflow.
"""

from __future__ import annotations

import dagster as dg

from assets.evaluation import CHAMPION_MODEL, EVAL_REPORT, PromotionConfig, champion_model

promotion_job = dg.define_asset_job(
    "promotion_job",
    selection=[champion_model],
    description="Move the `champion` alias to the version named in the run config, on its passing report.",
)


def promotion_run_key(name: str, version: str, report_sha256: str) -> str:
    return f"promote:{name}:{version}:{report_sha256}"


@dg.sensor(
    name="promotion_sensor",
    job=promotion_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A new eval_report whose gate passed requests one promotion run (run_key = model+version+report hash).",
)
def promotion_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=EVAL_REPORT, after_storage_id=after), limit=100, ascending=True
    ).records
    promoted = _promoted_report(context.instance)
    requests, notes = [], []
    cursor = after
    for record in records:
        cursor = record.storage_id
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        name, version, sha = meta.get("registered_model"), meta.get("model_version"), meta.get("report_sha256")
        if not (name and version and sha):
            notes.append(f"materialization {record.storage_id} names no model version and report; ignored")
        elif meta.get("gate_passed") is not True:
            notes.append(f"{name} version {version}: report {str(sha)[:12]} did not pass the gate; not promoted")
        elif sha == promoted:
            notes.append(f"{name} version {version}: report {str(sha)[:12]} was already promoted on")
        else:
            requests.append(
                dg.RunRequest(
                    run_key=promotion_run_key(str(name), str(version), str(sha)),
                    run_config=dg.RunConfig(
                        ops={"champion_model": PromotionConfig(model_name=str(name), model_version=str(version),
                                                               report_sha256=str(sha))}
                    ),
                    tags={"aiplat/trigger": "promotion_sensor", "aiplat/model": str(name),
                          "aiplat/model_version": str(version), "aiplat/report_sha256": str(sha)},
                )
            )
    for note in notes:
        context.log.info(note)
    return dg.SensorResult(
        run_requests=requests,
        cursor=str(cursor) if cursor is not None else None,
        skip_reason=None if requests else dg.SkipReason("; ".join(notes) or "no new eval report"),
    )


def _promoted_report(instance: dg.DagsterInstance) -> str | None:
    """The report hash the latest champion_model materialization promoted on (same-run promotions)."""
    event = instance.get_latest_materialization_event(CHAMPION_MODEL)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("report_sha256")
    return str(value.value) if value is not None else None
