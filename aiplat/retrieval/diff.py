"""What changed between the chunks in a collection and the chunks the KB snapshot asks for."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class ChunkDiff:
    """A chunk position is (article_id, chunk_index). Ids hash the content, so a position whose
    id changed was updated, a new position was added, and a position that vanished was deleted."""

    to_upsert: list[str]
    to_delete: list[str]
    added: int
    updated: int
    deleted: int
    unchanged: int
    articles_added: int
    articles_updated: int
    articles_deleted: int
    articles_unchanged: int

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "articles_added": self.articles_added,
            "articles_updated": self.articles_updated,
            "articles_deleted": self.articles_deleted,
            "articles_unchanged": self.articles_unchanged,
        }


def diff_chunks(existing: pd.DataFrame, desired: pd.DataFrame) -> ChunkDiff:
    """Both frames have chunk_id, article_id, chunk_index."""
    old_ids = set(existing["chunk_id"])
    new_ids = set(desired["chunk_id"])
    old_pos = {(a, int(i)) for a, i in zip(existing["article_id"], existing["chunk_index"])}
    changed = desired[~desired["chunk_id"].isin(old_ids)]
    positions = [(a, int(i)) for a, i in zip(changed["article_id"], changed["chunk_index"])]
    updated = sum(1 for p in positions if p in old_pos)
    new_pos = {(a, int(i)) for a, i in zip(desired["article_id"], desired["chunk_index"])}
    stale = existing[~existing["chunk_id"].isin(new_ids)]
    deleted = sum(1 for a, i in zip(stale["article_id"], stale["chunk_index"]) if (a, int(i)) not in new_pos)

    old_articles = set(existing["article_id"])
    new_articles = set(desired["article_id"])
    touched = set(changed["article_id"]) | (set(stale["article_id"]) & new_articles)
    return ChunkDiff(
        to_upsert=sorted(changed["chunk_id"]),
        to_delete=sorted(stale["chunk_id"]),
        added=len(positions) - updated,
        updated=updated,
        deleted=deleted,
        unchanged=len(new_ids & old_ids),
        articles_added=len(new_articles - old_articles),
        articles_updated=len((touched & old_articles) & new_articles),
        articles_deleted=len(old_articles - new_articles),
        articles_unchanged=len((new_articles & old_articles) - touched),
    )


def key_set_sha256(ids: Iterable[str]) -> str:
    """Order-free fingerprint of a set of primary keys (sorted, newline-joined, sha256)."""
    h = hashlib.sha256()
    for key in sorted(set(ids)):
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()
