"""`aiplat pipeline launch`: run a job on the deployed platform through Dagster's GraphQL API and
wait for it and its gates (what the merge workflow calls)."""

from __future__ import annotations

import click


def _tag(_ctx, _param, values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        tags[key] = val
    return tags


@click.group("pipeline")
def cli() -> None:
    """Drive a deployed platform's pipelines (CI/CD)."""


@cli.command("launch")
@click.option("--url", envvar="AIPLAT_DAGSTER_URL", required=True, help="Dagster webserver (…/graphql); env AIPLAT_DAGSTER_URL.")
@click.option("--job", required=True, help="Job name, e.g. ticket_triage__release_job, or __ASSET_JOB with --asset.")
@click.option("--asset", "assets", multiple=True, help="Asset key (a/b) to materialise; repeatable.")
@click.option("--gate", "gates", multiple=True, help="ASSET:CHECK that must pass, e.g. ticket_triage/eval_report:eval_gate.")
@click.option("--tag", "tags", multiple=True, callback=_tag, help="Run tag KEY=VALUE; repeatable.")
@click.option("--location", default="ai_platform", show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=3600, show_default=True, help="Seconds to wait in all.")
@click.option("--poll", "poll_s", type=float, default=10, show_default=True)
@click.option("--token", envvar="AIPLAT_DAGSTER_TOKEN", default=None, hidden=True,
              help="Bearer token for the webserver's proxy; set AIPLAT_DAGSTER_TOKEN (a command-line value shows in ps).")
@click.option("--output-json", type=click.Path(dir_okay=False), default=None,
              help="Also write run id, status and each gate's metadata here (for later workflow steps).")
def launch(url: str, job: str, assets: tuple[str, ...], gates: tuple[str, ...], tags: dict[str, str], location: str,
           timeout_s: float, poll_s: float, token: str | None, output_json: str | None) -> None:
    """Launch JOB, wait for the run, read each --gate; exit 1 unless the run succeeded and every gate passed."""
    from aiplat.delivery.dagster_api import DagsterApi, DagsterApiError, Gate, launch_and_wait

    try:
        parsed = [Gate.parse(g) for g in gates]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    api = DagsterApi(url, token=token or None)
    try:
        outcome = launch_and_wait(api, job, gates=parsed, assets=[a.split("/") for a in assets], tags=tags,
                                  location=location, timeout_s=timeout_s, poll_s=poll_s, progress=click.echo)
    except DagsterApiError as e:
        raise click.ClickException(str(e)) from None
    finally:
        api.close()
    for result in outcome.gates:
        click.echo(result.line())
    if output_json:
        import json
        from pathlib import Path

        Path(output_json).write_text(json.dumps({
            "run_id": outcome.run_id, "status": outcome.status, "ok": outcome.ok,
            "gates": [{"gate": str(g.gate), "status": g.status, "passed": g.passed, "metadata": dict(g.metadata)}
                      for g in outcome.gates]}, indent=2, default=str))
    click.echo(f"run {outcome.run_id}: {outcome.status}")
    if not outcome.ok:
        failed = [str(g.gate) for g in outcome.gates if not g.passed]
        raise click.ClickException(f"run {outcome.run_id} ended {outcome.status}"
                                   + (f"; gates not passed: {', '.join(failed)}" if failed else ""))
