"""Declared schemas of the landed datasets.

A landed file is JSON Lines, one record per line. Types are strict: a number where a string is
declared (or the reverse) is a schema error, not something to coerce. Unknown fields are errors
too, so that a producer's schema change is noticed at the door instead of deep in the graph.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1"

TicketCategory = Literal["billing", "technical", "account", "shipping", "returns", "general"]
TicketChannel = Literal["email", "chat", "phone", "web"]
TicketPriority = Literal["low", "normal", "high", "urgent"]


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Ticket(_Record):
    """A customer-support ticket as exported by the help desk."""

    ticket_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    customer_name: str = Field(max_length=256)
    customer_email: str = Field(max_length=256)
    subject: str = Field(max_length=512)
    message: str
    agent_reply: str
    category: TicketCategory
    product: str = Field(min_length=1, max_length=128)
    channel: TicketChannel
    priority: TicketPriority
    created_at: AwareDatetime
    resolved_at: AwareDatetime | None = None
    satisfaction: int | None = Field(default=None, ge=1, le=5)


class KbArticle(_Record):
    """A knowledge-base article as exported by the documentation system."""

    article_id: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=512)
    body: str = Field(min_length=1)
    product: str = Field(min_length=1, max_length=128)
    category: TicketCategory
    author_name: str = Field(max_length=256)
    author_email: str = Field(max_length=256)
    tags: list[str] = Field(default_factory=list)
    updated_at: AwareDatetime


DatasetName = Literal["tickets", "kb_articles"]


class DatasetSpec(BaseModel):
    """What the platform knows about one landed dataset."""

    model_config = ConfigDict(frozen=True)

    name: DatasetName
    record_type: type[_Record]
    id_field: str
    max_record_bytes: int = 64 * 1024


DATASETS: dict[str, DatasetSpec] = {
    "tickets": DatasetSpec(name="tickets", record_type=Ticket, id_field="ticket_id"),
    "kb_articles": DatasetSpec(
        name="kb_articles", record_type=KbArticle, id_field="article_id", max_record_bytes=256 * 1024
    ),
}


def dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def record_columns(name: str) -> list[str]:
    return list(dataset(name).record_type.model_fields)


__all__ = ["SCHEMA_VERSION", "Ticket", "KbArticle", "DATASETS", "dataset", "record_columns", "datetime"]
