"""The platform's one Definitions object."""

from __future__ import annotations

import dagster as dg

import assets.evaluation
import assets.features
import assets.intake
import assets.operations
import assets.pii
import assets.retrieval
import assets.serving
import assets.training
from aiplat.config import runtime
from assets.intake import BATCHES
from platform_defs.jobs import downstream_job, ingest_jobs
from platform_defs.resources import resources_for
from platform_defs.schedules import cost_report_schedule, feature_refresh_schedule, live_quality_schedule
from sensors.landing import build_landing_sensor
from sensors.promotion import promotion_job, promotion_sensor
from sensors.reindex import kb_reindex_job, kb_reindex_sensor

STAGE_MODULES = [assets.intake, assets.pii, assets.features, assets.training, assets.evaluation, assets.retrieval, assets.serving, assets.operations]


def build_definitions(resource_overrides: dict | None = None) -> dg.Definitions:
    """The Definitions for the current runtime; `resource_overrides` replaces resources by key
    (tests and drills use it to shorten timeouts, never to swap in fakes)."""
    all_assets = list(dg.load_assets_from_modules(STAGE_MODULES))
    jobs = ingest_jobs(all_assets)
    downstream = downstream_job(all_assets)
    return dg.Definitions(
        assets=all_assets,
        asset_checks=list(dg.load_asset_checks_from_modules(STAGE_MODULES)),
        jobs=[*jobs.values(), *([downstream] if downstream else []), kb_reindex_job, assets.training.fine_tuning_job, promotion_job],
        schedules=[feature_refresh_schedule(), cost_report_schedule(), live_quality_schedule()],
        sensors=[build_landing_sensor(jobs, BATCHES), kb_reindex_sensor, promotion_sensor],
        resources={**resources_for(runtime()), **(resource_overrides or {})},
    )


defs = build_definitions()
