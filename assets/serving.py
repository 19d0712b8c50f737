"""Serving, shared by every model's chain (assets/model_lifecycle.py builds the assets): the
champion's LoRA adapter as an OpenAI-compatible endpoint on its base model's shared vLLM server,
and its load test.

Thin: aiplat.serving does the work (the CLI and the tests call the same functions). A new
champion goes out through a canary measured at the gateway; a failing canary leaves the live
route untouched, moves the `champion` alias back to `previous`, and fails the run with the reason.

Before anything loads: the caller must be the model's owner team or the platform team
(aiplat.security.access; the decision goes to the audit log), and the adapter must verify against
its build signature (aiplat.security.signing) and a promotion attestation approving those bytes as
that version (aiplat.security.approval); any refusal leaves the live endpoint as it is.
"""

from collections.abc import Mapping

import dagster as dg

from aiplat.provenance import code_version
from resources.mlflow import MLflowResource
from resources.operations import OperationsResource
from resources.signing import ModelSigningResource
from resources.vllm import VllmResource


def _rollback(mlflow: MLflowResource, model_name: str):
    def rollback() -> str:
        from aiplat.serving.champion import restore_previous_alias

        try:
            return restore_previous_alias(mlflow.client, model_name)
        except Exception as e:  # the verdict must still reach the run, whatever the registry says
            return f"could not move {model_name!r} back to 'previous': {type(e).__name__}: {e}"

    return rollback


def serve_champion(
    context: dg.AssetExecutionContext,
    name: str,
    endpoint: str,
    owner: str,
    owners: Mapping[str, str],
    load_sample: tuple[str, ...],
    base: str,
    vllm: VllmResource,
    mlflow: MLflowResource,
    model_signing: ModelSigningResource,
    operations: OperationsResource,
) -> dg.MaterializeResult:
    """The registered model `name`'s champion, a LoRA adapter over `base`, onto the base model's shared
    server as `endpoint`, through the control sequence (aiplat.serving.adapter_rollout.deploy_adapter:
    the owner check, the adapter's signature, the one recorded on its MLflow version and its promotion
    attestation, then the load and the gateway-measured canary, each decision audited)."""
    from mlflow.exceptions import MlflowException

    from aiplat.security.access import AccessDenied, current_identity, owner_team
    from aiplat.security.signing import SignatureError
    from aiplat.serving.adapter_rollout import AdapterRolloutFailed, deploy_adapter
    from aiplat.serving.adapters import AdapterError, adapter_version
    from aiplat.serving.champion import MlflowAdapterSource, ModelResolutionError
    from aiplat.serving.control import Caller
    from aiplat.serving.loadtest import DEFAULT_LOAD_SAMPLE
    from aiplat.serving.server import ServerStartError

    try:
        adapter = MlflowAdapterSource(mlflow.client, name, base, tracking_uri=mlflow.uri,
                                      store_prefix=vllm.adapter_store_prefix()).resolve()
    except (ModelResolutionError, ValueError, OSError, MlflowException) as e:
        raise dg.Failure(f"no model to serve: {e}") from e

    identity = current_identity(context.run.tags)
    caller = Caller(identity, operations.audit_log(), owners, {"dagster_run_id": context.run_id})
    keys = model_signing.serving_keys()
    backend = vllm.serving_backend(keys)
    traffic = vllm.canary_traffic(operations.request_log(), tuple(load_sample) or DEFAULT_LOAD_SAMPLE)

    context.log.info(f"rolling out {adapter.name} (LoRA adapter over {adapter.base}) to endpoint {endpoint}")
    try:
        result = deploy_adapter(caller, backend, endpoint, adapter, keys, vllm.adapter_canary_policy(), traffic,
                                registry=mlflow.client)
    except AccessDenied as e:
        raise dg.Failure(description=str(e), metadata={"candidate_version": adapter.version,
                                                       "owner_team": owner_team(name, owners) or ""}) from e
    except SignatureError as e:  # ApprovalError included: signed is not approved
        raise dg.Failure(description=f"refusing to deploy {name} version {adapter.version}: {e}; "
                         f"endpoint {endpoint!r} is unchanged", metadata={"candidate_version": adapter.version}) from e
    except AdapterRolloutFailed as e:
        note = _rollback(mlflow, name)()
        verdict = e.verdict
        raise dg.Failure(description=f"{e}\nrollback: {note}", metadata={
            "candidate_version": adapter.version, "live_version": verdict.live if verdict else "",
            "reasons": dg.MetadataValue.json(list(verdict.reasons) if verdict else []), "rollback": note}) from e
    except (AdapterError, ServerStartError, RuntimeError, OSError, ValueError) as e:
        raise dg.Failure(description=f"{endpoint!r} was not changed to {adapter.name}: {e}",
                         metadata={"candidate_version": adapter.version}) from e

    state = backend.live_state(endpoint)
    metadata: dict = {
        "endpoint": endpoint,
        "endpoint_url": dg.MetadataValue.url(state.url),
        "model_version": adapter.version,
        "served_model_name": adapter.name,
        "adapter": adapter.name,
        "base_model": adapter.base,
        "route": dg.MetadataValue.json(state.split),
        "health": state.health,
        "action": result.action,
        "model_uri": f"models:/{name}/{adapter.version}",
        "registered_model": name,
        "deployed_by": identity.actor,
        "deployed_by_team": identity.team or "",
        "code_version": code_version(),
        "owner": owner,
    }
    if result.verdict is not None:
        figures = result.verdict.figures
        new, old = figures.get(adapter.name), figures.get(result.previous)
        metadata.update({
            "previous_version": adapter_version(result.previous),
            "canary_candidate_requests": new.requests if new else 0,
            "canary_candidate_p95_ms": dg.MetadataValue.float(new.latency_p95_ms if new else 0.0),
            "canary_live_p95_ms": dg.MetadataValue.float(old.latency_p95_ms if old else 0.0),
            "canary_candidate_error_rate": dg.MetadataValue.float(new.error_rate if new else 0.0),
        })
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"{adapter.name}@{state.url}"))


def load_test(context: dg.AssetExecutionContext, endpoint: str, owner: str, config, defaults,
              vllm: VllmResource) -> dg.MaterializeResult:
    """`vllm bench serve` against `endpoint`: run config's concurrencies, num_prompts, output_len and
    prompts where set, else the model spec's `load_test` (`defaults`)."""
    from aiplat.serving.loadtest import DEFAULT_LOAD_SAMPLE, LoadTestError

    try:
        report = vllm.load_test(endpoint, tuple(config.concurrencies or defaults.concurrencies),
                                tuple(config.prompts or DEFAULT_LOAD_SAMPLE),
                                config.num_prompts or defaults.num_prompts, config.output_len or defaults.output_len,
                                progress=context.log.info)
    except (LoadTestError, LookupError) as e:
        raise dg.Failure(str(e)) from e
    metadata: dict = {name: dg.MetadataValue.float(value) for name, value in report.metrics().items()}
    metadata.update({
        "endpoint_url": dg.MetadataValue.url(report.url),
        "served_model_name": report.served_model_name,
        "tool": report.tool,
        "output_len": report.output_len,
        "levels": dg.MetadataValue.md(_levels_table(report)),
        "owner": owner,
    })
    return dg.MaterializeResult(metadata=metadata)


def _levels_table(report) -> str:
    rows = ["| concurrency | req/s | out tok/s | TTFT p50/p95/p99 ms | E2E p50/p95/p99 ms | failed |", "|---|---|---|---|---|---|"]
    for lv in report.levels:
        rows.append(f"| {lv.concurrency} | {lv.requests_per_s:.2f} | {lv.output_tokens_per_s:.1f} | "
                    f"{lv.ttft_ms['p50']:.0f}/{lv.ttft_ms['p95']:.0f}/{lv.ttft_ms['p99']:.0f} | "
                    f"{lv.e2e_ms['p50']:.0f}/{lv.e2e_ms['p95']:.0f}/{lv.e2e_ms['p99']:.0f} | {lv.failed} |")
    return "\n".join(rows)
