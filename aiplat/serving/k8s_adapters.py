"""Kubernetes manifests of a shared adapter server: one Deployment per base model (issue 14).

The pod holds the base model, fetched from the model store into its `base` volume by `fetch-base`
(the base model is prepared by the platform and hashed, not fine-tuned, so it carries no promotion
attestation), vLLM started with `--enable-lora` and runtime adapter loading, and the
`adapter-loader` sidecar (aiplat.serving.adapter_loader): it reads the desired adapters from the
`<name>-adapters` ConfigMap, fetches each into the shared `adapters` volume, verifies its signature
and promotion attestation, asks vLLM (on localhost, with the pod's API key) to load exactly that
folder and confirms it; unwanted versions are unloaded. Changing which versions serve is a
ConfigMap change the sidecar applies within its interval: no pod restarts.

Which version answers what share of an endpoint's traffic is the gateway's adapter route
(aiplat.serving.adapter_routes), rendered here as a ConfigMap the gateway mounts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aiplat.serving.adapter_routes import AdapterRoute
from aiplat.serving.adapters import WantedAdapter
from aiplat.serving.k8s import (
    DEFAULT_IMAGE,
    HARDENED,
    KEYS_DIR,
    PORT,
    VERIFICATION_KEYS_CONFIGMAP,
    fetch_container,
    tensor_parallel_size,
)
from aiplat.serving.server import LoraSettings

BASE_DIR = "/models/base"
ADAPTERS_DIR = "/adapters"
DESIRED_DIR = "/etc/aiplat/adapters"
LOADER_IMAGE = "aiplat-platform"
HEARTBEAT = "/tmp/adapter-loader.heartbeat"


def _heartbeat_probe(max_age_s: int) -> list[str]:
    return ["python", "-c", "import os, sys, time; "
            f"sys.exit(0 if time.time() - os.path.getmtime({HEARTBEAT!r}) < {max_age_s} else 1)"]


@dataclass(frozen=True)
class AdapterServerSpec:
    base_name: str  # the served name of the base model, the adapters' parent
    base_uri: str  # s3:// folder of the prepared base model
    namespace: str = "team-ml"
    image: str = DEFAULT_IMAGE
    gpus: int = 1
    replicas: int = 1
    memory: str = "32Gi"
    cpu: str = "4"
    max_model_len: int = 4096
    lora: LoraSettings = field(default_factory=LoraSettings)
    loader_interval_s: int = 30
    model_store_secret: str = "model-store-credentials"
    api_key_secret: str = "aiplat-secrets"

    @property
    def name(self) -> str:
        return f"vllm-base-{self.base_name}".lower().replace("_", "-").replace(".", "-")

    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/part-of": "ai-platform",
                "app.kubernetes.io/component": "adapter-server", "aiplat.dev/base-model": self.name}


def desired_configmap(spec: AdapterServerSpec, wanted: list[WantedAdapter]) -> dict:
    for adapter in wanted:
        if not adapter.source.startswith("s3://"):
            raise ValueError(f"{adapter.name}: source {adapter.source!r} must be an s3:// folder of the model store")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{spec.name}-adapters", "namespace": spec.namespace, "labels": spec.labels()},
            "data": {"desired.json": json.dumps({"adapters": [a.to_dict() for a in wanted]}, indent=2)}}


def routes_configmap(routes: list[AdapterRoute], namespace: str = "team-ml") -> dict:
    """The gateway's adapter routes (its --adapter-routes file)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "aiplat-adapter-routes", "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "ai-platform"}},
            "data": {"adapter-routes.json": json.dumps({r.endpoint: r.to_dict() for r in routes}, indent=2)}}


def deployment(spec: AdapterServerSpec) -> dict:
    labels = spec.labels()
    api_key = {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret,
                                                                      "key": "AIPLAT_VLLM_API_KEY"}}}
    vllm = {
        "name": "vllm",
        "image": spec.image,
        "args": [BASE_DIR, "--served-model-name", spec.base_name, "--host", "0.0.0.0", "--port", str(PORT),
                 "--tensor-parallel-size", str(tensor_parallel_size(spec.gpus)),
                 "--max-model-len", str(spec.max_model_len), *spec.lora.args()],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}, {"name": "HF_HUB_OFFLINE", "value": "1"},
                # The load/unload routes exist only with this set; like all of /v1 they need the API key.
                {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}, api_key],
        "resources": {"requests": {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": str(spec.gpus)},
                      "limits": {"memory": spec.memory, "nvidia.com/gpu": str(spec.gpus)}},
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 120},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15, "failureThreshold": 4},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "base", "mountPath": BASE_DIR, "readOnly": True},
                         # vLLM reads adapters from the folders the loader verified, never from the store.
                         {"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    loader = {
        "name": "adapter-loader",
        "image": LOADER_IMAGE,
        "command": ["python", "-m", "aiplat.serving.adapter_loader",
                    "--desired", f"{DESIRED_DIR}/desired.json", "--base-name", spec.base_name,
                    "--url", f"http://127.0.0.1:{PORT}", "--cache", ADAPTERS_DIR, "--base-folder", BASE_DIR,
                    "--public-key", f"{KEYS_DIR}/model-signing.pub", "--approval-key", f"{KEYS_DIR}/approval.pub",
                    "--max-rank", str(spec.lora.max_lora_rank), "--interval", str(spec.loader_interval_s),
                    "--heartbeat", HEARTBEAT],
        "envFrom": [{"secretRef": {"name": spec.model_store_secret, "optional": True}}],
        "env": [api_key, {"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        # Ready after its first pass; alive while passes keep coming (a pass fetches at most a few
        # adapters of a few MB each, so four intervals plus a minute is a hung loop, not a slow one).
        "readinessProbe": {"exec": {"command": _heartbeat_probe(spec.loader_interval_s * 4 + 60)}, "periodSeconds": 10},
        # Its first beat comes after it hashed the base model (minutes for tens of GB): the startup
        # probe gives that 30 min before liveness starts counting.
        "startupProbe": {"exec": {"command": _heartbeat_probe(spec.loader_interval_s * 4 + 60)},
                         "periodSeconds": 10, "failureThreshold": 180},
        "livenessProbe": {"exec": {"command": _heartbeat_probe(spec.loader_interval_s * 4 + 60)}, "periodSeconds": 30},
        "volumeMounts": [{"name": "adapters", "mountPath": ADAPTERS_DIR},
                         # read to hash the base vLLM serves: adapters load only over the base they were trained on
                         {"name": "base", "mountPath": BASE_DIR, "readOnly": True},
                         {"name": "desired", "mountPath": DESIRED_DIR, "readOnly": True},
                         {"name": "verification-keys", "mountPath": KEYS_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": HARDENED,
    }
    fetch_base = fetch_container("fetch-base", spec.base_uri, "base", BASE_DIR, spec.model_store_secret)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"aiplat.dev/base-model": spec.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "inference",
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 60,
                    "initContainers": [fetch_base],
                    "containers": [vllm, loader],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                                {"name": "base", "emptyDir": {"sizeLimit": "64Gi"}},
                                {"name": "adapters", "emptyDir": {"sizeLimit": "16Gi"}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                                {"name": "desired", "configMap": {"name": f"{spec.name}-adapters"}},
                                {"name": "verification-keys", "configMap": {"name": VERIFICATION_KEYS_CONFIGMAP}}],
                },
            },
        },
    }


def service(spec: AdapterServerSpec) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": spec.labels()},
            "spec": {"type": "ClusterIP", "selector": {"aiplat.dev/base-model": spec.name},
                     "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}


def render_adapter_server(spec: AdapterServerSpec, wanted: list[WantedAdapter]) -> list[dict]:
    """The base model's server: its desired-adapters ConfigMap, Deployment and Service."""
    return [desired_configmap(spec, wanted), deployment(spec), service(spec)]
