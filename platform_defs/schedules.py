"""Schedules: the work that follows the clock rather than new data."""

from __future__ import annotations

import dagster as dg


def feature_refresh_schedule() -> dg.ScheduleDefinition:
    """Features age even when no data lands (windowed counts, tenure, freshness checks)."""
    job = dg.define_asset_job(
        "refresh_features",
        selection=dg.AssetSelection.groups("features"),
        description="Recompute the feature tables, re-apply the registry, materialize online.",
    )
    return dg.ScheduleDefinition(
        name="daily_feature_refresh",
        job=job,
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def cost_report_schedule() -> dg.ScheduleDefinition:
    """Yesterday's costs per team and feature, and the budget check, every morning."""
    job = dg.define_asset_job(
        "daily_cost_report",
        selection=dg.AssetSelection.assets("endpoint_metrics", "cost_report"),
        description="Scrape endpoint metrics and attribute the day's token cost and GPU-hours.",
    )
    return dg.ScheduleDefinition(
        name="daily_cost_report",
        job=job,
        cron_schedule="15 0 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
