"""Backups of a KB collection: rows (Parquet), schema and index settings, the fixed query set with
its top-k answers, and a manifest with counts, per-file sha256 and the primary-key set's sha256.
Restore checks every one of them and fails loudly on the first that does not hold."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aiplat.retrieval.artifacts import ArtifactMissingError, ArtifactStore
from aiplat.retrieval.diff import key_set_sha256
from aiplat.retrieval.store import PRIMARY_KEY, SCALAR_FIELDS, VECTOR_FIELD, IndexStore

FORMAT_VERSION = 1
ROWS_PER_FILE = 50_000


class BackupError(RuntimeError):
    """A backup is incomplete, corrupted or does not restore to what it recorded."""


@dataclass(frozen=True)
class BackupResult:
    backup_id: str
    location: str
    manifest: dict[str, Any]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


def backup_collection(
    index: IndexStore,
    artifacts: ArtifactStore,
    query_vectors: np.ndarray,
    collection: str | None = None,
    backup_id: str | None = None,
    queries: list[str] | None = None,
) -> BackupResult:
    """Back up `collection` (default: the one the alias serves)."""
    name = collection or index.served_collection()
    if name is None:
        raise BackupError(f"alias {index.settings.alias!r} serves nothing and no collection was named")
    fields = [PRIMARY_KEY, *SCALAR_FIELDS, VECTOR_FIELD]
    rows = index.scan(name, fields).sort_values(PRIMARY_KEY).reset_index(drop=True)
    if rows.empty:
        raise BackupError(f"collection {name} is empty; nothing to back up")
    dim = len(rows[VECTOR_FIELD].iloc[0])
    rows[VECTOR_FIELD] = [np.asarray(v, dtype=np.float32) for v in rows[VECTOR_FIELD]]
    created = datetime.now(UTC)
    backup_id = backup_id or f"{name}-{created:%Y%m%dT%H%M%S%fZ}"

    files: dict[str, dict[str, Any]] = {}

    def put(key: str, data: bytes, nrows: int | None = None) -> None:
        artifacts.put(f"{backup_id}/{key}", data)
        files[key] = {"sha256": _sha(data), "bytes": len(data), **({"rows": nrows} if nrows is not None else {})}

    for part, start in enumerate(range(0, len(rows), ROWS_PER_FILE)):
        chunk = rows.iloc[start : start + ROWS_PER_FILE]
        put(f"rows-{part:05d}.parquet", _parquet_bytes(chunk), len(chunk))

    k = index.settings.recall_k
    answers = index.search(name, query_vectors, k, output_fields=[])
    qdf = pd.DataFrame(
        {
            "query": queries or [f"q{i}" for i in range(len(query_vectors))],
            "vector": [np.asarray(v, dtype=np.float32) for v in query_vectors],
            "top_ids": [[h["chunk_id"] for h in hits] for hits in answers],
        }
    )
    put("queries.parquet", _parquet_bytes(qdf), len(qdf))
    described = index.call(f"describing {name}", lambda: index.client.describe_collection(name))
    schema = {
        "fields": [
            {"name": f["name"], "type": str(f["type"]), "params": f.get("params", {}), "is_primary": f.get("is_primary", False)}
            for f in described["fields"]
        ],
        "dim": dim,
        "index": _index_description(index, name),
    }
    put("schema.json", json.dumps(schema, indent=2, sort_keys=True, default=str).encode())
    manifest = {
        "format_version": FORMAT_VERSION,
        "backup_id": backup_id,
        "collection": name,
        "alias": index.settings.alias,
        "served_by_alias": name == index.served_collection(),
        "created_at": created.isoformat(),
        "row_count": int(len(rows)),
        "article_count": int(rows["article_id"].nunique()),
        "key_set_sha256": key_set_sha256(rows[PRIMARY_KEY]),
        "model_ids": sorted(rows["model_id"].unique().tolist()),
        "k": k,
        "files": files,
    }
    # The manifest goes last: a backup without one is visibly unfinished.
    artifacts.put(f"{backup_id}/manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
    return BackupResult(backup_id=backup_id, location=f"{artifacts.uri}/{backup_id}", manifest=manifest)


def _index_description(index: IndexStore, name: str) -> dict[str, Any]:
    """The index the collection really has. Build parameters are not reported back by Milvus, so
    they come from the settings when the type matches, else the type's defaults are used."""
    desc = index.call(f"describing the index of {name}", lambda: index.client.describe_index(name, VECTOR_FIELD))
    same = desc.get("index_type") == index.settings.index_type
    return {
        "index_type": desc.get("index_type", index.settings.index_type),
        "metric_type": desc.get("metric_type", index.settings.metric_type),
        "index_params": dict(index.settings.index_params) if same else {},
        "search_params": dict(index.settings.search_params) if same else {},
    }


def _read_verified(artifacts: ArtifactStore, backup_id: str, manifest: dict[str, Any], key: str) -> bytes:
    meta = manifest["files"].get(key)
    if meta is None:
        raise BackupError(f"backup {backup_id}: manifest lists no file {key!r}")
    try:
        data = artifacts.get(f"{backup_id}/{key}")
    except ArtifactMissingError as exc:
        raise BackupError(f"backup {backup_id}: file {key} is missing ({exc})") from exc
    if _sha(data) != meta["sha256"]:
        raise BackupError(
            f"backup {backup_id}: file {key} is corrupted (sha256 {_sha(data)[:16]}... != manifest {meta['sha256'][:16]}...)"
        )
    return data


def read_manifest(artifacts: ArtifactStore, backup_id: str) -> dict[str, Any]:
    try:
        raw = artifacts.get(f"{backup_id}/manifest.json")
    except ArtifactMissingError as exc:
        raise BackupError(f"backup {backup_id} has no manifest.json: incomplete or not a backup ({exc})") from exc
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BackupError(f"backup {backup_id}: manifest.json is not valid JSON ({exc})") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"backup {backup_id}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def list_backups(artifacts: ArtifactStore) -> list[str]:
    return sorted({k.split("/", 1)[0] for k in artifacts.list() if k.endswith("/manifest.json")})


def restore_backup(
    index: IndexStore,
    artifacts: ArtifactStore,
    backup_id: str,
    target: str | None = None,
    serve: bool = False,
) -> dict[str, Any]:
    """Recreate the collection and verify count, key-set hash and the top-k answers of the query set.

    Every file is checked against the manifest before anything is written to Milvus. A restored
    collection that fails verification is dropped again; the alias moves only with serve=True and
    only after verification passed.
    """
    manifest = read_manifest(artifacts, backup_id)
    schema = json.loads(_read_verified(artifacts, backup_id, manifest, "schema.json"))
    row_files = sorted(k for k in manifest["files"] if k.startswith("rows-"))
    parts = [pq.read_table(io.BytesIO(_read_verified(artifacts, backup_id, manifest, k))).to_pandas() for k in row_files]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    queries = pq.read_table(io.BytesIO(_read_verified(artifacts, backup_id, manifest, "queries.parquet"))).to_pandas()
    if len(rows) != manifest["row_count"]:
        raise BackupError(f"backup {backup_id}: files hold {len(rows)} rows, manifest says {manifest['row_count']}")
    if key_set_sha256(rows[PRIMARY_KEY]) != manifest["key_set_sha256"]:
        raise BackupError(f"backup {backup_id}: primary-key set of the rows does not match the manifest hash")

    idx = schema["index"]
    settings = replace(
        index.settings,
        index_type=idx["index_type"],
        metric_type=idx["metric_type"],
        index_params=idx["index_params"],
        search_params=idx["search_params"],
    )
    store = IndexStore(client=index.client, uri=index.uri, settings=settings, retry=index.retry)
    name = target or manifest["collection"]
    if store.exists(name):
        raise BackupError(f"collection {name} already exists; restore into a new name (target=...)")
    store.ensure_collection(name, int(schema["dim"]))
    try:
        store.upsert(name, rows)
        store.flush(name)
        count = store.count(name)
        if count != manifest["row_count"]:
            raise BackupError(f"restored {name} holds {count} rows, the backup {manifest['row_count']}")
        if key_set_sha256(store.keys(name)[PRIMARY_KEY]) != manifest["key_set_sha256"]:
            raise BackupError(f"restored {name}: primary-key set hash differs from the backup's")
        vectors = np.stack(queries["vector"].to_numpy())
        answers = store.search(name, vectors, int(manifest["k"]), output_fields=[])
        overlaps = [
            len(set(h["chunk_id"] for h in got) & set(want)) / max(len(want), 1)
            for got, want in zip(answers, queries["top_ids"])
        ]
        agreement = float(np.mean(overlaps)) if overlaps else 1.0
        if agreement < settings.recall_threshold:
            raise BackupError(
                f"restored {name}: top-{manifest['k']} answers agree {agreement:.3f} with the backup's, "
                f"below {settings.recall_threshold}"
            )
    except BaseException:
        store.call(f"dropping failed restore {name}", lambda: store.client.drop_collection(name))
        raise
    previous = store.point_alias(name) if serve else None
    return {
        "backup_id": backup_id,
        "collection": name,
        "row_count": count,
        "key_set_sha256": manifest["key_set_sha256"],
        "top_k_agreement": agreement,
        "served": serve,
        "previous_collection": previous,
    }
