"""The live golden-set monitor against real vLLM servers on the CPU (SmolLM2-135M-Instruct), a real
MLflow registry (SQLite, no server) and real Dagster instances.

The endpoint serves version 2 after version 1 (two signed copies of the same model), so there is a
version to roll back to. A regression is made by what the monitor compares with: an earlier
reading of version 2 that scored 1.0 on the golden set (reported to the instance as a real
materialization), which the untuned model never reaches live. The tests share the servers and
each passes alone and in any order: the first reading is taken before any test (`first_reading`),
and `serving_v2` puts version 2 back (endpoint and champion) after a test that rolled back.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import httpx
import pytest

from aiplat.evaluation.golden import load_golden
from aiplat.serving.champion import FolderSource
from tests.approval_helpers import approval
from tests.conftest import built_vllm_env, copy_model

pytestmark = pytest.mark.slow

ENDPOINT = "ticket-triage"  # the demo triage spec's model and endpoint
PREFIX = "ticket_triage"
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
    from mlflow.tracking import MlflowClient

    from aiplat.security.signing import dev_key_pair, sign_model
    from resources.mlflow import MLflowResource
    from resources.vllm import LocalVllmResource

    folders = {"1": state / "v1", "2": state / "v2"}
    uri = f"sqlite:///{state / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(ENDPOINT, tags={"owner_team": "team:ml"})
    for version, folder in folders.items():
        copy_model(smollm_base, folder)
        sign_model(folder, dev_key_pair())
        assert str(client.create_model_version(ENDPOINT, source=str(folder)).version) == version
    client.set_registered_model_alias(ENDPOINT, "previous", "1")
    client.set_registered_model_alias(ENDPOINT, "champion", "2")

    # float32: the served answers match the fp32 reference decoding (see test_serving_live.py).
    vllm = LocalVllmResource(enforce_eager=True, dtype="float32", vllm_python=str(env.python), start_timeout_s=900,
                             max_num_seqs=4)
    for version, folder in folders.items():  # approved as promotion would (tests/approval_helpers.py)
        vllm.manager.deploy(ENDPOINT, FolderSource(folder, version, ENDPOINT, approval(folder, ENDPOINT, version)).resolve())
    world = {"state": state, "folders": folders, "vllm": vllm, "client": client,
             "mlflow": MLflowResource(tracking_uri=uri),
             "instance": dg.DagsterInstance.ephemeral()}
    try:
        yield world
    finally:
        vllm.manager.stop_all()
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
    """Version 2 live and champion, version 1 the previous one: the state the module starts in,
    restored when a test before this one rolled back."""
    manager = world["vllm"].manager
    if manager.refresh(ENDPOINT).live.model_version != "2":
        folder = world["folders"]["2"]
        manager.deploy(ENDPOINT, FolderSource(folder, "2", ENDPOINT, approval(folder, ENDPOINT, "2")).resolve())
        world["client"].set_registered_model_alias(ENDPOINT, "previous", "1")
        world["client"].set_registered_model_alias(ENDPOINT, "champion", "2")
    assert manager.get(ENDPOINT).live.model_version == "2"


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
        # The category is the answer's first line: 16 tokens are enough and keep the module short.
        run_config={"ops": {f"{PREFIX}__live_quality": {"config": {"max_tokens": 16, **config}}}},
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
    with caplog.at_level(logging.ERROR, logger="aiplat.alerts"):
        meta, check = _reading(_materialize(world, regressed))
    assert not check.passed and meta["baseline_accuracy"] == 1.0 and meta["golden_accuracy"] < 0.9
    assert meta["rollback"] == "disabled (alert only)"
    [alert] = [r.getMessage() for r in caplog.records if r.name == "aiplat.alerts"]
    assert alert.startswith("AIPLAT_ALERT gate=live_quality model=ticket-triage version=2 endpoint=ticket-triage "
                            "action=alert reason=\"golden accuracy")
    assert world["vllm"].manager.get(ENDPOINT).live.model_version == "2"


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
    assert world["vllm"].manager.get(ENDPOINT).live.model_version == "2"


def test_rollback_refuses_a_tampered_previous_version_and_version_2_keeps_serving(world, serving_v2, regressed) -> None:
    extra = world["folders"]["1"] / "extra.bin"
    extra.write_bytes(b"not signed")  # a file added to the folder after signing
    try:
        meta, check = _reading(_materialize(world, regressed, tags=ROLLBACK_TAGS, rollback_on_regression=True))
    finally:
        extra.unlink()
    assert not check.passed and meta["rollback"].startswith("failed, version 2 still serves")
    live = world["vllm"].manager.get(ENDPOINT).live
    assert live.model_version == "2" and live.health == "ready"
    assert _audit_events(world)[-1]["event"] == "rollback failed"
    assert str(world["client"].get_model_version_by_alias(ENDPOINT, "champion").version) == "2"


def test_a_drop_rolls_back_the_endpoint_and_the_champion(world, serving_v2, regressed) -> None:
    meta, check = _reading(_materialize(world, regressed, tags=ROLLBACK_TAGS, rollback_on_regression=True))
    assert not check.passed
    assert meta["rollback"].startswith("ticket-triage now serves version 1 (was 2)")
    live = world["vllm"].manager.get(ENDPOINT).live
    assert live.model_version == "1" and live.model_path == str(world["folders"]["1"].resolve())
    assert str(world["client"].get_model_version_by_alias(ENDPOINT, "champion").version) == "1"
    events = _audit_events(world)
    allowed = [e for e in events if e.get("decision") == "allowed" and e.get("action") == "rollback"]
    assert allowed and allowed[-1]["actor"] == "svc:dagster"
    assert allowed[-1]["requested_by"] == "schedule:hourly_live_quality"
    assert events[-1]["event"] == "endpoint rolled back" and events[-1]["from_version"] == "2"
    answer = httpx.post(f"{live.url}/v1/chat/completions", timeout=300, json={
        "model": ENDPOINT, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 12, "temperature": 0})
    assert answer.status_code == 200 and "Paris" in json.dumps(answer.json())
    assert Path(live.log_file).is_file()
