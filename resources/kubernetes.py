"""Kubernetes: where GPU training runs are placed in prod (through dagster-k8s).

The placement is declared on the training asset and job as the `dagster-k8s/config` tag, which
K8sRunLauncher (run pod) and k8s_job_executor (step pod) turn into the Job's pod spec: GPU limits,
the GPU node pool's selector and taint toleration, and the `training` PriorityClass, which
Kubernetes preempts in favour of `inference` (deploy/kubernetes/priority-classes.yaml).

Tags are fixed when the code location loads, so the placement is plain data here rather than
a ConfigurableResource; namespace, image and service account belong to the instance's
K8sRunLauncher config (deploy/dagster/dagster.yaml).
"""

from __future__ import annotations

import json
from pydantic import BaseModel, ConfigDict, Field

K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TRAINING_POOL = "gpu_training"
TRAINING_PRIORITY_CLASS = "training"
INFERENCE_PRIORITY_CLASS = "inference"
GPU_POOL_TAG = "aiplat/gpu-pool"  # run-queue tag limit in deploy/dagster/dagster.yaml


class GpuPlacement(BaseModel):
    """Where a GPU training pod goes and what it may use."""

    model_config = ConfigDict(frozen=True)

    gpus: int = Field(default=1, ge=1)
    cpu: str = "4"
    memory: str = "24Gi"
    node_pool_label: str = "aiplat.io/node-pool"
    node_pool: str = "gpu"
    gpu_taint_key: str = GPU_RESOURCE
    # The training node group is spot capacity with this extra taint (infra/): only pods that
    # tolerate it, i.e. fine-tunes, land there; inference stays on on-demand GPUs.
    capacity_taint_key: str = "aiplat.io/capacity"
    capacity_taint_value: str = "spot"
    priority_class: str = TRAINING_PRIORITY_CLASS
    backoff_limit: int = 0  # a failed fine-tune is reported, not silently retried on a GPU
    ttl_seconds_after_finished: int = 3600
    team: str = Field(default="platform", description="aiplat.io/team label of the training pod: the model's owner team")

    def k8s_config(self) -> dict:
        limits = {"cpu": self.cpu, "memory": self.memory, GPU_RESOURCE: str(self.gpus)}
        return {
            "container_config": {
                "resources": {"requests": dict(limits), "limits": dict(limits)},
            },
            "pod_spec_config": {
                "node_selector": {self.node_pool_label: self.node_pool},
                "tolerations": [
                    {"key": self.gpu_taint_key, "operator": "Exists", "effect": "NoSchedule"},
                    {"key": self.capacity_taint_key, "operator": "Equal", "value": self.capacity_taint_value,
                     "effect": "NoSchedule"},
                ],
                "priority_class_name": self.priority_class,
            },
            "pod_template_spec_metadata": {"labels": {"aiplat.io/team": self.team, "aiplat.io/workload": "training"}},
            "job_spec_config": {
                "backoff_limit": self.backoff_limit,
                "ttl_seconds_after_finished": self.ttl_seconds_after_finished,
            },
            "job_metadata": {"labels": {"aiplat.io/team": self.team, "aiplat.io/workload": "training"}},
        }

    def tags(self) -> dict[str, str]:
        return {K8S_CONFIG_TAG: json.dumps(self.k8s_config(), sort_keys=True), GPU_POOL_TAG: GPU_TRAINING_POOL}


def gpu_training_tags(placement: GpuPlacement | None = None) -> dict[str, str]:
    return (placement or GpuPlacement()).tags()

