"""The platform's one Definitions object."""

from __future__ import annotations

import dagster as dg

import assets.intake
from aiplat.config import runtime
from assets.intake import BATCHES
from platform_defs.jobs import downstream_job, ingest_jobs
from platform_defs.resources import resources_for
from sensors.landing import build_landing_sensor

STAGE_MODULES = [assets.intake]


def build_definitions() -> dg.Definitions:
    all_assets = list(dg.load_assets_from_modules(STAGE_MODULES))
    jobs = ingest_jobs(all_assets)
    downstream = downstream_job(all_assets)
    return dg.Definitions(
        assets=all_assets,
        asset_checks=list(dg.load_asset_checks_from_modules(STAGE_MODULES)),
        jobs=[*jobs.values(), *([downstream] if downstream else [])],
        sensors=[build_landing_sensor(jobs, BATCHES)],
        resources=resources_for(runtime()),
    )


defs = build_definitions()
