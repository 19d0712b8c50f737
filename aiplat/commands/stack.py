"""`aiplat stack up|down|status`: the local runtime (MLflow, Milvus Lite, the gateway, the vLLM
environment, and on request a Ray head with its dashboard)."""

from __future__ import annotations

import json
from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from aiplat import stack

_STYLE = {
    "started": "green", "already running": "green", "running": "green", "ready": "green",
    "stopped": "dim", "not running": "dim",
    "failed": "red", "unhealthy": "red", "stale": "yellow", "port taken": "red", "missing": "yellow",
}

_names = click.argument("services", nargs=-1, type=click.Choice(stack.ALL))


def _table(results: list[stack.ServiceStatus]) -> Table:
    table = Table(show_lines=False)
    for column in ("service", "state", "pid", "port / version", "detail"):
        table.add_column(column, overflow="fold")
    for r in results:
        where = r.url if r.port else (r.version or "")
        table.add_row(r.name, f"[{_STYLE.get(r.state, 'white')}]{r.state}[/]", str(r.pid or ""), where, r.message)
    return table


def _run(title: str, action: Callable[[stack.Progress], list[stack.ServiceStatus]]) -> None:
    """Run `action` under a spinner on stderr; the results table goes to stdout."""
    err = Console(stderr=True)
    with err.status(title) as spinner:
        try:
            results = action(lambda message: spinner.update(f"{title} {message}"))
        except stack.StackError as e:
            if e.results:
                err.print(_table(e.results))
            raise click.ClickException(str(e)) from None
    Console().print(_table(results))


@click.group("stack")
def cli() -> None:
    """Bring the local services up, check them, stop them (state in .aiplat/, see docs/local-runtime.md)."""


@cli.command()
@_names
@click.option("--timeout", type=float, default=None, help="Seconds to wait for each service to be healthy.")
def up(services: tuple[str, ...], timeout: float | None) -> None:
    """Start SERVICES (default: all but ray) and wait until they are healthy; running ones are left alone.

    `aiplat stack up ray` starts a Ray head (dashboard on AIPLAT_RAY_DASHBOARD_PORT, 8265): large
    PII scans and embedding sets then run on it and link its dashboard, instead of a private Ray
    instance per step."""
    _run("starting the local stack:", lambda p: stack.up(services or None, timeout=timeout, progress=p))


@cli.command()
@_names
@click.option("--grace", type=float, default=10.0, show_default=True, help="Seconds between SIGTERM and SIGKILL.")
def down(services: tuple[str, ...], grace: float) -> None:
    """Stop SERVICES (default: all) by their PID files; processes the stack did not start are left alone."""
    _run("stopping the local stack:", lambda p: stack.down(services or None, grace=grace, progress=p))


@cli.command()
@_names
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
def status(services: tuple[str, ...], as_json: bool) -> None:
    """Show what runs, its PID, port and health, and whether the vLLM environment is built."""
    try:
        results = stack.status(services or None)
    except stack.StackError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        Console().print(_table(results))
