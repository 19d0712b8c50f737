"""deploy/ray/: the KubeRay cluster the heavy data stages run on in prod, validated strictly:
the RayCluster against KubeRay's own CRD schema (v1, vendored in deploy/ray/crds/ with its source)
with unknown fields rejected, its pod templates and the NetworkPolicy against Kubernetes 1.30+;
and the prod runtime's Ray settings come from the environment."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from aiplat.config import project_root
from tests import k8s_schemas

RAY = project_root() / "deploy" / "ray"
K8S_VERSIONS = sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)})


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    return k8s_schemas.crd_schema("ray.io/v1", "RayCluster")


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((RAY / "ray-cluster.yaml").read_text()) if d]


def _cluster(documents: list[dict]) -> dict:
    [cluster] = [d for d in documents if d["kind"] == "RayCluster"]
    return cluster


def _templates(cluster: dict) -> list[tuple[str, dict]]:
    spec = cluster["spec"]
    return [("head", spec["headGroupSpec"]["template"])] + [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]


def test_the_ray_cluster_is_valid_against_kuberays_crd(crd_schema: dict, documents: list[dict]) -> None:
    cluster = _cluster(documents)
    jsonschema.validate(cluster, crd_schema)
    assert cluster["spec"]["rayVersion"] == __import__("ray").__version__  # the image's Ray is the platform's
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "aiplat-ray-auth"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_its_pod_templates_and_network_policy_are_valid_kubernetes(documents: list[dict], version: str) -> None:
    for name, template in _templates(_cluster(documents)):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": name, "namespace": "team-ml"}, "template": template},
                                     version, strict=True)
    for doc in documents:
        if doc["kind"] != "RayCluster":
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_crd_validation_catches_a_misspelt_field(crd_schema: dict, documents: list[dict]) -> None:
    bad = copy.deepcopy(_cluster(documents))
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(bad, crd_schema)
    bad = copy.deepcopy(_cluster(documents))
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema)


def test_gpu_workers_are_training_pods_in_the_gpu_pool_and_every_pod_is_hardened(documents: list[dict]) -> None:
    templates = dict(_templates(_cluster(documents)))
    gpu = templates["gpu"]["spec"]
    assert gpu["priorityClassName"] == "training" and gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for name, template in templates.items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["image"] == "aiplat-platform", name  # actors import the platform's code
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    assert _cluster(documents)["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_prod_runtime_joins_the_cluster_named_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from platform_defs.resources import prod_resources

    ray = prod_resources()["ray"]
    assert ray.address == dg.EnvVar("AIPLAT_RAY_ADDRESS") and ray.dashboard_url == dg.EnvVar("AIPLAT_RAY_DASHBOARD_URL")
    for env in ("dev", "prod"):
        kustomization = yaml.safe_load((project_root() / "environments" / env / "kustomization.yaml").read_text())
        literals = [lit for gen in kustomization["configMapGenerator"] if gen["name"] == "aiplat-env"
                    for lit in gen["literals"]]
        assert "AIPLAT_RAY_ADDRESS=ray://aiplat-ray-head-svc.team-ml.svc.cluster.local:10001" in literals, env
