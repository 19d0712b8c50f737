"""vLLM: the model-serving system. Local backend = vLLM on the CPU, one server per deployed
version, managed by the platform (aiplat.serving.manager). Prod backend = vLLM on GPUs in
Kubernetes: per-version Deployment + Service and a Gateway API HTTPRoute whose weights carry the
canary split (aiplat.serving.k8s), reached through the gateway URL from dg.EnvVar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

class VllmResource(dg.ConfigurableResource):
    """What both backends share: the canary policy. Which endpoint is always the caller's argument
    (each model spec names its own), so one resource serves every model."""

    canary_load_share: float = Field(default=0.25, ge=0, le=1, description="Share of the load sample the canary replays")
    canary_max_error_rate: float = Field(default=0.0, ge=0, le=1)
    canary_max_p95_ratio: float = Field(default=1.5, gt=0)
    canary_p95_slack_ms: float = Field(default=500.0, ge=0)
    canary_min_agreement: float = Field(default=0.8, ge=0, le=1)
    canary_max_tokens: int = Field(default=24, ge=1)
    canary_concurrency: int = Field(default=4, ge=1)
    adapter_canary_weight: float = Field(default=10.0, gt=0, lt=100,
                                         description="Per cent of an adapter endpoint's traffic its candidate gets")
    adapter_canary_min_requests: int = Field(default=20, ge=1, description="Candidate requests before a verdict")

    def serving_backend(self, keys: Any) -> Any:
        """The runtime's aiplat.serving.backend.ServingBackend (shared adapter servers), verifying with
        `keys` (aiplat.security.approval.ServingKeys) where adapters are loaded."""
        raise NotImplementedError(f"{type(self).__name__} has no serving backend")

    def load_test(self, endpoint: str, concurrencies: tuple[int, ...], prompts: tuple[str, ...], num_prompts: int | None,
                  output_len: int, progress=None) -> Any:
        """`vllm bench serve` against the endpoint's live server (aiplat.serving.loadtest.LoadTestReport)."""
        raise NotImplementedError(f"{type(self).__name__} runs no load tests")

    def canary_gateway_url(self) -> str:
        """The gateway an adapter canary's traffic goes through (its request log is the measurement)."""
        raise NotImplementedError(f"{type(self).__name__} has no gateway")

    def canary_gateway_key(self) -> Optional[str]:
        return None

    def canary_traffic(self, request_log: Any, prompts: tuple[str, ...], gateway: Optional[str] = None) -> Any:
        """An adapter canary's traffic (aiplat.serving.adapter_rollout.CanaryTraffic): `prompts` through
        the runtime's gateway (or `gateway`), measured from its `request_log`."""
        from aiplat.serving.adapter_rollout import gateway_traffic

        return gateway_traffic(gateway or self.canary_gateway_url(), request_log, prompts, self.canary_gateway_key())

    def adapter_store_prefix(self) -> str:
        """Where a shared server fetches adapters from: "" = the local folder it was verified in."""
        return ""

    def live_servers(self) -> list:
        """(endpoint or base model, ServerRecord) of each server this runtime runs itself; prod: none
        (Prometheus scrapes the pods)."""
        return []

    def adapter_state(self, endpoint: str) -> Any:
        """The endpoint's state on its shared adapter server (aiplat.serving.backend.EndpointState), or
        None when it is served as a whole model (or not at all)."""
        return self.serving_backend(None).live_state(endpoint)

    def _roll_back_adapter(self, endpoint: str, keys: Any, adapter_previous: Any) -> str:
        """The registry's previous version's adapter (`adapter_previous()`) takes all of `endpoint`'s
        traffic (verified as it loads); the version now serving."""
        from aiplat.serving.adapter_rollout import roll_back_adapter
        from aiplat.serving.adapters import adapter_version

        previous = adapter_previous() if adapter_previous is not None else None
        if previous is None:
            raise ValueError(f"{endpoint}: the registry's previous version has no adapter to roll back to")
        return adapter_version(roll_back_adapter(self.serving_backend(keys), endpoint, previous).live)

    def adapter_canary_policy(self) -> Any:
        from aiplat.serving.adapter_canary import AdapterCanaryPolicy

        return AdapterCanaryPolicy(weight=self.adapter_canary_weight, min_requests=self.adapter_canary_min_requests,
                                   max_error_rate=self.canary_max_error_rate, max_p95_ratio=self.canary_max_p95_ratio)

    def canary_policy(self) -> Any:
        from aiplat.serving.canary import CanaryPolicy

        return CanaryPolicy(
            load_share=self.canary_load_share, max_tokens=self.canary_max_tokens, concurrency=self.canary_concurrency,
            max_error_rate=self.canary_max_error_rate, max_p95_ratio=self.canary_max_p95_ratio,
            p95_slack_ms=self.canary_p95_slack_ms, min_agreement=self.canary_min_agreement,
        )


class LocalVllmResource(VllmResource):
    """vLLM on this machine's CPU from the venv built by scripts/setup_vllm_env.sh."""

    max_num_seqs: int = Field(default=8, ge=1, description="Requests decoded together")
    max_num_queued_reqs: int = Field(default=64, ge=1, description="In flight per server; past it vLLM answers 503")
    max_model_len: int = 1024
    kv_cache_gib: int = Field(default=1, ge=1)
    enforce_eager: bool = Field(default=False, description="Start faster (~22 s), decode slower")
    dtype: str = Field(default="bfloat16", description="Weights and activations on the CPU; float32 decodes as the "
                       "fp32 evaluation does (greedy answers match it), at about half the speed")
    start_timeout_s: float = Field(default=300.0, gt=0)
    vllm_python: Optional[str] = Field(default=None, description="Interpreter of the vLLM venv; unset = <state>/venvs/vllm")
    registry_path: Optional[str] = Field(default=None, description="Endpoints file; unset = <state>/serving/endpoints.json")
    gateway_url: Optional[str] = Field(default=None, description="The gateway adapter canaries send through; unset = "
                                       "the local stack's (aiplat stack up gateway)")

    _manager: Any = PrivateAttr(default=None)
    _progress: Any = PrivateAttr(default=None)

    def server_settings(self) -> Any:
        from aiplat.serving.server import ServerSettings

        return ServerSettings(
            max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs,
            max_num_queued_reqs=self.max_num_queued_reqs, kv_cache_gib=self.kv_cache_gib,
            enforce_eager=self.enforce_eager, start_timeout_s=self.start_timeout_s, python=self.vllm_python,
            dtype=self.dtype,
        )

    def _build(self, progress=None) -> Any:
        from aiplat.serving.manager import EndpointManager
        from aiplat.serving.registry import EndpointRegistry

        registry = EndpointRegistry(Path(self.registry_path)) if self.registry_path else EndpointRegistry()
        return EndpointManager(self.server_settings(), registry, progress)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        log = context.log
        self._progress = log.info if log else None
        self._manager = self._build(progress=self._progress)

    @property
    def manager(self) -> Any:
        """The EndpointManager (built on first use outside a Dagster step: CLI, tests)."""
        return self._manager if self._manager is not None else self._build()

    def roll_out(self, endpoint: str, model: Any, rollback: Any = None, load_sample: tuple[str, ...] = (),
                 keys: Any = None) -> Any:
        """Deploy, keep, or canary-then-switch `model` (aiplat.serving.rollout.roll_out); with `keys`
        (aiplat.security.approval.ServingKeys), only after its build signature and promotion
        attestation verified (SignatureError / ApprovalError otherwise, nothing started)."""
        from dataclasses import replace

        from aiplat.serving.rollout import roll_out

        manager = self.manager if keys is None else replace(self.manager, keys=keys)
        return roll_out(manager, endpoint, model, self.canary_policy(), rollback, load_sample=load_sample)

    def live_server(self, endpoint: str) -> Any:
        return self.manager.get(endpoint).live

    def serving_backend(self, keys: Any) -> Any:
        """One vLLM CPU server per prepared base model (<state>/models/base/<name>), adapters at run time."""
        from dataclasses import replace

        from aiplat.models.base import base_models_dir
        from aiplat.serving.backend import LocalServingBackend
        from aiplat.serving.server import LoraSettings

        root = base_models_dir()
        bases = {d.name: d for d in sorted(root.iterdir()) if (d / "config.json").is_file()} if root.is_dir() else {}
        settings = replace(self.server_settings(), lora=LoraSettings())
        return LocalServingBackend(settings, keys, bases, progress=self._progress)

    def canary_gateway_url(self) -> str:
        from aiplat.config import local_ports

        return self.gateway_url or f"http://127.0.0.1:{local_ports().gateway}"

    def live_servers(self) -> list:
        adapter_servers = self.serving_backend(None).servers()
        return [(r.name, r.live) for r in self.manager.list() if r.live is not None] + adapter_servers

    def live_target(self, endpoint: str, model_version: Optional[str] = None) -> Any:
        """Where the live version answers (aiplat.operations.quality.Target): its adapter on the shared
        server, or its whole-model server; EndpointNotFound if none."""
        from aiplat.operations.quality import Target
        from aiplat.serving.manager import EndpointNotFound

        state = self.adapter_state(endpoint)
        if state is not None:
            if state.health != "ready":
                raise EndpointNotFound(f"endpoint {endpoint!r} is {state.health} on {state.url}")
            from aiplat.serving.adapters import adapter_version

            return Target(endpoint, state.url, state.live, adapter_version(state.live))
        live = self.manager.refresh(endpoint).live
        if live is None:
            raise EndpointNotFound(f"endpoint {endpoint!r} has no live server")
        return Target(endpoint, live.url, live.served_model_name, live.model_version)

    def roll_back(self, endpoint: str, keys: Any = None, registry_previous: Any = None,
                  adapter_previous: Any = None) -> str:
        """Incident path, no canary; returns the version now serving. An adapter endpoint: the
        registry's previous version's adapter (`adapter_previous()`, verified as it loads) takes all
        of its traffic. A whole-model endpoint: the version it served before its last switch (its own
        history is what really served here) starts again after its folder verified against its
        signature and promotion attestation. SignatureError / ServerStartError / AdapterError leave
        the live version as it is."""
        from dataclasses import replace

        if self.adapter_state(endpoint) is not None:
            return self._roll_back_adapter(endpoint, keys, adapter_previous)
        manager = self.manager if keys is None else replace(self.manager, keys=keys)
        record = manager.deploy(endpoint, manager.previous_model(endpoint))
        return record.live.model_version

    def load_test(self, endpoint: str, concurrencies: tuple[int, ...], prompts: tuple[str, ...], num_prompts: int | None,
                  output_len: int, progress=None) -> Any:
        from aiplat.serving.loadtest import run_load_test

        if self.adapter_state(endpoint) is not None:
            return self.serving_backend(None).load_test(endpoint, concurrencies, prompts, num_prompts, output_len,
                                                        progress)
        live = self.manager.refresh(endpoint).live
        if live.health != "ready":
            from aiplat.serving.loadtest import LoadTestError

            raise LoadTestError(f"endpoint {endpoint!r} is {live.health} on {live.url}; not load-testing it")
        return run_load_test(live.url, live.served_model_name, live.model_path, concurrencies, prompts, num_prompts,
                             output_len, self.server_settings(), progress=progress)


class ProdVllmResource(VllmResource):
    """vLLM in Kubernetes behind the inference Gateway. Rollouts are rendered as manifests (applied
    by the cluster's GitOps / `kubectl apply -f`); the endpoint is reached at `gateway_url`."""

    gateway_url: str = Field(description="Base URL of the inference gateway, e.g. https://inference.internal")
    api_key: str = Field(default="", description="Bearer token for the gateway; a secret, never logged")
    namespace: str = "team-ml"
    image: str = Field(default="aiplat-vllm-serving", description="The vLLM serving image (registry/name:tag); prod: AIPLAT_VLLM_IMAGE")
    gpus: int = Field(default=1, description="GPUs per pod; the tensor-parallel size follows from it")
    model_store_prefix: str = Field(default="", description="s3://bucket/prefix holding <model>/v<version>/ folders")
    gateway: str = "inference-gateway"
    gateway_namespace: str = "gateway-system"
    canary_weight: int = Field(default=10, ge=0, le=100, description="Per cent of live traffic the candidate gets")
    manifests_dir: Optional[str] = Field(default=None, description="Where rendered manifests are written")

    @classmethod
    def from_env(cls, **overrides: Any) -> "ProdVllmResource":
        fields: dict[str, Any] = {
            "gateway_url": dg.EnvVar("AIPLAT_VLLM_GATEWAY_URL"),
            "api_key": dg.EnvVar("AIPLAT_VLLM_API_KEY"),
            "model_store_prefix": dg.EnvVar("AIPLAT_MODEL_STORE_PREFIX"),
            "manifests_dir": dg.EnvVar("AIPLAT_SERVING_MANIFESTS_DIR"),
            "image": dg.EnvVar("AIPLAT_VLLM_IMAGE"),
        }
        return cls(**{**fields, **overrides})

    def endpoint_url(self, endpoint: str) -> str:
        return f"{self.gateway_url.rstrip('/')}/{endpoint}"

    def serving_backend(self, keys: Any) -> Any:
        """One Deployment per platform base model (aiplat.specs.model.BASE_MODELS), its adapters and the
        gateway's routes changed through the manifests the cluster applies, confirmed on its Service."""
        from aiplat.serving.backend import KubernetesServingBackend
        from aiplat.serving.k8s_adapters import AdapterServerSpec
        from aiplat.specs.model import BASE_MODELS

        prefix = self.model_store_prefix.rstrip("/")
        servers = {base: AdapterServerSpec(base_name=base, base_uri=f"{prefix}/base/{base}/", namespace=self.namespace,
                                           image=self.image, gpus=self.gpus) for base in BASE_MODELS}
        return KubernetesServingBackend(servers, Path(self.manifests_dir or "."), api_key=self.api_key or None,
                                        namespace=self.namespace)

    def load_test(self, endpoint: str, concurrencies: tuple[int, ...], prompts: tuple[str, ...], num_prompts: int | None,
                  output_len: int, progress=None) -> Any:
        from aiplat.serving.loadtest import LoadTestError

        # `vllm bench serve` needs vLLM and the model's tokenizer; the platform image that runs Dagster
        # steps carries neither, and a made-up report would be worse than none.
        raise LoadTestError(f"{endpoint}: in Kubernetes, load-test through the gateway ({self.gateway_url}) with "
                            "`vllm bench serve` from the serving image; a Dagster step has no vLLM to run it")

    def spec(self, endpoint: str, model_version: str, model_name: str, attestation: str = "") -> Any:
        from aiplat.serving.k8s import EndpointSpec

        uri = f"{self.model_store_prefix.rstrip('/')}/{model_name}/v{model_version}"
        return EndpointSpec(endpoint=endpoint, model_version=str(model_version), model_uri=uri,
                            served_model_name=endpoint, model_name=model_name, attestation=attestation,
                            namespace=self.namespace, image=self.image, gpus=self.gpus)

    def roll_out(self, endpoint: str, model: Any, rollback: Any = None, load_sample: tuple[str, ...] = (),
                 live_version: str | None = None, keys: Any = None, live_attestation: str = "") -> Any:
        """Render the rollout's manifests into `manifests_dir` for the cluster to apply; the canary
        split then runs through the HTTPRoute weights. With `keys`, the local copy of the model is
        verified first like a local rollout's; the pods verify their own copy again (init container),
        with the attestation rendered into their manifest."""
        if keys is not None:
            from aiplat.security.approval import verify_for_serving

            verify_for_serving(model.path, model.attestation, keys, model=model.registered_name or endpoint,
                               version=model.version)
        from datetime import datetime, timezone

        from aiplat.serving.k8s import to_yaml
        from aiplat.serving.registry import ServerRecord
        from aiplat.serving.rollout import RolloutResult

        docs = self.render_rollout(endpoint, live_version, model.version, model.registered_name or endpoint,
                                   attestation=model.attestation, live_attestation=live_attestation)
        out = Path(self.manifests_dir or ".") / f"{endpoint}-v{model.version}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_yaml(docs))
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        live = ServerRecord(url=self.endpoint_url(endpoint), port=443, pid=0, create_time=0.0,
                            model_version=str(model.version),
                            model_path=self.spec(endpoint, model.version, model.registered_name or endpoint).model_uri,
                            served_model_name=endpoint, started_at=now, log_file="", pid_file=str(out),
                            health="manifests rendered", checked_at=now)
        return RolloutResult(endpoint, "manifests rendered", live)

    def live_target(self, endpoint: str, model_version: Optional[str] = None) -> Any:
        """The endpoint behind the inference gateway; the version is the registry's (the cluster
        serves what the last applied manifests say)."""
        from aiplat.operations.quality import Target

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return Target(endpoint, self.endpoint_url(endpoint), endpoint, model_version or "unknown", headers)

    def canary_gateway_url(self) -> str:
        return self.gateway_url

    def canary_gateway_key(self) -> Optional[str]:
        return self.api_key or None

    def adapter_store_prefix(self) -> str:
        return self.model_store_prefix

    def roll_back(self, endpoint: str, keys: Any = None, registry_previous: Any = None,
                  adapter_previous: Any = None) -> str:
        """The registry's `previous` version at 100%, verified first like any rollout: its adapter on
        the shared server when the endpoint is adapter-served, else its whole-model manifests."""
        if self.adapter_state(endpoint) is not None:
            return self._roll_back_adapter(endpoint, keys, adapter_previous)
        if registry_previous is None:
            raise ValueError("a prod rollback needs the registry's previous version")
        return self.roll_out(endpoint, registry_previous(), keys=keys).live.model_version

    def render_rollout(self, endpoint: str, live_version: str | None, candidate_version: str,
                       model_name: str, attestation: str = "", live_attestation: str = "") -> list[dict]:
        """The candidate beside the live version with `canary_weight`% of the traffic (or the
        first version alone at 100%). Each version's pods verify its folder against its attestation."""
        from aiplat.serving.k8s import render_endpoint

        candidate = self.spec(endpoint, candidate_version, model_name, attestation)
        if live_version is None or str(live_version) == str(candidate_version):
            return render_endpoint(candidate, gateway=self.gateway, gateway_namespace=self.gateway_namespace)
        return render_endpoint(self.spec(endpoint, live_version, model_name, live_attestation), candidate,
                               self.canary_weight, gateway=self.gateway, gateway_namespace=self.gateway_namespace)


def local_vllm(**overrides: Any) -> LocalVllmResource:
    return LocalVllmResource(**overrides)


def prod_vllm(**overrides: Any) -> ProdVllmResource:
    return ProdVllmResource.from_env(**overrides)
