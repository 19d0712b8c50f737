"""Batch inference (issue 16 item 2), without a model server: which batches the sensor asks to score
(a real Dagster instance with real materializations), that ingest never runs predictions, and that a
batch whose requests fail is refused whole, naming the ticket and the error (the fault is real: a
port where nothing listens). Scoring against a real vLLM is in tests/test_serving_adapters_live.py."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from aiplat.config import project_root
from aiplat.specs import find_spec
from assets.predictions import REDACTED_TICKETS, predictions_requests, predictions_run_key

SPEC = find_spec("ticket-triage", project_root() / "models")
SERVED = dg.AssetKey([SPEC.key_prefix, "served_endpoint"])


def _redacted(instance: dg.DagsterInstance, batch: str) -> None:
    instance.add_dynamic_partitions("ticket_batches", [batch])
    instance.report_runless_asset_event(dg.AssetMaterialization(REDACTED_TICKETS, partition=batch))


def _served(instance: dg.DagsterInstance, version: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(SERVED, metadata={"model_version": version}))


def _keys(requests) -> list[tuple[str, str]]:
    return [(r.partition_key, r.run_key) for r in requests]


def _predicted(instance: dg.DagsterInstance, batch: str, version: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        dg.AssetKey([SPEC.key_prefix, "predictions"]), partition=batch, metadata={"model_version": version}))


def test_the_sensor_scores_new_batches_once_and_every_batch_again_for_a_new_version() -> None:
    with dg.instance_for_test() as instance:
        _redacted(instance, "tickets-2026-10")
        requests, cursor, why = predictions_requests(instance, SPEC, SERVED, {})
        assert requests == [] and "not served yet" in why and cursor == {}

        _served(instance, "3")
        requests, cursor, _ = predictions_requests(instance, SPEC, SERVED, cursor)
        assert [r.partition_key for r in requests] == ["tickets-2026-10"]
        assert requests[0].run_key.startswith("predict:ticket-triage:tickets-2026-10:3:")
        _predicted(instance, "tickets-2026-10", "3")

        again, cursor, why = predictions_requests(instance, SPEC, SERVED, json.loads(json.dumps(cursor)))
        assert again == [] and "no ticket batch changed" in why  # the cursor survives a JSON round trip

        # A new batch costs that batch only; a re-landed batch is scored again under a new run key.
        _redacted(instance, "tickets-2026-11")
        _redacted(instance, "tickets-2026-10")
        new, cursor, _ = predictions_requests(instance, SPEC, SERVED, cursor)
        assert [r.partition_key for r in new] == ["tickets-2026-10", "tickets-2026-11"]
        assert new[0].run_key != requests[0].run_key
        _predicted(instance, "tickets-2026-10", "3")  # 2026-11's run failed: no predictions

        # Served again, same version (after an incident): only the batch without predictions.
        _served(instance, "3")
        retried, cursor, _ = predictions_requests(instance, SPEC, SERVED, cursor)
        assert [r.partition_key for r in retried] == ["tickets-2026-11"]
        assert retried[0].run_key not in {r.run_key for r in new}  # a new key: Dagster launches it
        _predicted(instance, "tickets-2026-11", "3")

        # Another version serves: every batch again, each once.
        _served(instance, "4")
        rescored, cursor, _ = predictions_requests(instance, SPEC, SERVED, cursor)
        assert [r.partition_key for r in rescored] == ["tickets-2026-10", "tickets-2026-11"]
        assert all(":4:" in r.run_key for r in rescored) and len({r.run_key for r in rescored}) == 2
        assert predictions_requests(instance, SPEC, SERVED, cursor)[0] == []


def test_run_keys_are_deterministic() -> None:
    assert predictions_run_key("m", "b1", "2", 17, 9) == predictions_run_key("m", "b1", "2", 17, 9) == "predict:m:b1:2:17:9"


def test_ingest_never_runs_predictions_and_the_sensor_starts_running() -> None:
    from platform_defs.definitions import build_definitions

    defs = build_definitions()
    ingest = defs.resolve_job_def("ingest_tickets_batch").asset_layer.executable_asset_keys
    assert dg.AssetKey([SPEC.key_prefix, "predictions"]) not in ingest and REDACTED_TICKETS in ingest
    sensor = defs.resolve_sensor_def(f"{SPEC.key_prefix}__predictions_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # Only classification models score tickets in batch.
    drafter = find_spec("reply-drafter", project_root() / "models")
    assert dg.AssetKey([drafter.key_prefix, "predictions"]) not in defs.resolve_all_asset_keys()


def test_a_batch_whose_requests_fail_is_not_written_and_the_error_names_the_ticket(tmp_path: Path,
                                                                                 state_dir: Path) -> None:
    """The live route points at a port where nothing listens (the server died after routing): every
    request fails for real; the step fails naming the count and the first ticket, nothing is written,
    and each failed request is in the request log, billed to the owner team."""
    from aiplat.net import free_port
    from aiplat.serving.adapter_routes import AdapterRoutes
    from aiplat.serving.registry import EndpointRecord, EndpointRegistry, ServerRecord, serving_dir
    from assets.predictions import build_predictions
    from resources.operations import OperationsResource
    from resources.ray import RayResource
    from resources.vllm import LocalVllmResource

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The route and base-server record the serving backend leaves, its server gone: live_state reads
    # the server and finds it down, so nothing is asked; the health check is what fails first.
    AdapterRoutes().set(SPEC.endpoint, url, {f"{SPEC.endpoint}@3": 100.0})
    serving_dir().mkdir(parents=True, exist_ok=True)
    EndpointRegistry(serving_dir() / "base-servers.json").update(SPEC.base_model, lambda _: EndpointRecord(
        SPEC.base_model, ServerRecord(url=url, port=port, pid=0, create_time=0.0, model_version="base",
                                      model_path="/m", served_model_name=SPEC.base_model, started_at="t",
                                      log_file="l", pid_file="p")))
    asset, _, _ = build_predictions(SPEC, SERVED)

    @dg.asset(key=REDACTED_TICKETS, partitions_def=asset.partitions_def)
    def redacted_tickets() -> pd.DataFrame:
        return pd.DataFrame({"ticket_id": ["t-1", "t-2"], "subject": ["a", "b"], "message": ["x", "y"],
                             "resolved_at": [None, None]})

    @dg.asset(key=SERVED)
    def served() -> None:
        return None

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("ticket_batches", ["b1"])
        dg.materialize([redacted_tickets], partition_key="b1", instance=instance)
        result = dg.materialize([redacted_tickets, served, asset], selection=[asset.key], partition_key="b1",
                                instance=instance, raise_on_error=False,
                                resources={"vllm": LocalVllmResource(), "ray": RayResource(),
                                           "operations": OperationsResource(),
                                           "lake": dg.FilesystemIOManager(base_dir=str(tmp_path / "lake"))})
    assert not result.success
    failure = " ".join(str(e.event_specific_data.error.message) for e in result.all_events
                       if e.is_step_failure and e.event_specific_data.error)
    assert "nothing scored" in failure and f"endpoint {SPEC.endpoint!r} is down" in failure
    assert not result.asset_materializations_for_node(f"{SPEC.key_prefix}__predictions")


def test_unanswered_tickets_fail_the_batch_naming_the_first(state_dir: Path) -> None:
    """Past the health check, the requests themselves fail (the server answers /v1/models but not
    completions: a stand-in that refuses them with 503, as an overloaded vLLM does)."""
    from aiplat.scale.batch_inference import ScoringTarget, score_tickets
    from aiplat.scale.ray_cluster import RayCluster
    from tests.test_gateway import serve

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def refuse(_request):
        return JSONResponse({"error": "queue full"}, status_code=503)

    app = Starlette(routes=[Route("/v1/chat/completions", refuse, methods=["POST"])])
    tickets = pd.DataFrame({"ticket_id": ["t-1", "t-2", "t-3"], "subject": ["a", "b", "c"], "message": ["x", "y", "z"]})
    with serve(app) as url:
        scored = score_tickets(tickets, ScoringTarget(url, "m@1", "1", concurrency=2), RayCluster(), workers=1,
                               batch_size=2)
    assert [p.ticket_id for p in scored.predictions] == ["t-1", "t-2", "t-3"]  # order kept, nothing dropped
    assert len(scored.failed) == 3 and scored.failed[0].status == 503 and "queue full" in scored.failed[0].error
    assert scored.frame()["category"].isna().all()
