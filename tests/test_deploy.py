"""deploy/: every Kubernetes manifest, the Dagster instance config, and the real Job that
dagster-k8s builds for a fine-tuning run, validated strictly for Kubernetes 1.30 and newer."""

from __future__ import annotations

import os

import json
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from aiplat.config import project_root

DEPLOY = project_root() / "deploy"
K8S_VERSIONS = sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)})
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_there_is_something_to_validate() -> None:
    assert len(K8S_VERSIONS) >= 3 and K8S_VERSIONS[0].startswith("1.30")
    kinds = {d["kind"] for path in MANIFESTS for d in _documents(path)}
    assert {"PriorityClass", "ResourceQuota", "Namespace"} <= kinds


def test_run_pods_mount_the_volume_the_gateway_writes_the_request_log_to(training_job_manifest: dict) -> None:
    pod = training_job_manifest["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "aiplat-operations"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "aiplat-operations"]
    gateway = list(yaml.safe_load_all((DEPLOY / "serving" / "gateway.yaml").read_text()))
    [claim] = [d for d in gateway if d and d["kind"] == "PersistentVolumeClaim"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    [deployment] = [d for d in gateway if d and d["kind"] == "Deployment"]
    gateway_mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert mount["mountPath"] in {m["mountPath"] for m in gateway_mounts}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in _documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    # The guard the tests above rely on: strict mode must reject unknown fields.
    bad = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "x"},
           "value": 1, "preemptionPolicyy": "Never"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_inference_outranks_training_and_training_never_preempts() -> None:
    classes = {d["metadata"]["name"]: d for d in _documents(DEPLOY / "kubernetes" / "priority-classes.yaml")}
    assert classes["inference"]["value"] > classes["training"]["value"]
    assert classes["training"]["preemptionPolicy"] == "Never"
    assert classes["inference"]["preemptionPolicy"] == "PreemptLowerPriority"


def test_team_namespace_has_a_gpu_quota() -> None:
    quotas = [d for d in _documents(DEPLOY / "kubernetes" / "team-ml.yaml") if d["kind"] == "ResourceQuota"]
    gpu = {q["metadata"]["name"]: int(q["spec"]["hard"]["requests.nvidia.com/gpu"]) for q in quotas}
    assert gpu["gpu-quota"] >= gpu["gpu-quota-training"] >= 1


def test_kustomization_references_existing_files() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file(), resource
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            assert (DEPLOY / entry.split("=", 1)[-1]).is_file(), entry


PROD_ENV = {
    "AIPLAT_K8S_NAMESPACE": "team-ml",
    "DAGSTER_PG_HOST": "postgres.internal",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-secret",
    "DAGSTER_PG_DB": "dagster",
    "AIPLAT_COMPUTE_LOG_BUCKET": "aiplat-logs",
    "AWS_REGION": "eu-west-1",
}


@pytest.fixture(scope="module")
def prod_env():
    with pytest.MonkeyPatch.context() as mp:
        for name, value in PROD_ENV.items():
            mp.setenv(name, value)
        yield


def _instance_config() -> dict:
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(DEPLOY / "dagster"), "dagster.yaml")
    return config


def test_dagster_instance_config_is_valid(prod_env) -> None:
    from dagster._config import process_config
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    config = _instance_config()
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    # Each configurable class checks its own section, env references resolved.
    for cls, section in (
        (K8sRunLauncher, config["run_launcher"]["config"]),
        (S3ComputeLogManager, config["compute_logs"]["config"]),
        (DagsterPostgresStorage, config["storage"]["postgres"]),
    ):
        result = process_config(cls.config_type(), section)
        assert result.success, (cls.__name__, result.errors)
    assert process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"]).value[
        "postgres_db"]["password"] == "not-a-real-secret"
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "aiplat/gpu-pool", "value": "gpu_training", "limit": 2} in limits
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_secrets_are_env_references_only() -> None:
    raw = yaml.safe_load((DEPLOY / "dagster" / "dagster.yaml").read_text())
    assert raw["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}


class _CapturingBatchApi:
    """Stands in for the Kubernetes API server, which cannot run on this machine (no cluster in
    any reachable registry); dagster-k8s hands it the exact Job body it would POST."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, object]] = []

    def create_namespaced_job(self, body, namespace, **_kwargs):
        self.jobs.append((namespace, body))
        return body


@pytest.fixture(scope="module")
def training_job_manifest(prod_env, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The Job K8sRunLauncher (configured from deploy/dagster/dagster.yaml) creates for a run of
    a model chain's fine-tuning job (assets/model_lifecycle.py)."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.storage.dagster_run import DagsterRun, make_new_run_id
    from dagster._core.test_utils import instance_for_test
    from dagster_k8s import K8sRunLauncher
    from kubernetes.client import ApiClient

    fine_tuning_job = _triage_chain().jobs[0]

    kubeconfig = tmp_path_factory.mktemp("k8s") / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
    }))
    from dagster._config import process_config

    launcher_config = process_config(K8sRunLauncher.config_type(), _instance_config()["run_launcher"]["config"]).value
    launcher_config.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    batch = _CapturingBatchApi()
    launcher = K8sRunLauncher(**launcher_config, k8s_client_batch_api=batch)

    origin = JobPythonOrigin(
        job_name=fine_tuning_job.name,
        repository_origin=RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("platform_defs.definitions", "defs", working_directory="/app"),
            container_image="registry.internal/ai-platform:1.0.0",
        ),
    )
    with instance_for_test() as instance:
        launcher.register_instance(instance)
        run = instance.add_run(
            DagsterRun(job_name=fine_tuning_job.name, run_id=make_new_run_id(),
                       tags=dict(fine_tuning_job.tags), job_code_origin=origin)
        )
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    assert len(batch.jobs) == 1
    namespace, body = batch.jobs[0]
    assert namespace == "team-ml"
    return ApiClient().sanitize_for_serialization(body)


def test_training_run_job_requests_a_gpu_on_the_gpu_pool(training_job_manifest: dict) -> None:
    pod = training_job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"aiplat.io/node-pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "training"
    assert training_job_manifest["metadata"]["labels"]["aiplat.io/team"] == "ml"  # the triage spec's owner team
    assert pod["serviceAccountName"] == "dagster-run"
    assert training_job_manifest["spec"]["backoffLimit"] == 0
    assert container["image"] == "registry.internal/ai-platform:1.0.0"
    env_from = json.dumps(container.get("envFrom", []))
    assert "aiplat-secrets" in env_from and "not-a-real-secret" not in json.dumps(training_job_manifest)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_training_run_job_is_valid_kubernetes(training_job_manifest: dict, version: str) -> None:
    kubernetes_validate.validate(training_job_manifest, version, strict=True)


def _triage_chain():
    from aiplat.config import project_root
    from aiplat.specs import find_spec
    from assets.model_lifecycle import model_chain

    return model_chain(find_spec("ticket-triage", project_root() / "models"))


def _chain_asset(chain, name: str):
    (asset,) = [a for a in chain.assets if a.key.path[-1] == name]
    return asset


def test_training_asset_is_in_the_gpu_pool() -> None:
    from resources.kubernetes import K8S_CONFIG_TAG

    fine_tuned_model = _chain_asset(_triage_chain(), "fine_tuned_model")

    spec = fine_tuned_model.op
    assert spec.pool == "gpu_training"
    k8s = json.loads(spec.tags[K8S_CONFIG_TAG])
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert isinstance(fine_tuned_model, dg.AssetsDefinition)


def test_training_job_resolves_with_its_tags_and_resources() -> None:
    from assets.training import base_model
    from resources.kubernetes import GPU_POOL_TAG, K8S_CONFIG_TAG
    from resources.mlflow import MLflowResource
    from resources.signing import ModelSigningResource

    chain = _triage_chain()

    @dg.asset(key=["ticket_triage", "training_set"])
    def training_set() -> None: ...

    defs = dg.Definitions(assets=[training_set, base_model, _chain_asset(chain, "fine_tuned_model")],
                          jobs=chain.jobs[:1],
                          resources={"mlflow": MLflowResource(), "model_signing": ModelSigningResource()})
    job = defs.resolve_job_def("ticket_triage__fine_tuning_job")
    assert job.tags[GPU_POOL_TAG] == "gpu_training" and K8S_CONFIG_TAG in job.tags
    assert [n.name for n in job.nodes_in_topological_order] == ["ticket_triage__fine_tuned_model"]


def test_prod_mlflow_uri_comes_from_the_environment_and_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.training.tracking import redact_uri
    from resources.mlflow import MLflowResource

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bot:s3cret@mlflow.internal:8443")
    monkeypatch.delenv("AIPLAT_SERVICE_TOKEN", raising=False)
    resource = MLflowResource.prod()
    # The run signs in to MLflow with the service account's token: without it, no step starts.
    with pytest.raises(Exception, match="AIPLAT_SERVICE_TOKEN"):
        with resource.process_config_and_initialize_cm():
            pass
    monkeypatch.setenv("AIPLAT_SERVICE_TOKEN", "aiplat_service-token")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    ctx = dg.build_init_resource_context()
    with resource.process_config_and_initialize_cm() as live:
        live.setup_for_execution(ctx)
        assert live.uri == "https://bot:s3cret@mlflow.internal:8443"
        assert redact_uri(live.uri) == "https://mlflow.internal:8443"
        # MLflow's clients read the credential from these variables only.
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "aiplat_service-token"
