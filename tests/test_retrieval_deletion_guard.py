"""No silent loss in the index: a KB snapshot that would delete more than a configured share of the
served index is stopped by the blocking check `kb_index_deletion_guard` until an operator confirms
that exact count (run config or `aiplat index reindex --confirm-deletions N`), which is audited.

Real Milvus Lite server, real embedding model, real Dagster runs; the lake is a Parquet stand-in.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from aiplat.retrieval.diff import key_set_sha256
from aiplat.retrieval.guard import GUARD_CHECK, confirm_run_config
from aiplat.retrieval.lite_server import MilvusLiteServer
from aiplat.retrieval.sample_kb import sample_kb_articles
from aiplat.security.audit_log import AuditLog
from assets.retrieval import kb_index_deletion_guard, kb_index_recall, retrieval_assets
from resources.embeddings import EmbeddingResource
from resources.ray import RayResource
from resources.milvus import MilvusResource
from resources.operations import OperationsResource
from tests.test_retrieval_assets import ParquetIOManager, _snapshot, _source


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    with MilvusLiteServer(tmp_path_factory.mktemp("milvus") / "data") as server:
        yield server


@pytest.fixture
def setup(milvus_server, tmp_path, state_dir):
    tag = uuid.uuid4().hex[:6]
    milvus = MilvusResource(uri=milvus_server.uri, alias=f"kb_{tag}", collection_prefix=f"kbc_{tag}",
                            backup_uri=str(tmp_path / "backups"), retry_attempts=2)
    resources = {
        "milvus": milvus,
        "embeddings": EmbeddingResource(),
        "ray": RayResource(),
        "io_manager": ParquetIOManager(root=str(tmp_path / "lake")),
        "operations": OperationsResource(audit_log_path=str(tmp_path / "audit.jsonl")),
    }
    return resources, dg.DagsterInstance.ephemeral(), AuditLog(tmp_path / "audit.jsonl")


def _run(articles: pd.DataFrame, batch: str, resources, instance, run_config=None, tags=None):
    return dg.materialize(
        [_source(_snapshot(articles, batch)), *retrieval_assets, kb_index_recall, kb_index_deletion_guard],
        resources=resources, instance=instance, raise_on_error=False, run_config=run_config or {}, tags=tags or {},
    )


def _served(milvus: MilvusResource) -> tuple[str | None, int, str]:
    store = milvus.open_store()
    try:
        name = store.served_collection()
        return name, store.count(name), key_set_sha256(store.keys(name)["chunk_id"])
    finally:
        store.close()


def _guard(result) -> dg.AssetCheckEvaluation:
    [guard] = [c for c in result.get_asset_check_evaluations() if c.check_name == GUARD_CHECK]
    return guard


@pytest.mark.slow
def test_a_one_article_snapshot_is_blocked_until_the_count_is_confirmed(setup):
    resources, instance, audit = setup
    full = sample_kb_articles(20)
    assert _run(full, "b1", resources, instance).success
    before = _served(resources["milvus"])
    assert before[1] > 20

    # The incident: a one-article snapshot would take the served index from N rows to a handful.
    one = full[full.article_id == full.article_id.iloc[0]]
    blocked = _run(one, "b2", resources, instance)
    assert not blocked.success
    guard = _guard(blocked)
    assert not guard.passed and guard.blocking
    planned = guard.metadata["deleted"].value
    assert planned == before[1] - guard.metadata["snapshot_rows"].value > 0
    assert guard.metadata["served_rows"].value == before[1]
    assert f"{planned} of {before[1]}" in guard.description
    assert not blocked.asset_materializations_for_node("kb_index")
    assert _served(resources["milvus"]) == before, "a blocked snapshot must leave the served index as it was"

    # A confirmation for another count does not let it through ...
    wrong = _run(one, "b2", resources, instance, run_config=confirm_run_config(planned - 1))
    assert not wrong.success and not _guard(wrong).passed
    assert "confirmed " + str(planned - 1) in _guard(wrong).description
    assert _served(resources["milvus"]) == before

    # ... the exact count does, and who confirmed it is in the audit log.
    ok = _run(one, "b2", resources, instance, run_config=confirm_run_config(planned),
              tags={"aiplat/actor": "ops-alice", "aiplat/team": "team:search"})
    assert ok.success, [e.event_specific_data for e in ok.all_events if e.is_failure]
    assert _guard(ok).passed and _guard(ok).metadata["confirmed_by"].value == "ops-alice"
    name, rows, _ = _served(resources["milvus"])
    assert rows == before[1] - planned
    entries = [e for e in audit.entries() if e["event"] == "kb_index_deletions_confirmed"]
    assert len(entries) == 1
    assert entries[0]["deleted"] == planned and entries[0]["served_rows"] == before[1]
    # The run acted as the platform's service account; the launcher's tag is attribution only.
    assert entries[0]["requested_by"] == "ops-alice" and entries[0]["actor"] == "svc:dagster"
    assert entries[0]["collection"] == name
    audit.verify()

    # Re-landing the older, full snapshot on purpose: it only adds rows, so nothing stops it.
    back = _run(full, "b3", resources, instance)
    assert back.success and _guard(back).passed
    assert _served(resources["milvus"])[1] == before[1]


@pytest.mark.slow
def test_a_small_deletion_passes_and_the_share_is_configurable(setup):
    resources, instance, _audit = setup
    full = sample_kb_articles(20)
    assert _run(full, "b1", resources, instance).success
    rows = _served(resources["milvus"])[1]
    fewer = full[full.article_id != full.article_id.iloc[-1]]  # one article of 20: about 5%
    ok = _run(fewer, "b2", resources, instance)
    assert ok.success and _guard(ok).passed
    assert 0 < _guard(ok).metadata["deleted"].value < rows * 0.10

    m = resources["milvus"]
    strict = {**resources, "milvus": MilvusResource(uri=m.uri, alias=m.alias, collection_prefix=m.collection_prefix,
                                                    backup_uri=m.backup_uri, retry_attempts=2, max_delete_share=0.01)}
    fewer2 = fewer[fewer.article_id != fewer.article_id.iloc[-1]]
    blocked = _run(fewer2, "b3", strict, instance)
    assert not blocked.success and not _guard(blocked).passed
    assert _guard(blocked).metadata["max_delete_share"].value == 0.01


@pytest.mark.slow
def test_kb_index_alone_refuses_an_unconfirmed_mass_deletion(setup):
    """Materializing kb_index without its guard (a hand-picked selection in the UI) cannot bypass it."""
    resources, instance, _audit = setup
    full = sample_kb_articles(20)
    assert _run(full, "b1", resources, instance).success
    before = _served(resources["milvus"])
    one = full.head(1)
    assets = [_source(_snapshot(one, "b2")), *retrieval_assets]
    result = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False,
                            selection=["redacted_kb_articles", "kb_chunks", "kb_embeddings", "kb_index"])
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "kb_index_deletion_guard" in message and f"of {before[1]}" in message
    assert _served(resources["milvus"]) == before


def test_judge_needs_the_exact_count_above_the_share_only():
    from aiplat.retrieval.guard import DeletionPlan, judge

    def plan(deleted, served=200, share=0.10):
        return DeletionPlan("kbc_x", served, served - deleted, deleted, deleted, share, "h")

    assert judge(plan(20), None).passed  # exactly 10%: within
    assert not judge(plan(21), None).passed
    assert "would delete 199 of 200 rows" in judge(plan(199), None).description
    assert not judge(plan(199), 198).passed and not judge(plan(199), -1).passed
    decision = judge(plan(199), 199)
    assert decision.passed and decision.confirmed
    assert judge(plan(0, served=0), None).passed  # nothing served yet: the first build
