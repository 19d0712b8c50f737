"""Delivery, infrastructure as code: the Pulumi program in infra/ run under Pulumi's mock runtime
(no cloud, no CLI). The mocks (infra/aiplat_infra/offline.py) stand in for AWS, which cannot be
reached from here; they record every resource the program declares with its inputs, and the tests
assert those."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

from aiplat.config import project_root

ROOT = project_root()
sys.path.insert(0, str(ROOT / "infra"))

from aiplat_infra.offline import RecordingMocks, declared_resources  # noqa: E402
from aiplat_infra.settings import Settings  # noqa: E402
from aiplat_infra.stack import node_pools  # noqa: E402


def _run(settings: Settings) -> RecordingMocks:
    return declared_resources(settings)


@pytest.fixture(scope="module", params=["dev", "prod"])
def deployed(request) -> tuple[Settings, RecordingMocks]:
    settings = Settings(environment=request.param, multi_az=request.param == "prod",
                        inference_max_nodes=2 if request.param == "dev" else 4,
                        training_max_nodes=1 if request.param == "dev" else 2)
    return settings, _run(settings)


def _quota(name: str) -> int:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "team-ml.yaml").read_text()) if d]
    [quota] = [d for d in docs if d["kind"] == "ResourceQuota" and d["metadata"]["name"] == name]
    return int(quota["spec"]["hard"]["requests.nvidia.com/gpu"])


def test_eks_cluster_is_private_encrypted_and_audited(deployed) -> None:
    settings, mocks = deployed
    [cluster] = mocks.of("aws:eks/cluster:Cluster").values()
    assert cluster["name"] == f"aiplat-{settings.environment}"
    assert cluster["vpcConfig"]["endpointPublicAccess"] is False and cluster["vpcConfig"]["endpointPrivateAccess"] is True
    assert len(cluster["vpcConfig"]["subnetIds"]) == 3
    assert cluster["encryptionConfig"]["resources"] == ["secrets"]
    assert "audit" in cluster["enabledClusterLogTypes"]


def test_inference_gpus_are_on_demand_and_always_there(deployed) -> None:
    settings, mocks = deployed
    group = mocks.of("aws:eks/nodeGroup:NodeGroup")[f"aiplat-{settings.environment}-inference"]
    assert group["capacityType"] == "ON_DEMAND" and group["amiType"].endswith("NVIDIA")
    assert group["scalingConfig"]["minSize"] >= 1
    # What the vLLM Deployments (one per base model, aiplat.serving.k8s_adapters) select and tolerate.
    from aiplat.serving.k8s_adapters import AdapterServerSpec, deployment

    pod = deployment(AdapterServerSpec(base_name="b", base_uri="s3://m/base/b/"))["spec"]["template"]["spec"]
    assert pod["nodeSelector"].items() <= group["labels"].items()
    assert group["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert group["labels"]["aiplat.io/priority-class"] == "inference"


def test_training_gpus_are_spot_tainted_and_scale_from_zero(deployed) -> None:
    settings, mocks = deployed
    name = f"aiplat-{settings.environment}-training"
    group = mocks.of("aws:eks/nodeGroup:NodeGroup")[name]
    assert group["capacityType"] == "SPOT" and len(group["instanceTypes"]) >= 2
    assert group["scalingConfig"]["minSize"] == 0 and group["scalingConfig"]["desiredSize"] == 0
    assert group["scalingConfig"]["maxSize"] >= 1
    taints = {(t["key"], t["value"], t["effect"]) for t in group["taints"]}
    assert taints == {("nvidia.com/gpu", "true", "NO_SCHEDULE"), ("aiplat.io/capacity", "spot", "NO_SCHEDULE")}
    # Scale from zero: the autoscaler reads the group's labels and taints from its tags.
    tags = group["tags"]
    assert tags[f"k8s.io/cluster-autoscaler/aiplat-{settings.environment}"] == "owned"
    assert tags["k8s.io/cluster-autoscaler/node-template/label/aiplat.io/node-pool"] == "gpu"
    assert tags["k8s.io/cluster-autoscaler/node-template/taint/aiplat.io/capacity"] == "spot:NoSchedule"
    assert tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] == "1"


def _matches(pod: dict, group: dict) -> bool:
    """Kubernetes' rule: the pod's nodeSelector is a subset of the node's labels and the pod
    tolerates every NoSchedule taint of the node."""
    if not pod.get("nodeSelector", {}).items() <= group["labels"].items():
        return False
    for taint in group["taints"]:
        effect = {"NO_SCHEDULE": "NoSchedule"}[taint["effect"]]
        if not any(t.get("effect") in (None, effect) and t["key"] == taint["key"]
                   and (t["operator"] == "Exists" or t.get("value") == taint["value"]) for t in pod.get("tolerations", [])):
            return False
    return True


def test_each_workload_lands_on_its_own_node_group(deployed) -> None:
    """The real pod specs: the fine-tune Job dagster-k8s builds from the training tag, and a vLLM
    Deployment from aiplat.serving.k8s; each fits exactly one group."""
    from dagster_k8s.job import UserDefinedDagsterK8sConfig
    from kubernetes.client import ApiClient

    from aiplat.serving.k8s_adapters import AdapterServerSpec
    from aiplat.serving.k8s_adapters import deployment as server_deployment
    from resources.kubernetes import GpuPlacement

    settings, mocks = deployed
    groups = {n.rsplit("-", 1)[-1]: g for n, g in mocks.of("aws:eks/nodeGroup:NodeGroup").items()}
    training_pod = UserDefinedDagsterK8sConfig.from_dict(GpuPlacement().k8s_config()).pod_spec_config
    training_pod = {"nodeSelector": training_pod["node_selector"], "tolerations": training_pod["tolerations"]}
    deployment = server_deployment(AdapterServerSpec(base_name="b", base_uri="s3://m/base/b/"))
    inference_pod = ApiClient().sanitize_for_serialization(deployment)["spec"]["template"]["spec"]
    assert [n for n, g in groups.items() if _matches(training_pod, g)] == ["training"]
    assert [n for n, g in groups.items() if _matches(inference_pod, g)] == ["inference"]


def test_gpu_capacity_covers_the_team_quotas(deployed) -> None:
    """prod can hold what the quotas in deploy/kubernetes admit: training's share on spot, the rest
    on demand; dev deliberately less (its overlay lowers the quota)."""
    settings, mocks = deployed
    pools = node_pools(settings)
    training_gpus = pools["training"]["max"] * pools["training"]["gpus_per_node"]
    inference_gpus = pools["inference"]["max"] * pools["inference"]["gpus_per_node"]
    if settings.environment == "prod":
        assert training_gpus >= _quota("gpu-quota-training")
        assert inference_gpus >= _quota("gpu-quota")
    assert training_gpus >= 1 and inference_gpus >= 1


def test_buckets_are_private_encrypted_and_versioned(deployed) -> None:
    settings, mocks = deployed
    p = f"aiplat-{settings.environment}"
    buckets = mocks.of("aws:s3/bucket:Bucket")
    assert {b["bucket"] for b in buckets.values()} == {f"{p}-lake", f"{p}-models", f"{p}-dagster-logs"}
    blocks = mocks.of("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    sse = mocks.of("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    versioning = mocks.of("aws:s3/bucketVersioning:BucketVersioning")
    for name in buckets:
        assert all(blocks[name][k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
        assert sse[name]["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
        assert versioning[name]["versioningConfiguration"]["status"] == "Enabled"
    # Dagster's compute-log bucket is the one the environment's Helm values name.
    values = yaml.safe_load((ROOT / "environments" / settings.environment / "dagster-values.yaml").read_text())
    assert values["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"] == f"{p}-dagster-logs"


def test_postgres_keeps_its_password_out_of_code_and_survives_mistakes(deployed) -> None:
    settings, mocks = deployed
    [db] = mocks.of("aws:rds/instance:Instance").values()
    assert db["engine"] == "postgres" and db["engineVersion"].startswith("16")
    assert db["manageMasterUserPassword"] is True and "password" not in db
    assert db["storageEncrypted"] is True and db["publiclyAccessible"] is False
    assert db["deletionProtection"] is True and db["backupRetentionPeriod"] >= 7 and db["skipFinalSnapshot"] is False
    assert db["multiAz"] is (settings.environment == "prod")
    assert db["dbName"] == "dagster"


def test_redis_is_encrypted_with_an_auth_token(deployed) -> None:
    settings, mocks = deployed
    [redis] = mocks.of("aws:elasticache/replicationGroup:ReplicationGroup").values()
    assert redis["engine"] == "redis"
    assert redis["atRestEncryptionEnabled"] is True and redis["transitEncryptionEnabled"] is True
    assert redis["authToken"]  # a stack secret
    assert redis["automaticFailoverEnabled"] is (settings.environment == "prod")
    assert redis["numCacheClusters"] == (2 if settings.environment == "prod" else 1)


def test_dagster_role_is_bound_to_the_two_service_accounts_only(deployed) -> None:
    import json

    settings, mocks = deployed
    role = mocks.of("aws:iam/role:Role")[f"aiplat-{settings.environment}-dagster"]
    [statement] = json.loads(role["assumeRolePolicy"])["Statement"]
    [(key, subjects)] = statement["Condition"]["StringEquals"].items()
    assert key.endswith(":sub") and sorted(subjects) == ["system:serviceaccount:dagster:dagster",
                                                         "system:serviceaccount:team-ml:dagster-run"]


def test_stack_config_files_name_their_environment() -> None:
    for env in ("dev", "prod"):
        config = yaml.safe_load((ROOT / "infra" / f"Pulumi.{env}.yaml").read_text())["config"]
        assert config["aiplat-infra:environment"] == env


def test_the_program_runs_after_another_test_closed_the_event_loop() -> None:
    # CI ran a test calling asyncio.run() before this module (pytest-randomly's order): asyncio.run
    # leaves the main thread with no event loop, and Pulumi's Output.secret() needs one. The whole
    # module then failed at setup with "There is no current event loop in thread 'MainThread'".
    asyncio.run(asyncio.sleep(0))
    mocks = declared_resources(Settings(environment="dev"))
    assert "aiplat-dev-dagster" in mocks.of("aws:iam/role:Role")
