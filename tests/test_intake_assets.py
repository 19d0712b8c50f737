"""The landing sensor and the ingest assets, on the local runtime with a private state dir."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from aiplat.intake.batches import batch_key
from aiplat.provenance import sha256_bytes
from platform_defs.definitions import build_definitions
from resources.lake import LakeIOManager
from resources.landing_zone import LocalLandingZone
from tests.records import jsonl, kb_article, ticket


def land(state_dir: Path, dataset: str, name: str, data: bytes) -> Path:
    folder = state_dir / "landing" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    # mtime resolution: make sure a rewrite is seen as a new version of the file
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    return path


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    sensor = defs.resolve_sensor_def("landing_zone_sensor")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources={"landing_zone": defs.resources["landing_zone"]}
    ) as context:
        result = sensor(context)
    return result


def test_sensor_new_same_and_changed_file(state_dir: Path):
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    first = jsonl([ticket(i) for i in range(3)])
    land(state_dir, "tickets", "tickets-2026-09.jsonl", first)
    land(state_dir, "kb_articles", "kb-2026-09-30.jsonl", jsonl([kb_article(1)]))

    result = tick(defs, instance, None)
    requests = sorted(result.run_requests, key=lambda r: r.job_name)
    assert [r.job_name for r in requests] == ["ingest_kb_articles_batch", "ingest_tickets_batch"]
    tickets_request = requests[1]
    expected_key = batch_key("tickets-2026-09", sha256_bytes(first))
    assert tickets_request.partition_key == expected_key
    assert tickets_request.run_key == f"tickets:{sha256_bytes(first)}"
    added = {r.partitions_def_name: r.partition_keys for r in result.dynamic_partitions_requests}
    assert added == {"ticket_batches": [expected_key], "kb_batches": [requests[0].partition_key]}

    # Same file, nothing changed: no run.
    again = tick(defs, instance, result.cursor)
    assert again.run_requests == []
    # The same bytes landed a second time under another name: still no run.
    land(state_dir, "tickets", "tickets-2026-09-copy.jsonl", first)
    copy = tick(defs, instance, again.cursor)
    assert copy.run_requests == []
    # The file is rewritten with new content: a new batch with its own deterministic run key.
    changed = first + jsonl([ticket(99)])
    land(state_dir, "tickets", "tickets-2026-09.jsonl", changed)
    third = tick(defs, instance, copy.cursor)
    assert [r.run_key for r in third.run_requests] == [f"tickets:{sha256_bytes(changed)}"]
    assert third.run_requests[0].partition_key == batch_key("tickets-2026-09", sha256_bytes(changed))
    # A cursor-less evaluation (e.g. after a reset) gives the same run keys, which Dagster dedupes.
    assert {r.run_key for r in tick(defs, instance, None).run_requests} >= {tickets_request.run_key}


def _ingest(defs, instance, dataset: str, key: str, raise_on_error: bool = True):
    instance.add_dynamic_partitions({"tickets": "ticket_batches", "kb_articles": "kb_batches"}[dataset], [key])
    job = defs.resolve_job_def(f"ingest_{dataset}_batch")
    return job.execute_in_process(instance=instance, partition_key=key, raise_on_error=raise_on_error)


def test_ingest_writes_accepted_and_quarantined_rows_with_provenance(state_dir: Path):
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    lines = [json.dumps(ticket(i)).encode() for i in range(20)]
    lines[5] = lines[5][:30]
    lines[9] = json.dumps(ticket(9, channel="fax")).encode()
    data = b"\n".join(lines) + b"\n"
    land(state_dir, "tickets", "tickets-2026-10.jsonl", data)
    key = batch_key("tickets-2026-10", sha256_bytes(data))

    result = _ingest(defs, instance, "tickets", key)
    assert result.success

    lake = LakeIOManager(base_uri=str(state_dir / "lake"))
    raw = pd.read_parquet(lake.path_for(dg.AssetKey("raw_tickets"), key))
    quarantine = pd.read_parquet(lake.path_for(dg.AssetKey("raw_tickets_quarantine"), key))
    assert len(raw) == 18 and len(quarantine) == 2
    assert sorted(quarantine["line"]) == [6, 10]
    assert set(quarantine["reason_code"]) == {"malformed_json", "schema"}
    assert raw["_line"].tolist() == [i + 1 for i in range(20) if i not in (5, 9)]
    assert str(raw["created_at"].dtype) == "datetime64[ns, UTC]" or "UTC" in str(raw["created_at"].dtype)
    assert (raw["_batch"] == key).all() and (raw["_source_sha256"] == sha256_bytes(data)).all()

    event = instance.get_latest_materialization_event(dg.AssetKey("raw_tickets"))
    meta = event.asset_materialization.metadata
    assert meta["lines_read"].value == 20
    assert meta["accepted"].value + meta["quarantined"].value == 20
    assert meta["source_sha256"].value == sha256_bytes(data)
    assert meta["schema_version"].value == "1"
    assert meta["code_version"].value.startswith("0.1.0+g")
    assert meta["owner"].value == "team:platform"
    check = instance.get_latest_materialization_event(dg.AssetKey("raw_tickets_quarantine")).asset_materialization
    assert check.metadata["reason_malformed_json"].value == 1
    # 2 of 20 quarantined is above the 1% warning threshold.
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["quarantine_rate"] is False


def test_a_file_changed_after_registration_fails_clearly_and_keeps_the_good_batch(state_dir: Path):
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    data = jsonl([ticket(i) for i in range(4)])
    land(state_dir, "tickets", "tickets-2026-11.jsonl", data)
    key = batch_key("tickets-2026-11", sha256_bytes(data))
    assert _ingest(defs, instance, "tickets", key).success
    lake_file = LakeIOManager(base_uri=str(state_dir / "lake")).path_for(dg.AssetKey("raw_tickets"), key)
    before = Path(lake_file).read_bytes()

    land(state_dir, "tickets", "tickets-2026-11.jsonl", data + jsonl([ticket(50)]))
    result = _ingest(defs, instance, "tickets", key, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "changed after it was registered" in failure.message
    assert Path(lake_file).read_bytes() == before, "the previous good batch must stay in place"


def test_missing_landed_file_fails_with_its_name(state_dir: Path):
    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    result = _ingest(defs, instance, "kb_articles", "kb-2026-01-01-" + "0" * 12, raise_on_error=False)
    assert not result.success
    assert "no landed kb_articles file named kb-2026-01-01" in result.get_step_failure_events()[0].step_failure_data.error.message


def test_local_landing_zone_lists_only_jsonl(tmp_path: Path):
    (tmp_path / "tickets").mkdir()
    (tmp_path / "tickets" / "a.jsonl").write_text("{}\n")
    (tmp_path / "tickets" / "notes.txt").write_text("x")
    (tmp_path / "tickets" / "b.ndjson").write_text("{}\n")
    zone = LocalLandingZone(base_dir=str(tmp_path))
    assert [f.name for f in zone.list_files("tickets")] == ["a.jsonl", "b.ndjson"]
    assert zone.list_files("kb_articles") == []
