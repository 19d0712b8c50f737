"""Serving, shared by every model's chain (assets/model_lifecycle.py builds the assets): the
champion as an OpenAI-compatible vLLM endpoint, and its load test.

Thin: aiplat.serving does the work (the CLI and the tests call the same functions). A new
champion goes out through a canary; a failing canary leaves the live endpoint untouched, moves
the `champion` alias back to `previous`, and fails the run with the reason.

Before anything starts: the caller must be the model's owner team or the platform team
(aiplat.security.access; the decision goes to the audit log), and the model folder must verify
against its build signature (aiplat.security.signing) and a promotion attestation approving those
bytes as that version (aiplat.security.approval); any refusal leaves the live endpoint as it is.
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


def _server_metadata(result) -> dict:
    live = result.live
    return {
        "endpoint": result.endpoint,
        "endpoint_url": dg.MetadataValue.url(live.url),
        "model_version": live.model_version,
        "served_model_name": live.served_model_name,
        "model_path": live.model_path,
        "start_time": live.started_at,
        "health": live.health,
        "action": result.action,
        "log_file": dg.MetadataValue.path(live.log_file) if live.log_file else "",
        "pid": live.pid,
    }


def serve_champion(
    context: dg.AssetExecutionContext,
    name: str,
    endpoint: str,
    owner: str,
    owners: Mapping[str, str],
    load_sample: tuple[str, ...],
    vllm: VllmResource,
    mlflow: MLflowResource,
    model_signing: ModelSigningResource,
    operations: OperationsResource,
    model_folder: str | None = None,
    folder_version: str | None = None,
    attestation_file: str | None = None,
    base: str = "",
) -> dg.MaterializeResult:
    """Roll the registered model `name`'s champion (or an approved `model_folder`: drills) out to `endpoint`.

    A champion that registered a LoRA adapter over `base` goes onto the base model's shared server
    (aiplat.serving.adapter_rollout, canary measured through the gateway); a version without one, or
    a whole-model folder, gets a server of its own (aiplat.serving.rollout)."""
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    if not model_folder and base:
        from aiplat.serving.champion import MlflowAdapterSource, ModelResolutionError

        try:
            adapter = MlflowAdapterSource(mlflow.client, name, base, tracking_uri=mlflow.uri,
                                          store_prefix=vllm.adapter_store_prefix()).resolve()
        except (ModelResolutionError, ValueError, OSError, MlflowException) as e:
            raise dg.Failure(f"no model to serve: {e}") from e
        if adapter is not None:
            return _serve_adapter(context, name, endpoint, owner, owners, load_sample, adapter, vllm, mlflow,
                                  model_signing, operations)

    from aiplat.security.access import AccessDenied, current_identity, owner_team
    from aiplat.security.approval import registry_attestation, verify_for_serving
    from aiplat.security.signing import SignatureError, check_against_version
    from aiplat.serving.champion import FolderSource, MlflowAliasSource, ModelResolutionError
    from aiplat.serving.rollout import RolloutFailed

    try:
        if model_folder:
            version = folder_version or "folder"
            attestation = (Path(attestation_file).read_text() if attestation_file
                           else registry_attestation(mlflow.client, name, version))
            source = FolderSource(model_folder, version, name, attestation)
            rollback = None
        else:
            source = MlflowAliasSource(mlflow.client, name, tracking_uri=mlflow.uri)
            rollback = _rollback(mlflow, name)
        model = source.resolve()
    except (ModelResolutionError, ValueError, OSError, MlflowException) as e:
        raise dg.Failure(f"no model to serve: {e}") from e

    from aiplat.serving.control import Caller, Change, controlled

    identity = current_identity(context.run.tags)
    caller = Caller(identity, operations.audit_log(), owners, {"dagster_run_id": context.run_id})
    keys = model_signing.serving_keys()

    def verify() -> None:
        if not model_folder:
            # Also the exact signature recorded on this MLflow version, not just any signed folder.
            check_against_version(mlflow.client, name, model.version, model.path, keys.signature)
        verify_for_serving(model.path, model.attestation, keys, model=name, version=model.version)

    context.log.info(f"rolling out {model.uri or model.path} (version {model.version}) to endpoint {endpoint}")
    try:
        result = controlled(
            caller, Change("deploy", name, model.version, endpoint, done="deployed"),
            act=lambda: vllm.roll_out(endpoint, model, rollback, tuple(load_sample), keys=keys), verify=verify,
            details=lambda r: {"action": r.action, "url": r.live.url})
    except AccessDenied as e:
        raise dg.Failure(description=str(e), metadata={"candidate_version": model.version,
                                                       "owner_team": owner_team(name, owners) or ""}) from e
    except SignatureError as e:  # ApprovalError included: signed is not approved
        raise dg.Failure(description=f"refusing to deploy {name} version {model.version}: {e}; "
                         f"endpoint {endpoint!r} is unchanged",
                         metadata={"candidate_version": model.version}) from e
    except RolloutFailed as e:
        verdict = e.verdict
        metadata = {"candidate_version": model.version}
        if verdict is not None:
            metadata.update({"live_version": verdict.live_version, "reasons": dg.MetadataValue.json(verdict.reasons),
                             "canary": dg.MetadataValue.json(verdict.to_dict()), "rollback": verdict.rollback})
        raise dg.Failure(description=str(e), metadata=metadata) from e

    metadata = _server_metadata(result)
    metadata.update({"model_uri": model.uri, "registered_model": name, "deployed_by": identity.actor,
                     "deployed_by_team": identity.team or "", "code_version": code_version(), "owner": owner})
    if result.verdict is not None:
        v = result.verdict
        metadata.update({
            "canary_prompts": v.prompts,
            "canary_agreement": dg.MetadataValue.float(v.agreement),
            "canary_candidate_p95_ms": dg.MetadataValue.float(v.candidate.p95_ms),
            "canary_live_p95_ms": dg.MetadataValue.float(v.live.p95_ms),
            "canary_candidate_error_rate": dg.MetadataValue.float(v.candidate.error_rate),
            "previous_version": v.live_version,
        })
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"{result.live.model_version}@{result.live.url}"))


def _serve_adapter(context: dg.AssetExecutionContext, name: str, endpoint: str, owner: str, owners: Mapping[str, str],
                   load_sample: tuple[str, ...], adapter, vllm: VllmResource, mlflow: MLflowResource,
                   model_signing: ModelSigningResource, operations: OperationsResource) -> dg.MaterializeResult:
    """The champion's adapter onto its base model's shared server, through the control sequence
    (the adapter signature recorded on its MLflow version checked too)."""
    from aiplat.security.access import AccessDenied, current_identity, owner_team
    from aiplat.security.signing import SignatureError
    from aiplat.serving.adapter_rollout import AdapterRolloutFailed, deploy_adapter
    from aiplat.serving.adapters import AdapterError, adapter_version
    from aiplat.serving.control import Caller
    from aiplat.serving.loadtest import DEFAULT_LOAD_SAMPLE
    from aiplat.serving.server import ServerStartError

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
