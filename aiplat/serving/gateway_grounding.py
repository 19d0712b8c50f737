"""Serving-time grounding in the gateway: a request to a grounded model's endpoint gets the prompt
that model was trained on, with its KB passages retrieved now.

Which endpoints are grounded, their system prompt, top_k and passage length come from the model
specs (`training.retrieval`); nothing here names a model. The client sends the ticket as one user
message (the training shape "subject: ...\\nmessage: ..." with optional feature lines, or free
text); the gateway replaces the messages with aiplat.retrieval.grounding.grounded_prompt's, the
function whose retrieval also fills the training set. A KB that cannot be searched is a 503 that
says so: the model never answers ungrounded. The passages used are named by chunk id (never by
text) in the request log's `grounding` field and the response's X-AIPLAT-KB-Passages header.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiplat.retrieval.grounding import check_embedder, grounded_prompt
from aiplat.training.data import PROMPT_FEATURES
from aiplat.training.prompts import PromptFormat, parse_user_prompt

log = logging.getLogger("aiplat.gateway")

PASSAGES_HEADER = "x-aiplat-kb-passages"
UNAVAILABLE_NOTE = "kb=unavailable"


@dataclass(frozen=True)
class GroundedEndpoint:
    endpoint: str
    model: str
    fmt: PromptFormat
    top_k: int
    max_chars: int


def grounded_endpoints(specs: Iterable) -> dict[str, GroundedEndpoint]:
    """endpoint name -> how its prompts are grounded, for every spec with `training.retrieval`."""
    return {s.endpoint: GroundedEndpoint(s.endpoint, s.name, s.prompt_format, s.training.retrieval.top_k,
                                         s.training.retrieval.max_passage_chars)
            for s in specs if s.grounded}


def passages_note(ids: tuple[str, ...]) -> str:
    """The request log's `grounding` value: chunk ids only (KB text is never logged)."""
    return "kb=" + (",".join(ids) or "none")


class GroundingRefused(Exception):
    def __init__(self, status: int, code: str, message: str, note: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.note = status, code, message, note


class Retriever:
    """The KB side: a Milvus store (opened on first use, reopened after any failure, so a Milvus that
    comes back is used again) and the embedder (loaded once), checked to be the one that embedded
    the served index at every (re)connection."""

    def __init__(self, connect: Callable[[], object], load_embedder: Callable[[], object]) -> None:
        self._connect, self._load_embedder = connect, load_embedder
        self._store = self._embedder = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the embedder ahead of the first grounded request (it takes seconds)."""
        try:
            self.parts()
        except Exception as e:  # noqa: BLE001 - Milvus may come up later; each request retries
            log.warning("grounding not ready yet: %s: %s", type(e).__name__, e)

    def parts(self) -> tuple[object, object]:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._load_embedder()
            if self._store is None:
                store = self._connect()
                try:  # once per connection: the index may have been rebuilt with another model since
                    check_embedder(store, self._embedder)
                except BaseException:
                    store.close()
                    raise
                self._store = store
            return self._store, self._embedder

    def forget_store(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None and hasattr(store, "close"):
            store.close()


class Grounding:
    def __init__(self, endpoints: Mapping[str, GroundedEndpoint], retriever: Retriever) -> None:
        self.endpoints, self.retriever = dict(endpoints), retriever

    def of(self, endpoint: str) -> GroundedEndpoint | None:
        return self.endpoints.get(endpoint)

    def apply(self, path: str, body: dict, grounded: GroundedEndpoint) -> tuple[dict, tuple[str, ...]]:
        """`body` with the grounded messages, and the passage ids; GroundingRefused otherwise. Blocking."""
        name = grounded.endpoint
        if not path.endswith("/chat/completions"):
            raise GroundingRefused(400, "grounded_chat_only", f"endpoint {name!r} grounds its prompt in the knowledge "
                                   "base and takes chat completions only (/v1/chat/completions)")
        turns = body.get("messages")
        if not (isinstance(turns, list) and len(turns) == 1 and isinstance(turns[0], dict)
                and turns[0].get("role") == "user" and isinstance(turns[0].get("content"), str)
                and turns[0]["content"].strip()):
            raise GroundingRefused(400, "grounded_prompt_shape", f"endpoint {name!r} builds its own prompt (its "
                                   "spec's system prompt and the KB passages): send the ticket as one user message "
                                   "with text content, no system message and no earlier turns")
        ticket, features = parse_user_prompt(turns[0]["content"], PROMPT_FEATURES)
        try:
            store, embedder = self.retriever.parts()
            prompt = grounded_prompt(ticket, grounded.fmt, store, embedder, grounded.top_k, grounded.max_chars, features)
        except Exception as e:  # any failure to search: refuse rather than answer ungrounded
            # The reason (with Milvus's address) goes to the gateway's own log, never to the caller.
            log.error("grounding failed for endpoint %s: %s: %s", name, type(e).__name__, e)
            self.retriever.forget_store()
            raise GroundingRefused(503, "grounding_unavailable", f"endpoint {name!r} answers only with passages from "
                                   "the knowledge base, which cannot be searched right now; the request was not sent "
                                   "to the model. Retry later", UNAVAILABLE_NOTE) from None
        return {**body, "messages": prompt.messages}, prompt.passage_ids
