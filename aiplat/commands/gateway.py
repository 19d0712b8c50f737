"""`aiplat gateway serve|hash-key|render`: the metering gateway in front of the endpoints.

Locally `aiplat stack up gateway` runs `serve` with its defaults (the adapter routes the serving
backend writes, <state>/serving/adapter-routes.json, and the state folder's request log). In prod
every setting is an option here; the ones a Deployment sets by env are marked with their variable
(the same ones the Dagster resources read); the routes are the mounted `aiplat-adapter-routes`
ConfigMap (aiplat.serving.gateway_k8s).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group("gateway")
def cli() -> None:
    """The OpenAI-compatible gateway that labels every request with team and feature and records it."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=None, help="Default: the local gateway port (AIPLAT_GATEWAY_PORT, 4000).")
@click.option("--require-attribution/--no-require-attribution", default=None,
              help="Refuse (401) requests with no team. Default: on in prod (AIPLAT_ENV=prod), off locally, "
                   "where they are recorded as team 'unattributed'.")
@click.option("--api-key-teams", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="AIPLAT_GATEWAY_API_KEY_TEAMS", show_envvar=True,
              help="JSON/YAML file of {sha256(API key): team} (see `aiplat gateway hash-key`).")
@click.option("--request-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="AIPLAT_REQUEST_LOG", show_envvar=True,
              help="Request log to append to. Default: <state>/operations/requests.jsonl.")
@click.option("--upstream-api-key", envvar="AIPLAT_VLLM_API_KEY", default=None, show_default=False,
              help="Bearer token the gateway sends upstream; read from AIPLAT_VLLM_API_KEY, never logged.")
@click.option("--forward-authorization", is_flag=True,
              help="Pass the client's Authorization header upstream (when no --upstream-api-key is set).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for an upstream answer.")
@click.option("--trust-team-header/--no-trust-team-header", default=None,
              help="Let X-AIPLAT-Team name the team of a request without an API key. Default: only locally; "
                   "in prod (AIPLAT_ENV=prod) only a registered API key names a team.")
@click.option("--hard-budgets", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="AIPLAT_GATEWAY_HARD_BUDGETS", show_envvar=True,
              help="JSON/YAML file of {team: daily hard budget}: requests past it are refused (429) before they run.")
@click.option("--prompt-per-1k", type=float, default=None, help="Rate for hard budgets (default: the operations resource's).")
@click.option("--completion-per-1k", type=float, default=None, help="Rate for hard budgets (default: the operations resource's).")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=None,
              help="Larger request bodies are refused (413). Default 1,000,000.")
@click.option("--pii-policy", envvar="AIPLAT_GATEWAY_PII_POLICY", default=None, show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PII guardrail policy file (YAML/JSON; see aiplat/pii/guardrails.py). Default: no guardrails. "
                   "Pseudonyms use the runtime's Presidio key (prod: AIPLAT_PII_HMAC_KEY).")
@click.option("--adapter-routes", envvar="AIPLAT_GATEWAY_ADAPTER_ROUTES", default=None, show_envvar=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The routes file: each endpoint's shared base-model server and its adapter versions' shares "
                   "of traffic (aiplat.serving.adapter_routes), read at every request; the only routing. "
                   "Default locally: <state>/serving/adapter-routes.json (the serving backend writes it); "
                   "required in prod (the mounted aiplat-adapter-routes ConfigMap).")
def serve(host: str, port: int | None, require_attribution: bool | None, api_key_teams: Path | None,
          request_log: Path | None, upstream_api_key: str | None, forward_authorization: bool, timeout: float,
          trust_team_header: bool | None, hard_budgets: Path | None, prompt_per_1k: float | None,
          completion_per_1k: float | None, max_body_bytes: int | None, pii_policy: Path | None, adapter_routes: Path | None) -> None:
    """Run the gateway until interrupted."""
    import logging

    import uvicorn

    from aiplat.config import local_ports, runtime
    from aiplat.operations.requests import RequestLog
    from aiplat.serving.gateway import GatewaySettings, build_app
    from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
    from aiplat.serving.gateway_routing import load_api_key_teams

    from aiplat.operations.cost import CostRates
    from aiplat.serving.budgets import InProcessLedger
    from aiplat.serving.gateway_guards import DEFAULT_MAX_BODY_BYTES
    from aiplat.serving.gateway_routing import load_hard_budgets
    from resources.operations import OperationsResource

    prod = runtime() == "prod"
    if prod and not api_key_teams:
        # In prod only a registered key names a team: without the mapping every request would be refused.
        raise click.ClickException("AIPLAT_GATEWAY_API_KEY_TEAMS (--api-key-teams) is not set; in prod the gateway "
                                   "needs the API-key mapping to attribute any request")
    if prod and adapter_routes is None:
        # The local default is a state folder a prod pod does not have: without the mounted routes every
        # request would be a 404, so refuse to start rather than serve nothing.
        raise click.ClickException("AIPLAT_GATEWAY_ADAPTER_ROUTES (--adapter-routes) is not set; in prod the gateway "
                                   "routes by the mounted aiplat-adapter-routes ConfigMap's adapter-routes.json")
    routes = AdapterRoutes(adapter_routes)  # None: <state>/serving/adapter-routes.json
    resolver = AdapterRouteResolver(routes)
    try:
        mapping = load_api_key_teams(api_key_teams) if api_key_teams else {}
        budgets = load_hard_budgets(hard_budgets) if hard_budgets else {}
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    guardrails = None
    if pii_policy is not None:
        from aiplat.commands import _resources
        from aiplat.pii.guardrails import guardrails_for_gateway

        # The pipeline's own Presidio resource: the same key (so the same pseudonyms) and NER model; in
        # prod a missing, empty or development key is an error here, before the gateway serves anything.
        try:
            guardrails = guardrails_for_gateway(pii_policy, _resources.runtime_resource("presidio"))
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    log_file = RequestLog(request_log)
    ledger = None
    if budgets:
        defaults = OperationsResource()
        rates = CostRates(defaults.prompt_per_1k_tokens if prompt_per_1k is None else prompt_per_1k,
                          defaults.completion_per_1k_tokens if completion_per_1k is None else completion_per_1k)
        ledger = InProcessLedger.from_request_log(log_file, rates, budgets)
    grounding = _grounding()
    settings = GatewaySettings(
        resolver=resolver, request_log=log_file,
        require_attribution=prod if require_attribution is None else require_attribution,
        api_key_teams=mapping, trust_team_header=not prod if trust_team_header is None else trust_team_header,
        upstream_api_key=upstream_api_key or None,
        forward_authorization=forward_authorization, timeout_s=timeout, ledger=ledger,
        max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES, guardrails=guardrails,
        grounding=grounding,
    )
    port = port or local_ports().gateway
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    click.echo(f"gateway on http://{host}:{port}/v1 -> the adapter routes in {routes.path}; "
               f"request log {settings.request_log.path}; "
               f"attribution {'required' if settings.require_attribution else 'optional'}; "
               f"{len(mapping)} API key(s) mapped; team header {'trusted' if settings.trust_team_header else 'ignored'}; "
               f"{len(budgets)} hard budget(s); PII guardrails {pii_policy or 'off'}; grounded endpoints: "
               f"{', '.join(sorted(grounding.endpoints)) if grounding else 'none'}", err=True)
    if grounding is not None:
        import threading

        threading.Thread(target=grounding.retriever.warm, name="grounding-warm", daemon=True).start()
    uvicorn.run(build_app(settings), host=host, port=port, log_level="info", access_log=False)


# A request waits for Milvus at most this long before its 503 (the pipeline's steps retry longer).
SERVING_MILVUS_RETRY = {"retry_attempts": 2, "retry_base_delay_s": 0.25, "retry_max_delay_s": 1.0}


def _grounding():
    """The grounded endpoints of the model specs (AIPLAT_MODELS_DIR), searching the runtime's KB
    index with the runtime's embedder, as the training set's step does; None when no spec is grounded."""
    from aiplat.commands import _resources
    from aiplat.serving.gateway_grounding import Grounding, Retriever, grounded_endpoints
    from aiplat.specs import SpecError, load_specs

    try:
        endpoints = grounded_endpoints(load_specs())
    except SpecError as e:
        raise click.ClickException(str(e)) from None
    if not endpoints:
        return None

    def connect():
        # Resolved per connection: a Milvus not configured yet (prod: AIPLAT_MILVUS_URI, AIPLAT_MILVUS_TOKEN)
        # makes the grounded endpoints answer 503 with the reason in this log, not the gateway fail to start.
        # The gateway only searches: the backup location is not its business.
        milvus = _resources.with_overrides("milvus", backup_uri="unused-by-the-gateway", **SERVING_MILVUS_RETRY)
        return milvus.open_store()

    return Grounding(endpoints, Retriever(connect, _resources.with_overrides("embeddings").load))


@cli.command("hash-key")
def hash_key() -> None:
    """Read an API key from stdin and print its sha256, the form the API-key mapping file stores."""
    from aiplat.operations.requests import key_fingerprint

    if sys.stdin.isatty():
        key = click.prompt("API key", hide_input=True, err=True)
    else:
        key = sys.stdin.read()
    key = key.strip()
    if not key:
        raise click.ClickException("no API key on stdin")
    click.echo(key_fingerprint(key))


@cli.command()
@click.option("--namespace", default="team-ml", show_default=True)
@click.option("--image", default="aiplat-gateway", show_default=True,
              help="The gateway image: the variable name that environments/* resolve to a registry and tag.")
@click.option("--storage-class", default=None, help="A ReadWriteMany storage class for the request log.")
def render(namespace: str, image: str, storage_class: str | None) -> None:
    """Print the gateway's Kubernetes objects (request-log volume, Deployment, Service) as YAML."""
    from aiplat.serving.gateway_k8s import GatewaySpec, render_gateway, to_yaml

    spec = GatewaySpec(namespace=namespace, image=image, storage_class=storage_class)
    try:
        click.echo(to_yaml(render_gateway(spec)), nl=False)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
