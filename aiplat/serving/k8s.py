"""Kubernetes pieces shared by the prod runtime's serving manifests (aiplat.serving.k8s_adapters: one
vLLM Deployment per base model with its adapter-loader sidecar; aiplat.serving.gateway_k8s: the
metering gateway): the vLLM port, image names, the hardened helper container, the model-store
fetch step and the YAML writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import yaml

PORT = 8000
# The image variable (deploy/images/vllm-serving.Dockerfile: the official vllm/vllm-openai:v0.32.0
# plus the verification step); environments/* resolve it, and so does AIPLAT_VLLM_IMAGE for
# manifests rendered at run time.
DEFAULT_IMAGE = "aiplat-vllm-serving"
FETCH_IMAGE = "aiplat-model-fetch"  # the AWS CLI; the overlays resolve it like the platform's images
KEYS_DIR = "/etc/aiplat/verification-keys"
# Public keys only (model-signing.pub, approval.pub): a ConfigMap, see docs/deploy.md.
VERIFICATION_KEYS_CONFIGMAP = "aiplat-verification-keys"
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)


def tensor_parallel_size(gpus: int) -> int:
    """One model shard per GPU of the pod; vLLM needs a size that divides the attention heads."""
    if gpus not in TENSOR_PARALLEL_SIZES:
        raise ValueError(f"{gpus} GPUs per server is not supported; choose one of {TENSOR_PARALLEL_SIZES}")
    return gpus


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


def to_yaml(docs: Iterable[dict]) -> str:
    # json round-trip drops tuples and other non-YAML types so the output is plain.
    return yaml.safe_dump_all([json.loads(json.dumps(d)) for d in docs], sort_keys=False, width=120)
