"""vLLM: the model-serving system. Every model version is a LoRA adapter served on its base
model's shared server (aiplat.serving.backend). Local: vLLM on the CPU, one server per prepared
base model, started on first use. Prod: vLLM on GPUs in Kubernetes, one Deployment per base model
whose adapter-loader sidecar loads what the rendered manifests ask for; settings from dg.EnvVar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

class VllmResource(dg.ConfigurableResource):
    """What both runtimes share: the adapter canary's policy and every operation that goes through the
    runtime's ServingBackend (aiplat.serving.backend). Which endpoint is always the caller's argument
    (each model spec names its own), so one resource serves every model."""

    canary_max_error_rate: float = Field(default=0.0, ge=0, le=1, description="Candidate error rate above which it is rolled back")
    canary_max_p95_ratio: float = Field(default=1.5, gt=0, description="Candidate p95 latency / live p95 above which it is rolled back")
    adapter_canary_weight: float = Field(default=10.0, gt=0, lt=100,
                                         description="Per cent of an adapter endpoint's traffic its candidate gets")
    adapter_canary_min_requests: int = Field(default=20, ge=1, description="Candidate requests before a verdict")
    batch_workers: int = Field(default=1, ge=1, description="Ray actors a batch-predictions step sends requests from")
    batch_concurrency: int = Field(default=4, ge=1, description="Requests each of them keeps in flight")

    def serving_backend(self, keys: Any) -> Any:
        """The runtime's aiplat.serving.backend.ServingBackend (shared adapter servers), verifying with
        `keys` (aiplat.security.approval.ServingKeys) where adapters are loaded."""
        raise NotImplementedError(f"{type(self).__name__} has no serving backend")

    def canary_gateway_url(self) -> str:
        """The gateway an adapter canary's traffic goes through (its request log is the measurement)."""
        raise NotImplementedError(f"{type(self).__name__} has no gateway")

    def canary_gateway_key(self) -> Optional[str]:
        return None

    def server_headers(self) -> dict[str, str]:
        """What a request straight to a base model's server carries (prod: its bearer token)."""
        return {}

    def canary_traffic(self, request_log: Any, prompts: tuple[str, ...], gateway: Optional[str] = None) -> Any:
        """An adapter canary's traffic (aiplat.serving.adapter_rollout.CanaryTraffic): `prompts` through
        the runtime's gateway (or `gateway`), measured from its `request_log`."""
        from aiplat.serving.adapter_rollout import gateway_traffic

        return gateway_traffic(gateway or self.canary_gateway_url(), request_log, prompts, self.canary_gateway_key())

    def adapter_store_prefix(self) -> str:
        """Where a shared server fetches adapters from: "" = the local folder it was verified in."""
        return ""

    def live_servers(self) -> list:
        """(base model, ServerRecord) of each server this runtime runs itself; prod: none
        (Prometheus scrapes the pods)."""
        return []

    def adapter_state(self, endpoint: str) -> Any:
        """The endpoint's state on its base model's server (aiplat.serving.backend.EndpointState), or
        None when nothing routes it."""
        return self.serving_backend(None).live_state(endpoint)

    def live_target(self, endpoint: str, model_version: Optional[str] = None) -> Any:
        """Where the endpoint's live adapter answers (aiplat.operations.quality.Target), read from its
        server; EndpointNotFound when it is not routed or its server does not hold it."""
        from aiplat.operations.quality import Target
        from aiplat.serving.adapters import adapter_version
        from aiplat.serving.backend import EndpointNotFound

        state = self.adapter_state(endpoint)
        if state is None:
            raise EndpointNotFound(f"endpoint {endpoint!r} is not served (no adapter route)")
        if state.health != "ready":
            raise EndpointNotFound(f"endpoint {endpoint!r} is {state.health} on {state.url}")
        return Target(endpoint, state.url, state.live, adapter_version(state.live), self.server_headers())

    def roll_back(self, endpoint: str, keys: Any, adapter_previous: Any) -> str:
        """Incident path, no canary: the registry's previous version's adapter (`adapter_previous()`,
        verified as it loads) takes all of `endpoint`'s traffic; returns the version now serving.
        SignatureError / AdapterError / ValueError leave the live version as it is."""
        from aiplat.serving.adapter_rollout import roll_back_adapter
        from aiplat.serving.adapters import adapter_version

        previous = adapter_previous() if adapter_previous is not None else None
        if previous is None:
            raise ValueError(f"{endpoint}: the registry's previous version has no adapter to roll back to")
        return adapter_version(roll_back_adapter(self.serving_backend(keys), endpoint, previous).live)

    def load_test(self, endpoint: str, concurrencies: tuple[int, ...], prompts: tuple[str, ...], num_prompts: int | None,
                  output_len: int, progress=None) -> Any:
        """`vllm bench serve` against the endpoint's live adapter (aiplat.serving.loadtest.LoadTestReport)."""
        return self.serving_backend(None).load_test(endpoint, concurrencies, prompts, num_prompts, output_len, progress)

    def adapter_canary_policy(self) -> Any:
        from aiplat.serving.adapter_canary import AdapterCanaryPolicy

        return AdapterCanaryPolicy(weight=self.adapter_canary_weight, min_requests=self.adapter_canary_min_requests,
                                   max_error_rate=self.canary_max_error_rate, max_p95_ratio=self.canary_max_p95_ratio)


class LocalVllmResource(VllmResource):
    """vLLM on this machine's CPU from the venv built by scripts/setup_vllm_env.sh: one server per
    prepared base model (<state>/models/base/<name>), started on first use, adapters loaded at run time."""

    max_num_seqs: int = Field(default=8, ge=1, description="Requests decoded together")
    max_num_queued_reqs: int = Field(default=64, ge=1, description="In flight per server; past it vLLM answers 503")
    max_model_len: int = 1024
    kv_cache_gib: int = Field(default=1, ge=1)
    enforce_eager: bool = Field(default=False, description="Start faster (~22 s), decode slower")
    dtype: str = Field(default="bfloat16", description="Weights and activations on the CPU; float32 decodes as the "
                       "fp32 evaluation does (greedy answers match it), at about half the speed")
    start_timeout_s: float = Field(default=300.0, gt=0)
    vllm_python: Optional[str] = Field(default=None, description="Interpreter of the vLLM venv; unset = <state>/venvs/vllm")
    registry_path: Optional[str] = Field(default=None, description="Base servers file; unset = "
                                         "<state>/serving/base-servers.json")
    gateway_url: Optional[str] = Field(default=None, description="The gateway adapter canaries send through; unset = "
                                       "the local stack's (aiplat stack up gateway)")

    _progress: Any = PrivateAttr(default=None)

    def server_settings(self) -> Any:
        from aiplat.serving.server import LoraSettings, ServerSettings

        return ServerSettings(
            max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs,
            max_num_queued_reqs=self.max_num_queued_reqs, kv_cache_gib=self.kv_cache_gib,
            enforce_eager=self.enforce_eager, start_timeout_s=self.start_timeout_s, python=self.vllm_python,
            dtype=self.dtype, lora=LoraSettings(),
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._progress = context.log.info if context.log else None

    def serving_backend(self, keys: Any) -> Any:
        from aiplat.models.base import base_models_dir
        from aiplat.serving.backend import LocalServingBackend

        root = base_models_dir()
        bases = {d.name: d for d in sorted(root.iterdir()) if (d / "config.json").is_file()} if root.is_dir() else {}
        return LocalServingBackend(self.server_settings(), keys, bases,
                                   registry_path=Path(self.registry_path) if self.registry_path else None,
                                   progress=self._progress)

    def canary_gateway_url(self) -> str:
        from aiplat.config import local_ports

        return self.gateway_url or f"http://127.0.0.1:{local_ports().gateway}"

    def live_servers(self) -> list:
        return self.serving_backend(None).servers()


class ProdVllmResource(VllmResource):
    """vLLM on GPUs in Kubernetes: one Deployment per base model with an adapter-loader sidecar
    (aiplat.serving.k8s_adapters); adapters and the gateway's routes change through the manifests the
    cluster applies (GitOps), each change confirmed on the server's Service."""

    gateway_url: str = Field(description="Base URL of the platform's metering gateway, e.g. https://inference.internal")
    api_key: str = Field(default="", description="Bearer token of the gateway and the vLLM servers; a secret, never logged")
    namespace: str = "team-ml"
    image: str = Field(default="aiplat-vllm-serving", description="The vLLM serving image (registry/name:tag); prod: AIPLAT_VLLM_IMAGE")
    gpus: int = Field(default=1, description="GPUs per pod; the tensor-parallel size follows from it")
    model_store_prefix: str = Field(default="", description="s3://bucket/prefix holding base/<name>/ and <model>/v<version>/adapter/")
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

    def server_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def canary_gateway_url(self) -> str:
        return self.gateway_url

    def canary_gateway_key(self) -> Optional[str]:
        return self.api_key or None

    def adapter_store_prefix(self) -> str:
        return self.model_store_prefix


def local_vllm(**overrides: Any) -> LocalVllmResource:
    return LocalVllmResource(**overrides)


def prod_vllm(**overrides: Any) -> ProdVllmResource:
    return ProdVllmResource.from_env(**overrides)
