"""No silent loss at intake: awkward file names and retried content, on both landing zones.

Each landed file is either taken in (a valid, unique batch key and an ingest that finds exactly
that file) or refused loudly. The local zone is a folder; the S3 zone talks to a real moto server
on 127.0.0.1 (no AWS here). The ingest asset runs for real, writing Parquet to a private lake.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pandas as pd
import pytest
from dagster_aws.s3 import S3Resource
from moto.server import ThreadedMotoServer

from aiplat.intake.batches import batch_key, key_stem, split_batch_key
from aiplat.intake.landing import LandingCursor, find_new_batches, intake_status
from aiplat.net import free_port
from aiplat.provenance import sha256_bytes
from assets.intake import ingest_kb_articles, ingest_tickets
from resources.lake import LakeIOManager
from resources.landing_zone import LandingZone, LocalLandingZone, S3LandingZone
from tests.records import jsonl, ticket

# Dagster dynamic partition keys shown in the UI and URLs: plain characters only.
VALID_KEY = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def zone(request, tmp_path: Path) -> LandingZone:
    if request.param == "local":
        return LocalLandingZone(base_dir=str(tmp_path / "landing"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    ).create_bucket(Bucket=bucket)
    s3 = S3Resource(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    return S3LandingZone(s3=s3, bucket=bucket, prefix="landing")


def _ingest(zone: LandingZone, instance: dg.DagsterInstance, lake: Path, key: str, tags: dict | None = None):
    instance.add_dynamic_partitions("ticket_batches", [key])
    return dg.materialize(
        [ingest_tickets],
        partition_key=key,
        instance=instance,
        resources={"landing_zone": zone, "io_manager": LakeIOManager(base_uri=str(lake))},
        raise_on_error=False,
        tags=tags or {},
    )


def _raw(lake: Path, key: str) -> pd.DataFrame:
    return pd.read_parquet(LakeIOManager(base_uri=str(lake)).path_for(dg.AssetKey("raw_tickets"), key))


def _take_in_everything(zone: LandingZone, tmp_path: Path) -> tuple[list, dict[str, pd.DataFrame]]:
    """What the sensor decides, then one real ingest run per batch."""
    instance = dg.DagsterInstance.ephemeral()
    batches, _notes = find_new_batches(zone, ["tickets"], LandingCursor(), intake_status(instance))
    frames = {}
    for b in batches:
        result = _ingest(zone, instance, tmp_path / "lake", b.key)
        assert result.success, f"{b.uri}: ingest failed"
        frames[b.uri] = _raw(tmp_path / "lake", b.key)
    return batches, frames


def test_a_name_with_spaces_is_taken_in(zone: LandingZone, tmp_path: Path):
    data = jsonl([ticket(i) for i in range(3)])
    landed = zone.land("tickets", "ticket export (Sep 2026).jsonl", data)
    batches, frames = _take_in_everything(zone, tmp_path)
    assert [b.uri for b in batches] == [landed.uri]
    assert VALID_KEY.match(batches[0].key), batches[0].key
    assert len(frames[landed.uri]) == 3
    assert set(frames[landed.uri]["_source_uri"]) == {landed.uri}


def test_stems_over_80_characters_sharing_a_prefix_are_both_taken_in(zone: LandingZone, tmp_path: Path):
    prefix = "tickets-exported-by-the-crm-nightly-job-for-the-emea-region-" + "x" * 40
    a = zone.land("tickets", prefix + "-part-a.jsonl", jsonl([ticket(i) for i in range(2)]))
    b = zone.land("tickets", prefix + "-part-b.jsonl", jsonl([ticket(i) for i in range(10, 15)]))
    batches, frames = _take_in_everything(zone, tmp_path)
    keys = [x.key for x in batches]
    assert len(keys) == 2 and len(set(keys)) == 2, keys
    assert all(VALID_KEY.match(k) for k in keys), keys
    assert len(frames[a.uri]) == 2 and len(frames[b.uri]) == 5
    assert set(frames[b.uri]["ticket_id"]) == {f"T-{i:06d}" for i in range(10, 15)}


def test_the_same_stem_with_two_suffixes_is_taken_in_twice(zone: LandingZone, tmp_path: Path):
    j = zone.land("tickets", "x.jsonl", jsonl([ticket(1)]))
    n = zone.land("tickets", "x.ndjson", jsonl([ticket(2), ticket(3)]))
    batches, frames = _take_in_everything(zone, tmp_path)
    assert len({b.key for b in batches}) == 2
    assert set(frames[j.uri]["ticket_id"]) == {"T-000001"}
    assert set(frames[n.uri]["ticket_id"]) == {"T-000002", "T-000003"}
    assert set(frames[n.uri]["_source_uri"]) == {n.uri}


def test_an_empty_or_odd_stem_gets_a_valid_key_that_splits_back():
    for stem in ("", "   ", "übersicht", "a/b\\c"):
        key = batch_key(stem, "a" * 64)
        assert VALID_KEY.match(key), key
        assert split_batch_key(key) == (key_stem(stem), "a" * 12)


def test_a_renamed_copy_of_a_file_whose_run_failed_is_taken_in(zone: LandingZone, tmp_path: Path):
    instance = dg.DagsterInstance.ephemeral()
    good = jsonl([ticket(i) for i in range(4)])
    zone.land("tickets", "tickets-2026-12.jsonl", good)
    cursor = LandingCursor()
    first, _ = find_new_batches(zone, ["tickets"], cursor, intake_status(instance))
    assert len(first) == 1
    # The producer overwrites the file before the run starts: the run fails (loudly) ...
    zone.land("tickets", "tickets-2026-12.jsonl", good + jsonl([ticket(99)]))
    tags = {"aiplat/source_sha256": first[0].sha256, "aiplat/source_uri": first[0].uri}
    failed = _ingest(zone, instance, tmp_path / "lake", first[0].key, tags=tags)
    assert not failed.success
    # ... and lands the original bytes again under a new name: that copy is taken in, not skipped
    # as "already taken in" (nothing of it ever was).
    copy = zone.land("tickets", "tickets-2026-12-resend.jsonl", good)
    again, notes = find_new_batches(zone, ["tickets"], cursor, intake_status(instance))
    retry = [b for b in again if b.sha256 == first[0].sha256]
    assert [b.uri for b in retry] == [copy.uri], notes
    assert retry[0].run_key != first[0].run_key  # Dagster would drop a reused run key
    assert any("failed" in n for n in notes), notes
    assert _ingest(zone, instance, tmp_path / "lake", retry[0].key, tags={"aiplat/source_sha256": retry[0].sha256}).success
    assert len(_raw(tmp_path / "lake", retry[0].key)) == 4

    # Once taken in, a further renamed copy is a duplicate and makes no run (with a note).
    zone.land("tickets", "tickets-2026-12-again.jsonl", good)
    later, notes = find_new_batches(zone, ["tickets"], cursor, intake_status(instance))
    assert [b for b in later if b.sha256 == first[0].sha256] == []
    assert any("already taken in" in n for n in notes), notes


def test_the_landing_sensor_retries_failed_content_through_dagster(tmp_path: Path, state_dir: Path):
    """The same, through the sensor definition the daemon evaluates (local runtime)."""
    from platform_defs.definitions import build_definitions

    defs = build_definitions()
    instance = dg.DagsterInstance.ephemeral()
    zone = defs.resources["landing_zone"]
    good = jsonl([ticket(i) for i in range(2)])
    zone.land("tickets", "t-1.jsonl", good)

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources={"landing_zone": zone}) as ctx:
            return defs.resolve_sensor_def("landing_zone_sensor")(ctx)

    first = tick(None)
    (request,) = first.run_requests
    zone.land("tickets", "t-1.jsonl", good + b"{}\n")
    instance.add_dynamic_partitions("ticket_batches", [request.partition_key])
    run = defs.resolve_job_def("ingest_tickets_batch").execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False
    )
    assert not run.success
    zone.land("tickets", "t-1 (resent).jsonl", good)
    second = tick(first.cursor)
    assert [r.tags["aiplat/source_uri"] for r in second.run_requests if r.tags["aiplat/source_sha256"] == request.tags["aiplat/source_sha256"]] == [
        zone.find("tickets", "t-1 (resent)").uri
    ]


def test_an_older_kb_snapshot_relanded_under_a_new_name_becomes_current_but_a_reset_cursor_reverts_nothing(
    tmp_path: Path,
):
    from tests.records import kb_article

    zone = LocalLandingZone(base_dir=str(tmp_path / "landing"))
    instance = dg.DagsterInstance.ephemeral()
    status = intake_status(instance, {"kb_articles": "kb_batches"})

    def take_in(batches):
        for b in batches:
            instance.add_dynamic_partitions("kb_batches", [b.key])
            assert dg.materialize([ingest_kb_articles], partition_key=b.key, instance=instance, resources={
                "landing_zone": zone, "io_manager": LakeIOManager(base_uri=str(tmp_path / "lake"))}).success

    old = jsonl([kb_article(i) for i in range(5)])
    zone.land("kb_articles", "kb-2026-10-01.jsonl", old)
    cursor = LandingCursor()
    take_in(find_new_batches(zone, ["kb_articles"], cursor, status)[0])
    zone.land("kb_articles", "kb-2026-10-02.jsonl", jsonl([kb_article(0)]))
    take_in(find_new_batches(zone, ["kb_articles"], cursor, status)[0])

    # A sensor whose cursor was reset sees both files again: both are taken in, nothing reverts.
    assert find_new_batches(zone, ["kb_articles"], LandingCursor(), status)[0] == []

    # The operator re-lands the older snapshot under a new name, on purpose: a new, latest batch.
    copy = zone.land("kb_articles", "kb-2026-10-01-restored.jsonl", old)
    batches, notes = find_new_batches(zone, ["kb_articles"], cursor, status)
    assert [b.uri for b in batches] == [copy.uri] and batches[0].attempt, notes
    assert any("re-landed" in n for n in notes), notes
    take_in(batches)
    assert instance.get_dynamic_partitions("kb_batches")[-1] == batches[0].key
    # Now it is current again: landing it a third time is a plain duplicate.
    zone.land("kb_articles", "kb-2026-10-01-again.jsonl", old)
    assert find_new_batches(zone, ["kb_articles"], cursor, status)[0] == []


def test_files_the_platform_does_not_take_are_named_once_not_skipped_silently(zone: LandingZone, tmp_path: Path):
    instance = dg.DagsterInstance.ephemeral()
    upper = zone.land("tickets", "EXPORT.JSONL", jsonl([ticket(1)]))
    zone.land("tickets", "tickets-2026-09.json", jsonl([ticket(2)]))
    zone.land("tickets", "notes.txt", b"hello")
    cursor = LandingCursor()
    batches, notes = find_new_batches(zone, ["tickets"], cursor, intake_status(instance))
    assert [b.uri for b in batches] == [upper.uri]  # the suffix is matched case-insensitively
    ignored = [n for n in notes if n.startswith("IGNORED")]
    assert len(ignored) == 2 and any("tickets-2026-09.json" in n and ".jsonl" in n for n in ignored), notes
    # Said once per file version, not on every tick.
    _, again = find_new_batches(zone, ["tickets"], cursor, intake_status(instance))
    assert not [n for n in again if n.startswith("IGNORED")]
