"""Grounding a prompt in the knowledge base: the top KB passages for a ticket, from the served
Milvus alias. The same functions fill a grounded model's training set (training time, `add_passages`)
and build its prompt for a request through the gateway (serving time, `grounded_prompt`): one query
(`ticket_query`), one retrieval (`retrieve`), one passage text and the fine-tune's own template
(aiplat.training.prompts.messages), so the two cannot drift."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from aiplat.training import prompts
from aiplat.training.prompts import PASSAGES_COLUMN


@dataclass(frozen=True)
class Passage:
    chunk_id: str  # what the request log records (never the text)
    text: str  # "title: text", whitespace collapsed, cut to max_chars


@dataclass(frozen=True)
class GroundedPrompt:
    messages: list[dict[str, str]]
    passage_ids: tuple[str, ...]


def ticket_query(subject: str, message: str) -> str:
    return f"{subject}\n{message}".strip()


def retrieve(store, embedder, queries: Sequence[str], top_k: int, max_chars: int) -> list[list[Passage]]:
    """Per query, its top_k passages from the served alias (empty ones dropped)."""
    if not queries:
        return []
    vectors = embedder.encode(list(queries))
    hits = store.search(store.settings.alias, vectors, top_k, output_fields=["title", "text"])
    out = []
    for row in hits:
        passages = [Passage(str(h["chunk_id"]), " ".join(f"{h.get('title', '')}: {h.get('text', '')}".split())[:max_chars])
                    for h in row]
        out.append([p for p in passages if p.text.strip(": ")])
    return out


def passages_text(passages: Sequence[Passage]) -> str:
    """The `kb_passages` value: passages joined by blank lines (aiplat.training.prompts.passages_of)."""
    return "\n\n".join(p.text for p in passages)


def top_passages(store, embedder, queries: Sequence[str], top_k: int, max_chars: int) -> list[str]:
    """Per query, its top_k passages as one `kb_passages` value."""
    return [passages_text(row) for row in retrieve(store, embedder, queries, top_k, max_chars)]


class EmbedderMismatch(RuntimeError):
    """The served index's vectors come from another embedding model than the queries would."""


def check_embedder(store, embedder) -> None:
    """Queries must be embedded by the model that embedded the served index (its rows carry that
    model's id): another model's vectors would retrieve unrelated passages without any error."""
    served = store.served_collection()
    if served is None:
        return  # nothing served: the search itself reports it
    sample = store.read(served, f"sampling {served}",
                        lambda: store.client.query(served, filter="", output_fields=["model_id"], limit=1))
    if sample and sample[0]["model_id"] != embedder.model_id:
        raise EmbedderMismatch(f"the served KB index {served} was embedded with {sample[0]['model_id']}; queries "
                               f"here would be embedded with {embedder.model_id}")


def add_passages(df: pd.DataFrame, store, embedder, top_k: int, max_chars: int, batch: int = 256) -> pd.DataFrame:
    """Training time: `df` (subject, message) with the `kb_passages` column retrieved for every row."""
    check_embedder(store, embedder)
    queries = [ticket_query(s, m) for s, m in zip(df["subject"].astype(str), df["message"].astype(str))]
    passages: list[str] = []
    for start in range(0, len(queries), batch):
        passages += top_passages(store, embedder, queries[start:start + batch], top_k, max_chars)
    return df.assign(**{PASSAGES_COLUMN: passages})


def grounded_prompt(ticket: Mapping, fmt: prompts.PromptFormat, store, embedder, top_k: int, max_chars: int,
                    features: Sequence[str] = ()) -> GroundedPrompt:
    """Serving time: the chat messages a training-set row of `ticket` (subject, message, features)
    becomes in the fine-tune, with its passages retrieved now; and which passages they were."""
    [passages] = retrieve(store, embedder, [ticket_query(str(ticket["subject"]), str(ticket["message"]))],
                          top_k, max_chars)
    row = {**ticket, PASSAGES_COLUMN: passages_text(passages)}
    return GroundedPrompt(prompts.messages(row, features, fmt), tuple(p.chunk_id for p in passages))
