"""`aiplat endpoints`: what serves where, deploy (with canary), roll back, load-test, render manifests.

Calls the same functions as the `served_endpoint` and `endpoint_load_test` assets.
Heavy imports stay inside the commands: `aiplat --help` imports this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click


@contextmanager
def _failures() -> Iterator[None]:
    from aiplat.serving.champion import ModelResolutionError
    from aiplat.serving.loadtest import LoadTestError
    from aiplat.serving.manager import CandidateBusy, EndpointNotFound
    from aiplat.serving.registry import RegistryError
    from aiplat.serving.rollout import RolloutFailed
    from aiplat.serving.server import ServerStartError

    try:
        yield
    except (EndpointNotFound, CandidateBusy, RegistryError, RolloutFailed, ServerStartError, LoadTestError,
            ModelResolutionError, ValueError) as e:
        raise click.ClickException(str(e).strip("'\"")) from e


@contextmanager
def _spinner(description: str) -> Iterator:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as p:
        task = p.add_task(description, total=None)
        yield lambda message: p.update(task, description=message)


def _resource(**overrides):
    from resources.vllm import LocalVllmResource

    return LocalVllmResource(**{k: v for k, v in overrides.items() if v is not None})


@click.group()
def cli() -> None:
    """Served model endpoints (vLLM): list, deploy, roll back, load-test."""


@cli.command("list")
@click.option("--check/--no-check", default=True, show_default=True, help="Re-check health with a one-token completion.")
@click.option("--json", "as_json", is_flag=True, help="Print the registry entries as JSON.")
def list_(check: bool, as_json: bool) -> None:
    """What serves where: endpoint, URL, model version, served name, start time, health."""
    with _failures():
        records = _resource().manager.list(check=check)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        click.echo("no endpoints; deploy one with `aiplat endpoints deploy NAME MODEL_FOLDER --version V`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("endpoint", "role", "url", "version", "served model", "started", "pid", "health")
    for r in records:
        for role, s in (("live", r.live), ("candidate", r.candidate)):
            if s:
                table.add_row(r.name, role, s.url, s.model_version, s.served_model_name, s.started_at, str(s.pid), s.health)
    # Piped output (scripts, CI logs) gets full-width rows instead of truncated cells.
    Console(width=None if sys.stdout.isatty() else 220).print(table)


@cli.command()
@click.argument("name")
@click.argument("model_folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--version", "version", required=True, help="Version label of the model (e.g. the MLflow version).")
@click.option("--load-share", type=float, default=None, help="Share of the load sample the canary replays.")
@click.option("--enforce-eager", is_flag=True, help="Start faster (no torch.compile), decode slower.")
def deploy(name: str, model_folder: Path, version: str, load_share: float | None, enforce_eager: bool) -> None:
    """Serve MODEL_FOLDER as endpoint NAME: started directly when NAME is new, else through a canary."""
    from aiplat.serving.champion import FolderSource

    vllm = _resource(endpoint=name, canary_load_share=load_share, enforce_eager=enforce_eager or None)
    with _failures(), _spinner(f"deploying {name} version {version}") as say:
        manager = vllm.manager
        manager.progress = say
        model = FolderSource(model_folder, version).resolve()
        from aiplat.serving.rollout import roll_out

        result = roll_out(manager, name, model, vllm.canary_policy())
    click.echo(f"{name}: {result.action}; version {result.live.model_version} serves on {result.live.url}")
    if result.verdict:
        click.echo(result.verdict.summary)


@cli.command()
@click.argument("name")
def rollback(name: str) -> None:
    """Switch NAME back to the version it served before its last switch (no canary: incident path)."""
    with _failures(), _spinner(f"rolling {name} back") as say:
        manager = _resource().manager
        manager.progress = say
        previous = manager.previous_model(name)
        record = manager.deploy(name, previous)
    click.echo(f"{name}: rolled back to version {record.live.model_version} on {record.live.url}")


@cli.command()
@click.argument("name")
def stop(name: str) -> None:
    """Stop every server of NAME and remove it from the registry."""
    with _failures():
        record = _resource().manager.stop(name)
    click.echo(f"{name}: stopped (was version {record.live.model_version if record.live else '-'})")


@cli.command()
@click.argument("name")
@click.option("-n", "--lines", default=40, show_default=True)
@click.option("--candidate", is_flag=True, help="The candidate's log instead of the live server's.")
def logs(name: str, lines: int, candidate: bool) -> None:
    """The last lines of the endpoint's server log."""
    from aiplat.serving.server import log_tail

    with _failures():
        entry = _resource().manager.get(name)
        server = entry.candidate if candidate else entry.live
        if server is None:
            raise click.ClickException(f"{name} has no candidate")
    click.echo(f"== {server.log_file}")
    click.echo(log_tail(Path(server.log_file), lines=lines))


@cli.command("load-test")
@click.argument("name")
@click.option("-c", "--concurrency", "concurrencies", multiple=True, type=int, default=(1, 4, 8), show_default=True)
@click.option("--num-prompts", type=int, default=None)
@click.option("--output-len", type=int, default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def load_test(name: str, concurrencies: tuple[int, ...], num_prompts: int | None, output_len: int, as_json: bool) -> None:
    """`vllm bench serve` against NAME's live server at each concurrency."""
    from aiplat.serving.loadtest import DEFAULT_LOAD_SAMPLE

    with _failures(), _spinner(f"load-testing {name}") as say:
        report = _resource(endpoint=name).load_test(concurrencies, DEFAULT_LOAD_SAMPLE, num_prompts, output_len, say)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for lv in report.levels:
        click.echo(f"c={lv.concurrency:<3} {lv.requests_per_s:6.2f} req/s {lv.output_tokens_per_s:7.1f} out tok/s  "
                   f"TTFT p50/p95/p99 {lv.ttft_ms['p50']:.0f}/{lv.ttft_ms['p95']:.0f}/{lv.ttft_ms['p99']:.0f} ms  "
                   f"E2E p50/p95/p99 {lv.e2e_ms['p50']:.0f}/{lv.e2e_ms['p95']:.0f}/{lv.e2e_ms['p99']:.0f} ms  failed {lv.failed}")


@cli.command()
@click.argument("name")
@click.option("--version", "version", required=True, help="Model version to roll out.")
@click.option("--live-version", default=None, help="Version serving now (omit for a first deploy).")
@click.option("--model-name", default="ticket-triage", show_default=True, help="Registered model name.")
@click.option("--model-store", default="s3://aiplat-models", show_default=True, help="Prefix of <model>/v<version>/ folders.")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--weight", type=int, default=10, show_default=True, help="Per cent of traffic to the candidate.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def render(name: str, version: str, live_version: str | None, model_name: str, model_store: str, gpus: int,
           weight: int, output: Path | None) -> None:
    """Kubernetes manifests (prod): Deployment + Service per version and the weighted HTTPRoute."""
    from aiplat.serving.k8s import to_yaml
    from resources.vllm import ProdVllmResource

    with _failures():
        prod = ProdVllmResource(endpoint=name, gateway_url="https://gateway.invalid", model_store_prefix=model_store,
                                gpus=gpus, canary_weight=weight)
        text = to_yaml(prod.render_rollout(live_version, version, model_name))
    if output:
        output.write_text(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)
