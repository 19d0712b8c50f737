"""Delivery, part 1: the three images (linted by hadolint), the image variables every manifest uses,
the kustomize overlays per environment (rendered by kubectl's built-in kustomize and validated
strictly), and the Dagster Helm values kept equal to the run pods' instance config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.requirements import Requirement

from aiplat.config import project_root
from tests import k8s_schemas

ROOT = project_root()
IMAGES_DIR = ROOT / "deploy" / "images"
DOCKERFILES = sorted(IMAGES_DIR.glob("*.Dockerfile"))
ENVIRONMENTS = ["dev", "prod"]
OUR_IMAGES = {"aiplat-platform", "aiplat-gateway", "aiplat-vllm-serving"}
# Third-party images the manifests use, by variable too (the model-fetch init container: AWS CLI).
IMAGE_VARIABLES = OUR_IMAGES | {"aiplat-model-fetch"}
K8S_VERSIONS = sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)})


def _tool(name: str) -> str:
    """The linters and kubectl come as wheels ([dev] extras) into the venv that runs the tests."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[dev]' installs it"
    return found


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions (continuations joined) grouped by build stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


# --- images -----------------------------------------------------------------------------------


def test_there_are_the_three_images() -> None:
    assert {p.name for p in DOCKERFILES} == {"platform.Dockerfile", "gateway.Dockerfile", "vllm-serving.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    # The guard the test above relies on: unpinned apt packages and a root final stage are findings.
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y gcc\nCMD python app.py\n")
    result = subprocess.run([_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3008" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_is_not_root_and_carries_no_build_tools(dockerfile: Path) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: the build happens in its own stage"
    final = stages[-1]
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    final_text = "\n".join(final)
    for tool in ("gcc", "build-essential", "make ", "pip install", "apt-get install", "git "):
        assert tool not in final_text, f"{dockerfile.name}: {tool!r} in the final stage"
    assert any(line.startswith("COPY --from=") for line in final), "the final stage takes the built files from the build stage"


def test_platform_image_drops_pip_and_installs_against_the_lock() -> None:
    build = "\n".join(_stages(IMAGES_DIR / "platform.Dockerfile")[0])
    assert "--constraint deploy/images/constraints.txt" in build and "pip uninstall --yes pip setuptools wheel" in build


def test_vllm_image_is_the_official_server_with_the_verification_entry_point() -> None:
    text = (IMAGES_DIR / "vllm-serving.Dockerfile").read_text()
    froms = [s[0] for s in _stages(IMAGES_DIR / "vllm-serving.Dockerfile")]
    assert all(re.fullmatch(r"FROM vllm/vllm-openai:v\d+\.\d+\.\d+( AS [\w-]+)?", f) for f in froms), froms
    assert "/usr/local/bin/aiplat-verify-model" in text
    wrapper = (IMAGES_DIR / "aiplat-verify-model").read_text()
    assert "-m aiplat.security.verify_folder" in wrapper and "PYTHONPATH=/opt/aiplat-verify" in wrapper


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (IMAGES_DIR / name).read_text().splitlines():
        if line and not line.startswith("#"):
            pkg, version = line.split("==")
            pins[pkg] = version
    return pins


def test_the_lock_pins_every_dependency_of_the_package_within_its_range() -> None:
    import tomllib

    from packaging.utils import canonicalize_name

    pins = _pins("constraints.txt")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for raw in declared:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in deploy/images/constraints.txt: run scripts/image_constraints.py"
        assert req.specifier.contains(pins[name], prereleases=True), (raw, pins[name])


def test_gateway_requirements_cover_what_the_gateway_imports() -> None:
    """Import the gateway's command in a fresh interpreter and map every third-party module it
    loaded to its distribution: each must be in gateway-requirements.txt (or the stdlib)."""
    from packaging.utils import canonicalize_name

    probe = (
        "import sys, json, importlib.metadata as md\n"
        "import aiplat.commands.gateway, aiplat.serving.gateway, uvicorn\n"
        "from click.testing import CliRunner\n"
        "from aiplat.cli import cli\n"
        "CliRunner().invoke(cli, ['gateway', 'serve', '--help'])\n"
        "dists = md.packages_distributions()\n"
        "top = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'_distutils_hack'}\n"
        "print(json.dumps(sorted({d for t in top for d in dists.get(t, [])})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(ROOT)})
    assert out.returncode == 0, out.stderr
    loaded = {canonicalize_name(d) for d in json.loads(out.stdout.splitlines()[-1])} - {"ai-platform"}
    assert loaded, "the probe saw no third-party module"
    missing = loaded - set(_pins("gateway-requirements.txt"))
    assert not missing, f"the gateway imports {sorted(missing)}, not in deploy/images/gateway-requirements.txt"


# --- manifests and overlays -----------------------------------------------------------------------


def _images_in(doc) -> list[str]:
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "image" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_images_in(value))
    elif isinstance(doc, list):
        for item in doc:
            found.extend(_images_in(item))
    return found


def test_every_manifest_in_deploy_references_images_by_variable() -> None:
    seen = set()
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        if "helm" in path.parts:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            for image in _images_in(doc):
                assert image in IMAGE_VARIABLES, f"{path.relative_to(ROOT)}: image {image!r} is not one of {sorted(IMAGE_VARIABLES)}"
                seen.add(image)
    assert {"aiplat-gateway", "aiplat-vllm-serving"} <= seen


def _render(env: str) -> list[dict]:
    result = subprocess.run([_tool("kubectl"), "kustomize", str(ROOT / "environments" / env)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _overlay_images(env: str) -> dict[str, str]:
    k = yaml.safe_load((ROOT / "environments" / env / "kustomization.yaml").read_text())
    return {i["name"]: f"{i['newName']}:{i['newTag']}" for i in k["images"]}


@pytest.fixture(scope="module", params=ENVIRONMENTS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, _render(request.param)


def test_overlay_resolves_every_image_variable(rendered) -> None:
    env, docs = rendered
    resolved = _overlay_images(env)
    assert set(resolved) == IMAGE_VARIABLES
    images = [i for d in docs for i in _images_in(d)]
    assert images, "the rendered set runs something"
    for image in images:
        assert image in resolved.values(), image
    for name in OUR_IMAGES:
        assert f"/{env if env == 'dev' else 'release'}/{name}:" in resolved[name]
    assert resolved["aiplat-model-fetch"] == "docker.io/amazon/aws-cli:2.22.35"
    [env_map] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aiplat-env"]
    # Serving manifests rendered at run time take the same image from AIPLAT_VLLM_IMAGE.
    assert env_map["data"]["AIPLAT_VLLM_IMAGE"] == resolved["aiplat-vllm-serving"]
    assert env_map["data"]["AIPLAT_ENV"] == env


def test_overlay_renders_the_whole_base(rendered) -> None:
    _env, docs = rendered
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("PriorityClass", "inference"), ("PriorityClass", "training"), ("Namespace", "team-ml"),
            ("ResourceQuota", "gpu-quota"), ("ServiceAccount", "dagster-run"), ("ConfigMap", "dagster-instance"),
            ("Deployment", "aiplat-gateway"), ("PersistentVolumeClaim", "aiplat-request-log")} <= kinds
    assert all(d["metadata"]["labels"]["aiplat.io/environment"] == _env for d in docs)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_overlay_is_valid_kubernetes(rendered, version: str) -> None:
    _env, docs = rendered
    for doc in docs:
        k8s_schemas.validate(doc, version)  # the RayCluster against KubeRay's CRD schema


def test_prod_keeps_more_capacity_than_dev() -> None:
    def quota(env):
        return {d["metadata"]["name"]: int(d["spec"]["hard"]["requests.nvidia.com/gpu"])
                for d in _render(env) if d["kind"] == "ResourceQuota"}
    dev, prod = quota("dev"), quota("prod")
    assert prod["gpu-quota"] > dev["gpu-quota"] >= dev["gpu-quota-training"] >= 1


def test_a_manifest_with_a_literal_image_is_caught(tmp_path: Path) -> None:
    # The guard for the variable rule: kustomize leaves an unknown image alone, and the check sees it.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "pod.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "docker.io/library/busybox:latest"}]}}))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["pod.yaml"], "images": [{"name": "aiplat-gateway", "newName": "r/aiplat-gateway", "newTag": "1"}]}))
    out = subprocess.run([_tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    [doc] = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert _images_in(doc) == ["docker.io/library/busybox:latest"]
    assert not set(_images_in(doc)) <= set({"r/aiplat-gateway:1"})


# --- Dagster Helm values ---------------------------------------------------------------------------


def _values(env: str | None = None) -> dict:
    path = ROOT / "deploy" / "helm" / "dagster-values.yaml" if env is None else ROOT / "environments" / env / "dagster-values.yaml"
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_user_code_image_is_the_overlay_platform_image(env: str) -> None:
    base_entry = _values()["dagster-user-deployments"]["deployments"][0]
    [entry] = _values(env)["dagster-user-deployments"]["deployments"]
    image = entry["image"]
    assert f"{image['repository']}:{image['tag']}" == _overlay_images(env)["aiplat-platform"]
    assert base_entry["image"]["repository"] == "aiplat-platform"
    # Helm replaces lists whole, so the environment's entry must be the base one but for the image.
    assert {k: v for k, v in entry.items() if k != "image"} == {k: v for k, v in base_entry.items() if k != "image"}
    assert entry["dagsterApiGrpcArgs"] == ["--module-name", "platform_defs.definitions"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_compute_log_bucket_matches_the_environment_config(env: str) -> None:
    [env_map] = [d for d in _render(env) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aiplat-env"]
    bucket = _values(env)["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"]
    assert bucket == env_map["data"]["AIPLAT_COMPUTE_LOG_BUCKET"] == f"aiplat-{env}-dagster-logs"


def test_helm_values_describe_the_same_instance_as_the_run_pods_config() -> None:
    """Webserver and daemon (Helm's instance ConfigMap) and run pods (deploy/dagster/dagster.yaml)
    must agree on where runs go, what they mount and how GPU runs queue."""
    values = _values()
    instance = yaml.safe_load((ROOT / "deploy" / "dagster" / "dagster.yaml").read_text())
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_launcher = instance["run_launcher"]["config"]
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    assert launcher["jobNamespace"] == "team-ml"
    assert [m["name"] for m in launcher["envConfigMaps"]] == run_launcher["env_config_maps"]
    assert [s["name"] for s in launcher["envSecrets"]] == run_launcher["env_secrets"]
    assert launcher["volumes"] == run_launcher["volumes"]
    assert [{"name": m["name"], "mountPath": m["mountPath"]} for m in launcher["volumeMounts"]] == [
        {"name": m["name"], "mountPath": m["mountPath"]} for m in run_launcher["volume_mounts"]]
    assert launcher["labels"] == run_launcher["labels"]
    assert launcher["failPodOnRunFailure"] is run_launcher["fail_pod_on_run_failure"] is True
    assert launcher["runK8sConfig"]["podSpecConfig"]["serviceAccountName"] == run_launcher["service_account_name"]
    assert launcher["runK8sConfig"]["jobSpecConfig"]["ttlSecondsAfterFinished"] == \
        run_launcher["run_k8s_config"]["job_spec_config"]["ttl_seconds_after_finished"]
    assert launcher["runK8sConfig"]["containerConfig"]["resources"] == \
        run_launcher["run_k8s_config"]["container_config"]["resources"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["startTimeoutSeconds"] == instance["run_monitoring"]["start_timeout_seconds"]
    assert monitoring["maxResumeRunAttempts"] == instance["run_monitoring"]["max_resume_run_attempts"]
    assert monitoring["cancelTimeoutSeconds"] == instance["run_monitoring"]["cancel_timeout_seconds"]
    assert monitoring["freeSlotsAfterRunEndSeconds"] == instance["run_monitoring"]["free_slots_after_run_end_seconds"]
    assert values["additionalInstanceConfig"]["concurrency"]["pools"] == instance["concurrency"]["pools"]
    assert values["global"]["postgresqlSecretName"] == run_launcher["postgres_password_secret"]
    assert values["postgresql"]["enabled"] is False
    s3 = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    assert values["computeLogManager"]["type"] == instance["compute_logs"]["class"] == "S3ComputeLogManager"
    assert s3["prefix"] == instance["compute_logs"]["config"]["prefix"]


def _keys(doc, prefix=""):
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield f"{prefix}{key}", value
            yield from _keys(value, f"{prefix}{key}.")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _keys(item, f"{prefix}{i}.")


def test_helm_values_hold_no_secret() -> None:
    for path in [ROOT / "deploy" / "helm" / "dagster-values.yaml"] + [ROOT / "environments" / e / "dagster-values.yaml" for e in ENVIRONMENTS]:
        for key, value in _keys(yaml.safe_load(path.read_text())):
            leaf = key.rsplit(".", 1)[-1].lower()
            if any(word in leaf for word in ("password", "secretkey", "token")) and not leaf.endswith("secret"):
                raise AssertionError(f"{path.name}: {key} holds a secret value ({type(value).__name__})")
