"""recall@k of the Milvus index against exact brute-force search (numpy) on the same vectors."""

from __future__ import annotations

import numpy as np

from aiplat.retrieval.store import IndexStore


def exact_top_k(matrix: np.ndarray, ids: list[str], queries: np.ndarray, k: int, metric: str) -> list[list[str]]:
    if len(ids) == 0:
        return [[] for _ in range(len(queries))]
    m = np.asarray(matrix, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    if metric == "L2":
        scores = -((q**2).sum(1)[:, None] - 2 * q @ m.T + (m**2).sum(1)[None, :])
    elif metric == "COSINE":
        mn = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        scores = qn @ mn.T
    else:
        scores = q @ m.T
    k = min(k, len(ids))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in top]


def recall_at_k(approx: list[list[str]], exact: list[list[str]]) -> float:
    hits = sum(len(set(a) & set(e)) for a, e in zip(approx, exact))
    total = sum(len(e) for e in exact)
    return hits / total if total else 1.0


def measure_recall(
    store: IndexStore, collection: str, ids: list[str], matrix: np.ndarray, queries: np.ndarray
) -> float:
    """recall@k of `collection` (a name or the alias) for the query vectors, against exact search
    over (ids, matrix): the rows the collection is supposed to hold."""
    k = store.settings.recall_k
    exact = exact_top_k(matrix, ids, queries, k, store.settings.metric_type)
    approx = [[h["chunk_id"] for h in hits] for hits in store.search(collection, queries, k, output_fields=[])]
    return recall_at_k(approx, exact)


def collection_recall(store: IndexStore, collection: str, queries: np.ndarray) -> tuple[float, int]:
    """recall@k with the collection's own stored vectors as the exact reference."""
    rows = store.scan(collection, ["chunk_id", "vector"])
    matrix = np.asarray(rows["vector"].tolist(), dtype=np.float32) if len(rows) else np.zeros((0, 1), np.float32)
    return measure_recall(store, collection, rows["chunk_id"].tolist(), matrix, queries), len(rows)
