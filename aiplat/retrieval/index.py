"""Keep the KB index fresh: incremental upserts in place, or a verified rebuild beside the served
collection followed by an atomic alias swap when the model or index parameters change."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aiplat.retrieval.diff import ChunkDiff, diff_chunks, key_set_sha256
from aiplat.retrieval.embedding import Embedder
from aiplat.retrieval.recall import measure_recall
from aiplat.retrieval.store import SCALAR_FIELDS, IndexStore


class IndexVerificationError(RuntimeError):
    """A built collection failed verification; the alias was not moved."""


def embed_chunks(
    chunks: pd.DataFrame,
    embedder: Embedder,
    store: IndexStore | None = None,
    progress: Callable[[int], None] | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Vectors for every chunk. Vectors of chunk ids already in a collection made by the same
    model are read back from Milvus instead of being computed again: only new or changed chunks
    pay for the model. `encode` computes them (default: `embedder.encode` in this process; the
    asset passes one that runs large sets on Ray, resources.embeddings)."""
    reused = pd.DataFrame({"chunk_id": [], "vector": []})
    if store is not None and len(chunks):
        source = reuse_source(store, embedder)
        if source is not None:
            reused = store.fetch(source, chunks["chunk_id"].tolist(), ["chunk_id", "vector"])
    known = dict(zip(reused["chunk_id"], reused["vector"]))
    todo = chunks[~chunks["chunk_id"].isin(known)]
    fresh = (encode or embedder.encode)(todo["text"].tolist()) if len(todo) else np.zeros((0, embedder.dim), np.float32)
    if progress:
        progress(len(todo))
    known.update(zip(todo["chunk_id"], list(fresh)))
    out = chunks.copy()
    out["vector"] = [np.asarray(known[c], dtype=np.float32) for c in out["chunk_id"]]
    out["model_id"] = embedder.model_id
    return out, {"embedded": int(len(todo)), "reused": int(len(chunks) - len(todo)), "dim": embedder.dim}


def reuse_source(store: IndexStore, embedder: Embedder) -> str | None:
    """A collection whose vectors came from this very model: the one this model's settings name,
    or else the served one when only index parameters differ."""
    target = store.settings.collection_name(embedder.model_id, embedder.dim)
    if store.exists(target):
        return target
    served = store.served_collection()
    if served is None:
        return None
    sample = store.call(f"sampling {served}", lambda: store.client.query(served, filter="", output_fields=["model_id"], limit=1))
    if sample and sample[0]["model_id"] == embedder.model_id:
        return served
    return None


@dataclass
class IndexReport:
    collection: str
    previous_collection: str | None
    mode: str  # "incremental" (in place) or "rebuild" (new collection, then alias swap)
    diff: ChunkDiff
    row_count: int
    key_set_sha256: str
    recall: float
    alias: str
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "previous_collection": self.previous_collection or "",
            "alias": self.alias,
            "mode": self.mode,
            "row_count": self.row_count,
            "key_set_sha256": self.key_set_sha256,
            "recall_at_k": round(self.recall, 4),
            **self.diff.counts(),
            **self.extra,
        }


def sync_collection(
    store: IndexStore, collection: str, embedded: pd.DataFrame, progress: Callable[[int], None] | None = None
) -> ChunkDiff:
    """Upsert new/changed chunks, delete vanished ones. Idempotent: a rerun finds nothing to do."""
    existing = store.keys(collection)
    diff = diff_chunks(existing, embedded)
    if diff.to_upsert:
        rows = embedded[embedded["chunk_id"].isin(diff.to_upsert)].copy()
        rows["index_version"] = collection
        store.upsert(collection, rows[["chunk_id", *SCALAR_FIELDS, "vector"]], progress=progress)
    if diff.to_delete:
        store.delete(collection, diff.to_delete)
    store.flush(collection)
    return diff


def build_index(
    store: IndexStore,
    embedded: pd.DataFrame,
    model_id: str,
    query_vectors: np.ndarray,
    progress: Callable[[int], None] | None = None,
    before_swap: Callable[[str], None] | None = None,
) -> IndexReport:
    """Bring the index up to `embedded` (the full current chunk set with vectors).

    Same settings as the served collection: incremental upserts in place. New model or index
    parameters: fill a new collection beside it, verify row count, key set and recall, and only
    then move the alias (one atomic server-side operation). The previous collection stays for
    rollback. Any failure before the swap leaves the alias where it was.
    """
    if embedded["chunk_id"].duplicated().any():
        dupes = embedded.loc[embedded["chunk_id"].duplicated(), "chunk_id"].head(3).tolist()
        raise ValueError(f"duplicate chunk ids {dupes}: the chunk table must have one row per chunk")
    dim = int(len(embedded["vector"].iloc[0])) if len(embedded) else int(query_vectors.shape[1])
    target = store.settings.collection_name(model_id, dim)
    served = store.served_collection()
    mode = "incremental" if served == target else "rebuild"
    store.ensure_collection(target, dim)
    diff = sync_collection(store, target, embedded, progress=progress)

    expected_keys = key_set_sha256(embedded["chunk_id"])
    count = store.count(target)
    if count != len(embedded):
        raise IndexVerificationError(
            f"{target} holds {count} rows, expected {len(embedded)}; alias {store.settings.alias!r} left on {served}"
        )
    actual_keys = key_set_sha256(store.keys(target)["chunk_id"])
    if actual_keys != expected_keys:
        raise IndexVerificationError(
            f"{target} key set differs from the chunk table; alias {store.settings.alias!r} left on {served}"
        )
    matrix = np.stack(embedded["vector"].to_numpy()) if len(embedded) else np.zeros((0, dim), np.float32)
    recall = measure_recall(store, target, embedded["chunk_id"].tolist(), matrix, query_vectors)
    if recall < store.settings.recall_threshold:
        raise IndexVerificationError(
            f"{target} recall@{store.settings.recall_k}={recall:.3f} is below the threshold "
            f"{store.settings.recall_threshold}; alias {store.settings.alias!r} left on {served}"
        )
    if before_swap:
        before_swap(target)
    previous = store.point_alias(target)
    return IndexReport(
        collection=target,
        previous_collection=previous if previous != target else None,
        mode=mode,
        diff=diff,
        row_count=count,
        key_set_sha256=expected_keys,
        recall=recall,
        alias=store.settings.alias,
    )


def rollback(store: IndexStore, collection: str) -> str | None:
    """Point the alias back at a kept collection (after checking that it holds rows)."""
    if not store.exists(collection):
        raise ValueError(f"no collection {collection!r}; kept ones: {', '.join(store.collections()) or 'none'}")
    if store.count(collection) == 0:
        raise ValueError(f"collection {collection!r} is empty; refusing to serve it")
    return store.point_alias(collection)


def search_text(store: IndexStore, embedder: Embedder, query: str, k: int = 10) -> list[dict]:
    """Search the served alias for a free-text query."""
    vector = embedder.encode([query])
    fields = ["article_id", "chunk_index", "title", "text", "index_version"]
    return store.search(store.settings.alias, vector, k, output_fields=fields)[0]
