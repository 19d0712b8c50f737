"""Valid records for tests, built field by field so each test can break exactly one thing."""

from __future__ import annotations

import json
from typing import Any


def ticket(i: int, **overrides: Any) -> dict[str, Any]:
    record = {
        "ticket_id": f"T-{i:06d}",
        "customer_id": f"C-{i % 7:05d}",
        "customer_name": "Dana Whitfield",
        "customer_email": "dana.whitfield@example.org",
        "subject": "Charged twice",
        "message": "I was charged twice for my subscription this month.",
        "agent_reply": "Sorry about that, we have refunded the duplicate charge.",
        "category": "billing",
        "product": "Orbit Cloud Backup",
        "channel": "email",
        "priority": "normal",
        "created_at": f"2026-09-{1 + i % 28:02d}T10:{i % 60:02d}:00+00:00",
        "resolved_at": None,
        "satisfaction": 4,
    }
    record.update(overrides)
    return record


def kb_article(i: int, **overrides: Any) -> dict[str, Any]:
    record = {
        "article_id": f"KB-{i:05d}",
        "title": f"How to reset your password ({i})",
        "body": "Open Settings, choose Security and follow the reset link we e-mail you.",
        "product": "Orbit Cloud Backup",
        "category": "account",
        "author_name": "Sam Ortega",
        "author_email": "sam.ortega@example.com",
        "tags": ["password", "account"],
        "updated_at": "2026-08-01T09:00:00+00:00",
    }
    record.update(overrides)
    return record


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)
