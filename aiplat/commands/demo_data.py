"""`aiplat demo-data`: land a deterministic demo corpus (tickets + KB articles with PII)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click


def _months_back(today: date, months: int) -> date:
    index = today.year * 12 + (today.month - 1) - months
    return date(index // 12, index % 12 + 1, 1)


@click.group("demo-data")
def cli() -> None:
    """Generate the demo corpus into the landing zone."""


@cli.command("generate")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Landing folder (default: the local state dir's landing/).")
@click.option("--seed", type=int, default=None, help="Random seed; the same seed gives identical files.")
@click.option("--tickets", type=click.IntRange(min=0), default=None, help="Number of tickets.")
@click.option("--kb", type=click.IntRange(min=0), default=None, help="Number of KB articles.")
@click.option("--bad-lines", type=click.IntRange(min=0), default=None,
              help="Deliberately broken lines to plant (shows quarantine).")
@click.option("--start", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First day of the corpus (default: the first of the month, 6 months before this one, "
                   "so that the demo's features are fresh; pass it to reproduce a corpus byte for byte).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def generate(out: Path | None, seed: int | None, tickets: int | None, kb: int | None, bad_lines: int | None,
             start, as_json: bool) -> None:
    """Write tickets/tickets-<YYYY-MM>.jsonl and kb_articles/kb-<date>.jsonl under OUT."""
    from aiplat import demo_data
    from aiplat.config import local_paths

    target = out or local_paths().landing
    summary = demo_data.generate(
        target,
        seed=demo_data.DEFAULT_SEED if seed is None else seed,
        tickets=demo_data.DEFAULT_TICKETS if tickets is None else tickets,
        kb=demo_data.DEFAULT_KB if kb is None else kb,
        bad_lines=demo_data.DEFAULT_BAD_LINES if bad_lines is None else bad_lines,
        start=start.date() if start else _months_back(date.today(), demo_data.DEFAULT_MONTHS),
        months=demo_data.DEFAULT_MONTHS,
    )
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
        return
    click.echo(f"landed {sum(summary.records.values())} records in {len(summary.files)} files under {target}")
    for dataset, count in summary.records.items():
        click.echo(f"  {dataset}: {count} records")
    click.echo(f"  deliberately bad lines: {summary.bad_lines}")
    click.echo("  PII values planted: " + ", ".join(f"{k}={v}" for k, v in summary.pii_values.items()))
