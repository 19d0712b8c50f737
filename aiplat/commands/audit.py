"""`aiplat audit MODEL VERSION`: the chain behind a model version, from Dagster asset metadata,
MLflow and the audit log (aiplat.security.lineage)."""

from __future__ import annotations

import click


@click.command("audit")
@click.argument("model")
@click.argument("version")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI (default: the local stack's server).")
@click.option("--json", "as_json", is_flag=True, help="Print the trail as JSON.")
def cli(model: str, version: str, tracking_uri: str | None, as_json: bool) -> None:
    """Print landed data, PII scans, features, training set, training run, eval report, signature,
    promotion and deploy events (who and when) for VERSION of MODEL. Exits 1 when the version is
    unknown or the audit log's chain is broken."""
    import json

    import dagster as dg

    from aiplat.commands import _resources
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
