"""Kubernetes manifests of the prod runtime: a vLLM Deployment and Service per endpoint version,
and a Gateway API HTTPRoute whose backend weights express the canary split.

Each model version gets its own Deployment + Service (`vllm-<endpoint>-v<version>`), so live and
candidate run side by side; the endpoint's HTTPRoute (`<endpoint>`) sends `canary_weight`% of
requests to the candidate. Switching = weights 0/100 then deleting the old version's objects;
rolling back = deleting the candidate's objects and weights 100/0.

A pod loads only bytes it verified itself: the `fetch-model` init container copies the version's
folder from the model store into the pod's `model` volume, `verify-model` checks that folder's
build signature and promotion attestation (aiplat.security.verify_folder; the attestation is
inline, signed, so editing the manifest cannot forge it), and vLLM then loads the same folder.
A folder that fails never reaches vLLM: the pod stays in Init:Error and the Service sends it nothing.
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
FETCH_IMAGE = "aiplat-model-fetch"  # the AWS CLI; the overlays resolve it like the platform's images
MODEL_DIR = "/models/current"
KEYS_DIR = "/etc/aiplat/verification-keys"
# Public keys only (model-signing.pub, approval.pub): a ConfigMap, see docs/deploy.md.
VERIFICATION_KEYS_CONFIGMAP = "aiplat-verification-keys"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)

# The readiness probe: a real one-token completion, not only /health (which is green before the
# model has answered anything). Runs with the image's python3; prints the reason when it fails.
_READY_SCRIPT = textwrap.dedent(
    """\
    import json, sys, urllib.request
    body = json.dumps({"model": sys.argv[1], "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + sys.argv[2]}
    req = urllib.request.Request("http://127.0.0.1:%d/v1/completions", data=body, headers=headers)
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
    model_uri: str  # s3://bucket/prefix of the safetensors folder
    served_model_name: str
    model_name: str = ""  # the registered model the attestation must name (default: the endpoint)
    attestation: str = ""  # its promotion attestation (DSSE JSON); empty = the pod refuses to start
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
    model_volume: str = "64Gi"  # the pod-local copy of the folder (emptyDir size limit)
    api_key_secret: str = "aiplat-secrets"  # AIPLAT_VLLM_API_KEY: the key the gateway sends upstream
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
    return [
        MODEL_DIR,  # the folder verify-model checked, never the store directly
        "--served-model-name", spec.served_model_name,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tensor-parallel-size", str(tensor_parallel_size(spec.gpus)),
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--max-num-queued-reqs", str(spec.max_num_queued_reqs),
        "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
    ]


# Helper containers beside vLLM: non-root, read-only root filesystem, no capabilities.
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": 10001, "capabilities": {"drop": ["ALL"]}}
_SMALL = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


def fetch_container(name: str, uri: str, volume: str, mount_path: str, secret: str) -> dict:
    """An init container copying the model store's folder `uri` into the pod's `volume`."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} must be an s3:// folder of the model store")
    return {
        "name": name,
        "image": FETCH_IMAGE,
        "command": ["aws", "s3", "sync", "--only-show-errors", uri.rstrip("/") + "/", mount_path + "/"],
        "envFrom": [{"secretRef": {"name": secret, "optional": True}}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": volume, "mountPath": mount_path}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": _SMALL,
        "securityContext": HARDENED,
    }


def _init_containers(spec: EndpointSpec) -> list[dict]:
    """Fetch the version's folder into the pod, then verify those very bytes before vLLM starts."""
    if not spec.model_uri.startswith("s3://"):
        raise ValueError(f"model_uri {spec.model_uri!r} must be an s3:// folder of the model store")
    model = {"name": "model", "mountPath": MODEL_DIR}
    return [
        fetch_container("fetch-model", spec.model_uri, "model", MODEL_DIR, spec.model_store_secret),
        {
            "name": "verify-model",
            "image": spec.image,
            "command": ["aiplat-verify-model", MODEL_DIR,
                        "--public-key", f"{KEYS_DIR}/model-signing.pub",
                        "--approval-key", f"{KEYS_DIR}/approval.pub",
                        "--model-name", spec.model_name or spec.endpoint, "--version", str(spec.model_version)],
            "env": [{"name": "AIPLAT_ATTESTATION", "value": spec.attestation}],
            "volumeMounts": [{**model, "readOnly": True},
                             {"name": "verification-keys", "mountPath": KEYS_DIR, "readOnly": True}],
            "resources": _SMALL,
            "securityContext": HARDENED,
        },
    ]


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
            # vLLM answers /v1 only with this key: the gateway holds it (AIPLAT_VLLM_API_KEY), so a
            # caller inside the cluster cannot skip metering; /health and /metrics stay open.
            {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret,
                                                                    "key": "AIPLAT_VLLM_API_KEY"}}},
        ],
        "resources": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": str(spec.gpus)},
            "limits": {"memory": spec.memory, "nvidia.com/gpu": str(spec.gpus)},
        },
        # Loading and compiling a large model takes minutes: the startup probe allows 20 of them
        # before liveness may restart the pod.
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 120},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15, "failureThreshold": 4},
        "readinessProbe": {
            # The probe runs inside the container: its shell hands the script the container's API key
            # (the kubelet expands no variables in probe commands).
            "exec": {"command": ["sh", "-c", 'exec python3 -c "$0" "$1" "$VLLM_API_KEY"', _READY_SCRIPT,
                                 spec.served_model_name]},
            "periodSeconds": 15, "timeoutSeconds": 10, "failureThreshold": 3,
        },
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
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
                    "initContainers": _init_containers(spec),
                    "containers": [container],
                    # Tensor-parallel workers share tensors through /dev/shm; the default 64 MiB is too small.
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                                {"name": "model", "emptyDir": {"sizeLimit": spec.model_volume}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                                {"name": "verification-keys", "configMap": {"name": VERIFICATION_KEYS_CONFIGMAP}}],
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
