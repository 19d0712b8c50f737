"""LoRA adapters on one real vLLM CPU server (issue 14): loaded at run time, each verified first.

The server runs the real SmolLM2-135M base with `--enable-lora`. The adapters are real PEFT LoRA
adapters of that base, saved as safetensors; their weights are random (not trained) so that each
one changes the model's answers a lot: what is under test is which adapter the server applies,
not what an adapter learned.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from aiplat.security.approval import ApprovalError
from aiplat.security.signing import SignatureError, dev_key_pair, sign_model
from aiplat.serving import adapters
from aiplat.serving.server import LoraSettings, ServerSettings, post_json, start_server, stop_server
from tests.approval_helpers import approval, serving_keys
from tests import adapter_helpers
from tests.adapter_helpers import register_adapter
from tests.conftest import built_vllm_env

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"  # the platform base model specs name (aiplat.specs.model.BASE_MODELS)
LORA = LoraSettings(max_loras=2, max_cpu_loras=4, max_lora_rank=8)
PROMPT = "The capital of France is"


def make_adapter(base: Path, dest: Path, seed: int, rank: int = 8) -> Path:
    """A PEFT LoRA adapter of `base` with random weights (seeded), in safetensors, not yet signed."""
    return adapter_helpers.make_adapter(base, dest, seed, rank, sign=False)


def signed(folder: Path) -> Path:
    sign_model(folder, dev_key_pair())
    return folder


@contextmanager
def model_store() -> Iterator[tuple[dict, object]]:
    """An S3 model store (a moto server): the environment a sidecar needs, and a boto3 client."""
    import boto3
    from moto.server import ThreadedMotoServer

    from aiplat.net import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    try:
        aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="models")
        yield aws, s3
    finally:
        moto.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm_base: Path) -> Iterator[dict]:
    env = built_vllm_env()
    root = tmp_path_factory.mktemp("adapters")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIPLAT_STATE_DIR", str(root / "state"))
        mp.setenv("AIPLAT_ENV", "local")
        made = {name: signed(make_adapter(smollm_base, root / name, seed))
                for name, seed in (("a-v1", 1), ("b-v1", 2), ("a-v2", 3), ("b-v2", 5))}
        record = start_server("adapters", smollm_base, "base", BASE,
                              ServerSettings(enforce_eager=True, dtype="float32", python=str(env.python),
                                             start_timeout_s=900, lora=LORA))
        try:
            yield {"url": record.url, "record": record, "root": root, "adapters": made}
        finally:
            stop_server(record)


def _load(server: dict, folder: Path, model: str, version: str, attestation: str | None = "approve"):
    text = approval(folder, model, version) if attestation == "approve" else attestation
    return adapters.load_adapter(server["url"], BASE, folder, model=model, version=version, attestation=text,
                                 keys=serving_keys(), max_rank=LORA.max_lora_rank)


def _answer(server: dict, model: str) -> str:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    return post_json(f"{server['url']}/v1/completions", body, timeout=120)["choices"][0]["text"]


def _loaded(server: dict, model: str, version: str) -> str:
    name = adapters.adapter_name(model, version)
    if name not in adapters.served_models(server["url"]):
        _load(server, server["adapters"][f"{model[-1]}-v{version}"], model, version)
    return name


def test_two_adapters_answer_differently_beside_the_base(server: dict) -> None:
    a, b = _loaded(server, "lora-a", "1"), _loaded(server, "lora-b", "1")
    listed = adapters.served_models(server["url"])
    assert listed[BASE] is None and listed[a] == BASE and listed[b] == BASE
    answers = {name: _answer(server, name) for name in (BASE, a, b)}
    assert len(set(answers.values())) == 3, answers
    assert _answer(server, a) == answers[a]  # the same adapter, the same answer (temperature 0)


def test_a_tampered_adapter_is_refused_before_vllm_is_asked_and_the_others_keep_serving(server: dict) -> None:
    a = _loaded(server, "lora-a", "1")
    before = _answer(server, a)
    tampered = shutil.copytree(server["adapters"]["a-v1"], server["root"] / "tampered")
    text = approval(tampered, "lora-t", "1")  # approved as built ...
    weights = tampered / adapters.ADAPTER_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # ... then one byte changed on the way to the server
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        _load(server, tampered, "lora-t", "1", attestation=text)
    assert "lora-t@1" not in adapters.served_models(server["url"])
    assert _answer(server, a) == before


def test_an_adapter_without_an_approval_for_that_version_is_refused(server: dict) -> None:
    folder = server["adapters"]["b-v1"]
    with pytest.raises(ApprovalError):
        _load(server, folder, "lora-b", "7", attestation=None)
    with pytest.raises(ApprovalError):  # approved as version 1, presented as 7
        _load(server, folder, "lora-b", "7", attestation=approval(folder, "lora-b", "1"))
    assert "lora-b@7" not in adapters.served_models(server["url"])


def test_a_new_version_is_served_beside_the_old_without_a_restart(server: dict) -> None:
    v1 = _loaded(server, "lora-a", "1")
    adapters.unload_adapter(server["url"], "lora-a@2", missing_ok=True)  # another test may have loaded it
    loaded = _load(server, server["adapters"]["a-v2"], "lora-a", "2")
    assert loaded.name == "lora-a@2" and loaded.parent == BASE and loaded.model_digest
    assert _answer(server, "lora-a@2") != _answer(server, v1)
    adapters.unload_adapter(server["url"], "lora-a@2")
    assert "lora-a@2" not in adapters.served_models(server["url"]) and v1 in adapters.served_models(server["url"])
    with pytest.raises(adapters.AdapterError, match="refused to unload"):
        adapters.unload_adapter(server["url"], "lora-a@2")
    from aiplat.serving.server import process_of

    assert process_of(server["record"]) is not None  # the same server process all along


def test_an_adapter_above_the_servers_rank_or_not_an_adapter_is_refused_by_name(server: dict, smollm_base) -> None:
    wide = signed(make_adapter(smollm_base, server["root"] / "wide", seed=4, rank=16))
    with pytest.raises(adapters.AdapterError, match="rank 16 is above the server's --max-lora-rank 8"):
        _load(server, wide, "lora-wide", "1")
    with pytest.raises(adapters.AdapterError, match="not a LoRA adapter folder"):
        _load(server, smollm_base, "lora-base", "1", attestation=None)


def test_a_canary_through_the_gateway_switches_one_model_and_rolls_back_another(server: dict, tmp_path: Path) -> None:
    """Two models on one server behind the real gateway: lora-a's canary passes and switches,
    lora-b's candidate vanishes from the server mid-canary (a real fault: vLLM answers 404 for it),
    fails on its error rate and is rolled back; neither touches the other's route, and every figure
    comes from the gateway's request log."""
    import random
    from datetime import datetime, timezone

    import httpx

    from aiplat.operations.requests import RequestLog
    from aiplat.serving import adapter_canary
    from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
    from aiplat.serving.gateway import GatewaySettings, build_app
    from tests.test_gateway import serve

    url = server["url"]
    a1, b1 = _loaded(server, "lora-a", "1"), _loaded(server, "lora-b", "1")
    a2 = adapters.adapter_name("lora-a", "2")
    if a2 not in adapters.served_models(url):
        _load(server, server["adapters"]["a-v2"], "lora-a", "2")
    b2 = _load(server, server["adapters"]["b-v2"], "lora-b", "2").name
    routes, log = AdapterRoutes(tmp_path / "routes.json"), RequestLog(tmp_path / "requests.jsonl", fsync=False)
    policy = adapter_canary.AdapterCanaryPolicy(weight=50, min_requests=3, max_error_rate=0.0, max_p95_ratio=5.0)
    adapter_canary.start(routes, "lora-a", url, a1, a2, policy)
    adapter_canary.start(routes, "lora-b", url, b1, b2, policy)
    adapters.unload_adapter(url, b2)  # the fault: lora-b's candidate is gone from the server
    since = datetime.now(timezone.utc)
    settings = GatewaySettings(resolver=AdapterRouteResolver(routes, rng=random.Random(11)), request_log=log)

    def ask(gateway: str, endpoint: str) -> httpx.Response:
        return httpx.post(f"{gateway}/v1/completions", timeout=120, headers={"X-AIPLAT-Team": "team:ml"},
                          json={"model": endpoint, "prompt": PROMPT, "max_tokens": 4, "temperature": 0})

    with serve(build_app(settings)) as gateway:
        verdicts = {}
        for _ in range(30):  # a deadline in requests: at 50% each candidate needs ~6
            for endpoint, live, candidate in (("lora-a", a1, a2), ("lora-b", b1, b2)):
                if endpoint not in verdicts:
                    ask(gateway, endpoint)
                    verdict = adapter_canary.judge(log.read()[0], endpoint, live, candidate, policy, since)
                    if verdict.passed is not None:
                        verdicts[endpoint] = verdict
            if len(verdicts) == 2:
                break
        assert verdicts["lora-a"].passed is True, verdicts["lora-a"].summary()
        assert verdicts["lora-b"].passed is False and "error rate" in verdicts["lora-b"].reasons[0]
        figures = verdicts["lora-a"].figures
        assert figures[a1].completion_tokens > 0 and figures[a2].completion_tokens > 0

        unload = lambda name: adapters.unload_adapter(url, name, missing_ok=True)  # noqa: E731
        assert dict(adapter_canary.finish(routes, verdicts["lora-a"], unload).split) == {a2: 100.0}
        assert dict(adapter_canary.finish(routes, verdicts["lora-b"], unload).split) == {b1: 100.0}
        # After both: every request to either endpoint is answered, by the version its route names.
        since = datetime.now(timezone.utc)
        for endpoint in ("lora-a", "lora-b") * 3:
            assert ask(gateway, endpoint).status_code == 200
        served = {(r.endpoint, r.model) for r in log.read()[0] if r.timestamp >= since}
        assert served == {("lora-a", a2), ("lora-b", b1)}
    assert a1 in adapters.served_models(url)  # the old live version stays loaded: the rollback target


def test_reconcile_applies_the_wanted_adapters_and_skips_a_tampered_one(server: dict, tmp_path: Path) -> None:
    """The desired state of a shared server (what the prod loader sidecar applies every interval):
    missing versions are fetched, verified and loaded, unwanted ones unloaded; a tampered one is
    refused by name while the rest are served."""
    url = server["url"]
    for name in list(adapters.served_models(url)):
        if name != BASE:
            adapters.unload_adapter(url, name)
    tampered = shutil.copytree(server["adapters"]["b-v2"], tmp_path / "b-v2-tampered")
    text = approval(tampered, "lora-b", "2")
    weights = tampered / adapters.ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")

    def wanted(model: str, version: str, folder: Path, attestation: str | None = None) -> adapters.WantedAdapter:
        return adapters.WantedAdapter(model, version, str(folder), attestation or approval(folder, model, version))

    first = adapters.reconcile(url, BASE, [wanted("lora-a", "1", server["adapters"]["a-v1"]),
                                           wanted("lora-b", "1", server["adapters"]["b-v1"])],
                               adapters.local_fetch, serving_keys(), max_rank=LORA.max_lora_rank)
    assert set(first.loaded) == {"lora-a@1", "lora-b@1"} and first.refused == {}
    second = adapters.reconcile(url, BASE, [wanted("lora-a", "2", server["adapters"]["a-v2"]),
                                            wanted("lora-b", "1", server["adapters"]["b-v1"]),
                                            wanted("lora-b", "2", tampered, text)],
                                adapters.local_fetch, serving_keys(), max_rank=LORA.max_lora_rank)
    assert second.loaded == ("lora-a@2",) and second.unloaded == ("lora-a@1",) and second.kept == ("lora-b@1",)
    assert list(second.refused) == ["lora-b@2"] and second.refused["lora-b@2"].startswith("signature:")
    assert {n for n, p in adapters.served_models(url).items() if p} == {"lora-a@2", "lora-b@1"}
    assert _answer(server, "lora-b@1")
    again = adapters.reconcile(url, BASE, [wanted("lora-a", "2", server["adapters"]["a-v2"]),
                                           wanted("lora-b", "1", server["adapters"]["b-v1"])],
                               adapters.local_fetch, serving_keys(), max_rank=LORA.max_lora_rank)
    assert (again.loaded, again.unloaded, again.refused) == ((), (), {})


def test_the_loader_sidecar_pulls_from_the_model_store_and_applies_the_desired_adapters(server: dict,
                                                                                         smollm_base: Path,
                                                                                         tmp_path: Path) -> None:
    """`python -m aiplat.serving.adapter_loader --once`, the Kubernetes sidecar's command, against the
    real server and an S3 model store (a moto server): it fetches each wanted version, verifies and
    loads it; a version whose approval does not match, and a signed and approved one trained on another
    base model, are refused by name and the exit code says so. On its next pass it verifies what it
    loaded again: an adapter whose cached folder was changed after the load is unloaded."""
    import json
    import subprocess
    import sys

    from aiplat.models.manifest import BASE_FIELD, write_manifest
    from aiplat.security.approval import dev_approval_key_pair
    from aiplat.serving.adapter_loader import cached_folder

    # Signed and approved, but its signed manifest names another base model's hash.
    other = make_adapter(smollm_base, tmp_path / "c-v1", seed=7)
    write_manifest(other, extra={BASE_FIELD: "0" * 64})
    signed(other)
    with model_store() as (aws, s3):
        for name, folder in (("a-v1", server["adapters"]["a-v1"]), ("b-v1", server["adapters"]["b-v1"]), ("c-v1", other)):
            for f in folder.iterdir():
                s3.upload_file(str(f), "models", f"adapters/{name}/{f.name}")
        desired = {"adapters": [
            {"model": "lora-a", "version": "1", "source": "s3://models/adapters/a-v1/",
             "attestation": approval(server["adapters"]["a-v1"], "lora-a", "1")},
            # b-v1's bytes presented with a-v1's approval: refused, the rest still applied.
            {"model": "lora-b", "version": "1", "source": "s3://models/adapters/b-v1/",
             "attestation": approval(server["adapters"]["a-v1"], "lora-b", "1")},
            {"model": "lora-c", "version": "1", "source": "s3://models/adapters/c-v1/",
             "attestation": approval(other, "lora-c", "1")},
        ]}
        (tmp_path / "desired.json").write_text(json.dumps(desired))
        for name in [n for n, p in adapters.served_models(server["url"]).items() if p]:
            adapters.unload_adapter(server["url"], name)
        keys = serving_keys()

        def loader_once() -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "aiplat.serving.adapter_loader", "--desired", str(tmp_path / "desired.json"),
                 "--base-name", BASE, "--base-folder", str(smollm_base), "--url", server["url"],
                 "--cache", str(tmp_path / "cache"), "--public-key", str(keys.signature),
                 "--approval-key", str(dev_approval_key_pair().public_key), "--max-rank", "8", "--once"],
                env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), **aws},
                capture_output=True, text=True, timeout=300)

        done = loader_once()
        assert done.returncode == 1, done.stderr
        assert "loaded lora-a@1" in done.stderr and "refused lora-b@1: approval" in done.stderr
        assert re.search(r"refused lora-c@1: .*trained on base model 000000000000, but this server's", done.stderr), done.stderr
        assert {n for n, p in adapters.served_models(server["url"]).items() if p} == {"lora-a@1"}
        assert _answer(server, "lora-a@1")

        # The cached copy vLLM would read again after an eviction is changed: the next pass unloads it.
        cached = cached_folder(tmp_path / "cache", "s3://models/adapters/a-v1/")
        weights = cached / adapters.ADAPTER_WEIGHTS
        weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
        again = loader_once()
        assert "refused lora-a@1: unloaded, its folder changed after the load" in again.stderr, again.stderr
        assert "lora-a@1" not in adapters.served_models(server["url"])
        # ... and the pass after fetches the store's copy again, verifies and loads it.
        third = loader_once()
        assert "loaded lora-a@1" in third.stderr, third.stderr
        assert _answer(server, "lora-a@1")


# --- the ServingBackend and the control sequence over it (issue 14 items 3 and 5) ------------------------


def _backend(server: dict, smollm_base: Path, tmp_path: Path):
    """A LocalServingBackend that finds this module's server already running for BASE (so it starts
    none), its routes in a file of its own."""
    from aiplat.serving.adapter_routes import AdapterRoutes
    from aiplat.serving.backend import LocalServingBackend
    from aiplat.serving.registry import EndpointRecord, EndpointRegistry

    registry = tmp_path / "base-servers.json"
    EndpointRegistry(registry).update(BASE, lambda _: EndpointRecord(BASE, server["record"]))
    return LocalServingBackend(ServerSettings(lora=LORA), serving_keys(), {BASE: smollm_base},
                               registry_path=registry, routes=AdapterRoutes(tmp_path / "routes.json"))


def _version(server: dict, model: str, version: str, folder: Path | None = None, attestation: str | None = None):
    from aiplat.serving.backend import AdapterVersion

    folder = folder or server["adapters"][f"{model[-1]}-v{version}"]
    text = attestation if attestation is not None else approval(folder, model, version)
    return AdapterVersion(model, version, BASE, str(folder), text)


def _caller(monkeypatch: pytest.MonkeyPatch, team: str):
    from aiplat.security.access import current_identity
    from aiplat.security.audit_log import AuditLog
    from aiplat.serving.control import Caller
    from tests.identity_helpers import act_as

    act_as(monkeypatch, team)
    return Caller(current_identity(), AuditLog(), {"lora-a": "team:ml", "lora-b": "team:support"})


def test_the_control_sequence_refuses_another_team_and_a_tampered_adapter_and_audits_each(
        server: dict, smollm_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """authorize -> verify -> act -> audit over the backend: support may not deploy ml's model; a
    tampered adapter is refused before the server is asked; lora-b keeps answering throughout."""
    from aiplat.security.access import AccessDenied
    from aiplat.serving.adapter_rollout import deploy_adapter, stop_endpoint

    backend = _backend(server, smollm_base, tmp_path)
    support = _caller(monkeypatch, "team:support")
    b1 = deploy_adapter(support, backend, "lora-b", _version(server, "lora-b", "1"), serving_keys())
    assert b1.action in ("deployed", "unchanged") and backend.live_state("lora-b").health == "ready"
    before = _answer(server, b1.live)

    with pytest.raises(AccessDenied):
        deploy_adapter(support, backend, "lora-a", _version(server, "lora-a", "1"), serving_keys())
    assert backend.live_state("lora-a") is None

    ml = _caller(monkeypatch, "team:ml")
    tampered = shutil.copytree(server["adapters"]["a-v2"], tmp_path / "a-v2-tampered")
    text = approval(tampered, "lora-a", "9")  # a version no other test loads
    weights = tampered / adapters.ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-2] + b"\x00\x00")
    with pytest.raises(SignatureError):
        deploy_adapter(ml, backend, "lora-a", _version(server, "lora-a", "9", tampered, text), serving_keys())
    assert "lora-a@9" not in adapters.served_models(server["url"]) and backend.live_state("lora-a") is None

    a1 = deploy_adapter(ml, backend, "lora-a", _version(server, "lora-a", "1"), serving_keys())
    state = backend.live_state("lora-a")
    assert (a1.live, state.live, state.health, state.split) == ("lora-a@1", "lora-a@1", "ready", {"lora-a@1": 100.0})
    assert _answer(server, b1.live) == before

    events = [(e["event"], e.get("action"), e.get("decision"), e.get("team")) for e in ml.audit.entries()][-8:]
    assert ("access", "deploy", "refused", "team:support") in events
    assert ("deploy refused: signature", None, None, "team:ml") in events
    assert events[-1][0] == "deployed"

    # Stop: lora-a's route gone and its adapter unloaded; lora-b untouched.
    stopped = stop_endpoint(ml, backend, "lora-a", "lora-a")
    assert stopped.live == "lora-a@1" and backend.live_state("lora-a") is None
    assert "lora-a@1" not in adapters.served_models(server["url"]) and _answer(server, b1.live) == before


def test_adapter_canaries_through_the_gateway_switch_one_model_and_roll_back_another(
        server: dict, smollm_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """roll_out_adapter over the backend behind the real gateway: lora-a's version 2 passes its canary
    and takes 100%; lora-b's version 2 is taken off the server by a fault injected at its first canary
    request (vLLM then answers 404 for it), fails on its error rate, is unloaded, and version 1 serves
    lora-b at 100% again. Each canary touches only its own endpoint's route."""
    import random

    import httpx

    from aiplat.operations.requests import RequestLog
    from aiplat.serving.adapter_canary import AdapterCanaryPolicy
    from aiplat.serving.adapter_routes import AdapterRouteResolver
    from aiplat.serving.adapter_rollout import AdapterRolloutFailed, CanaryTraffic, deploy_adapter
    from aiplat.serving.gateway import GatewaySettings, build_app
    from tests.test_gateway import serve

    backend = _backend(server, smollm_base, tmp_path)
    platform = _caller(monkeypatch, "team:platform")
    for model in ("lora-a", "lora-b"):
        deploy_adapter(platform, backend, model, _version(server, model, "1"), serving_keys())
    log = RequestLog(tmp_path / "requests.jsonl", fsync=False)
    settings = GatewaySettings(resolver=AdapterRouteResolver(backend.routes, rng=random.Random(5)), request_log=log)
    policy = AdapterCanaryPolicy(weight=50, min_requests=3, max_error_rate=0.0, max_p95_ratio=5.0)

    with serve(build_app(settings)) as gateway:
        def send(endpoint: str) -> int:
            return httpx.post(f"{gateway}/v1/completions", timeout=120, headers={"X-AIPLAT-Team": "team:ml"},
                              json={"model": endpoint, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}).status_code

        traffic = CanaryTraffic(send, lambda: log.read()[0], max_requests=40)
        switched = deploy_adapter(platform, backend, "lora-a", _version(server, "lora-a", "2"), serving_keys(),
                                  policy, traffic)
        assert (switched.action, switched.live, switched.previous) == ("switched", "lora-a@2", "lora-a@1")
        assert switched.verdict.figures["lora-a@2"].completion_tokens > 0

        def faulty(endpoint: str) -> int:
            adapters.unload_adapter(server["url"], "lora-b@2", missing_ok=True)  # the fault, mid-canary
            return send(endpoint)

        with pytest.raises(AdapterRolloutFailed, match="error rate") as failed:
            deploy_adapter(platform, backend, "lora-b", _version(server, "lora-b", "2"), serving_keys(), policy,
                           CanaryTraffic(faulty, lambda: log.read()[0], max_requests=40))
        assert failed.value.verdict.passed is False
        assert backend.live_state("lora-a").split == {"lora-a@2": 100.0}
        assert backend.live_state("lora-b").split == {"lora-b@1": 100.0}
        assert backend.live_state("lora-b").health == "ready"
        assert {send("lora-a"), send("lora-b")} == {200}
    assert "lora-a@1" in adapters.served_models(server["url"])  # kept loaded: the rollback target
    events = [e["event"] for e in platform.audit.entries()]
    assert events[-1] == "deploy failed" and "deployed" in events


def test_the_kubernetes_backend_changes_manifests_and_counts_a_load_only_when_the_server_confirms(
        server: dict, smollm_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KubernetesServingBackend against the real server standing in for the base model's Service: it
    writes the desired-adapters ConfigMap, the real loader sidecar (`python -m
    aiplat.serving.adapter_loader`, in a loop) pulls from an S3 model store (moto) and loads, and the
    backend returns only once the server lists the adapter and answers through it. A version whose
    bytes in the store were tampered after approval is refused by the sidecar: the backend's load
    fails at its deadline, the desired ConfigMap goes back to what it was, lora-a keeps serving.
    A thread does the kubelet's part: the ConfigMap's data projected as the sidecar's file."""
    import json
    import subprocess
    import sys
    import threading
    import time

    import kubernetes_validate
    import yaml

    from aiplat.security.approval import dev_approval_key_pair
    from aiplat.serving.adapter_rollout import deploy_adapter
    from aiplat.serving.backend import AdapterVersion, KubernetesServingBackend
    from aiplat.serving.k8s_adapters import AdapterServerSpec

    url = server["url"]
    for name in [n for n, p in adapters.served_models(url).items() if p]:
        adapters.unload_adapter(url, name)
    cleanup = ExitStack()
    aws, s3 = cleanup.enter_context(model_store())
    for f in server["adapters"]["a-v2"].iterdir():  # a-v1 the backend publishes itself
        body = f.read_bytes()
        if f.name == adapters.ADAPTER_WEIGHTS:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])  # in the store already, changed after its approval
        s3.put_object(Bucket="models", Key=f"adapters/a-v2/{f.name}", Body=body)

    spec = AdapterServerSpec(base_name=BASE, base_uri="s3://models/base/", lora=LORA)
    manifests, projected = tmp_path / "manifests", tmp_path / "desired" / "desired.json"
    backend = KubernetesServingBackend({BASE: spec}, manifests, service_url=lambda _: url, confirm_timeout_s=20,
                                       poll_s=0.5, s3_client=s3)
    stop = threading.Event()

    def kubelet() -> None:
        while not stop.wait(0.3):
            path = manifests / f"{spec.name}.yaml"
            if path.is_file():
                cm = next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "ConfigMap")
                projected.parent.mkdir(exist_ok=True)
                if not projected.is_file() or projected.read_text() != cm["data"]["desired.json"]:
                    tmp = projected.with_suffix(".tmp")
                    tmp.write_text(cm["data"]["desired.json"])
                    tmp.replace(projected)

    projected.parent.mkdir()
    projected.write_text(json.dumps({"adapters": []}))
    threading.Thread(target=kubelet, daemon=True).start()
    keys = serving_keys()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "aiplat.serving.adapter_loader", "--desired", str(projected), "--base-name", BASE,
         "--base-folder", str(smollm_base), "--url", url, "--cache", str(tmp_path / "cache"),
         "--public-key", str(keys.signature),
         "--approval-key", str(dev_approval_key_pair().public_key), "--max-rank", "8", "--interval", "1"],
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), **aws},
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sidecar.log", "w"))
    try:
        caller = _caller(monkeypatch, "team:ml")

        def version(name: str, v: str) -> AdapterVersion:
            folder = server["adapters"][name]  # the approved bytes, verified here by the control sequence
            return AdapterVersion("lora-a", v, BASE, f"s3://models/adapters/{name}/", approval(folder, "lora-a", v),
                                  folder=str(folder))

        first = deploy_adapter(caller, backend, "lora-a", version("a-v1", "1"), keys)
        assert first.action == "deployed" and backend.live_state("lora-a").health == "ready"
        published = s3.list_objects_v2(Bucket="models", Prefix="adapters/a-v1/")["Contents"]
        assert {o["Key"].rsplit("/", 1)[-1] for o in published} >= {adapters.ADAPTER_WEIGHTS, adapters.ADAPTER_CONFIG}
        assert [w.name for w in backend.desired(BASE)] == ["lora-a@1"]
        for doc in yaml.safe_load_all((manifests / f"{spec.name}.yaml").read_text()):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
        routes = yaml.safe_load((manifests / "aiplat-adapter-routes.yaml").read_text())
        assert json.loads(routes["data"]["adapter-routes.json"])["lora-a"]["split"] == {"lora-a@1": 100.0}

        with pytest.raises(adapters.AdapterError, match="did not confirm"):
            backend.load_adapter(version("a-v2", "2"))
        assert [w.name for w in backend.desired(BASE)] == ["lora-a@1"]
        assert "refused lora-a@2: signature" in (tmp_path / "sidecar.log").read_text()
        assert backend.live_state("lora-a").health == "ready" and _answer(server, "lora-a@1")

        stopped = backend.stop("lora-a")
        assert stopped.live == "lora-a@1" and backend.live_state("lora-a") is None and backend.desired(BASE) == []
        deadline = time.monotonic() + 30
        while "lora-a@1" in adapters.served_models(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "lora-a@1" not in adapters.served_models(url)  # the sidecar unloaded what is no longer wanted
    finally:
        stop.set()
        # SIGKILL: a child inherits an ignored SIGTERM from some launchers (seen in CI here), and a
        # sidecar left running would keep unloading the other tests' adapters from the shared server.
        sidecar.kill()
        sidecar.wait(timeout=30)
        cleanup.close()


def test_the_adapters_cli_deploys_shows_refuses_and_stops_through_the_runtime(
        server: dict, smollm_base: Path, shared_mlflow: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`aiplat endpoints` on the local runtime: the prepared base's running server is found (nothing
    new starts), a first deploy routes all traffic at once, status reads the server, another team is
    refused and audited, a rollback without a folder serves the registry's `previous` version (its
    adapter downloaded and checked against the registered digest), the owner stops it; lora-b, on
    the same server, answers throughout."""
    import json
    from urllib.parse import urlparse

    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from aiplat.cli import cli
    from aiplat.security.audit_log import AuditLog
    from aiplat.serving.registry import serving_dir
    from tests.identity_helpers import act_as

    _runtime_finds_the_module_server(server, smollm_base)
    (serving_dir() / "adapter-routes.json").unlink(missing_ok=True)
    b = _loaded(server, "lora-b", "1")
    before = _answer(server, b)
    folder = server["adapters"]["a-v1"]
    attestation = tmp_path / "a1.attestation"
    attestation.write_text(approval(folder, "lora-a", "1"))
    deploy = ["endpoints", "deploy", "lora-a", str(folder), "--version", "1", "--base", BASE,
              "--attestation-file", str(attestation)]
    models = tmp_path / "models"
    models.mkdir()
    (models / "lora-a.yaml").write_text((Path(__file__).parents[1] / "models" / "ticket-triage.yaml").read_text()
                                        .replace("name: ticket-triage", "name: lora-a").replace("endpoint: ticket-triage", "endpoint: lora-a"))
    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(models))  # lora-a's spec: owner team:ml

    act_as(monkeypatch, "team:support")
    refused = CliRunner().invoke(cli, deploy)
    assert refused.exit_code == 1 and "access denied" in refused.output and "unchanged" in refused.output

    act_as(monkeypatch, "team:ml")
    done = CliRunner().invoke(cli, deploy)
    assert done.exit_code == 0, done.output
    assert "lora-a: deployed; lora-a@1 takes its traffic" in done.output
    shown = CliRunner().invoke(cli, ["endpoints", "list", "--json"])
    assert shown.exit_code == 0, shown.output
    (state,) = json.loads(shown.output)
    assert (state["endpoint"], state["health"], state["split"], state["url"]) == \
        ("lora-a", "ready", {"lora-a@1": 100.0}, server["url"])

    # The registry as the source: the runtime's MLflow (the shared test server) holds lora-a's
    # versions; an unknown version and a version without a `previous` alias change nothing.
    monkeypatch.setenv("AIPLAT_MLFLOW_PORT", str(urlparse(shared_mlflow).port))
    client = MlflowClient(shared_mlflow, registry_uri=shared_mlflow)
    registered = [register_adapter(client, "lora-a", server["adapters"][f], smollm_base) for f in ("a-v1", "a-v2")]
    no_previous = CliRunner().invoke(cli, ["endpoints", "rollback", "lora-a"])
    assert no_previous.exit_code == 1 and "has no alias 'previous'" in no_previous.output, no_previous.output
    unknown = CliRunner().invoke(cli, ["endpoints", "rollback", "lora-a", "--version", "999"])
    assert unknown.exit_code == 1 and "MLflow:" in unknown.output and "unchanged" in unknown.output, unknown.output
    client.set_registered_model_alias("lora-a", "previous", registered[1])
    rolled = CliRunner().invoke(cli, ["endpoints", "rollback", "lora-a"])
    assert rolled.exit_code == 0, rolled.output
    live = f"lora-a@{registered[1]}"
    assert f"lora-a: rolled back; {live} takes its traffic (was lora-a@1)" in rolled.output
    assert live in adapters.served_models(server["url"]) and "lora-a@1" not in adapters.served_models(server["url"])
    assert _answer(server, b) == before

    stopped = CliRunner().invoke(cli, ["endpoints", "stop", "lora-a"])
    assert stopped.exit_code == 0 and f"lora-a: stopped (was {live})" in stopped.output
    assert live not in adapters.served_models(server["url"]) and _answer(server, b) == before
    events = [(e["event"], e.get("team")) for e in AuditLog().entries()]
    assert ("access", "team:support") in events and ("deployed", "team:ml") in events
    assert ("adapter rolled back", "team:ml") in events
    assert events[-1] == ("adapter endpoint stopped", "team:ml")


def _runtime_finds_the_module_server(server: dict, smollm_base: Path) -> None:
    """The local runtime's backend (LocalVllmResource.serving_backend) sees this module's server as the
    running server of the prepared base BASE, so it starts none."""
    from aiplat.models.base import base_models_dir
    from aiplat.serving.registry import EndpointRecord, EndpointRegistry, serving_dir

    base_link = base_models_dir() / BASE
    base_link.parent.mkdir(parents=True, exist_ok=True)
    if not base_link.exists():
        base_link.symlink_to(smollm_base)
    serving_dir().mkdir(parents=True, exist_ok=True)
    EndpointRegistry(serving_dir() / "base-servers.json").update(BASE, lambda _: EndpointRecord(BASE, server["record"]))


def test_the_champion_flow_serves_adapters_canaries_through_the_gateway_and_rolls_back(
        server: dict, smollm_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `served_endpoint` asset of a model whose champion is a registered adapter: the first
    version goes onto the base model's running shared server at once; the next passes a canary
    measured through the real gateway and takes 100%; a third fails its canary (a policy no candidate
    can meet: p95 under 1% of the live version's), is unloaded, and the `champion` alias goes back.
    lora-b, on the same server, answers the same throughout. No new vLLM process starts."""
    import random

    import dagster as dg
    from mlflow.tracking import MlflowClient

    from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
    from aiplat.serving.gateway import GatewaySettings, build_app
    from resources.mlflow import MLflowResource
    from resources.operations import OperationsResource
    from resources.signing import ModelSigningResource
    from resources.vllm import LocalVllmResource
    from tests.chain_helpers import chain_asset, chain_for
    from tests.test_gateway import serve

    _runtime_finds_the_module_server(server, smollm_base)
    AdapterRoutes().remove("lora-a")
    b = _loaded(server, "lora-b", "1")
    before = _answer(server, b)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    (tmp_path / "artifacts").mkdir()
    client.create_experiment("adapters", artifact_location=str(tmp_path / "artifacts"))
    v1, v2, v3 = (register_adapter(client, "lora-a", server["adapters"][f], smollm_base) for f in ("a-v1", "a-v2", "b-v2"))
    chain = chain_for("lora-a", base_model=BASE)
    served_endpoint = chain_asset(chain, "served_endpoint")

    @dg.asset(key=[chain.spec.key_prefix, "champion"])
    def champion_model() -> None:  # stands in for the promotion asset
        return None

    def materialize(champion: str, gateway: str = "http://127.0.0.1:9", **policy) -> dg.ExecuteInProcessResult:
        client.set_registered_model_alias("lora-a", "champion", champion)
        vllm = LocalVllmResource(gateway_url=gateway, adapter_canary_weight=50, adapter_canary_min_requests=3,
                                 canary_max_p95_ratio=policy.get("max_p95_ratio", 100.0))
        return dg.materialize([champion_model, served_endpoint], selection=[served_endpoint.key], raise_on_error=False,
                              resources={"vllm": vllm, "operations": OperationsResource(),
                                         "model_signing": ModelSigningResource(), "mlflow": MLflowResource(tracking_uri=uri)})

    def meta(result) -> dict:
        (m,) = result.asset_materializations_for_node(f"{chain.spec.key_prefix}__served_endpoint")
        return {k: v.value for k, v in m.metadata.items()}

    first = materialize(v1)
    assert first.success, [e.message for e in first.all_events if e.is_failure]
    assert (meta(first)["action"], meta(first)["adapter"], meta(first)["endpoint_url"]) == \
        ("deployed", f"lora-a@{v1}", server["url"])

    log = OperationsResource().request_log()
    app = build_app(GatewaySettings(resolver=AdapterRouteResolver(AdapterRoutes(), rng=random.Random(3)), request_log=log))
    with serve(app) as gateway:
        second = materialize(v2, gateway)
        assert second.success, [e.message for e in second.all_events if e.is_failure]
        assert (meta(second)["action"], meta(second)["previous_version"]) == ("switched", v1)
        assert meta(second)["canary_candidate_requests"] >= 3
        assert AdapterRoutes().get("lora-a").split == ((f"lora-a@{v2}", 100.0),)

        client.set_registered_model_alias("lora-a", "previous", v2)
        third = materialize(v3, gateway, max_p95_ratio=0.01)
        assert not third.success
        failure = " ".join(str(e.event_specific_data.error.message) for e in third.all_events
                           if e.is_step_failure and e.event_specific_data.error)
        assert "p95 latency" in failure and f"lora-a@{v2} serves lora-a again at 100%" in failure
    assert AdapterRoutes().get("lora-a").split == ((f"lora-a@{v2}", 100.0),)
    assert f"lora-a@{v3}" not in adapters.served_models(server["url"])
    assert str(client.get_model_version_by_alias("lora-a", "champion").version) == v2
    assert _answer(server, b) == before
