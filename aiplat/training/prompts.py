"""The triage task as chat messages: redacted ticket (+ a few features) -> category and short reply."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

SYSTEM_PROMPT = (
    "You triage customer-support tickets. Answer with two lines: "
    "'category: <one of billing, technical, account, shipping, returns, general>' and "
    "'reply: <a short reply to the customer>'."
)
MAX_REPLY_CHARS = 200


def short_reply(text: str) -> str:
    """The agent reply cut to its first sentence or two, at most MAX_REPLY_CHARS."""
    text = " ".join(str(text).split())
    sentences = re.split(r"(?<=[.!?])\s+", text)
    reply = ""
    for sentence in sentences:
        if reply and len(reply) + 1 + len(sentence) > MAX_REPLY_CHARS:
            break
        reply = f"{reply} {sentence}".strip()
    return reply[:MAX_REPLY_CHARS]


def user_prompt(row: Mapping, features: Sequence[str]) -> str:
    lines = [f"subject: {row['subject']}", f"message: {row['message']}"]
    lines += [f"{name}: {row[name]}" for name in features if not _missing(row.get(name))]
    return "\n".join(lines)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def messages(row: Mapping, features: Sequence[str]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(row, features)},
    ]


def target(row: Mapping) -> str:
    return f"category: {row['category']}\nreply: {short_reply(row['agent_reply'])}"


def parse_answer(text: str) -> dict[str, str | None]:
    category = re.search(r"category:\s*([a-z]+)", text)
    reply = re.search(r"reply:\s*(.+)", text)
    return {"category": category.group(1) if category else None, "reply": reply.group(1).strip() if reply else None}
