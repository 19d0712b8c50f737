"""`aiplat endpoints`: served endpoints, each a LoRA adapter route on its base model's shared server.

Every change goes through aiplat.serving.control (the caller's verified team against the model's
owner, the adapter's signature and promotion attestation, the change, the audit entry) and the
runtime's ServingBackend (local vLLM CPU servers, or the Kubernetes manifests in prod). A canary's
traffic goes through the runtime's gateway, and its verdict comes from the gateway's request log.
Heavy imports stay inside the commands: `aiplat --help` imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click


@contextmanager
def _failures(endpoint: str) -> Iterator[None]:
    from aiplat.security.access import AccessDenied
    from aiplat.security.signing import SignatureError
    from aiplat.serving.adapter_rollout import AdapterRolloutFailed
    from aiplat.serving.adapters import AdapterError
    from aiplat.serving.server import ServerStartError
    from aiplat.training.tracking import MlflowUnavailableError
    from mlflow.exceptions import MlflowException

    try:
        yield
    except AccessDenied as e:
        raise click.ClickException(f"access denied: {e}; endpoint {endpoint!r} is unchanged") from None
    except SignatureError as e:  # ApprovalError included: signed is not approved
        raise click.ClickException(f"refused: {e}; endpoint {endpoint!r} is unchanged") from None
    except KeyError as e:  # no such model spec
        raise click.ClickException(e.args[0]) from None
    except MlflowException as e:  # e.g. no such registered version
        raise click.ClickException(f"MLflow: {e.message}; endpoint {endpoint!r} is unchanged") from None
    except (AdapterRolloutFailed, AdapterError, ServerStartError, MlflowUnavailableError, LookupError, ValueError,
            OSError) as e:
        raise click.ClickException(str(e)) from None


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


def _backend():
    from aiplat.commands import _resources

    return _resources.runtime_resource("vllm").serving_backend(_resources.serving_keys())


def _version(model: str, version: str, base: str | None, folder: Path | None, attestation_file: Path | None):
    """`model` `version` as an AdapterVersion, and the MLflow client it was read from (None for a folder).

    Without FOLDER the registry's version is the source: its adapter is downloaded and checked
    against the digest recorded at registration, its attestation is the one promotion recorded, and
    the deploy's verifier also checks the signature recorded on the version. With FOLDER (an adapter
    outside the registry), its attestation is the file given, else the one on the MLflow version
    (or --attestation-file). The base defaults to the model spec's base_model."""
    from aiplat.commands import _resources
    from aiplat.serving.backend import AdapterVersion
    from aiplat.serving.champion import MlflowAdapterSource
    from aiplat.specs import find_spec

    base = base or find_spec(model).base_model
    if folder is not None:
        path = str(folder.resolve())
        return AdapterVersion(model, version, base, path, _attestation(model, version, attestation_file, None),
                              folder=path), None
    if attestation_file is not None:
        raise click.UsageError("--attestation-file goes with FOLDER; a registry version carries its own")
    mlflow = _resources.mlflow()
    mlflow.check_available()
    adapter = MlflowAdapterSource(mlflow.client, model, base, version=version, tracking_uri=mlflow.uri,
                                  store_prefix=_resources.runtime_resource("vllm").adapter_store_prefix()).resolve()
    return adapter, mlflow.client


def _caller():
    """The verified caller, the runtime's audit log and the model owners (aiplat.serving.control)."""
    from aiplat.commands import _resources
    from aiplat.security.access import current_identity
    from aiplat.serving.control import Caller
    from aiplat.specs import spec_owners

    return Caller(current_identity(), _resources.operations().audit_log(), spec_owners())


_MODEL_HELP = "Registered model the adapter is a version of (its owner team may change its endpoint; default: ENDPOINT)."


@click.group()
def cli() -> None:
    """Served endpoints (LoRA adapters on one vLLM server per base model): list, deploy (with canary),
    roll back, stop, logs, load-test."""


@cli.command("list")
@click.argument("endpoint", required=False)
@click.option("--json", "as_json", is_flag=True)
def list_(endpoint: str | None, as_json: bool) -> None:
    """Each endpoint's route (adapter versions by weight) and what its server really holds, read from
    the server (health: every routed adapter listed over its base)."""
    with _failures(endpoint or "-"):
        backend = _backend()
        names = [endpoint] if endpoint else backend.endpoints()
        states = [s for s in (backend.live_state(n) for n in names) if s is not None]
    if endpoint and not states:
        raise click.ClickException(f"no endpoint named {endpoint!r} (endpoints: {', '.join(backend.endpoints()) or 'none'})")
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in states], indent=2))
        return
    if not states:
        click.echo("no endpoints; a promoted champion is served by materializing its served_endpoint, or "
                   "`aiplat endpoints deploy ENDPOINT --version V`")
    for s in states:
        missing = f"; missing on the server: {', '.join(s.missing)}" if s.missing else ""
        click.echo(f"{s.endpoint}: {s.health}; base {s.base or '?'} at {s.url}; {s.split_text}{missing}")


_FOLDER = click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
_BASE = click.option("--base", default=None, help="The base model it adapts, whose shared server serves it "
                                                   "(default: the model spec's base_model).")
_ATTESTATION = click.option("--attestation-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                            default=None, help="With FOLDER: the version's promotion attestation (default: the one "
                                               "on the MLflow version).")


@cli.command()
@click.argument("endpoint")
@_FOLDER
@click.option("--version", "version", required=True, help="The adapter's registered version.")
@click.option("--model-name", default=None, help=_MODEL_HELP)
@_BASE
@_ATTESTATION
@click.option("--gateway", default=None, help="Gateway the canary's traffic goes through (default: the local one).")
def deploy(endpoint: str, folder: Path | None, version: str, model_name: str | None, base: str | None,
           attestation_file: Path | None, gateway: str | None) -> None:
    """Serve the adapter of registered VERSION (or the one in FOLDER) as ENDPOINT: at once when
    ENDPOINT is new, else through a canary."""
    from aiplat.commands import _resources
    from aiplat.serving.adapter_rollout import deploy_adapter
    from aiplat.serving.loadtest import DEFAULT_LOAD_SAMPLE

    model_name = model_name or endpoint
    with _failures(endpoint):
        vllm, keys = _resources.runtime_resource("vllm"), _resources.serving_keys()
        adapter, registry = _version(model_name, version, base, folder, attestation_file)
        traffic = vllm.canary_traffic(_resources.operations().request_log(), DEFAULT_LOAD_SAMPLE, gateway)
        done = deploy_adapter(_caller(), vllm.serving_backend(keys), endpoint, adapter, keys,
                              vllm.adapter_canary_policy(), traffic, registry=registry)
    click.echo(f"{endpoint}: {done.action}; {done.live} takes its traffic"
               + (f" (was {done.previous})" if done.previous else ""))
    if done.verdict is not None:
        click.echo(done.verdict.summary())


@cli.command()
@click.argument("endpoint")
@_FOLDER
@click.option("--version", "version", default=None,
              help="The earlier version to serve again (default: the registry's 'previous' alias).")
@click.option("--model-name", default=None, help=_MODEL_HELP)
@_BASE
@_ATTESTATION
def rollback(endpoint: str, folder: Path | None, version: str | None, model_name: str | None, base: str | None,
             attestation_file: Path | None) -> None:
    """Incident path, no canary: the earlier VERSION (the registry's, or FOLDER's), verified again,
    takes all of ENDPOINT's traffic."""
    from aiplat.commands import _resources
    from aiplat.serving.adapter_rollout import roll_back_adapter_controlled

    model_name = model_name or endpoint
    with _failures(endpoint):
        if version is None:
            if folder is not None:
                raise click.UsageError("FOLDER needs --version (the registered version it holds)")
            version = _previous_version(model_name)
        adapter, registry = _version(model_name, version, base, folder, attestation_file)
        done = roll_back_adapter_controlled(_caller(), _backend(), endpoint, adapter, _resources.serving_keys(),
                                            registry=registry)
    click.echo(f"{endpoint}: {done.action}; {done.live} takes its traffic" + (f" (was {done.previous})" if done.previous else ""))


def _previous_version(model: str) -> str:
    """The version behind the registry's `previous` alias (promotion moves it with the champion)."""
    from aiplat.commands import _resources
    from aiplat.serving.champion import PREVIOUS, aliased_version

    mlflow = _resources.mlflow()
    mlflow.check_available()
    return str(aliased_version(mlflow.client, model, PREVIOUS).version)


@cli.command()
@click.argument("endpoint")
@click.option("--model-name", default=None, help=_MODEL_HELP)
def stop(endpoint: str, model_name: str | None) -> None:
    """Remove ENDPOINT's route and unload its adapters; the other endpoints on the server keep serving."""
    from aiplat.serving.adapter_rollout import stop_endpoint

    with _failures(endpoint):
        state = stop_endpoint(_caller(), _backend(), endpoint, model_name or endpoint)
    if state is None:
        raise click.ClickException(f"no adapter endpoint named {endpoint!r}")
    click.echo(f"{endpoint}: stopped (was {', '.join(state.split)})")


@cli.command()
@click.argument("base")
@click.option("-n", "--lines", default=40, show_default=True)
def logs(base: str, lines: int) -> None:
    """The last lines of base model BASE's server log (local runtime; prod: kubectl logs)."""
    from aiplat.commands import _resources
    from aiplat.serving.server import log_tail

    with _failures(base):
        servers = dict(_resources.runtime_resource("vllm").live_servers())  # prod: none (kubectl logs)
    if base not in servers:
        raise click.ClickException(f"no local server of base model {base!r} (running: {', '.join(servers) or 'none'})")
    click.echo(f"== {servers[base].log_file}")
    click.echo(log_tail(Path(servers[base].log_file), lines=lines))


@cli.command("load-test")
@click.argument("endpoint")
@click.option("-c", "--concurrency", "concurrencies", multiple=True, type=int, default=(1, 4, 8), show_default=True)
@click.option("--num-prompts", type=int, default=None)
@click.option("--output-len", type=int, default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def load_test(endpoint: str, concurrencies: tuple[int, ...], num_prompts: int | None, output_len: int,
              as_json: bool) -> None:
    """`vllm bench serve` against ENDPOINT's live adapter at each concurrency."""
    from aiplat.commands import _resources
    from aiplat.serving.loadtest import DEFAULT_LOAD_SAMPLE, LoadTestError

    try:
        report = _resources.runtime_resource("vllm").load_test(endpoint, concurrencies, DEFAULT_LOAD_SAMPLE, num_prompts,
                                                               output_len, lambda m: click.echo(m, err=True))
    except (LoadTestError, LookupError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for lv in report.levels:
        click.echo(f"c={lv.concurrency:<3} {lv.requests_per_s:6.2f} req/s {lv.output_tokens_per_s:7.1f} out tok/s  "
                   f"TTFT p50/p95/p99 {lv.ttft_ms['p50']:.0f}/{lv.ttft_ms['p95']:.0f}/{lv.ttft_ms['p99']:.0f} ms  "
                   f"E2E p50/p95/p99 {lv.e2e_ms['p50']:.0f}/{lv.e2e_ms['p95']:.0f}/{lv.e2e_ms['p99']:.0f} ms  failed {lv.failed}")


@cli.command()
@click.argument("base")
@click.option("--model-store", default="s3://aiplat-models", show_default=True,
              help="Model store prefix holding base/<BASE>/ and <model>/v<version>/adapter/.")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--namespace", default="team-ml", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def render(base: str, model_store: str, gpus: int, namespace: str, output: Path | None) -> None:
    """Kubernetes manifests (prod) of base model BASE's shared server with no adapter wanted yet:
    desired-adapters ConfigMap, Deployment (vLLM + adapter-loader sidecar) and Service. Deploys then
    change the ConfigMap through the serving backend (AIPLAT_SERVING_MANIFESTS_DIR)."""
    from aiplat.serving.k8s import to_yaml
    from aiplat.serving.k8s_adapters import AdapterServerSpec, render_adapter_server

    with _failures(base):
        spec = AdapterServerSpec(base_name=base, base_uri=f"{model_store.rstrip('/')}/base/{base}/", gpus=gpus,
                                 namespace=namespace)
        text = to_yaml(render_adapter_server(spec, []))
    if output:
        output.write_text(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)
