"""A model's task as chat messages. Classification (triage): redacted ticket (+ a few features) ->
category and short reply. Generation (reply drafting): redacted ticket (+ features, + the top KB
passages when the model is grounded) -> the agent's reply.

The same functions build the prompt at training, evaluation and serving time; a model spec's
`prompt_template` and task become a PromptFormat."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


PASSAGES_COLUMN = "kb_passages"


@dataclass(frozen=True)
class PromptFormat:
    """How one model asks and answers: its system prompt, its task kind, and whether the prompt
    carries retrieved KB passages (the `kb_passages` column: passages joined by blank lines)."""

    system_prompt: str = SYSTEM_PROMPT
    task: str = "classification"  # classification | generation
    grounded: bool = False

    def key(self) -> dict:
        return {"system_prompt": self.system_prompt, "task": self.task, "grounded": self.grounded}


TRIAGE = PromptFormat()


def passages_of(row: Mapping) -> list[str]:
    value = row.get(PASSAGES_COLUMN)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [p for p in str(value).split("\n\n") if p.strip()]


def user_prompt(row: Mapping, features: Sequence[str], fmt: PromptFormat | None = None) -> str:
    lines = [f"subject: {row['subject']}", f"message: {row['message']}"]
    lines += [f"{name}: {row[name]}" for name in features if not _missing(row.get(name))]
    if fmt is not None and fmt.grounded:
        lines.append("knowledge base:")
        lines += [f"- {p}" for p in passages_of(row)] or ["- (no passage found)"]
    return "\n".join(lines)


def parse_user_prompt(text: str, feature_names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """A ticket a client sends, as (row, features) that `user_prompt` turns back into the same text:
    the training shape "subject: S\nmessage: M" plus trailing "<feature>: <value>" lines for names in
    `feature_names`; any other text is the message of a ticket without a subject."""
    lines = text.split("\n")
    if len(lines) < 2 or not lines[0].startswith("subject: ") or not lines[1].startswith("message: "):
        return {"subject": "", "message": text}, []
    row = {"subject": lines[0].removeprefix("subject: ")}
    rest, features = lines[1:], []
    while len(rest) > 1:  # feature lines at the end, each name once; the message keeps any other line
        name, sep, value = rest[-1].partition(": ")
        if not sep or name not in feature_names or name in row:
            break
        row[name] = value
        features.insert(0, name)
        rest.pop()
    row["message"] = "\n".join(rest).removeprefix("message: ")
    return row, features


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def messages(row: Mapping, features: Sequence[str], fmt: PromptFormat | None = None) -> list[dict[str, str]]:
    fmt = fmt or TRIAGE
    return [
        {"role": "system", "content": fmt.system_prompt},
        {"role": "user", "content": user_prompt(row, features, fmt)},
    ]


def target(row: Mapping, fmt: PromptFormat | None = None) -> str:
    if fmt is not None and fmt.task == "generation":
        return short_reply(row["agent_reply"])
    return f"category: {row['category']}\nreply: {short_reply(row['agent_reply'])}"


def parse_answer(text: str) -> dict[str, str | None]:
    category = re.search(r"category:\s*([a-z]+)", text)
    reply = re.search(r"reply:\s*(.+)", text)
    return {"category": category.group(1) if category else None, "reply": reply.group(1).strip() if reply else None}
