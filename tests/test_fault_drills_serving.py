"""Fault drills of serving, with real vLLM servers on the CPU (SmolLM2-135M): kill -9 of the run's
process during a canary, and the live vLLM server dying under the gateway. One live server is
deployed for the module; the canary drill starts a candidate beside it (and the re-run another).
Run under `flock /tmp/aiplat-vllm.lock` (vLLM reserves host memory).

The canary's latency rule is not what is drilled: its policy here has wide slack (p95 ratio 100,
120 s) so that the verdict does not depend on how busy the machine is.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from aiplat.operations.requests import RequestLog
from aiplat.serving.gateway import GatewaySettings, build_app
from aiplat.serving.gateway_routing import RegistryResolver
from aiplat.serving.server import process_of
from tests.approval_helpers import approve
from tests.conftest import built_vllm_env, copy_model
from tests.fault_drills import child_env, report, start_child
from tests.test_gateway import serve

# Up to four vLLM starts (live, candidate, the re-run's candidate, the redeploy): minutes each on a
# busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ENDPOINT = "ticket-triage"
# The ticket-triage spec's generated chain (models/ticket-triage.yaml).
SERVED_KEY, SERVED_OP = "ticket_triage/served_endpoint", "ticket_triage__served_endpoint"


def _ask(url: str, model: str = ENDPOINT) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=300, headers={"X-AIPLAT-Team": "team:support"}, json={
        "model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0})


@pytest.fixture(scope="module")
def world(tmp_path_factory, smollm_base):
    env = built_vllm_env()  # looked up before the private state dir is set
    state = tmp_path_factory.mktemp("drill-serving") / "state"
    state.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("AIPLAT_STATE_DIR", str(state))
    mp.setenv("AIPLAT_ENV", "local")
    from aiplat.security.signing import dev_key_pair, sign_model
    from platform_defs.definitions import build_definitions
    from resources.vllm import LocalVllmResource

    model = copy_model(smollm_base, state / "model")
    sign_model(model, dev_key_pair())
    cfg = dict(enforce_eager=True, max_num_seqs=2, vllm_python=str(env.python),
               start_timeout_s=900, canary_concurrency=1, canary_max_tokens=8, canary_load_share=0.0,
               canary_max_p95_ratio=100.0, canary_p95_slack_ms=120_000.0)
    vllm = LocalVllmResource(**cfg)
    home = state / "dagster_home"
    home.mkdir()
    world = {"state": state, "home": home, "model": model, "cfg": cfg, "vllm": vllm,
             "instance": dg.DagsterInstance.from_config(str(home)),
             "job": build_definitions({"vllm": vllm}).resolve_implicit_global_asset_job_def()}
    try:
        assert _deploy(world, "1").success
        yield world
    finally:
        vllm.manager.stop_all()
        mp.undo()


def _folder_config(world, version: str) -> dict:
    """The drill's folder, approved as `version` the way a promotion would (tests/approval_helpers.py)."""
    attestation = approve(world["model"], ENDPOINT, version, world["state"] / "approvals" / f"v{version}.json")
    return {"model_folder": str(world["model"]), "model_version": version, "attestation_file": str(attestation)}


def _deploy(world, version: str) -> dg.ExecuteInProcessResult:
    return world["job"].execute_in_process(
        instance=world["instance"], asset_selection=[dg.AssetKey.from_user_string(SERVED_KEY)], raise_on_error=False,
        run_config={"ops": {SERVED_OP: {"config": _folder_config(world, version)}}})


def test_kill9_during_canary_live_endpoint_keeps_serving(world, tmp_path: Path):
    manager = world["vllm"].manager
    live = manager.get(ENDPOINT).live
    version = str(int(live.model_version) + 1)
    child = start_child(tmp_path / "drill", child_env(world["state"], world["home"]),
                        assets=[SERVED_KEY], resources={"vllm": {"kind": "vllm_local", **world["cfg"]}},
                        run_config={"ops": {SERVED_OP: {"config": _folder_config(world, version)}}},
                        pause="aiplat.serving.manager:EndpointManager.start_candidate", pause_when="after")
    # The candidate is up and recorded; the kill lands before it is compared, switched or discarded.
    try:
        child.wait_marker(timeout=1200)
    finally:
        child.kill9()
    assert child.proc.returncode == -9
    killed_at = time.monotonic()
    entry = manager.get(ENDPOINT)
    assert entry.live.url == live.url and entry.candidate is not None
    orphan = entry.candidate
    assert process_of(orphan) is not None  # the candidate outlived the run that started it
    answer = _ask(live.url)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]

    result = _deploy(world, version)
    recovery = time.monotonic() - killed_at
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = result.asset_materializations_for_node(SERVED_OP)[0].metadata
    assert meta["action"].value == "switched" and meta["model_version"].value == version
    assert process_of(orphan) is None  # the left-over candidate was stopped, not leaked
    assert any(e.get("reason") == "left over from an interrupted canary" for e in manager.get(ENDPOINT).history)
    assert _ask(manager.get(ENDPOINT).live.url).status_code == 200
    report("kill -9 during canary", "live endpoint answers throughout; the orphaned candidate is recorded, "
           "and the re-run stops it, runs the canary again and switches", recovery)


def test_vllm_down_gateway_answers_502_and_redeploy_recovers(world, tmp_path: Path):
    manager = world["vllm"].manager
    live = manager.get(ENDPOINT).live
    log = RequestLog(tmp_path / "requests.jsonl")
    settings = GatewaySettings(resolver=RegistryResolver(manager.registry), request_log=log)
    with serve(build_app(settings)) as gateway:
        assert _ask(gateway).status_code == 200
        # The server's whole process group (API server and engine) dies at once.
        os.killpg(os.getpgid(live.pid), signal.SIGKILL)
        down_at = time.monotonic()
        refused = _ask(gateway)
        assert refused.status_code == 502
        assert ENDPOINT in refused.text and "unreachable" in refused.text

        result = _deploy(world, live.model_version)  # the platform's answer: the live process is gone
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        assert _ask(gateway).status_code == 200
        recovery = time.monotonic() - down_at
    statuses = [r.status for r in log.read()[0]]
    assert statuses == [200, 502, 200]  # the failed request is metered as failed, not dropped
    new_live = manager.get(ENDPOINT).live
    assert new_live.url != live.url or new_live.pid != live.pid
    report("vLLM (live server) down", "gateway answers 502 naming the endpoint and records it; re-materializing "
           "served_endpoint sees the dead process and starts the version again", recovery)
