"""`aiplat endpoints`: what serves where, deploy (with canary), roll back, load-test, render manifests.

Calls the same functions as the `served_endpoint` and `endpoint_load_test` assets, with the same
guards: deploy and rollback are for the model's owner team or the platform team (every decision in
the runtime's audit log), and a model folder must verify against its signature under the runtime's
public key before any server starts for it; a refusal leaves the live endpoint as it was.
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


def _caller():
    """The verified caller, the runtime's audit log and the model owners (aiplat.serving.control)."""
    from aiplat.commands import _resources
    from aiplat.security.access import current_identity
    from aiplat.serving.control import Caller
    from aiplat.specs import spec_owners

    return Caller(current_identity(), _resources.operations().audit_log(), spec_owners())


def _controlled(action: str, model_name: str, version: str | None, endpoint: str, done: str, act, verify=None,
                details=None):
    """aiplat.serving.control.controlled, its refusals as click errors naming what stays unchanged."""
    from aiplat.security.access import AccessDenied
    from aiplat.security.signing import SignatureError
    from aiplat.serving.control import Change, controlled

    try:
        return controlled(_caller(), Change(action, model_name, version, endpoint, done), act, verify, details)
    except AccessDenied as e:
        raise click.ClickException(f"access denied: {e}; endpoint {endpoint!r} is unchanged") from None
    except SignatureError as e:  # ApprovalError included: signed is not approved
        raise click.ClickException(f"refusing to {action} {model_name} version {version} on {endpoint!r}: {e}; "
                                   f"endpoint {endpoint!r} is unchanged") from None


def _verifying(manager):
    """`manager` that starts only folders signed by the runtime's key and approved by a promotion
    attestation under its approval key (the checks run before any start)."""
    from dataclasses import replace

    from aiplat.commands import _resources

    return replace(manager, keys=_resources.serving_keys())


def _attestation(model_name: str, version: str, attestation_file: Path | None, tracking_uri: str | None) -> str:
    """The promotion attestation of `model_name` `version`: the file given, else the one promotion
    recorded on the registry's version. Empty when there is none or MLflow cannot be read (said on
    stderr): the deploy is then refused as unapproved, after the signature check."""
    if attestation_file is not None:
        return attestation_file.read_text()
    from aiplat.commands import _resources
    from aiplat.security.approval import registry_attestation

    try:
        resource = _resources.mlflow(tracking_uri)
        resource.check_available()
        return registry_attestation(resource.client, model_name, version)
    except Exception as e:  # noqa: BLE001 - without the registry there is no approval to show
        click.echo(f"no promotion attestation of {model_name} version {version}: MLflow could not be read "
                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass --attestation-file", err=True)
        return ""


_MODEL_NAME_HELP = ("Registered model NAME serves (its owner team may deploy and roll it back; default: NAME, "
                    "so an endpoint named after no model is the platform team's alone).")
_TRACKING_HELP = "MLflow to read the version's promotion attestation from (default: the runtime's MLflow)."


@click.group()
def cli() -> None:
    """Served model endpoints (vLLM): list, deploy, roll back, load-test."""


@cli.command("list")
@click.option("--check/--no-check", default=True, show_default=True, help="Re-check health with a one-token completion.")
@click.option("--json", "as_json", is_flag=True, help="Print the registry entries as JSON.")
def list_(check: bool, as_json: bool) -> None:
    """What serves where: endpoint, URL, model version, served name, start time, health."""
    with _failures():
        vllm = _resource()
        records = vllm.manager.list(check=check)
        backend = vllm.serving_backend(None)
        shared = [s for s in (backend.live_state(n) for n in backend.endpoints()) if s is not None]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records] + [s.to_dict() for s in shared], indent=2))
        return
    for state in shared:  # LoRA adapters on a shared base-model server (`aiplat adapters status`)
        click.echo(f"{state.endpoint}: {state.health}; adapter {state.split_text} on {state.base} at {state.url}")
    if not records:
        if not shared:
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
@click.option("--model-name", default=None, help=_MODEL_NAME_HELP)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, help=_TRACKING_HELP)
@click.option("--attestation-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The version's promotion attestation (default: the one recorded on the MLflow version).")
@click.option("--load-share", type=float, default=None, help="Share of the load sample the canary replays.")
@click.option("--enforce-eager", is_flag=True, help="Start faster (no torch.compile), decode slower.")
def deploy(name: str, model_folder: Path, version: str, model_name: str | None, tracking_uri: str | None,
           attestation_file: Path | None, load_share: float | None, enforce_eager: bool) -> None:
    """Serve MODEL_FOLDER as endpoint NAME: started directly when NAME is new, else through a canary.

    Only for the model's owner team or the platform team (verified from the caller's credential), and only a folder that
    verifies against its signature (model.sig) and that a promotion approved (its attestation names
    exactly these bytes as MODEL_NAME VERSION); a refusal leaves the live endpoint as it was."""
    from dataclasses import replace

    from aiplat.serving.champion import FolderSource
    from aiplat.serving.rollout import roll_out

    model_name = model_name or name
    vllm = _resource(canary_load_share=load_share, enforce_eager=enforce_eager or None)
    with _failures():
        model = FolderSource(model_folder, version, model_name).resolve()
    manager = _verifying(vllm.manager)  # its settings first: a misconfigured host logs no decision

    def act():
        with _spinner(f"deploying {name} version {version}") as say:
            manager.progress = say
            return roll_out(manager, name, model, vllm.canary_policy())

    def verify() -> None:
        nonlocal model  # the attestation is read after the access decision
        model = replace(model, attestation=_attestation(model_name, version, attestation_file, tracking_uri))
        manager.verify(model)

    with _failures():
        result = _controlled("deploy", model_name, model.version, name, "deployed", act, verify,
                             lambda r: {"action": r.action, "url": r.live.url})
    click.echo(f"{name}: {result.action}; version {result.live.model_version} serves on {result.live.url}")
    if result.verdict:
        click.echo(result.verdict.summary)


@cli.command()
@click.argument("name")
@click.option("--model-name", default=None, help=_MODEL_NAME_HELP)
def rollback(name: str, model_name: str | None) -> None:
    """Switch NAME back to the version it served before its last switch (no canary: incident path).

    Same guards as deploy: owner team or platform team, and the earlier folder must still verify
    against its signature before it starts again."""
    model_name = model_name or name
    with _failures():
        manager = _resource().manager
        previous = manager.previous_model(name)
        current = manager.get(name).live.model_version
    manager = _verifying(manager)

    def act():
        with _spinner(f"rolling {name} back") as say:
            manager.progress = say
            return manager.deploy(name, previous)

    with _failures():
        entry = _controlled("rollback", model_name, previous.version, name, "endpoint rolled back", act,
                            lambda: manager.verify(previous),
                            lambda e: {"from_version": current, "url": e.live.url})
    click.echo(f"{name}: rolled back to version {entry.live.model_version} on {entry.live.url}")


@cli.command()
@click.argument("name")
@click.option("--model-name", default=None, help=_MODEL_NAME_HELP)
def stop(name: str, model_name: str | None) -> None:
    """Stop every server of NAME and remove it from the registry.

    Same guard as deploy (owner team or platform team), audited: a stopped endpoint's next deploy
    starts directly, without a canary, so stopping is as privileged as deploying."""
    model_name = model_name or name
    with _failures():
        manager = _resource().manager
        entry = manager.get(name)
    version = entry.live.model_version if entry.live else None
    with _failures():
        _controlled("stop", model_name, version, name, "endpoint stopped", lambda: manager.stop(name),
                    details=lambda stopped: {"candidate": stopped.candidate.model_version if stopped.candidate else "-"})
    click.echo(f"{name}: stopped (was version {version or '-'})")


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
        report = _resource().load_test(name, concurrencies, DEFAULT_LOAD_SAMPLE, num_prompts, output_len, say)
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
@click.option("--model-name", default=None, help="Registered model name (default: the model whose spec names endpoint NAME).")
@click.option("--model-store", default="s3://aiplat-models", show_default=True, help="Prefix of <model>/v<version>/ folders.")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--weight", type=int, default=10, show_default=True, help="Per cent of traffic to the candidate.")
@click.option("--attestation-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="VERSION's promotion attestation (without one its pods refuse to start).")
@click.option("--live-attestation-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The live version's promotion attestation.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def render(name: str, version: str, live_version: str | None, model_name: str | None, model_store: str, gpus: int,
           weight: int, attestation_file: Path | None, live_attestation_file: Path | None, output: Path | None) -> None:
    """Kubernetes manifests (prod): Deployment + Service per version and the weighted HTTPRoute. Each
    version's pods fetch its folder and verify its signature and promotion attestation before vLLM starts."""
    from aiplat.serving.k8s import to_yaml
    from aiplat.specs import load_specs
    from resources.vllm import ProdVllmResource

    if model_name is None:
        model_name = next((s.name for s in load_specs() if s.endpoint == name), name)

    with _failures():
        prod = ProdVllmResource(gateway_url="https://gateway.invalid", model_store_prefix=model_store,
                                gpus=gpus, canary_weight=weight)
        text = to_yaml(prod.render_rollout(
            name, live_version, version, model_name,
            attestation=attestation_file.read_text() if attestation_file else "",
            live_attestation=live_attestation_file.read_text() if live_attestation_file else ""))
    if output:
        output.write_text(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)
