"""`aiplat promote NAME VERSION`: move the `champion` alias, only on a passing, current eval report,
and only for the model's owner team or the platform team (verified from the caller's credential, AIPLAT_TOKEN / AIPLAT_TOKEN_FILE; every attempt is audited)."""

from __future__ import annotations

import click


def mlflow_client(tracking_uri: str | None):
    """The runtime's MLflow (prod: MLFLOW_TRACKING_URI), or the one at `tracking_uri`, checked reachable."""
    from aiplat.commands import _resources

    resource = _resources.mlflow(tracking_uri)
    try:
        resource.check_available()
    except Exception as e:  # noqa: BLE001 - shown to the operator as is
        raise click.ClickException(str(e)) from None
    return resource.client


def access_settings() -> dict:
    """Who owns which model (when MLflow has no owner_team tag) and where the audit log is
    (the runtime's `operations`: prod writes to AIPLAT_AUDIT_LOG like the Dagster pods)."""
    from aiplat.commands import _resources
    from aiplat.specs import spec_owners

    operations = _resources.operations()
    return {"owners": spec_owners(), "audit": operations.audit_log()}


def actor() -> str:
    """The caller as MLflow's promotion history names them: the verified account, else the OS user."""
    from aiplat.security.identity import caller_identity

    return f"cli:{caller_identity().actor}"


@click.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--report", "report_sha256", default=None, help="Only promote on this report hash (sha256).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI (default: the local stack's server).")
def cli(name: str, version: str, report_sha256: str | None, tracking_uri: str | None) -> None:
    """Make VERSION of model NAME the champion. Refuses without a passing, current eval report."""
    from aiplat.evaluation.gate import alert_line, emit_alert
    from aiplat.evaluation.promotion import PromotionRefused, promote
    from aiplat.commands import _resources
    from aiplat.config import MissingSecret
    from aiplat.evaluation.registry import ModelVersionNotFound
    from aiplat.security.access import AccessDenied

    client = mlflow_client(tracking_uri)
    # Promotion signs its approval with the runtime's approval key (prod: AIPLAT_APPROVAL_PRIVATE_KEY),
    # read only once the caller is authorized: a refused caller is audited like any other.
    try:
        out = promote(client, name, version, dagster_run_id=None, actor=actor(), expected_report_sha256=report_sha256,
                      approver=_resources.approver, **access_settings())
    except MissingSecret as e:
        raise click.ClickException(str(e)) from None
    except AccessDenied as e:
        raise click.ClickException(f"access denied: {e}") from None
    except PromotionRefused as e:
        emit_alert(alert_line("promotion", name, version, e.reason, actor=actor()))
        raise click.ClickException(str(e)) from None
    except ModelVersionNotFound as e:
        raise click.ClickException(str(e)) from None
    if out.status == "noop":
        click.echo(f"{name} version {version} is already the champion; nothing changed (recorded)")
    else:
        click.echo(f"{name}: {out.detail} (report {str(out.report_sha256)[:12]}, log run {out.log_run_id})")
