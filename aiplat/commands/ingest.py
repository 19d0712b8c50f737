"""`aiplat ingest FILE`: land a file and take it in, as the landing sensor would."""

from __future__ import annotations

from pathlib import Path

import click

from aiplat.commands._dagster import instance_and_defs

DATASET_PREFIXES = {"tickets": "tickets", "kb": "kb_articles", "kb_articles": "kb_articles"}


def _guess_dataset(path: Path) -> str | None:
    stem = path.name.lower()
    for prefix, dataset in DATASET_PREFIXES.items():
        if stem.startswith(prefix):
            return dataset
    return None


@click.command("ingest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(["tickets", "kb_articles"]), help="Default: from the file name.")
@click.option("--check-only", is_flag=True, help="Validate and report; land nothing.")
def cli(file: Path, dataset: str | None, check_only: bool) -> None:
    """Validate FILE, land it in the landing zone and run its ingest job (shows in the UI)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from aiplat.intake.batches import batch_key
    from aiplat.intake.landing import NewBatch
    from aiplat.intake.schema import dataset as dataset_spec
    from aiplat.intake.validate import validate_lines
    from aiplat.provenance import sha256_bytes

    console = Console(stderr=True)
    dataset = dataset or _guess_dataset(file)
    if dataset is None:
        raise click.ClickException(f"cannot tell the dataset of {file.name}; pass --dataset tickets|kb_articles")
    data = file.read_bytes()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        progress.add_task(f"validating {file.name} ({len(data):,} bytes)", total=None)
        result = validate_lines(data, dataset_spec(dataset))
    click.echo(
        f"{file}: {result.lines_read} lines read, {result.accepted} accepted, {len(result.quarantined)} quarantined"
    )
    for q in result.quarantined[:20]:
        click.echo(f"  line {q.line}: {q.reason}")
    if len(result.quarantined) > 20:
        click.echo(f"  ... {len(result.quarantined) - 20} more")
    if check_only:
        return

    import dagster as dg

    from platform_defs.headless import ingest_batch, landing_zone

    from aiplat.commands._resources import config_errors

    instance, defs = instance_and_defs()
    with config_errors(), dg.build_resources({"landing_zone": landing_zone(defs)}) as resources:
        landed = resources.landing_zone.land(dataset, file.name, data)
    sha = sha256_bytes(data)
    batch = NewBatch(dataset=dataset, key=batch_key(landed.stem, sha), uri=landed.uri, sha256=sha)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        progress.add_task(f"running ingest_{dataset}_batch for batch {batch.key}", total=None)
        summary = ingest_batch(defs, instance, batch)
    click.echo(f"run {summary.run_id}: {'succeeded' if summary.success else 'FAILED'}")
    for key in summary.materialized:
        click.echo(f"  materialized {key} [{batch.key}]")
    for check in summary.failed_checks:
        click.echo(f"  check failed: {check}")
    if not summary.success:
        raise click.ClickException(f"ingest of {file.name} failed; see run {summary.run_id} in the Dagster UI")
