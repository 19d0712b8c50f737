"""`aiplat rollback NAME`: point the `champion` alias back at `previous`."""

from __future__ import annotations

import click

from aiplat.commands.promote import access_settings, actor, mlflow_client


@click.command("rollback")
@click.argument("name")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI (default: the local stack's server).")
def cli(name: str, tracking_uri: str | None) -> None:
    """Move NAME's champion back to the previous champion. Rolling back twice changes nothing.
    Only the model's owner team or the platform team (the caller's verified credential) may; every attempt is audited."""
    from aiplat.evaluation.promotion import RollbackImpossible, rollback
    from aiplat.security.access import AccessDenied

    client = mlflow_client(tracking_uri)
    try:
        out = rollback(client, name, dagster_run_id=None, actor=actor(), **access_settings())
    except AccessDenied as e:
        raise click.ClickException(f"access denied: {e}") from None
    except RollbackImpossible as e:
        raise click.ClickException(str(e)) from None
    if out.status == "noop":
        click.echo(f"{name}: {out.detail}; nothing changed (recorded)")
    else:
        click.echo(f"{name}: {out.detail} (log run {out.log_run_id})")
