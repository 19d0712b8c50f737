"""Real vLLM servers on the CPU with the real SmolLM2-135M-Instruct folder.

Every test asks for what it needs through fixtures, so each passes alone and in any order: the
module's first deploy happens once (`first_deploy`), and `live` hands each test a healthy live
server, bringing version 1 back up when an earlier test left the endpoint crashed. Run in file
order, the module starts three servers (version 1, the canary's version 2, and version 1 again
by `aiplat endpoints rollback` after the crash), plus a start that times out and a broken
candidate that crashes at start-up.
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
from tests.approval_helpers import approval, approve
from aiplat.serving.server import ServerStartError, process_of
from tests.chain_helpers import chain_asset, chain_for, op_name
from tests.conftest import built_vllm_env, copy_model

pytestmark = pytest.mark.slow

ENDPOINT = "ticket-triage"


@pytest.fixture(scope="module")
def world(tmp_path_factory, smollm_base: Path):
    env = built_vllm_env()  # looked up before the private state dir is set
    state = tmp_path_factory.mktemp("serving-state")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIPLAT_STATE_DIR", str(state))
    mp.setenv("AIPLAT_ENV", "local")
    # The CLI commands below act as a platform operator (a real account in this state folder);
    # AIPLAT_TEAM only labels `aiplat chat` requests.
    from tests.identity_helpers import token_for

    mp.setenv("AIPLAT_TOKEN", token_for("team:platform", "operator"))
    mp.setenv("AIPLAT_TEAM", "team:platform")
    # What a Dagster step process carries after Feast's import: a Prometheus multiprocess folder
    # that is gone. Servers the platform starts must not inherit it (their /metrics would answer 400).
    mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(state / "gone-prometheus-dir"))
    from aiplat.security.signing import dev_key_pair, sign_model
    from resources.mlflow import MLflowResource
    from resources.vllm import LocalVllmResource

    model = copy_model(smollm_base, state / "model")
    sign_model(model, dev_key_pair())  # the asset serves only folders that verify (test_serving_signature.py)
    # Small limits so that overload is reachable with a dozen requests; eager mode starts faster.
    # The canary's latency rule gets wide slack here: two servers on a loaded 2-core box differ
    # in p95 by chance. The rule itself is tested on fixed latencies in test_serving.py.
    # float32: greedy answers then match the fp32 reference (bf16 CPU decoding of this converted
    # model drifts on "What is the capital of France?", so the factual check below would test numerics).
    vllm = LocalVllmResource(enforce_eager=True, dtype="float32", max_num_seqs=2, max_num_queued_reqs=4,
                             vllm_python=str(env.python), start_timeout_s=900, canary_concurrency=2,
                             canary_max_tokens=16, canary_max_p95_ratio=20.0, canary_p95_slack_ms=60_000)
    world = {"state": state, "model": model, "vllm": vllm, "mlflow": MLflowResource(tracking_uri="http://127.0.0.1:9")}
    try:
        yield world
    finally:
        vllm.manager.stop_all()
        mp.undo()


CHAIN = chain_for(ENDPOINT)  # the demo triage spec's generated chain
served_endpoint = chain_asset(CHAIN, "served_endpoint")
endpoint_load_test = chain_asset(CHAIN, "endpoint_load_test")


@pytest.fixture(scope="module")
def first_deploy(world):
    """The endpoint's first deploy, through the asset (once per module, before any other test)."""
    result = _materialize(world, served_endpoint, {"model_folder": str(world["model"]), "model_version": "1",
                                                   "attestation_file": _approved(world, "1")})
    return _meta(result, op_name(CHAIN, "served_endpoint")), world["vllm"].manager.get(ENDPOINT).live


@pytest.fixture
def live(world, first_deploy):
    """A healthy live server of the endpoint, whichever version an earlier test left serving;
    version 1 again (direct deploy) when the endpoint was left crashed."""
    manager = world["vllm"].manager
    entry = manager.refresh(ENDPOINT)
    process = process_of(entry.live) if entry.live is not None else None
    # A server `aiplat endpoints rollback` started has the CLI's default limits, not this module's.
    limits = ["--max-num-queued-reqs", str(world["vllm"].max_num_queued_reqs)]
    cmdline = " ".join(process.cmdline()) if process is not None else ""
    if entry.live is None or entry.live.health != "ready" or process is None or " ".join(limits) not in cmdline:
        entry = manager.deploy(ENDPOINT, FolderSource(world["model"], "1", ENDPOINT,
                                                      approval(world["model"], ENDPOINT, "1")).resolve())
    return entry.live


def _approved(world, version: str) -> str:
    """The model folder approved as `version`, as a promotion would (tests/approval_helpers.py):
    the asset and the CLI serve only approved bytes (tests/test_security_approval.py)."""
    return str(approve(world["model"], ENDPOINT, version, world["state"] / "approvals" / f"v{version}.json"))


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


def test_first_deploy_through_the_asset(first_deploy) -> None:
    meta, live = first_deploy
    assert meta["action"] == "deployed" and meta["model_version"] == "1" and meta["health"] == "ready"
    assert meta["served_model_name"] == ENDPOINT and meta["start_time"]
    assert meta["endpoint_url"] == live.url
    assert Path(live.log_file).is_file()
    # Its pid file lives as long as its process (a later test may have switched away from it).
    assert Path(live.pid_file).is_file() or process_of(live) is None


def test_servers_get_an_explicit_environment_and_metrics_answer(live) -> None:
    """The parent's PROMETHEUS_MULTIPROC_DIR points at a missing folder (as after Feast's import in a
    Dagster step); the server did not inherit it, so /metrics answers."""
    response = httpx.get(f"{live.url}/metrics", timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert "vllm:" in response.text
    environ = __import__("psutil").Process(live.pid).environ()
    assert "PROMETHEUS_MULTIPROC_DIR" not in environ and environ["HF_HUB_OFFLINE"] == "1"


def test_official_openai_client_works_unchanged(live) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [ENDPOINT]
    chat = client.chat.completions.create(model=ENDPOINT, temperature=0, max_tokens=16,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in chat.choices[0].message.content
    completion = client.completions.create(model=ENDPOINT, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens >= 1 and completion.choices[0].text.strip()


def test_overload_gets_503_and_the_server_survives(live) -> None:
    url = live.url
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: _ask(url, "Count from one to fifty.", 48).status_code, range(12)))
    # vLLM's --max-num-queued-reqs 4: the rest are refused at once with 503, nothing hangs.
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= 2
    assert _ask(url).status_code == 200


def test_start_timeout_leaves_the_live_endpoint_serving(world, live) -> None:
    manager = world["vllm"].manager
    manager.settings = replace(manager.settings, start_timeout_s=3)
    try:
        with pytest.raises(ServerStartError) as err:
            manager.start_candidate(ENDPOINT, FolderSource(world["model"], "9").resolve())
    finally:
        manager.settings = world["vllm"].server_settings()
    assert "timed out" in err.value.cause and str(err.value.log_file) in str(err.value)
    entry = manager.get(ENDPOINT)
    assert entry.candidate is None and entry.live == live
    assert not list((world["state"] / "run" / "serving").glob("*-v9-*.pid"))
    assert _ask(live.url).status_code == 200


def test_broken_candidate_fails_the_canary_and_live_never_changes(world, live, tmp_path) -> None:
    broken = tmp_path / "broken-model"
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
    assert entry.live == live and entry.candidate is None
    assert entry.history[-1]["event"] == "candidate discarded"
    assert _ask(live.url).status_code == 200


def test_passing_canary_switches_through_the_asset(world, live) -> None:
    new = str(int(live.model_version) + 1)
    result = _materialize(world, served_endpoint, {
        "model_folder": str(world["model"]), "model_version": new, "attestation_file": _approved(world, new),
        "load_sample": ["How do I reset my password?", "Is my invoice late?", "Cancel my plan."]})
    meta = _meta(result, op_name(CHAIN, "served_endpoint"))
    assert meta["action"] == "switched" and meta["model_version"] == new and meta["previous_version"] == live.model_version
    assert meta["canary_agreement"] >= 0.8 and meta["canary_candidate_error_rate"] == 0.0
    assert meta["canary_prompts"] >= 7  # 6 probes + a share of the 3-prompt load sample
    now = world["vllm"].manager.get(ENDPOINT).live
    assert now.url == meta["endpoint_url"] != live.url
    assert process_of(live) is None  # the old server was stopped
    assert "Paris" in _ask(now.url).json()["choices"][0]["message"]["content"]


def test_load_test_asset_records_plottable_numbers(world, live) -> None:
    result = _materialize(world, endpoint_load_test, {"concurrencies": [1, 2], "num_prompts": 4, "output_len": 16})
    meta = _meta(result, op_name(CHAIN, "endpoint_load_test"))
    for c in (1, 2):
        assert meta[f"c{c}_output_tokens_per_s"] > 0 and meta[f"c{c}_requests_per_s"] > 0
        assert meta[f"c{c}_failed"] == 0.0
        assert 0 < meta[f"c{c}_ttft_p50_ms"] <= meta[f"c{c}_ttft_p99_ms"]
        assert meta[f"c{c}_ttft_p95_ms"] <= meta[f"c{c}_e2e_p95_ms"] <= meta[f"c{c}_e2e_p99_ms"]
    mat = result.asset_materializations_for_node(op_name(CHAIN, "endpoint_load_test"))[0]
    assert isinstance(mat.metadata["c2_e2e_p95_ms"], dg.FloatMetadataValue)


def test_cli_deploy_refuses_a_tampered_copy_and_audits_an_allowed_deploy(world, live, tmp_path) -> None:
    """`aiplat endpoints deploy` guards like the asset (no server starts here): a flipped byte is
    refused while the live version keeps answering, and an allowed deploy of what already serves
    is audited."""
    from aiplat.cli import cli
    from aiplat.security.audit_log import AuditLog

    tampered = tmp_path / "tampered-model"
    shutil.copytree(world["model"], tampered)
    shard = next(tampered.glob("*.safetensors"))
    with shard.open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x01]))
    runner = CliRunner()
    before = world["vllm"].manager.get(ENDPOINT)
    other = str(int(live.model_version) + 40)
    refused = runner.invoke(cli, ["endpoints", "deploy", ENDPOINT, str(tampered), "--version", other,
                                  "--attestation-file", _approved(world, other)])
    assert refused.exit_code == 1 and f"changed since signing: {shard.name}" in refused.output
    assert world["vllm"].manager.get(ENDPOINT) == before and before.live.url == live.url
    assert "Paris" in _ask(live.url).json()["choices"][0]["message"]["content"]

    version = live.model_version
    kept = runner.invoke(cli, ["endpoints", "deploy", ENDPOINT, str(world["model"]), "--version", version,
                               "--attestation-file", _approved(world, version)])
    assert kept.exit_code == 0 and f"{ENDPOINT}: unchanged; version {version} serves on {live.url}" in kept.output
    tail = [(e["event"], e.get("decision"), e.get("version")) for e in AuditLog().entries()][-4:]
    assert tail == [("access", "allowed", other), ("deploy refused: signature", None, other),
                    ("access", "allowed", version), ("deployed", None, version)]


def test_cli_lists_and_chats_through_the_metering_gateway(world, live, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat import stack
    from aiplat.cli import cli
    from aiplat.net import free_port
    from aiplat.operations.requests import RequestLog

    runner = CliRunner()
    listed = runner.invoke(cli, ["endpoints", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [entry] = json.loads(listed.output)
    assert entry["name"] == ENDPOINT and entry["live"]["model_version"] == live.model_version
    assert entry["live"]["health"] == "ready"
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
        ENDPOINT, live.model_version, "team:platform", "faq-bot", 200)
    assert cli_chat.prompt_tokens > 0 and cli_chat.completion_tokens > 0
    assert (direct.team, direct.feature) == ("team:ml", "stream-test")
    assert (direct.prompt_tokens, direct.completion_tokens) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert stream.prompt_tokens == direct.prompt_tokens and stream.completion_tokens >= 1
    assert "sk-not-logged-7f3a" not in RequestLog().path.read_text()


def test_a_crash_shows_as_down_and_cli_rollback_restarts_the_previous_version(world, live) -> None:
    """The crash (the real process killed from outside) shows as down; then `aiplat endpoints
    rollback` serves the version served before the last switch, after its folder verified; the
    decision and the result are in the audit log."""
    from aiplat.cli import cli
    from aiplat.security.audit_log import AuditLog
    from aiplat.stack import vllm_env

    manager = world["vllm"].manager
    if not any(e.get("event") == "switched" and e.get("previous_version") for e in manager.get(ENDPOINT).history):
        # Run alone: nothing was switched yet, so make the one switch a rollback needs.
        new = str(int(live.model_version) + 1)
        live = manager.deploy(ENDPOINT, FolderSource(world["model"], new, ENDPOINT,
                                                     approval(world["model"], ENDPOINT, new)).resolve()).live
    previous = manager.previous_model(ENDPOINT).version

    os.killpg(live.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while process_of(live) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert manager.refresh(ENDPOINT).live.health == "down"
    assert "down" in CliRunner().invoke(cli, ["endpoints", "list"]).output

    # The CLI's LocalVllmResource looks for the vLLM venv under the (private) state dir.
    link = world["state"] / "venvs" / "vllm"
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(Path(world["vllm"].vllm_python).parent.parent)
    assert vllm_env().ready
    result = CliRunner().invoke(cli, ["endpoints", "rollback", ENDPOINT])
    assert result.exit_code == 0, result.output
    back = manager.get(ENDPOINT).live
    assert back.model_version == previous and back.url != live.url
    assert process_of(back) is not None and _ask(back.url).json()["choices"][0]["message"]["content"]
    tail = [(e["event"], e.get("action") or e.get("from_version"), e.get("version")) for e in AuditLog().entries()][-2:]
    assert tail == [("access", "rollback", previous), ("endpoint rolled back", live.model_version, previous)]
