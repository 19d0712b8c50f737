"""Grounding a prompt in the knowledge base: the top KB passages for a ticket, from the served
Milvus alias. The same function fills a grounded model's training set (training time) and its
prompts against the live endpoint (serving time), so both see passages retrieved the same way."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from aiplat.training.prompts import PASSAGES_COLUMN


def ticket_query(subject: str, message: str) -> str:
    return f"{subject}\n{message}".strip()


def top_passages(store, embedder, queries: Sequence[str], top_k: int, max_chars: int) -> list[str]:
    """Per query, its top_k passages ("title: text", each cut to max_chars) joined by blank lines."""
    if not queries:
        return []
    vectors = embedder.encode(list(queries))
    hits = store.search(store.settings.alias, vectors, top_k, output_fields=["title", "text"])
    out = []
    for row in hits:
        passages = [" ".join(f"{h.get('title', '')}: {h.get('text', '')}".split())[:max_chars] for h in row]
        out.append("\n\n".join(p for p in passages if p.strip(": ")))
    return out


def add_passages(df: pd.DataFrame, store, embedder, top_k: int, max_chars: int, batch: int = 256) -> pd.DataFrame:
    """`df` (subject, message) with the `kb_passages` column retrieved for every row."""
    queries = [ticket_query(s, m) for s, m in zip(df["subject"].astype(str), df["message"].astype(str))]
    passages: list[str] = []
    for start in range(0, len(queries), batch):
        passages += top_passages(store, embedder, queries[start:start + batch], top_k, max_chars)
    return df.assign(**{PASSAGES_COLUMN: passages})
