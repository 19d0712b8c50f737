"""Kubernetes objects of the metering gateway in prod: its Deployment and Service, and the
ReadWriteMany volume that holds the request log it writes and the Dagster run pods read.

The API-key -> team mapping is a ConfigMap (`aiplat-gateway-api-keys`, key api-key-teams.json)
that operators create from reviewed hashes; the upstream bearer token comes from the platform's
`aiplat-secrets` Secret as an env variable, never from a file in the image or the manifest; so do
the KB index's address and token, which grounded endpoints search at request time.

Routing: every endpoint is a LoRA adapter on its base model's shared vLLM server, and the gateway
sends each request by the endpoint's adapter route: the `aiplat-adapter-routes` ConfigMap
(aiplat.serving.k8s_adapters.routes_configmap, key adapter-routes.json) that the Kubernetes serving
backend writes into the GitOps manifests folder, mounted here as a directory and passed as
`--adapter-routes`. The gateway reads the file at every request and kubelet swaps a mounted
ConfigMap's files in place, so a canary switch or a rollback reaches the gateway without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiplat.serving import k8s

NAME = "aiplat-gateway"
PORT = 4000
API_KEYS_CONFIGMAP = "aiplat-gateway-api-keys"
API_KEYS_FILE = "api-key-teams.json"
API_KEYS_DIR = "/etc/aiplat/gateway"
REQUEST_LOG_CLAIM = "aiplat-request-log"
REQUEST_LOG_DIR = "/var/lib/aiplat/operations"
REQUEST_LOG_PATH = f"{REQUEST_LOG_DIR}/requests.jsonl"
SECRET = "aiplat-secrets"
UPSTREAM_KEY_ENV = "AIPLAT_VLLM_API_KEY"
MILVUS_ENV = ("AIPLAT_MILVUS_URI", "AIPLAT_MILVUS_TOKEN")
ROUTES_CONFIGMAP = "aiplat-adapter-routes"  # aiplat.serving.k8s_adapters.routes_configmap
ROUTES_FILE = "adapter-routes.json"
ROUTES_DIR = "/etc/aiplat/adapter-routes"


@dataclass(frozen=True)
class GatewaySpec:
    namespace: str = "team-ml"
    image: str = "aiplat-gateway"  # the image variable; each overlay in environments/ resolves it
    replicas: int = 1
    storage: str = "10Gi"
    storage_class: str | None = None

    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "ai-platform",
                "app.kubernetes.io/component": "gateway"}

    def command(self) -> list[str]:
        return ["aiplat", "gateway", "serve", "--host", "0.0.0.0", "--port", str(PORT),
                "--adapter-routes", f"{ROUTES_DIR}/{ROUTES_FILE}", "--require-attribution",
                "--api-key-teams", f"{API_KEYS_DIR}/{API_KEYS_FILE}", "--request-log", REQUEST_LOG_PATH]


def request_log_claim(spec: GatewaySpec) -> dict:
    claim: dict = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": REQUEST_LOG_CLAIM, "namespace": spec.namespace, "labels": spec.labels()},
        # Shared by the gateway and the Dagster run pods on other nodes: it must be ReadWriteMany.
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": spec.storage}}},
    }
    if spec.storage_class:
        claim["spec"]["storageClassName"] = spec.storage_class
    return claim


def deployment(spec: GatewaySpec) -> dict:
    labels = spec.labels()
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 2}
    container = {
        "name": "gateway",
        "image": spec.image,
        "command": spec.command(),
        "env": [
            {"name": "AIPLAT_ENV", "value": "prod"},
            {"name": UPSTREAM_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": UPSTREAM_KEY_ENV, "optional": True}}},
            # Grounded models' prompts carry KB passages searched at request time (gateway_grounding).
            *({"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": name, "optional": True}}}
              for name in MILVUS_ENV),
        ],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "imagePullPolicy": "Always",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True},
            {"name": "request-log", "mountPath": REQUEST_LOG_DIR},
            # The whole directory, never a subPath: a subPath mount is a copy made at pod start that
            # kubelet never refreshes, so the gateway would keep routing to yesterday's adapters.
            {"name": "adapter-routes", "mountPath": ROUTES_DIR, "readOnly": True},
        ],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            # Recreate: never two gateways at once, each with its own budget books (see budgets.py).
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "inference",  # on the request path, like the endpoints behind it
                    "terminationGracePeriodSeconds": 60,  # lets streams in flight finish and be recorded
                    # The gateway never calls the Kubernetes API; it runs as the image's uid 10001.
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [
                        {"name": "api-keys", "configMap": {"name": API_KEYS_CONFIGMAP,
                                                           "items": [{"key": API_KEYS_FILE, "path": API_KEYS_FILE}]}},
                        {"name": "request-log", "persistentVolumeClaim": {"claimName": REQUEST_LOG_CLAIM}},
                        # Optional: the serving backend creates the ConfigMap with the first served model.
                        # Until then the directory is empty, the gateway starts and knows no endpoint
                        # (AdapterRoutes reads a missing file as no routes), and kubelet fills the file in
                        # once the ConfigMap exists. A required one would keep the pod from starting, and an
                        # empty one in the base manifests would be a second owner that overwrites the
                        # backend's routes at every sync.
                        {"name": "adapter-routes", "configMap": {
                            "name": ROUTES_CONFIGMAP, "optional": True,
                            "items": [{"key": ROUTES_FILE, "path": ROUTES_FILE}]}},
                    ],
                },
            },
        },
    }


def service(spec: GatewaySpec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": spec.namespace, "labels": spec.labels()},
        "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": NAME},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }


def render_gateway(spec: GatewaySpec) -> list[dict]:
    if spec.replicas != 1:
        # Hard budgets are booked in the gateway process (aiplat.serving.budgets.InProcessLedger): two
        # replicas would each let a team spend its whole budget. Scale out after a shared ledger exists.
        raise ValueError(f"replicas={spec.replicas}: the gateway runs as exactly one replica while hard budgets "
                         "are booked in-process")
    return [request_log_claim(spec), deployment(spec), service(spec)]


to_yaml = k8s.to_yaml
