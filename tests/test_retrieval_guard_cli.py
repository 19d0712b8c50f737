"""The incident, replayed the way a user meets it: a full KB snapshot is landed and indexed, then a
one-article snapshot lands. Before: the served index went from N rows to 1 with every check green.
Now: `aiplat index reindex` stops, naming the count, the served index is untouched, and the exact
count confirmed with --confirm-deletions applies it (audited). Re-landing the older, full snapshot
under a new name on purpose brings it back. Real platform definitions, real ingest and redaction,
a real Milvus Lite server, a private DAGSTER_HOME and state dir.
"""

from __future__ import annotations

import re

import dagster as dg
import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.retrieval.lite_server import MilvusLiteServer
from aiplat.security.audit_log import AuditLog
from tests.identity_helpers import act_as
from tests.records import jsonl, kb_article


@pytest.fixture
def platform(tmp_path, state_dir, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    act_as(monkeypatch, "team:search", "ops-bob")
    with MilvusLiteServer(tmp_path / "milvus") as server:
        monkeypatch.setenv("AIPLAT_MILVUS_PORT", str(server.port))
        yield server


def _cli(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _served_rows() -> int:
    code, out = _cli("index", "status")
    assert code == 0, out
    served = re.search(r"alias kb_chunks -> (\S+)", out).group(1)
    return int(re.search(rf"\* {re.escape(served)}\s+(\d+) rows", out).group(1))


@pytest.mark.slow
def test_a_one_article_kb_snapshot_waits_for_a_confirmed_count(platform, tmp_path, state_dir):
    full = tmp_path / "kb-2026-10-01.jsonl"
    full.write_bytes(jsonl([kb_article(i) for i in range(20)]))
    one = tmp_path / "kb-2026-10-02.jsonl"
    one.write_bytes(jsonl([kb_article(0)]))

    assert _cli("ingest", str(full))[0] == 0
    code, out = _cli("index", "reindex")
    assert code == 0, out
    rows = _served_rows()
    assert rows >= 20

    assert _cli("ingest", str(one))[0] == 0
    code, out = _cli("index", "reindex")
    assert code != 0, out
    planned = rows - 1
    assert f"would delete {planned} of {rows} rows" in out and "--confirm-deletions" in out, out
    assert _served_rows() == rows, "blocked: the served index must stay as it was"

    code, out = _cli("index", "reindex", "--confirm-deletions", str(planned))
    assert code == 0, out
    assert _served_rows() == 1
    [entry] = [e for e in AuditLog().entries() if e["event"] == "kb_index_deletions_confirmed"]
    assert entry["deleted"] == planned and entry["requested_by"] == "ops-bob" and entry["actor"] == "svc:dagster"

    # On purpose: the older full snapshot, landed again under a new name, is a new batch (the
    # landing decision does not skip it as "already taken in") and becomes the current KB.
    from aiplat.commands._dagster import instance_and_defs
    from platform_defs.headless import pending_batches

    restored = tmp_path / "kb-2026-10-01-restored.jsonl"
    restored.write_bytes(full.read_bytes())
    instance, defs = instance_and_defs()
    with dg.build_resources({"landing_zone": defs.resources["landing_zone"]}) as resources:
        resources.landing_zone.land("kb_articles", restored.name, restored.read_bytes())
    [pending] = pending_batches(defs, instance)
    assert pending.key.startswith("kb-2026-10-01-restored-") and pending.attempt
    assert _cli("ingest", str(restored))[0] == 0
    code, out = _cli("index", "reindex")
    assert code == 0, out
    assert _served_rows() == rows
