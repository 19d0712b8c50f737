"""Real vLLM servers on the CPU with the real SmolLM2-135M-Instruct folder.

Three servers start in this module (live version 1, candidate version 2, and version 1 again by
`aiplat endpoints rollback` after the crash), plus a start that times out and a broken candidate
that crashes at start-up; they run in order and share state.
Needs the vLLM venv (scripts/setup_vllm_env.sh): skipped on a laptop without it, a failure in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import dagster as dg
import httpx
import pytest
from click.testing import CliRunner

from aiplat.serving.canary import CanaryPolicy, run_canary
from aiplat.serving.champion import FolderSource
from aiplat.serving.server import ServerStartError, process_of
from tests.chain_helpers import chain_asset, chain_for, op_name
from tests.conftest import built_vllm_env

pytestmark = pytest.mark.slow

ENDPOINT = "ticket-triage"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    env = built_vllm_env()  # looked up before the private state dir is set
    state = tmp_path_factory.mktemp("serving-state")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIPLAT_STATE_DIR", str(state))
    mp.setenv("AIPLAT_ENV", "local")
    mp.setenv("AIPLAT_TEAM", "team:platform")  # deploys are for the owner or the platform team
    from aiplat.models.base import prepare_base_model
    from aiplat.security.signing import dev_key_pair, sign_model
    from resources.mlflow import MLflowResource
    from resources.vllm import LocalVllmResource

    model = prepare_base_model(dest_root=state / "models").path
    sign_model(model, dev_key_pair())  # the asset serves only folders that verify (test_serving_signature.py)
    # Small limits so that overload is reachable with a dozen requests; eager mode starts faster.
    vllm = LocalVllmResource(enforce_eager=True, max_num_seqs=2, max_num_queued_reqs=4,
                             vllm_python=str(env.python), start_timeout_s=900, canary_concurrency=2,
                             canary_max_tokens=16)
    world = {"state": state, "model": model, "vllm": vllm, "mlflow": MLflowResource(tracking_uri="http://127.0.0.1:9")}
    try:
        yield world
    finally:
        vllm.manager.stop_all()
        mp.undo()


CHAIN = chain_for(ENDPOINT)  # the demo triage spec's generated chain
served_endpoint = chain_asset(CHAIN, "served_endpoint")
endpoint_load_test = chain_asset(CHAIN, "endpoint_load_test")


def _materialize(world, asset, config: dict) -> dg.ExecuteInProcessResult:
    from resources.operations import OperationsResource
    from resources.signing import ModelSigningResource

    @dg.asset(key=[CHAIN.spec.key_prefix, "champion"])
    def champion_model() -> None:  # stands in for the promotion asset
        return None

    return dg.materialize(
        [champion_model, served_endpoint, endpoint_load_test], selection=[asset.key],
        resources={"vllm": world["vllm"], "mlflow": world["mlflow"], "model_signing": ModelSigningResource(),
                   "operations": OperationsResource()},
        run_config={"ops": {op_name(CHAIN, asset.key.path[-1]): {"config": config}}},
    )


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict:
    mat = result.asset_materializations_for_node(key)[0]
    return {k: v.value for k, v in mat.metadata.items()}


def _ask(url: str, prompt: str = "What is the capital of France?", max_tokens: int = 12) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": ENDPOINT, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0})


def test_first_deploy_through_the_asset(world) -> None:
    result = _materialize(world, served_endpoint, {"model_folder": str(world["model"]), "model_version": "1"})
    meta = _meta(result, op_name(CHAIN, "served_endpoint"))
    assert meta["action"] == "deployed" and meta["model_version"] == "1" and meta["health"] == "ready"
    assert meta["served_model_name"] == ENDPOINT and meta["start_time"]
    live = world["vllm"].manager.get(ENDPOINT).live
    assert meta["endpoint_url"] == live.url and process_of(live) is not None
    assert Path(live.pid_file).is_file() and Path(live.log_file).is_file()
    world["v1"] = live


def test_official_openai_client_works_unchanged(world) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{world['v1'].url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [ENDPOINT]
    chat = client.chat.completions.create(model=ENDPOINT, temperature=0, max_tokens=16,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in chat.choices[0].message.content
    completion = client.completions.create(model=ENDPOINT, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens >= 1 and completion.choices[0].text.strip()


def test_overload_gets_503_and_the_server_survives(world) -> None:
    url = world["v1"].url
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: _ask(url, "Count from one to fifty.", 48).status_code, range(12)))
    # vLLM's --max-num-queued-reqs 4: the rest are refused at once with 503, nothing hangs.
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= 2
    assert _ask(url).status_code == 200


def test_start_timeout_leaves_the_live_endpoint_serving(world) -> None:
    manager = world["vllm"].manager
    manager.settings = replace(manager.settings, start_timeout_s=3)
    try:
        with pytest.raises(ServerStartError) as err:
            manager.start_candidate(ENDPOINT, FolderSource(world["model"], "9").resolve())
    finally:
        manager.settings = world["vllm"].server_settings()
    assert "timed out" in err.value.cause and str(err.value.log_file) in str(err.value)
    entry = manager.get(ENDPOINT)
    assert entry.candidate is None and entry.live == world["v1"]
    assert not list((world["state"] / "run" / "serving").glob("*-v9-*.pid"))
    assert _ask(world["v1"].url).status_code == 200


def test_broken_candidate_fails_the_canary_and_live_never_changes(world) -> None:
    broken = world["state"] / "broken-model"
    shutil.copytree(world["model"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_attention_heads"] = 7  # 576 hidden units do not split into 7 heads: vLLM exits at start
    (broken / "config.json").write_text(json.dumps(config))
    rollbacks: list[str] = []

    def rollback() -> str:
        rollbacks.append("called")
        return "champion moved back to previous"

    manager = world["vllm"].manager
    verdict = run_canary(manager, ENDPOINT, FolderSource(broken, "3").resolve(), CanaryPolicy(), rollback=rollback)
    assert not verdict.passed and verdict.action == "rolled back"
    assert "did not start" in verdict.reasons[0] and "not a multiple of the number of attention heads" in verdict.reasons[0]
    assert rollbacks == ["called"] and verdict.rollback == "champion moved back to previous"
    entry = manager.get(ENDPOINT)
    assert entry.live == world["v1"] and entry.candidate is None
    assert entry.history[-1]["event"] == "candidate discarded"
    assert _ask(world["v1"].url).status_code == 200


def test_passing_canary_switches_through_the_asset(world) -> None:
    result = _materialize(world, served_endpoint, {
        "model_folder": str(world["model"]), "model_version": "2",
        "load_sample": ["How do I reset my password?", "Is my invoice late?", "Cancel my plan."]})
    meta = _meta(result, op_name(CHAIN, "served_endpoint"))
    assert meta["action"] == "switched" and meta["model_version"] == "2" and meta["previous_version"] == "1"
    assert meta["canary_agreement"] >= 0.8 and meta["canary_candidate_error_rate"] == 0.0
    assert meta["canary_prompts"] >= 7  # 6 probes + a share of the 3-prompt load sample
    live = world["vllm"].manager.get(ENDPOINT).live
    assert live.url == meta["endpoint_url"] != world["v1"].url
    assert process_of(world["v1"]) is None  # the old server was stopped
    assert "Paris" in _ask(live.url).json()["choices"][0]["message"]["content"]
    world["v2"] = live


def test_load_test_asset_records_plottable_numbers(world) -> None:
    result = _materialize(world, endpoint_load_test, {"concurrencies": [1, 2], "num_prompts": 4, "output_len": 16})
    meta = _meta(result, op_name(CHAIN, "endpoint_load_test"))
    for c in (1, 2):
        assert meta[f"c{c}_output_tokens_per_s"] > 0 and meta[f"c{c}_requests_per_s"] > 0
        assert meta[f"c{c}_failed"] == 0.0
        assert 0 < meta[f"c{c}_ttft_p50_ms"] <= meta[f"c{c}_ttft_p99_ms"]
        assert meta[f"c{c}_ttft_p95_ms"] <= meta[f"c{c}_e2e_p95_ms"] <= meta[f"c{c}_e2e_p99_ms"]
    mat = result.asset_materializations_for_node("endpoint_load_test")[0]
    assert isinstance(mat.metadata["c2_e2e_p95_ms"], dg.FloatMetadataValue)


def test_cli_deploy_refuses_a_tampered_copy_and_audits_an_allowed_deploy(world) -> None:
    """`aiplat endpoints deploy` guards like the asset (no server starts here): a flipped byte is
    refused while v2 keeps answering, and an allowed deploy of what already serves is audited."""
    from aiplat.cli import cli
    from aiplat.security.audit_log import AuditLog

    tampered = world["state"] / "tampered-model"
    shutil.copytree(world["model"], tampered)
    shard = next(tampered.glob("*.safetensors"))
    with shard.open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x01]))
    runner = CliRunner()
    before = world["vllm"].manager.get(ENDPOINT)
    refused = runner.invoke(cli, ["endpoints", "deploy", ENDPOINT, str(tampered), "--version", "3"])
    assert refused.exit_code == 1 and f"changed since signing: {shard.name}" in refused.output
    assert world["vllm"].manager.get(ENDPOINT) == before and before.live.url == world["v2"].url
    assert "Paris" in _ask(world["v2"].url).json()["choices"][0]["message"]["content"]

    kept = runner.invoke(cli, ["endpoints", "deploy", ENDPOINT, str(world["model"]), "--version", "2"])
    assert kept.exit_code == 0 and f"{ENDPOINT}: unchanged; version 2 serves on {world['v2'].url}" in kept.output
    tail = [(e["event"], e.get("decision"), e.get("version")) for e in AuditLog().entries()][-4:]
    assert tail == [("access", "allowed", "3"), ("deploy refused: signature", None, "3"),
                    ("access", "allowed", "2"), ("deployed", None, "2")]


def test_cli_lists_and_chats_through_the_metering_gateway(world, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat import stack
    from aiplat.cli import cli
    from aiplat.net import free_port
    from aiplat.operations.requests import RequestLog

    runner = CliRunner()
    listed = runner.invoke(cli, ["endpoints", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [entry] = json.loads(listed.output)
    assert entry["name"] == ENDPOINT and entry["live"]["model_version"] == "2" and entry["live"]["health"] == "ready"
    down = runner.invoke(cli, ["chat", ENDPOINT, "hello"])
    assert down.exit_code != 0 and "aiplat stack up gateway" in down.output
    monkeypatch.setenv("AIPLAT_GATEWAY_PORT", str(free_port()))
    [started] = stack.up(["gateway"], timeout=120)
    try:
        assert started.ok, started
        chat = runner.invoke(cli, ["chat", ENDPOINT, "What is the capital of France?", "--feature", "faq-bot"])
        assert chat.exit_code == 0 and "Paris" in chat.output
        # The official client, streamed: chunks pass through and the record carries vLLM's own usage.
        import openai

        client = openai.OpenAI(base_url=f"{started.url}/v1", api_key="sk-not-logged-7f3a", max_retries=0,
                               default_headers={"X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "stream-test"})
        plain = client.chat.completions.create(model=ENDPOINT, temperature=0, max_tokens=12,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=ENDPOINT, temperature=0, max_tokens=12, stream=True,
            messages=[{"role": "user", "content": "What is the capital of France?"}]) if c.choices)
    finally:
        stack.down(["gateway"])
    assert "Paris" in streamed
    records, _ = RequestLog().read()
    cli_chat, direct, stream = records[-3:]
    assert (cli_chat.endpoint, cli_chat.model, cli_chat.team, cli_chat.feature, cli_chat.status) == (
        ENDPOINT, "2", "team:platform", "faq-bot", 200)
    assert cli_chat.prompt_tokens > 0 and cli_chat.completion_tokens > 0
    assert (direct.team, direct.feature) == ("team:ml", "stream-test")
    assert (direct.prompt_tokens, direct.completion_tokens) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert stream.prompt_tokens == direct.prompt_tokens and stream.completion_tokens >= 1
    assert "sk-not-logged-7f3a" not in RequestLog().path.read_text()


def test_a_crashed_server_shows_as_down(world) -> None:
    from aiplat.cli import cli

    live = world["v2"]
    os.killpg(live.pid, signal.SIGKILL)  # the crash: the real process killed from outside
    deadline = time.monotonic() + 30
    while process_of(live) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert world["vllm"].manager.refresh(ENDPOINT).live.health == "down"
    listed = CliRunner().invoke(cli, ["endpoints", "list"])
    assert "down" in listed.output


def test_cli_rollback_after_the_crash_verifies_and_restarts_version_1(world) -> None:
    """The one server this module starts through the CLI: rollback to the version served before the
    last switch, after its folder verified; the decision and the result are in the audit log."""
    from aiplat.cli import cli
    from aiplat.security.audit_log import AuditLog
    from aiplat.stack import vllm_env

    # The CLI's LocalVllmResource looks for the vLLM venv under the (private) state dir.
    (world["state"] / "venvs").mkdir(exist_ok=True)
    (world["state"] / "venvs" / "vllm").symlink_to(Path(world["vllm"].vllm_python).parent.parent)
    assert vllm_env().ready
    result = CliRunner().invoke(cli, ["endpoints", "rollback", ENDPOINT])
    assert result.exit_code == 0, result.output
    live = world["vllm"].manager.get(ENDPOINT).live
    assert live.model_version == "1" and live.url != world["v2"].url
    assert process_of(live) is not None and _ask(live.url).json()["choices"][0]["message"]["content"]
    tail = [(e["event"], e.get("action") or e.get("from_version"), e.get("version")) for e in AuditLog().entries()][-2:]
    assert tail == [("access", "rollback", "1"), ("endpoint rolled back", "2", "1")]
