"""Kubernetes manifests of the prod runtime: a vLLM Deployment and Service per endpoint version,
and a Gateway API HTTPRoute whose backend weights express the canary split.

Each model version gets its own Deployment + Service (`vllm-<endpoint>-v<version>`), so live and
candidate run side by side; the endpoint's HTTPRoute (`<endpoint>`) sends `canary_weight`% of
requests to the candidate. Switching = weights 0/100 then deleting the old version's objects;
rolling back = deleting the candidate's objects and weights 100/0.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field

import yaml

PORT = 8000
# The image variable (deploy/images/vllm-serving.Dockerfile: the official vllm/vllm-openai:v0.32.0
# plus the verification init step); environments/* resolve it, and so does AIPLAT_VLLM_IMAGE for
# manifests rendered at run time.
DEFAULT_IMAGE = "aiplat-vllm-serving"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)

# The readiness probe: a real one-token completion, not only /health (which is green before the
# model has answered anything). Runs with the image's python3; prints the reason when it fails.
_READY_SCRIPT = textwrap.dedent(
    """\
    import json, sys, urllib.request
    body = json.dumps({"model": sys.argv[1], "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request("http://127.0.0.1:%d/v1/completions", data=body, headers={"Content-Type": "application/json"})
    out = json.load(urllib.request.urlopen(req, timeout=8))
    sys.exit(0 if out.get("usage", {}).get("completion_tokens", 0) >= 1 else "no token completed")
    """ % PORT
)


def tensor_parallel_size(gpus: int) -> int:
    """One model shard per GPU of the pod; vLLM needs a size that divides the attention heads."""
    if gpus not in TENSOR_PARALLEL_SIZES:
        raise ValueError(f"{gpus} GPUs per endpoint is not supported; choose one of {TENSOR_PARALLEL_SIZES}")
    return gpus


@dataclass(frozen=True)
class EndpointSpec:
    """What one endpoint version needs in the cluster."""

    endpoint: str
    model_version: str
    model_uri: str  # s3://bucket/prefix of the safetensors folder, or a path on a mounted volume
    served_model_name: str
    namespace: str = "team-ml"
    image: str = DEFAULT_IMAGE
    gpus: int = 1
    replicas: int = 1
    memory: str = "32Gi"
    cpu: str = "4"
    max_model_len: int = 4096
    max_num_seqs: int = 64
    max_num_queued_reqs: int = 256
    gpu_memory_utilization: float = 0.9
    model_store_secret: str = "model-store-credentials"  # AWS_* for s3:// model URIs
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})

    @property
    def name(self) -> str:
        return f"vllm-{self.endpoint}-v{self.model_version}".lower().replace("_", "-").replace(".", "-")

    def labels(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "vllm",
            "app.kubernetes.io/part-of": "ai-platform",
            "app.kubernetes.io/component": "endpoint",
            "aiplat.dev/endpoint": self.endpoint,
            "aiplat.dev/model-version": str(self.model_version),
        }


def _vllm_args(spec: EndpointSpec) -> list[str]:
    args = [
        spec.model_uri,
        "--served-model-name", spec.served_model_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tensor-parallel-size", str(tensor_parallel_size(spec.gpus)),
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--max-num-queued-reqs", str(spec.max_num_queued_reqs),
        "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
    ]
    if spec.model_uri.startswith("s3://"):
        args += ["--load-format", "runai_streamer"]  # vLLM streams safetensors straight from S3
    return args


def deployment(spec: EndpointSpec) -> dict:
    labels = spec.labels()
    container = {
        "name": "vllm",
        "image": spec.image,
        "args": _vllm_args(spec),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
        ],
        "envFrom": [{"secretRef": {"name": spec.model_store_secret, "optional": True}}],
        "resources": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": str(spec.gpus)},
            "limits": {"memory": spec.memory, "nvidia.com/gpu": str(spec.gpus)},
        },
        # Loading and compiling a large model takes minutes: the startup probe allows 20 of them
        # before liveness may restart the pod.
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 120},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15, "failureThreshold": 4},
        "readinessProbe": {
            "exec": {"command": ["python3", "-c", _READY_SCRIPT, spec.served_model_name]},
            "periodSeconds": 15, "timeoutSeconds": 10, "failureThreshold": 3,
        },
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {k: labels[k] for k in ("aiplat.dev/endpoint", "aiplat.dev/model-version")}},
            # Never fewer ready pods than asked: a new pod must pass the completion probe first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "inference",
                    "nodeSelector": dict(spec.node_selector),
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    # Tensor-parallel workers share tensors through /dev/shm; the default 64 MiB is too small.
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
                },
            },
        },
    }


def service(spec: EndpointSpec) -> dict:
    labels = spec.labels()
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": {k: labels[k] for k in ("aiplat.dev/endpoint", "aiplat.dev/model-version")},
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def http_route(
    endpoint: str,
    live: EndpointSpec,
    candidate: EndpointSpec | None = None,
    canary_weight: int = 0,
    gateway: str = "inference-gateway",
    gateway_namespace: str = "gateway-system",
    hostnames: Iterable[str] = (),
) -> dict:
    """The endpoint's route: (100 - canary_weight)% to live, canary_weight% to the candidate."""
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"canary_weight={canary_weight} must be a percentage 0..100")
    if candidate is None and canary_weight:
        raise ValueError("a canary weight needs a candidate")
    backends = [{"group": "", "kind": "Service", "name": live.name, "port": PORT, "weight": 100 - canary_weight}]
    if candidate is not None:
        backends.append({"group": "", "kind": "Service", "name": candidate.name, "port": PORT, "weight": canary_weight})
    route = {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {"name": endpoint, "namespace": live.namespace,
                     "labels": {"app.kubernetes.io/part-of": "ai-platform", "aiplat.dev/endpoint": endpoint}},
        "spec": {
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway,
                            "namespace": gateway_namespace}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": f"/{endpoint}/v1"}}],
                "filters": [{"type": "URLRewrite",
                             "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v1"}}}],
                "backendRefs": backends,
                "timeouts": {"request": "300s"},
            }],
        },
    }
    if hostnames:
        route["spec"]["hostnames"] = list(hostnames)
    return route


def render_endpoint(live: EndpointSpec, candidate: EndpointSpec | None = None, canary_weight: int = 0,
                    gateway: str = "inference-gateway", gateway_namespace: str = "gateway-system") -> list[dict]:
    """Every object of one endpoint: per-version Deployment + Service, then its HTTPRoute."""
    if candidate is not None and (candidate.endpoint != live.endpoint or candidate.name == live.name):
        raise ValueError("the candidate must be another version of the same endpoint")
    docs = []
    for spec in (live, candidate) if candidate else (live,):
        docs += [deployment(spec), service(spec)]
    docs.append(http_route(live.endpoint, live, candidate, canary_weight, gateway, gateway_namespace))
    return docs


def to_yaml(docs: Iterable[dict]) -> str:
    # json round-trip drops tuples and other non-YAML types so the output is plain.
    return yaml.safe_dump_all([json.loads(json.dumps(d)) for d in docs], sort_keys=False, width=120)
