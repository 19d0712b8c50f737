"""The live golden-set monitor against a real vLLM CPU server (the SmolLM2-135M-Instruct base with
`--enable-lora`), a real MLflow registry (SQLite, no server) and real Dagster instances.

The ticket-triage endpoint is served as LoRA adapters on the base model's one shared server (issue
14): versions 1 and 2 are two registered adapter versions (real PEFT adapters with random weights,
tests/adapter_helpers.py), both loaded, the endpoint's route sending everything to version 2;
`champion` is 2 and `previous` 1, so there is a version to roll back to. A regression is made by
what the monitor compares with: an earlier reading of version 2 that scored 1.0 on the golden set
(reported to the instance as a real materialization), which a random adapter never reaches live.
The tests share the server and each passes alone and in any order: the first reading is taken
before any test (`first_reading`), and `serving_v2` puts version 2 back (route and champion) after
a test that rolled back.
"""

from __future__ import annotations

import random
import shutil
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import httpx
import pytest

from aiplat.evaluation.golden import load_golden
from aiplat.serving.adapters import adapter_name, served_models
from tests.adapter_helpers import (
    BASE,
    artifact_folder,
    link_prepared_base,
    make_adapter,
    register_adapter,
    resolved,
    sqlite_registry,
)
from tests.approval_helpers import serving_keys
from tests.conftest import built_vllm_env

pytestmark = pytest.mark.slow

ENDPOINT = "ticket-triage"  # the demo triage spec's model and endpoint
PREFIX = "ticket_triage"
V1, V2 = adapter_name(ENDPOINT, "1"), adapter_name(ENDPOINT, "2")
ROLLBACK_TAGS = {"aiplat/actor": "schedule:hourly_live_quality"}  # attribution; the run is the service account


def _chain_asset(name: str):
    from aiplat.config import project_root
    from aiplat.specs import find_spec
    from assets.model_lifecycle import model_chain

    chain = model_chain(find_spec(ENDPOINT, project_root() / "models"))
    (asset,) = [a for a in chain.assets if a.key.path[-1] == name]
    return asset


@pytest.fixture(scope="module")
def world(tmp_path_factory, smollm_base: Path):
    env = built_vllm_env()
    state = tmp_path_factory.mktemp("live-quality-state")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIPLAT_STATE_DIR", str(state))
    mp.setenv("AIPLAT_ENV", "local")
    from resources.mlflow import MLflowResource
    from resources.vllm import LocalVllmResource

    link_prepared_base(smollm_base)
    uri, client = sqlite_registry(state / "mlflow")
    client.create_registered_model(ENDPOINT, tags={"owner_team": "team:ml"})
    for version, seed in (("1", 21), ("2", 22)):
        folder = make_adapter(smollm_base, state / "adapters" / f"v{version}", seed)
        assert register_adapter(client, ENDPOINT, folder, smollm_base) == version
    client.set_registered_model_alias(ENDPOINT, "previous", "1")
    client.set_registered_model_alias(ENDPOINT, "champion", "2")

    vllm = LocalVllmResource(enforce_eager=True, dtype="float32", vllm_python=str(env.python), start_timeout_s=900,
                             max_num_seqs=4)
    backend = vllm.serving_backend(serving_keys())
    world = {"state": state, "vllm": vllm, "backend": backend, "client": client, "uri": uri,
             "mlflow": MLflowResource(tracking_uri=uri), "instance": dg.DagsterInstance.ephemeral()}
    try:
        # Stands in for served_endpoint (tests/test_serving_adapters_live.py runs that flow): both
        # versions as served_endpoint resolves them (verified copies of the registered adapters),
        # verified again as they load onto the base model's server (started here, the module's one).
        for version in ("1", "2"):
            backend.load_adapter(resolved(client, uri, ENDPOINT, version))
        backend.route(ENDPOINT, BASE, {V2: 100.0})
        yield world
    finally:
        for base, _ in backend.servers():
            backend.stop_server(base)
        mp.undo()


@pytest.fixture(scope="module", autouse=True)
def first_reading(world):
    """The endpoint's first live reading, taken before any test of this module runs; returns its
    metadata, check and the request-log records it produced."""
    from resources.operations import OperationsResource

    before, _ = OperationsResource().request_log().read()
    result = _materialize(world, world["instance"])
    after, rejected = OperationsResource().request_log().read()
    meta, check = _reading(result)
    return {"result": result, "meta": meta, "check": check, "records": after[len(before):], "rejected": rejected}


@pytest.fixture
def serving_v2(world):
    """Version 2 live (its adapter loaded, the route all to it) and champion, version 1 the previous
    one: the state the module starts in, restored when a test before this one rolled back."""
    vllm, backend = world["vllm"], world["backend"]
    state = vllm.adapter_state(ENDPOINT)
    if state is None or state.split != {V2: 100.0} or state.health != "ready":
        backend.load_adapter(resolved(world["client"], world["uri"], ENDPOINT, "2"))
        backend.route(ENDPOINT, BASE, {V2: 100.0})
    world["client"].set_registered_model_alias(ENDPOINT, "previous", "1")
    world["client"].set_registered_model_alias(ENDPOINT, "champion", "2")
    state = vllm.adapter_state(ENDPOINT)
    assert (state.split, state.health) == ({V2: 100.0}, "ready")


@pytest.fixture
def regressed(world):
    """An instance whose earlier reading of version 2 scored 1.0: the live model reads as a drop."""
    instance = dg.DagsterInstance.ephemeral()
    _plant_earlier_reading(instance, 1.0)
    return instance


def _materialize(world, instance: dg.DagsterInstance, tags: dict | None = None, **config) -> dg.ExecuteInProcessResult:
    from resources.operations import OperationsResource
    from resources.signing import ModelSigningResource

    live_quality = _chain_asset("live_quality")

    @dg.asset(key=[PREFIX, "served_endpoint"])
    def served_endpoint() -> None:  # stands in for the deploy asset: the fixture deployed
        return None

    return dg.materialize(
        [served_endpoint, live_quality], selection=[live_quality.key], instance=instance, tags=tags,
        resources={"vllm": world["vllm"], "mlflow": world["mlflow"], "model_signing": ModelSigningResource(),
                   "operations": OperationsResource()},
        # Random adapters answer no category right whatever the budget: the fewest tokens the asset
        # allows keep each reading (the golden set's 24 tickets) short on a 2-core CPU.
        run_config={"ops": {f"{PREFIX}__live_quality": {"config": {"max_tokens": 4, **config}}}},
    )


def _reading(result: dg.ExecuteInProcessResult) -> tuple[dict, dg.AssetCheckEvaluation]:
    mat = result.asset_materializations_for_node(f"{PREFIX}__live_quality")[0]
    [check] = result.get_asset_check_evaluations()
    return {k: v.value for k, v in mat.metadata.items()}, check


def _audit_events(world) -> list[dict]:
    from aiplat.security.audit_log import AuditLog

    return list(AuditLog(world["state"] / "audit" / "audit.jsonl").entries())


def _plant_earlier_reading(instance: dg.DagsterInstance, accuracy: float) -> None:
    golden = load_golden()
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey([PREFIX, "live_quality"]), metadata={
        "endpoint": ENDPOINT, "model_version": "2", "golden_sha256": golden.sha256,
        "golden_accuracy": dg.MetadataValue.float(accuracy), "baseline_eligible": True}))


def _route(world) -> dict[str, float]:
    return world["vllm"].adapter_state(ENDPOINT).split


def test_first_reading_is_the_baseline_and_billed_to_the_platform_team(first_reading) -> None:
    from resources.operations import OperationsResource

    meta, check, result = first_reading["meta"], first_reading["check"], first_reading["result"]
    assert check.passed and meta["baseline_source"] == "this reading"
    assert meta["model_version"] == "2" and meta["champion_version"] == "2"
    assert meta["error_rate"] == 0.0 and 0.0 <= meta["golden_accuracy"] <= 1.0
    assert isinstance(result.asset_materializations_for_node(f"{PREFIX}__live_quality")[0].metadata["golden_accuracy"],
                      dg.FloatMetadataValue)  # plotted over time in the UI
    records = first_reading["records"]
    golden = load_golden()
    assert not first_reading["rejected"] and len(records) == len(golden.rows)
    assert {(r.team, r.feature, r.endpoint, r.model, r.status) for r in records} == {
        ("team:platform", "golden-regression", ENDPOINT, "2", 200)}
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in records)
    today = datetime.now(timezone.utc).date()
    rows = OperationsResource().cost_report(today, today).rows
    mine = rows[(rows.team == "team:platform") & (rows.feature == "golden-regression")]
    assert int(mine.requests.sum()) >= len(golden.rows) and float(mine.token_cost.sum()) > 0


def test_next_reading_is_judged_against_the_first(world, first_reading, serving_v2) -> None:
    meta, check = _reading(_materialize(world, world["instance"]))
    assert meta["baseline_source"].startswith("first live reading")
    assert meta["baseline_accuracy"] == pytest.approx(first_reading["meta"]["golden_accuracy"])
    assert check.passed and meta["golden_accuracy_drop"] <= 0.10


def test_a_drop_alerts_and_by_default_does_not_roll_back(world, serving_v2, regressed,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.ERROR, logger="aiplat.alerts"):
        meta, check = _reading(_materialize(world, regressed))
    assert not check.passed and meta["baseline_accuracy"] == 1.0 and meta["golden_accuracy"] < 0.9
    assert meta["rollback"] == "disabled (alert only)"
    [alert] = [r.getMessage() for r in caplog.records if r.name == "aiplat.alerts"]
    assert alert.startswith("AIPLAT_ALERT gate=live_quality model=ticket-triage version=2 endpoint=ticket-triage "
                            "action=alert reason=\"golden accuracy")
    assert _route(world) == {V2: 100.0}


def test_rollback_by_a_run_without_the_service_credential_is_refused_and_audited(world, serving_v2, regressed) -> None:
    """Tags grant nothing (before, `aiplat/team` was the team checked); the run acts as the code
    location's service account only when its credential verifies."""
    from aiplat.security.identity import SERVICE_ACCOUNT, ensure_local_accounts, token_file

    ensure_local_accounts()
    service = token_file(SERVICE_ACCOUNT)
    genuine = service.read_text()
    service.write_text("aiplat_forged\n")
    try:
        meta, check = _reading(_materialize(world, regressed, tags={"aiplat/team": "team:platform",
                                                                    "aiplat/actor": "mallory"},
                                            rollback_on_regression=True))
    finally:
        service.write_text(genuine)
    assert not check.passed and meta["rollback"].startswith("refused: svc:dagster (no team) may not rollback")
    refused = [e for e in _audit_events(world) if e.get("decision") == "refused"]
    assert refused[-1]["action"] == "rollback" and refused[-1]["requested_by"] == "mallory"
    assert refused[-1]["identity_source"] == "unknown-credential"
    assert _route(world) == {V2: 100.0}
    assert str(world["client"].get_model_version_by_alias(ENDPOINT, "champion").version) == "2"


def test_rollback_refuses_a_tampered_previous_version_and_version_2_keeps_serving(world, serving_v2, regressed) -> None:
    """Version 1's adapter in the registry's artifact store gained a file after it was registered,
    and this machine holds no verified copy of it (a fresh worker): the rollback downloads it, finds
    other bytes than the version's recorded digest and refuses; version 2 keeps the whole route."""
    from aiplat.config import local_paths

    extra = artifact_folder(world["client"], ENDPOINT, "1") / "extra.bin"
    extra.write_bytes(b"not registered")
    shutil.rmtree(local_paths().models / "served" / ENDPOINT / "v1-adapter", ignore_errors=True)
    try:
        meta, check = _reading(_materialize(world, regressed, tags=ROLLBACK_TAGS, rollback_on_regression=True))
    finally:
        extra.unlink()
    assert not check.passed and meta["rollback"].startswith("failed, version 2 still serves")
    assert "refusing to use other bytes than were registered" in meta["rollback"]
    state = world["vllm"].adapter_state(ENDPOINT)
    assert (state.split, state.health) == ({V2: 100.0}, "ready")
    assert _audit_events(world)[-1]["event"] == "rollback failed"
    assert str(world["client"].get_model_version_by_alias(ENDPOINT, "champion").version) == "2"


def test_a_drop_rolls_back_the_endpoint_and_the_champion(world, serving_v2, regressed) -> None:
    """The rollback is the adapter path's (VllmResource.roll_back -> roll_back_adapter): version 1's
    adapter takes the whole route at once on the same server, version 2's is unloaded, the champion
    alias goes back; the endpoint then answers through the gateway with version 1."""
    from aiplat.operations.requests import RequestLog
    from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
    from aiplat.serving.gateway import GatewaySettings, build_app
    from tests.test_gateway import serve

    url = world["vllm"].adapter_state(ENDPOINT).url
    meta, check = _reading(_materialize(world, regressed, tags=ROLLBACK_TAGS, rollback_on_regression=True))
    assert not check.passed
    assert meta["rollback"].startswith("ticket-triage now serves version 1 (was 2)")
    state = world["vllm"].adapter_state(ENDPOINT)
    assert (state.split, state.health, state.url) == ({V1: 100.0}, "ready", url)  # the same server, no restart
    listed = served_models(url)
    assert listed.get(V1) == BASE and V2 not in listed
    assert str(world["client"].get_model_version_by_alias(ENDPOINT, "champion").version) == "1"
    events = _audit_events(world)
    allowed = [e for e in events if e.get("decision") == "allowed" and e.get("action") == "rollback"]
    assert allowed and allowed[-1]["actor"] == "svc:dagster"
    assert allowed[-1]["requested_by"] == "schedule:hourly_live_quality"
    assert events[-1]["event"] == "endpoint rolled back" and events[-1]["from_version"] == "2"

    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8,
            "temperature": 0}
    direct = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={"model": V1, **body})
    log = RequestLog(world["state"] / "gateway-requests.jsonl", fsync=False)
    app = build_app(GatewaySettings(resolver=AdapterRouteResolver(AdapterRoutes(), rng=random.Random(1)),
                                    request_log=log))
    with serve(app) as gateway:
        answer = httpx.post(f"{gateway}/v1/chat/completions", timeout=300, headers={"X-AIPLAT-Team": "team:support"},
                            json={"model": ENDPOINT, **body})
    assert direct.status_code == answer.status_code == 200
    assert answer.json()["choices"][0]["message"] == direct.json()["choices"][0]["message"]
    assert [(r.endpoint, r.model, r.status) for r in log.read()[0]] == [(ENDPOINT, V1, 200)]
