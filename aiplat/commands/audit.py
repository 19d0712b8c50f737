"""`aiplat audit MODEL VERSION`: the chain behind a model version, from Dagster asset metadata,
MLflow and the audit log (aiplat.security.lineage). `aiplat audit --verify`: whether the audit
log itself holds (keyed chain, anchor), and if not exactly what is wrong."""

from __future__ import annotations

import click


def verify_log(audit_log, expect_head: str | None) -> None:
    """Print the audit log's state; exit 1 naming what is wrong (entry, kind) when it does not hold."""
    from aiplat.config import MissingSecret
    from aiplat.security.audit_log import AuditLogTampered

    try:
        checked = audit_log.verify()
    except AuditLogTampered as e:
        where = f" at entry {e.entry}" if e.entry else ""
        raise click.ClickException(f"TAMPERED ({e.kind}{where}): {e}") from None
    except (MissingSecret, PermissionError) as e:
        raise click.ClickException(str(e)) from None
    if expect_head and checked.head != expect_head:
        raise click.ClickException(f"TAMPERED (truncated or rewritten): the head is {checked.head}, the head kept "
                                   f"elsewhere is {expect_head}")
    click.echo(f"{checked.path}: chain intact, {checked.entries} entries, head {checked.head}")


@click.command("audit")
@click.argument("model", required=False)
@click.argument("version", required=False)
@click.option("--verify", "verify_only", is_flag=True,
              help="Only check the audit log (keyed chain and anchor) and say exactly what is wrong.")
@click.option("--expect-head", default=None, help="With --verify: a head MAC kept outside the log (from an earlier "
              "--verify); a different head means the log was cut back or rewritten.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI (default: the local stack's server).")
@click.option("--json", "as_json", is_flag=True, help="Print the trail as JSON.")
def cli(model: str | None, version: str | None, verify_only: bool, expect_head: str | None, tracking_uri: str | None,
        as_json: bool) -> None:
    """Print landed data, PII scans, features, training set, training run, eval report, signature,
    promotion and deploy events (who and when) for VERSION of MODEL. Exits 1 when the version is
    unknown or the audit log's chain is broken. With --verify, check only the audit log."""
    import json

    import dagster as dg

    from aiplat.commands import _resources

    if verify_only:
        verify_log(_resources.operations().audit_log(), expect_head)
        return
    if not model or not version:
        raise click.UsageError("give MODEL and VERSION, or --verify")
    from aiplat.commands.promote import mlflow_client
    from aiplat.config import dagster_home
    from aiplat.evaluation.registry import ModelVersionNotFound, model_version
    from aiplat.security.lineage import audit_trail, model_lineage, render
    from aiplat.specs import SpecError, find_spec
    from platform_defs.definitions import build_definitions

    client = mlflow_client(tracking_uri)
    audit_log = _resources.operations().audit_log()  # prod: AIPLAT_AUDIT_LOG
    try:
        model_version(client, model, version)
    except ModelVersionNotFound as e:
        raise click.ClickException(str(e)) from None
    import os

    home = dagster_home()  # the instance `dagster dev` and `aiplat materialize` use
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(home))
    try:
        spec = find_spec(model)
    except (KeyError, SpecError) as e:
        raise click.ClickException(str(e).strip('"')) from None
    # The model's real upstream, walked in the asset graph the platform runs (not every asset).
    lineage = model_lineage(build_definitions().resolve_asset_graph(), spec.key_prefix)
    with dg.DagsterInstance.get() as instance:
        trail = audit_trail(model, version, instance, client, audit_log, lineage)
    if as_json:
        click.echo(json.dumps(trail.to_dict(), indent=2, default=str))
    else:
        click.echo("\n".join(render(trail)))
    if trail.audit_log.startswith("TAMPERED"):
        raise click.ClickException(f"audit log: {trail.audit_log}")
