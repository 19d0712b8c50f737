"""The shared adapter server in Kubernetes (issue 14): manifests strictly validated, the loader
sidecar runs the platform's real reconcile module, and the gateway's routes ConfigMap is what the
gateway reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from aiplat.serving.adapter_routes import AdapterRoutes
from aiplat.serving.adapters import WantedAdapter, read_wanted
from aiplat.serving.k8s_adapters import ADAPTERS_DIR, BASE_DIR, AdapterServerSpec, render_adapter_server, routes_configmap
from aiplat.serving.server import LoraSettings

REPO = Path(__file__).resolve().parent.parent
K8S_VERSIONS = sorted(all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))[-3:]
SPEC = AdapterServerSpec("smollm2-135m", "s3://models/base/smollm2-135m/", lora=LoraSettings(max_loras=8, max_lora_rank=32))
WANTED = [WantedAdapter("ticket-triage", "4", "s3://models/ticket-triage/4/adapter/", '{"payloadType": "x"}'),
          WantedAdapter("reply-drafter", "2", "s3://models/reply-drafter/2/adapter/", '{"payloadType": "y"}')]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_adapter_server_renders_valid_kubernetes(version: str) -> None:
    for doc in render_adapter_server(SPEC, WANTED):
        kubernetes_validate.validate(doc, version, strict=True)


def test_vllm_loads_only_what_the_loader_verified_into_the_shared_volume(tmp_path: Path) -> None:
    configmap, deployment, service = render_adapter_server(SPEC, WANTED)
    pod = deployment["spec"]["template"]["spec"]
    vllm, loader = pod["containers"]
    args = vllm["args"]
    assert args[args.index("--max-loras") + 1] == "8" and args[args.index("--max-lora-rank") + 1] == "32"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert {"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True} in vllm["volumeMounts"]
    assert {"name": "adapters", "mountPath": ADAPTERS_DIR} in loader["volumeMounts"]
    command = loader["command"]
    assert command[:3] == ["python", "-m", "aiplat.serving.adapter_loader"]
    assert command[command.index("--cache") + 1] == ADAPTERS_DIR
    assert command[command.index("--max-rank") + 1] == "32"
    # The loader reads the base vLLM serves (to hash it); neither container can write it.
    assert command[command.index("--base-folder") + 1] == BASE_DIR
    assert {"name": "base", "mountPath": BASE_DIR, "readOnly": True} in loader["volumeMounts"]
    assert {"name": "base", "mountPath": BASE_DIR, "readOnly": True} in vllm["volumeMounts"]
    # Hashing a large base takes minutes before the first beat: a startup probe, not an early liveness kill.
    assert loader["startupProbe"]["failureThreshold"] * loader["startupProbe"]["periodSeconds"] >= 1800
    # The loader's options are the real module's: its --help accepts every flag the manifest passes.
    helped = subprocess.run([sys.executable, "-m", "aiplat.serving.adapter_loader", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    for flag in (c for c in command[3:] if c.startswith("--")):
        assert flag in helped.stdout, flag
    # The desired-state ConfigMap is what the loader reads back.
    (tmp_path / "desired.json").write_text(configmap["data"]["desired.json"])
    assert read_wanted(tmp_path / "desired.json") == WANTED
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    with pytest.raises(ValueError, match="s3://"):
        render_adapter_server(SPEC, [WantedAdapter("m", "1", "/local/folder", "")])


def test_the_routes_configmap_is_the_gateways_adapter_routes_file(tmp_path: Path) -> None:
    routes = AdapterRoutes(tmp_path / "routes.json")
    routes.set("ticket-triage", "http://vllm-base-smollm2-135m.team-ml.svc:8000", {"ticket-triage@4": 90,
                                                                                  "ticket-triage@5": 10})
    configmap = routes_configmap(list(routes.all().values()))
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(configmap, version, strict=True)
    mounted = tmp_path / "mounted.json"
    mounted.write_text(configmap["data"]["adapter-routes.json"])
    assert AdapterRoutes(mounted).all() == routes.all()
    assert json.loads(mounted.read_text())["ticket-triage"]["split"] == {"ticket-triage@4": 90.0, "ticket-triage@5": 10.0}


def test_the_loader_beats_while_its_loop_runs_and_its_probes_read_the_beat(tmp_path: Path) -> None:
    """The sidecar's liveness and readiness: the real loader, its server not up yet (every pass fails
    and says so), still touches its heartbeat each pass; the rendered probe command passes on a fresh
    beat and fails on a stale or missing one."""
    import os
    import time

    from aiplat.net import free_port
    from aiplat.serving.k8s_adapters import HEARTBEAT
    from tests.approval_helpers import serving_keys

    _, deployment, _ = render_adapter_server(SPEC, WANTED)
    loader = deployment["spec"]["template"]["spec"]["containers"][1]
    assert loader["command"][loader["command"].index("--heartbeat") + 1] == HEARTBEAT
    probe = loader["livenessProbe"]["exec"]["command"]
    assert probe == loader["readinessProbe"]["exec"]["command"] and probe[0] == "python"

    beat = tmp_path / "heartbeat"
    desired = tmp_path / "desired.json"
    desired.write_text(json.dumps({"adapters": []}))
    base = tmp_path / "base"  # what fetch-base left in the pod (the loader hashes it at start)
    base.mkdir()
    (base / "config.json").write_text("{}")
    keys = serving_keys()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "aiplat.serving.adapter_loader", "--desired", str(desired),
                             "--base-name", SPEC.base_name, "--base-folder", str(base),
                             "--url", f"http://127.0.0.1:{free_port()}",
                             "--public-key", str(keys.signature), "--approval-key", str(keys.approval),
                             "--cache", str(tmp_path / "cache"), "--interval", "0.2", "--heartbeat", str(beat)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not beat.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert beat.exists(), proc.stdout.read() if proc.poll() is not None else "no heartbeat within 60 s"
        first = beat.stat().st_mtime
        while beat.stat().st_mtime == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert beat.stat().st_mtime > first  # it keeps beating while every pass fails
    finally:
        proc.kill()
        output = proc.communicate()[0]
    assert "reconcile failed" in output

    def run_probe() -> int:
        command = [sys.executable, *probe[1:-1], probe[-1].replace(HEARTBEAT, str(beat))]
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    assert run_probe() == 0
    os.utime(beat, (time.time() - 3600, time.time() - 3600))
    assert run_probe() == 1
    beat.unlink()
    assert run_probe() == 1
