"""`aiplat cost report`: token cost and GPU-hours per team and feature, from the request log."""

from __future__ import annotations

from datetime import date

import click


def _day(_ctx, _param, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@click.group("cost")
def cli() -> None:
    """Cost attribution per team, model and feature."""


@cli.command("report")
@click.option("--team", default=None, help="Only this team (e.g. ml or team:ml).")
@click.option("--model", default=None, help="Only this model (its spec's name, e.g. reply-drafter).")
@click.option("--since", callback=_day, default=None, help="First UTC day (YYYY-MM-DD); default yesterday (and today so far).")
@click.option("--until", callback=_day, default=None, help="Last UTC day (YYYY-MM-DD); default today when --since is given.")
@click.option("--request-log", type=click.Path(dir_okay=False), default=None, help="Request log JSONL (default: the state folder's).")
@click.option("--chart", type=click.Path(dir_okay=False), default=None, help="Also write the chart (PNG) here.")
@click.option("--capacity", is_flag=True, help=("Also plan GPU capacity (reserved / on demand / spot) from the measured "
                                                  "GPU-hours per team and workload kind, and print each team's chargeback."))
@click.option("--capacity-json", type=click.Path(dir_okay=False), default=None, help="Write the capacity plan as JSON here.")
def report(team: str | None, model: str | None, since: date | None, until: date | None, request_log: str | None,
           chart: str | None, capacity: bool, capacity_json: str | None) -> None:
    """Print the attributed cost; exit 1 when a team went over its daily budget."""
    from pathlib import Path

    from aiplat.operations.cost import filter_team, log, markdown_table, model_markdown_table, write_chart
    from aiplat.commands import _resources

    ops = _resources.operations()  # prod: AIPLAT_REQUEST_LOG, the gateway's log
    if since is None and until is None:
        # A person asking wants to see what just happened too: yesterday (the last complete UTC
        # day, what the daily schedule reports) and today so far.
        from datetime import datetime, timedelta, timezone

        until = datetime.now(timezone.utc).date()
        since = until - timedelta(days=1)
    if request_log:
        ops = ops.model_copy(update={"request_log_path": request_log})
    result = ops.cost_report(since, until)
    rows = filter_team(result, team) if team else result.rows
    first, last = result.window
    click.echo(f"cost report {first}..{last} from {ops.request_log().path}")
    click.echo("by team and feature:")
    click.echo(markdown_table(rows))
    per_model = result.model_rows
    if team:
        per_model = per_model[per_model["team"] == (team if team.startswith("team:") else f"team:{team}")]
    if model:
        per_model = per_model[per_model["model"] == model]
    click.echo("by team, model (version) and feature:")
    click.echo(model_markdown_table(per_model))
    if model:
        click.echo(f"model total: {per_model['total_cost'].sum():.4f} ({per_model['gpu_hours'].sum():.4f} GPU-h)")
    if team:
        click.echo(f"team total: {rows['total_cost'].sum():.4f} ({rows['gpu_hours'].sum():.4f} GPU-h)")
    t = result.totals
    click.echo(f"whole total: {t['total_cost']:.4f} = tokens {t['token_cost']:.4f} + GPU {t['gpu_cost']:.4f} "
               f"({t['gpu_hours']:.4f} GPU-h, {int(t['requests'])} requests)")
    if capacity or capacity_json:
        click.echo("")
        _capacity(ops, result, Path(capacity_json) if capacity_json else None)
    for bad in result.rejected:
        click.echo(f"skipped unreadable line {bad.reason}", err=True)
    if chart:
        click.echo(f"chart: {write_chart(result, Path(chart))}")
    breaches = [b for b in result.breaches if not team or b.team == (team if team.startswith("team:") else f"team:{team}")]
    if breaches:
        for b in breaches:
            log.error(b.alert_line())
            click.echo(b.alert_line(), err=True)
        raise click.ClickException(f"{len(breaches)} team-day(s) over budget")


def _capacity(ops, result, json_path) -> None:
    """The capacity plan for the report's window: inference from the same request log, training from
    the Dagster instance's GPU-pool runs (DAGSTER_HOME, else the local runtime's)."""
    import json
    import os

    import dagster as dg

    from aiplat.config import dagster_home
    from aiplat.operations.capacity import CapacityAssumptions, fetch_training_runs, plan, render

    first, last = result.window
    records, _rejected = ops.request_log().read(first, last)
    by_team = result.by_team()
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        training, notes = fetch_training_runs(instance, first, last)
    rates = ops.rates()
    capacity_plan = plan(records, training, (first, last), CapacityAssumptions(on_demand_gpu_hour=rates.gpu_hour),
                         gpus_per_endpoint=rates.gpus_per_endpoint,
                         token_cost=dict(zip(by_team["team"], by_team["token_cost"])),
                         inference_by_team=dict(zip(by_team["team"], by_team["gpu_hours"])))
    click.echo(render(capacity_plan))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if json_path:
        json_path.write_text(json.dumps(capacity_plan.to_dict(), indent=2, default=str))
        click.echo(f"capacity plan: {json_path}")


@cli.command("alert-rules")
def alert_rules() -> None:
    """Print the Prometheus recording and alerting rules (budgets and token rates from the deployment's
    operations settings); deploy/observability/alert-rules.yaml is this output."""
    from aiplat.commands import _resources
    from aiplat.operations.alert_rules import render_rules, settings_from, to_yaml

    click.echo(to_yaml(render_rules(settings_from(_resources.operations()))), nl=False)
