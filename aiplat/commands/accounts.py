"""`aiplat accounts`: who may act on the platform, as accounts with verified tokens.

`init` makes the local accounts (the Dagster service account, a platform operator and one account
per team that owns a model spec) with their token files under the state folder; `make dev` and
`make test` run it. `add` and `revoke` are for the platform team only, checked against the caller's
own credential and audited; `whoami` says whom the platform takes you for.
"""

from __future__ import annotations

import click


class _AccountsGroup(click.Group):
    def invoke(self, ctx: click.Context):
        from aiplat.config import MissingSecret

        try:
            return super().invoke(ctx)
        except MissingSecret as e:  # prod without its account store: name the variable, no traceback
            raise click.ClickException(str(e)) from None


@click.group("accounts", cls=_AccountsGroup)
def cli() -> None:
    """Platform accounts: init (local), whoami, list, add, revoke."""


@cli.command("init")
def init() -> None:
    """Create the local accounts and token files that are missing (existing tokens stay valid)."""
    from aiplat.security.identity import init_local_accounts
    from aiplat.specs import spec_owners

    try:
        written = init_local_accounts(set(spec_owners().values()))
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    for name, path in sorted(written.items()):
        click.echo(f"{name:<16} {path}")
    click.echo("Act as one of them: export AIPLAT_TOKEN_FILE=<its token file>")


@cli.command("whoami")
def whoami() -> None:
    """The verified account behind your credential (AIPLAT_TOKEN / AIPLAT_TOKEN_FILE)."""
    from aiplat.security.identity import caller_identity, refusal_reason

    who = caller_identity()
    if who.team is None:
        raise click.ClickException(f"not signed in: {refusal_reason(who)}")
    click.echo(f"{who.actor} ({who.team})")


@cli.command("list")
def list_accounts() -> None:
    """Accounts, their team and kind (never their tokens)."""
    from aiplat.security.identity import ensure_local_accounts

    for account in ensure_local_accounts().accounts():
        click.echo(f"{account.name:<16} {account.team:<18} {account.kind:<8} created {account.created}")


def _as_platform(action: str, name: str):
    """The caller when the platform team; the refusal (audited) as a click error otherwise."""
    from aiplat.commands import _resources
    from aiplat.security.access import AccessDenied, authorize, current_identity

    identity, audit = current_identity(), _resources.operations().audit_log()
    try:
        authorize("accounts", f"account:{name}", None, identity, None, audit, change=action)
    except AccessDenied as e:
        raise click.ClickException(f"access denied: {e}") from None
    return identity, audit


@cli.command("add")
@click.argument("name")
@click.option("--team", required=True, help="The account's team, e.g. ml or team:ml.")
@click.option("--service", is_flag=True, help="A service account (a pipeline, a bot), not a person.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="Write the new token here (mode 600) instead of printing it.")
def add(name: str, team: str, service: bool, token_file: str | None) -> None:
    """Create NAME (or rotate its token). Platform team only; audited."""
    from pathlib import Path

    from aiplat.security.access import record
    from aiplat.security.identity import write_token_file, ensure_local_accounts

    identity, audit = _as_platform("add", name)
    store = ensure_local_accounts()
    try:
        token = store.add(name, team, "service" if service else "person")
    except OSError as e:  # prod: the store is a Secret mounted read-only; change the Secret instead
        raise click.ClickException(f"cannot write the account store {store.path}: {e.strerror}") from None
    record("account added", f"account:{name}", None, identity, audit, account_team=team)
    if token_file:
        write_token_file(Path(token_file), token)
        click.echo(f"{name}: token written to {token_file}")
    else:  # shown once: the store keeps only its digest
        click.echo(token)


@cli.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Remove NAME: its token stops working at once. Platform team only; audited."""
    from aiplat.security.access import record
    from aiplat.security.identity import ensure_local_accounts

    identity, audit = _as_platform("revoke", name)
    store = ensure_local_accounts()
    try:
        revoked = store.revoke(name)
    except OSError as e:
        raise click.ClickException(f"cannot write the account store {store.path}: {e.strerror}") from None
    if not revoked:
        raise click.ClickException(f"no account named {name!r}")
    record("account revoked", f"account:{name}", None, identity, audit)
    click.echo(f"{name}: revoked")


@cli.command("sync-registry")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking server (default: the runtime's).")
def sync_registry(tracking_uri: str | None) -> None:
    """Give each registered model's owner team (from its spec) EDIT in MLflow and take every other
    team's grants on it away. Platform team only; audited. Each registration does it for its model;
    run it after adding or moving accounts."""
    from aiplat.commands import _resources
    from aiplat.security.access import record
    from aiplat.security.mlflow_auth import registry_user, sync_registry_grants
    from aiplat.specs import spec_owners

    identity, audit = _as_platform("sync-registry", "*")
    mlflow = _resources.mlflow(tracking_uri)
    if registry_user(mlflow.uri) is None:
        raise click.ClickException("this MLflow server runs without authentication: it keeps no grants "
                                   "(the local stack starts it with --app-name basic-auth)")
    changes = sync_registry_grants(mlflow.uri, spec_owners())
    for change in changes:
        click.echo(f"{change.model:<24} {change.user:<16} {change.change} {change.permission or ''}".rstrip())
    record("registry grants synced", "registry", None, identity, audit, changes=str(len(changes)))
    click.echo(f"{len(changes)} change(s)")
