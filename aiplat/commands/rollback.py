"""`aiplat rollback NAME`: point the `champion` alias back at `previous`."""

from __future__ import annotations

import click

from aiplat.commands.promote import actor, mlflow_client


@click.command("rollback")
@click.argument("name")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI (default: the local stack's server).")
def cli(name: str, tracking_uri: str | None) -> None:
    """Move NAME's champion back to the previous champion. Rolling back twice changes nothing."""
    from aiplat.evaluation.promotion import RollbackImpossible, rollback

    client = mlflow_client(tracking_uri)
    try:
        out = rollback(client, name, dagster_run_id=None, actor=actor())
    except RollbackImpossible as e:
        raise click.ClickException(str(e)) from None
    if out.status == "noop":
        click.echo(f"{name}: {out.detail}; nothing changed (recorded)")
    else:
        click.echo(f"{name}: {out.detail} (log run {out.log_run_id})")
