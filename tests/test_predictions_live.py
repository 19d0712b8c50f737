"""`<model>/predictions` against a real vLLM CPU server (issue 16 item 2): the triage endpoint routed to a
LoRA adapter on the platform's base server, one landed ticket batch scored through Ray Data with two
workers on a private local Ray instance, the request log billed to the owner team.

The adapter's weights are random (tests/adapter_helpers.py): what it answers is not under test, only
that every open ticket of the batch was asked, in order, and answered, and the closed ones not."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import built_vllm_env

pytestmark = pytest.mark.slow

BATCH = "tickets-2026-11"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, smollm_base: Path):
    """The local runtime's state with the ticket-triage endpoint routed to version 3's adapter on a
    running base server (the records the serving backend keeps), as served_endpoint leaves it."""
    from aiplat.config import project_root
    from aiplat.serving import adapters
    from aiplat.serving.adapter_routes import AdapterRoutes
    from aiplat.serving.registry import EndpointRecord, EndpointRegistry, serving_dir
    from aiplat.serving.server import LoraSettings, ServerSettings, start_server, stop_server
    from aiplat.specs import find_spec
    from tests.adapter_helpers import make_adapter

    env = built_vllm_env()
    state = tmp_path_factory.mktemp("predictions-live")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIPLAT_STATE_DIR", str(state))
    mp.setenv("AIPLAT_ENV", "local")
    spec = find_spec("ticket-triage", project_root() / "models")
    folder = make_adapter(smollm_base, state / "adapter", seed=11)
    settings = ServerSettings(python=str(env.python), enforce_eager=True, max_num_seqs=8, start_timeout_s=900,
                              lora=LoraSettings(max_loras=2, max_lora_rank=8))
    record = start_server("predictions", smollm_base, "base", spec.base_model, settings)
    try:
        served = f"{spec.endpoint}@3"
        status, text = adapters._request(f"{record.url}/v1/load_lora_adapter", "POST",
                                         {"lora_name": served, "lora_path": str(folder)})
        assert status == 200, text
        serving_dir().mkdir(parents=True, exist_ok=True)
        EndpointRegistry(serving_dir() / "base-servers.json").update(
            spec.base_model, lambda _: EndpointRecord(spec.base_model, record))
        AdapterRoutes().set(spec.endpoint, record.url, {served: 100.0})
        yield {"spec": spec, "url": record.url, "state": state}
    finally:
        stop_server(record)
        mp.undo()


def test_one_batch_is_scored_through_ray_in_order_and_billed_to_the_owner(endpoint, tmp_path: Path) -> None:
    from aiplat.operations.requests import RequestLog
    from assets.predictions import FEATURE, REDACTED_TICKETS, build_predictions
    from resources.operations import OperationsResource
    from resources.ray import RayResource
    from resources.vllm import LocalVllmResource

    spec = endpoint["spec"]
    served_key = dg.AssetKey([spec.key_prefix, "served_endpoint"])
    asset, _, _ = build_predictions(spec, served_key)
    tickets = pd.DataFrame({
        "ticket_id": [f"t-{i}" for i in range(10)],
        "subject": ["Invoice wrong", "App crashes", "Reset password", "Parcel late", "Refund", "Hello",
                    "Charged twice", "Login fails", "Where is it", "Closed one"],
        "message": ["I was billed twice this month."] * 10,
        # the last two were resolved by the time they landed: nothing to triage
        "resolved_at": [None] * 8 + ["2026-11-03T10:00:00+00:00", "2026-11-04T10:00:00+00:00"],
    })

    @dg.asset(key=REDACTED_TICKETS, partitions_def=asset.partitions_def)
    def redacted_tickets() -> pd.DataFrame:
        return tickets

    @dg.asset(key=served_key)
    def served() -> None:
        return None

    log = RequestLog()
    before = len(log.read()[0])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("ticket_batches", [BATCH])
        result = dg.materialize(
            [redacted_tickets, served, asset], selection=[REDACTED_TICKETS, asset.key], partition_key=BATCH,
            instance=instance, raise_on_error=False,
            resources={"vllm": LocalVllmResource(batch_workers=2, batch_concurrency=2), "ray": RayResource(),
                       "operations": OperationsResource(), "lake": dg.FilesystemIOManager(base_dir=str(tmp_path))},
            run_config={"ops": {f"{spec.key_prefix}__predictions": {"config": {"batch_size": 3}}}})
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        (materialization,) = result.asset_materializations_for_node(f"{spec.key_prefix}__predictions")
        meta = {k: v.value for k, v in materialization.metadata.items()}
        frame = result.output_for_node(f"{spec.key_prefix}__predictions")
    assert list(frame["ticket_id"]) == [f"t-{i}" for i in range(8)]  # open ones only, in landing order
    assert (frame["status"] == 200).all() and (frame["model_version"] == "3").all()
    assert (meta["open_tickets"], meta["tickets_in_batch"], meta["dagster/row_count"]) == (8, 10, 8)
    assert meta["workers"] == 2 and meta["tickets_per_s"] > 0
    assert meta["ran_on"].startswith("a private local Ray instance"), meta["ran_on"]
    assert sum(v for k, v in meta.items() if k.startswith("categories/")) == 8
    records = log.read()[0][before:]
    assert len(records) == 8 and {(r.team, r.feature, r.endpoint, r.model) for r in records} == \
        {("team:ml", FEATURE, spec.endpoint, "3")}
    assert all(r.completion_tokens > 0 and r.status == 200 for r in records)
