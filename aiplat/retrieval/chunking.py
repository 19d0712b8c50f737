"""Deterministic chunking of redacted KB articles.

A chunk's id is a hash of (article id, chunk index, chunk text), so the same article text always
gives the same ids: upserts by id are idempotent and a changed paragraph shows up as a new id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pandas as pd

CHUNK_COLUMNS = ["chunk_id", "article_id", "chunk_index", "title", "product", "category", "text"]
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class ChunkingConfig:
    """Sizes are in whitespace-separated words: all-MiniLM-L6-v2 truncates at 256 word pieces,
    and 160 words stay below that for ordinary English."""

    max_words: int = 160
    overlap_words: int = 32

    def __post_init__(self) -> None:
        if self.max_words < 8:
            raise ValueError(f"max_words={self.max_words} is too small (at least 8)")
        if not 0 <= self.overlap_words < self.max_words:
            raise ValueError(f"overlap_words={self.overlap_words} must be in [0, max_words={self.max_words})")


def chunk_id(article_id: str, index: int, text: str) -> str:
    digest = hashlib.sha256(f"{article_id}\x1f{index}\x1f{text}".encode()).hexdigest()
    return digest[:32]


def _windows(words: list[str], size: int, overlap: int) -> list[list[str]]:
    if len(words) <= size:
        return [words]
    step = size - overlap
    out = []
    for start in range(0, len(words), step):
        out.append(words[start : start + size])
        if start + size >= len(words):
            break
    return out


def split_text(body: str, config: ChunkingConfig = ChunkingConfig()) -> list[str]:
    """Paragraphs are packed together up to max_words; a paragraph longer than that is cut into
    overlapping windows, so no sentence is lost at a window edge."""
    pieces: list[list[str]] = []
    for paragraph in _PARAGRAPH_BREAK.split(body.strip()):
        words = paragraph.split()
        if words:
            pieces.extend(_windows(words, config.max_words, config.overlap_words))
    chunks: list[list[str]] = []
    current: list[str] = []
    for piece in pieces:
        if current and len(current) + len(piece) > config.max_words:
            chunks.append(current)
            current = []
        current = current + piece
    if current:
        chunks.append(current)
    return [" ".join(c) for c in chunks]


def chunk_articles(articles: pd.DataFrame, config: ChunkingConfig = ChunkingConfig()) -> pd.DataFrame:
    """One row per chunk, ordered by article id then chunk index. The title heads every chunk's
    text so a chunk found on its own still says what it is about."""
    missing = {"article_id", "title", "body"} - set(articles.columns)
    if missing:
        raise ValueError(f"KB articles lack column(s) {sorted(missing)}; got {sorted(articles.columns)}")
    dupes = articles["article_id"][articles["article_id"].duplicated()].unique().tolist()
    if dupes:
        raise ValueError(f"KB snapshot has duplicate article_id(s) {dupes[:5]}: one row per article expected")
    rows = []
    for rec in articles.sort_values("article_id").itertuples(index=False):
        article_id = str(rec.article_id)
        title = str(rec.title).strip()
        if not isinstance(rec.body, str) or not rec.body.strip():
            raise ValueError(f"KB article {article_id!r} has an empty body; nothing to index")
        for i, piece in enumerate(split_text(rec.body, config)):
            text = f"{title}\n\n{piece}" if title else piece
            rows.append(
                {
                    "chunk_id": chunk_id(article_id, i, text),
                    "article_id": article_id,
                    "chunk_index": i,
                    "title": title,
                    "product": str(getattr(rec, "product", "") or ""),
                    "category": str(getattr(rec, "category", "") or ""),
                    "text": text,
                }
            )
    return pd.DataFrame(rows, columns=CHUNK_COLUMNS).astype({"chunk_index": "int64"})


def latest_kb_snapshot(df: pd.DataFrame) -> pd.DataFrame:
    """KB files are full snapshots: only the latest landed batch describes the KB as it is now.

    Uses the intake package's combiner where it exists, so there is one definition of "latest".
    """
    try:
        from aiplat.intake.combine import current_kb_articles  # type: ignore[import-not-found]
    except ImportError:
        current_kb_articles = None
    if current_kb_articles is not None:
        return current_kb_articles(df)
    if df.empty or "_batch" not in df.columns:
        return df.reset_index(drop=True)
    # Partitions arrive concatenated in landing order, so the last row's batch is the newest.
    latest = df["_batch"].iloc[-1]
    return df[df["_batch"] == latest].reset_index(drop=True)
