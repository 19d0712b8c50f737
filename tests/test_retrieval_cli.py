"""`aiplat index ...` against a real Milvus Lite server: search, status, backup, restore, rollback."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from aiplat.commands.index import cli
from aiplat.retrieval.chunking import chunk_articles
from aiplat.retrieval.index import build_index, embed_chunks
from aiplat.retrieval.queries import QUERY_SET
from aiplat.retrieval.sample_kb import sample_kb_articles
from aiplat.retrieval.settings import IndexSettings
from aiplat.retrieval.store import IndexStore


@pytest.fixture(scope="module")
def served(shared_milvus, shared_embedder):
    server, embedder = shared_milvus, shared_embedder
    store = IndexStore.connect(server.uri, settings=IndexSettings(alias="kb_cli", collection_prefix="kb_chunks"))
    embedded, _ = embed_chunks(chunk_articles(sample_kb_articles(10)), embedder, store)
    report = build_index(store, embedded, embedder.model_id, embedder.encode(list(QUERY_SET)))
    store.close()
    return server, report


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_search_prints_ranked_hits_from_the_alias(served, state_dir):
    server, report = served
    result = _run("search", "print a return label", "--k", "3", "--uri", server.uri, "--alias", "kb_cli")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(lines) == 3 and "return label" in result.output.lower()
    status = _run("status", "--uri", server.uri, "--alias", "kb_cli")
    assert f"alias kb_cli -> {report.collection}" in status.output and f"{report.row_count} rows" in status.output


def test_backup_restore_and_rollback_commands(served, state_dir, tmp_path):
    server, report = served
    conn = ["--uri", server.uri, "--alias", "kb_cli"]
    out = _run("backup", "--to", str(tmp_path / "bk"), *conn)
    assert out.exit_code == 0, out.output
    backup_id = out.output.split()[1].rstrip(":")
    assert (tmp_path / "bk" / backup_id / "manifest.json").is_file()

    restored = _run("restore", backup_id, "--from", str(tmp_path / "bk"), "--target", "kb_chunks_restored", "--serve", *conn)
    assert restored.exit_code == 0, restored.output
    assert f"{report.row_count} rows, key set verified" in restored.output
    assert "alias kb_cli -> kb_chunks_restored" in restored.output

    back = _run("rollback", report.collection, *conn)
    assert back.exit_code == 0 and f"alias kb_cli -> {report.collection} (was kb_chunks_restored)" in back.output

    (tmp_path / "bk" / backup_id / "schema.json").write_text("{}")
    broken = _run("restore", backup_id, "--from", str(tmp_path / "bk"), "--target", "kb_chunks_other", *conn)
    assert broken.exit_code == 1 and "schema.json is corrupted" in broken.output
    shutil.rmtree(tmp_path / "bk" / backup_id)
    gone = _run("restore", backup_id, "--from", str(tmp_path / "bk"), *conn)
    assert gone.exit_code == 1 and "has no manifest.json" in gone.output


@pytest.mark.slow
def test_unreachable_milvus_exits_non_zero_with_a_clear_message(state_dir):
    from aiplat.net import free_port

    result = _run("status", "--uri", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "unreachable while connecting" in result.output and "Traceback" not in result.output
