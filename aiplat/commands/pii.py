"""`aiplat pii`: check a file for PII before landing it, and measure the scanner's quality."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


@click.group("pii")
def cli() -> None:
    """Scan, redact and evaluate PII with the platform's scanner."""


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise click.ClickException(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); nothing written")
            if not isinstance(record, dict):
                raise click.ClickException(f"{path}:{n}: a record must be a JSON object, got {type(record).__name__}")
            records.append({"__line": n, **record})
    return records


def _write_atomically(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


@cli.command("scan")
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where the redacted records go (JSON Lines).")
@click.option("--field", "fields", multiple=True, help="A free-text field to redact (repeatable). Default: the "
              "dataset's text fields with --dataset, else `text`.")
@click.option("--dataset", type=click.Choice(["tickets", "kb_articles"]), default=None,
              help="Use the platform's configuration of this dataset (allow lists, identifier columns).")
@click.option("--findings", "findings_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Findings file (default: OUTPUT with .findings.jsonl).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ray actors scanning each chunk of 4096 records (with more than 1: on the runtime's Ray cluster, "
              "locally a private Ray instance).")
@click.option("--model", default=None, help="spaCy NER model package (default: the offline small model).")
def scan(input_path: Path, output: Path, fields: tuple[str, ...], dataset: str | None, findings_path: Path | None,
         workers: int, model: str | None) -> None:
    """Write INPUT's records with FIELDs redacted (other fields as they were) plus a findings file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from aiplat.pii.config import adhoc_config, dataset_config
    from aiplat.pii.dataset import redact_record, scan_columns
    from aiplat.commands import _resources
    from aiplat.pii.engine import PiiScanError, Scanner

    if output.resolve() == input_path.resolve():
        raise click.ClickException("--output must not be the input file")
    if dataset:
        config = dataset_config(dataset)
        if fields:
            config = config.model_copy(update={"text_fields": fields})
    else:
        config = adhoc_config(fields or ("text",))
    # The runtime's resource: under AIPLAT_ENV=prod its key (AIPLAT_PII_HMAC_KEY) and NER model, so a
    # file scanned here gets the same pseudonyms as the platform's own redaction; never the dev key in prod.
    with _resources.runtime_resource_cm("presidio") as resource:
        pseudonymizer = resource.pseudonymizer
    config = config.with_nlp(engine=resource.nlp_engine, model_name=model or resource.model_name,
                             spacy_model=resource.spacy_model)
    records = _read_jsonl(input_path)
    for r in records:
        for f in config.text_fields:
            if f in r and r[f] is not None and not isinstance(r[f], str):
                raise click.ClickException(
                    f"{input_path}:{r['__line']}: field {f!r} is {type(r[f]).__name__}, not text; nothing written")
    findings_path = findings_path or output.with_name(output.name.removesuffix(".jsonl") + ".findings.jsonl")
    redacted: list[str] = []
    finding_lines: list[str] = []
    counts: dict[str, int] = {}
    chunk, cluster = 256, None
    if workers > 1:  # large chunks, so that each scan is worth a Ray pipeline
        chunk, cluster = 4096, _resources.runtime_resource("ray").cluster()
        click.echo(f"scanning with {workers} Ray actors on {cluster.connect().describe()}", err=True)
    try:
        with Scanner(config, workers=workers, min_parallel=1, cluster=cluster) as scanner, Progress(
            TextColumn("[bold]scanning[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), transient=False,
        ) as progress:
            task = progress.add_task(input_path.name, total=len(records))
            for i in range(0, len(records), chunk):
                part = records[i : i + chunk]
                lines = [r["__line"] for r in part]
                result = scan_columns({f: [r.get(f) for r in part] for f in (*config.text_fields, *config.list_fields)},
                                      lines, config,
                                      scanner)
                for record, found in zip(part, result.per_record):
                    line = record.pop("__line")
                    redacted.append(json.dumps(redact_record(record, found, config, pseudonymizer), ensure_ascii=False))
                    for field, fs in found.items():
                        for f in fs:
                            counts[f.entity_type] = counts.get(f.entity_type, 0) + 1
                            finding_lines.append(json.dumps({"line": line, "field": field, **f._asdict()}))
                progress.advance(task, len(part))
    except PiiScanError as e:
        raise click.ClickException(f"{e}; nothing written")
    _write_atomically(findings_path, finding_lines)
    _write_atomically(output, redacted)
    click.echo(f"{len(records)} records, {len(finding_lines)} findings "
               f"({', '.join(f'{k}={v}' for k, v in sorted(counts.items())) or 'none'})")
    click.echo(f"redacted records: {output}")
    click.echo(f"findings: {findings_path}")


@cli.command("eval")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default: <state dir>/reports/pii).")
@click.option("--size", type=click.IntRange(min=30), default=1200, show_default=True, help="Labeled texts.")
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
def evaluate(out: Path | None, size: int, seed: int, workers: int) -> None:
    """Precision, recall and F2 per entity type on a generated labeled set: report.md + quality.png."""
    from aiplat.config import local_paths
    from aiplat.pii.engine import PiiScanError
    from aiplat.pii.quality import evaluate_scanner

    target = out or local_paths().root / "reports" / "pii"
    try:
        report = evaluate_scanner(target, size=size, seed=seed, workers=workers)
    except PiiScanError as e:
        raise click.ClickException(str(e))
    click.echo(report.markdown)
    click.echo(f"\nreport: {report.markdown_path}\nplot: {report.plot_path}")
    if not all(report.targets_met.values()):
        missed = [e for e, ok in report.targets_met.items() if not ok]
        raise click.ClickException(f"recall target missed for: {', '.join(missed)}")


@cli.command("evaluate")
@click.option("--labeled", "labeled", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A labeled JSONL ({text, spans: [{entity, start, end}]}). Default: generate one with "
                   "presidio-evaluator (scripts/setup_pii_eval_env.sh builds its environment).")
@click.option("--size", type=click.IntRange(min=50), default=2000, show_default=True,
              help="Texts to generate (without --labeled).")
@click.option("--seed", type=int, default=42, show_default=True, help="presidio-evaluator's seed.")
@click.option("--dataset", type=click.Choice(["tickets", "kb_articles"]), default="tickets", show_default=True,
              help="Whose scanner configuration to evaluate.")
@click.option("--demo-records", type=click.IntRange(min=10), default=400, show_default=True,
              help="Demo tickets scored separately (the corpus the team wrote).")
@click.option("--ablation", is_flag=True, help="Also re-scan with each recognizer switched off.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default: <state dir>/reports/pii-heldout).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
def evaluate_heldout(labeled: Path | None, size: int, seed: int, dataset: str, demo_records: int, ablation: bool,
                     out: Path | None, workers: int) -> None:
    """Recall, precision, F2 and leak rate per entity on text the team did not write, plus the demo corpus."""
    from aiplat.config import local_paths
    from aiplat.pii.config import dataset_config
    from aiplat.pii.engine import PiiScanError
    from aiplat.pii.heldout import LabeledSetError, generate_labeled_set, run_evaluation
    from resources.presidio import PresidioResource

    target = out or local_paths().root / "reports" / "pii-heldout"
    try:
        if labeled is None:
            labeled = generate_labeled_set(target / f"presidio-evaluator-seed{seed}-n{size}.jsonl", size, seed)
            click.echo(f"generated {labeled}", err=True)
        report = run_evaluation(labeled, dataset_config(dataset), PresidioResource().pseudonymizer,
                                demo_records=demo_records, workers=workers, ablation=ablation)
    except (LabeledSetError, PiiScanError) as e:
        raise click.ClickException(str(e))
    target.mkdir(parents=True, exist_ok=True)
    (target / "report.md").write_text("# PII scanner on held-out text\n\n" + report.markdown + "\n", encoding="utf-8")
    click.echo(report.markdown)
    click.echo(f"\nreport: {target / 'report.md'}")
    missed = [e for e, ok in report.goals.items() if not ok]
    if missed:
        raise click.ClickException(f"leak-rate goal missed for: {', '.join(missed)}")
