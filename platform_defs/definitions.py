"""The platform's one Definitions object: the shared stages, plus one generated chain per model
spec file (models/<name>.yaml, read when the code location loads: adding a file adds the chain
after "Reload definitions", removing it removes it)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

import assets.features
import assets.intake
import assets.pii
import assets.retrieval
import assets.training
from aiplat.config import runtime
from aiplat.specs import load_specs
from assets.intake import BATCHES
from assets.model_lifecycle import model_chains
from assets.operations import build_operations_assets
from platform_defs.jobs import downstream_job, ingest_jobs
from platform_defs.resources import resources_for
from platform_defs.schedules import cost_report_schedule, feature_refresh_schedule
from sensors.landing import build_landing_sensor
from sensors.reindex import kb_reindex_job, kb_reindex_sensor

SHARED_STAGES = [assets.intake, assets.pii, assets.features, assets.training, assets.retrieval]


def build_definitions(resource_overrides: dict | None = None, models_dir: Path | None = None) -> dg.Definitions:
    """The Definitions for the current runtime; `resource_overrides` replaces resources by key
    (tests and drills use it to shorten timeouts, never to swap in fakes); `models_dir` is where the
    model specs are (default: aiplat.config.models_dir())."""
    chains = model_chains(load_specs(models_dir))
    served = [chain.key("served_endpoint") for chain in chains]
    all_assets = [*dg.load_assets_from_modules(SHARED_STAGES), *build_operations_assets(served),
                  *(a for chain in chains for a in chain.assets)]
    jobs = ingest_jobs(all_assets)
    downstream = downstream_job(all_assets)
    runtime_name = runtime()
    return dg.Definitions(
        assets=all_assets,
        asset_checks=[*dg.load_asset_checks_from_modules(SHARED_STAGES), *(c for chain in chains for c in chain.checks)],
        jobs=[*jobs.values(), *([downstream] if downstream else []), kb_reindex_job,
              *(j for chain in chains for j in chain.jobs)],
        schedules=[feature_refresh_schedule(), cost_report_schedule(), *(s for chain in chains for s in chain.schedules)],
        sensors=[build_landing_sensor(jobs, BATCHES), kb_reindex_sensor, *(s for chain in chains for s in chain.sensors)],
        resources={**resources_for(runtime_name), **(resource_overrides or {})},
        executor=executor_for(runtime_name),
    )


def executor_for(runtime_name: str) -> dg.ExecutorDefinition | None:
    """local: every step in the run's own process. The multiprocess executor starts a Python
    process per step that loads the code location again (Feast, Presidio, torch imports: about
    4 s on an idle 2-core machine, far more under load) and then runs at most two steps at once on
    those two cores, so one process per run is faster for "Materialize all". prod keeps Dagster's
    default (steps in parallel inside the run pod)."""
    return dg.in_process_executor if runtime_name == "local" else None


defs = build_definitions()
