"""Backup and restore of a KB collection to a local folder and to S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import uuid

import pytest

from aiplat.net import free_port
from aiplat.retrieval.artifacts import LocalFolderStore, open_store
from aiplat.retrieval.backup import BackupError, backup_collection, list_backups, restore_backup
from aiplat.retrieval.chunking import chunk_articles
from aiplat.retrieval.index import build_index, embed_chunks
from aiplat.retrieval.queries import QUERY_SET
from aiplat.retrieval.retry import RetryPolicy
from aiplat.retrieval.sample_kb import sample_kb_articles
from aiplat.retrieval.settings import IndexSettings
from aiplat.retrieval.store import IndexStore


@pytest.fixture(scope="module")
def milvus(shared_milvus):
    return shared_milvus


@pytest.fixture(scope="module")
def built(milvus, shared_embedder):
    """One served collection (14 articles) that every backup test reads from."""
    embedder = shared_embedder
    queries = embedder.encode(list(QUERY_SET))
    settings = IndexSettings(alias="kb_bk", collection_prefix="kbc_bk")
    store = IndexStore.connect(milvus.uri, settings=settings, retry=RetryPolicy(attempts=2, base_delay_s=0.1))
    embedded, _ = embed_chunks(chunk_articles(sample_kb_articles(14)), embedder, store)
    report = build_index(store, embedded, embedder.model_id, queries)
    yield store, report, queries
    store.close()


def _backup(built, artifacts):
    store, _, queries = built
    return backup_collection(store, artifacts, queries, queries=list(QUERY_SET))


def test_backup_then_restore_roundtrip_verifies_count_keys_and_top10(built, tmp_path):
    store, report, _ = built
    artifacts = LocalFolderStore(tmp_path / "backups")
    result = _backup(built, artifacts)
    m = result.manifest
    assert m["collection"] == report.collection and m["row_count"] == report.row_count
    assert m["key_set_sha256"] == report.key_set_sha256 and m["served_by_alias"] is True
    assert set(m["files"]) == {"rows-00000.parquet", "queries.parquet", "schema.json"}
    assert list_backups(artifacts) == [result.backup_id]

    target = f"kbc_bk_restored_{uuid.uuid4().hex[:6]}"
    restored = restore_backup(store, artifacts, result.backup_id, target=target, serve=True)
    assert restored["row_count"] == report.row_count
    assert restored["top_k_agreement"] >= 0.95
    assert store.served_collection() == target and restored["previous_collection"] == report.collection
    assert store.count(target) == report.row_count
    store.point_alias(report.collection)
    with pytest.raises(BackupError, match="already exists"):
        restore_backup(store, artifacts, result.backup_id, target=target)


@pytest.mark.parametrize("damage", ["corrupt_rows", "missing_rows", "missing_manifest", "manifest_count"])
def test_restore_of_a_damaged_backup_fails_loudly_and_creates_nothing(built, tmp_path, damage):
    store, report, _ = built
    artifacts = LocalFolderStore(tmp_path / "backups")
    result = _backup(built, artifacts)
    folder = tmp_path / "backups" / result.backup_id
    rows = folder / "rows-00000.parquet"
    expected = {
        "corrupt_rows": "rows-00000.parquet is corrupted",
        "missing_rows": "rows-00000.parquet is missing",
        "missing_manifest": "no manifest.json",
        "manifest_count": "files hold .* rows, manifest says",
    }[damage]
    if damage == "corrupt_rows":
        data = bytearray(rows.read_bytes())
        data[len(data) // 2] ^= 0xFF
        rows.write_bytes(bytes(data))
    elif damage == "missing_rows":
        rows.unlink()
    elif damage == "missing_manifest":
        (folder / "manifest.json").unlink()
    else:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["row_count"] += 1
        (folder / "manifest.json").write_text(json.dumps(manifest))
    target = f"kbc_bk_bad_{uuid.uuid4().hex[:6]}"
    with pytest.raises(BackupError, match=expected):
        restore_backup(store, artifacts, result.backup_id, target=target, serve=True)
    assert not store.exists(target)
    assert store.served_collection() == report.collection


def test_backup_to_s3_and_restore_from_it(built, tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="kb-backups")
        artifacts = open_store("s3://kb-backups/milvus", s3_endpoint_url=endpoint)
        result = _backup(built, artifacts)
        assert result.location.startswith("s3://kb-backups/milvus/")
        keys = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="kb-backups")["Contents"]
        assert {k["Key"].rsplit("/", 1)[1] for k in keys} >= {"manifest.json", "rows-00000.parquet", "schema.json"}
        store, report, _ = built
        target = f"kbc_bk_s3_{uuid.uuid4().hex[:6]}"
        restored = restore_backup(store, artifacts, result.backup_id, target=target)
        assert restored["row_count"] == report.row_count and store.count(target) == report.row_count
        boto3.client("s3", endpoint_url=endpoint).delete_object(
            Bucket="kb-backups", Key=f"milvus/{result.backup_id}/queries.parquet"
        )
        with pytest.raises(BackupError, match="queries.parquet is missing"):
            restore_backup(store, artifacts, result.backup_id, target=target + "_2")
    finally:
        server.stop()
