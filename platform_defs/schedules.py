"""Schedules: the work that follows the clock rather than new data."""

from __future__ import annotations

import dagster as dg


def feature_refresh_schedule() -> dg.ScheduleDefinition:
    """Features age even when no data lands (windowed counts, tenure, freshness checks)."""
    job = dg.define_asset_job(
        "refresh_features",
        selection=dg.AssetSelection.groups("features"),
        description="Recompute the feature tables, re-apply the registry, materialize online, rebuild the training set.",
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


LIVE_QUALITY_TAGS = {"aiplat/team": "team:platform", "aiplat/actor": "schedule:hourly_live_quality"}


def live_quality_schedule() -> dg.ScheduleDefinition:
    """The golden set against the live endpoint every hour; nothing is asked before anything is served.

    Its runs act as the platform team (run tags), so a rollback it triggers passes the same access
    check, and lands in the same audit log, as one by hand."""
    job = dg.define_asset_job(
        "live_quality_job",
        selection=dg.AssetSelection.assets("live_quality"),
        description="Ask the live endpoint the golden set; alert (and roll back where enabled) on a drop.",
        tags=LIVE_QUALITY_TAGS,
    )

    @dg.schedule(name="hourly_live_quality", job=job, cron_schedule="20 * * * *", execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING)
    def hourly_live_quality(context):
        if context.instance.get_latest_materialization_event(dg.AssetKey("served_endpoint")) is None:
            return dg.SkipReason("no endpoint has been served yet: nothing to ask the golden set")
        tick = context.scheduled_execution_time
        return dg.RunRequest(run_key=f"live_quality:{tick.isoformat(timespec='minutes')}" if tick else None)

    return hourly_live_quality
