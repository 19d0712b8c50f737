"""`aiplat materialize`: the whole graph, headless, and a list of what it made."""

from __future__ import annotations

import click

from aiplat.commands._dagster import instance_and_defs


@click.command("materialize")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Run config (YAML) for the downstream run, e.g. ops: {fine_tuned_model: {config: {steps: 4}}}.",
)
def cli(config_file: str | None) -> None:
    """Ingest every landed batch not yet taken in, then rebuild everything downstream."""
    import yaml
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from platform_defs.headless import materialize_all, pending_batches

    from aiplat.commands._resources import config_errors

    console = Console()
    instance, defs = instance_and_defs()
    with config_errors():
        pending = pending_batches(defs, instance)
    table = Table(title="materialized")
    for column in ("run", "job", "partition", "status", "assets", "failed checks"):
        table.add_column(column)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"{len(pending)} landed batches to ingest, then downstream", total=len(pending) + 1)

        def on_run(s):
            progress.advance(task)
            table.add_row(
                s.run_id[:8], s.job, s.partition or "-", "ok" if s.success else "FAILED",
                "\n".join(s.materialized) or "-", "\n".join(s.failed_checks) or "-",
            )

        downstream_config = yaml.safe_load(open(config_file)) if config_file else None
        summaries = materialize_all(defs, instance, on_run=on_run, downstream_config=downstream_config)
    console.print(table)
    failed = [s for s in summaries if not s.success]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(summaries)} runs failed: " + ", ".join(s.run_id for s in failed))
