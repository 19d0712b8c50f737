"""Redaction: replace, mask or pseudonymize each finding, per the entity's policy.

Pseudonyms are keyed HMAC-SHA256 digests: the same value gives the same token in every dataset
and every run (joins survive), and without the key the value cannot be recovered or confirmed by
guessing. Free-text names and e-mails use the same namespaces as the identifier columns, so
`customer_name` "Ann Lee" and "Ann Lee" in a message become the same digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from aiplat.pii.config import IDENTIFIER_NAMESPACES, PiiConfig
from aiplat.pii.engine import Finding
from aiplat.synth import EMAIL_ADDRESS, PERSON

DIGEST_CHARS = 16
MIN_KEY_BYTES = 16
_NAMESPACE_OF_ENTITY = {PERSON: "person", EMAIL_ADDRESS: "email"}
PLACEHOLDER_RE = re.compile(r"<[A-Z][A-Z_]*?(?:_[0-9a-f]{%d})?>" % DIGEST_CHARS)
TOKEN_RE = re.compile(r"^(?:cust|person|email)_[0-9a-f]{%d}$" % DIGEST_CHARS)


class Pseudonymizer:
    def __init__(self, key: bytes | str) -> None:
        key_bytes = key.encode() if isinstance(key, str) else key
        if len(key_bytes) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonymization key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key_bytes

    def __repr__(self) -> str:  # the key never reaches a log line
        return "Pseudonymizer(key=<hidden>)"

    def digest(self, namespace: str, value: str) -> str:
        normalized = " ".join(value.split()).casefold()
        mac = hmac.new(self._key, f"{namespace}\x00{normalized}".encode(), hashlib.sha256)
        return mac.hexdigest()[:DIGEST_CHARS]

    def token(self, namespace: str, value: str) -> str:
        return f"{namespace}_{self.digest(namespace, value)}"

    def entity_token(self, entity: str, value: str) -> str:
        namespace = _NAMESPACE_OF_ENTITY.get(entity, entity.lower())
        return f"<{entity}_{self.digest(namespace, value)}>"

    def identifier(self, field: str, value: str | None) -> str | None:
        if value is None or value == "":
            return value
        prefix, _ = IDENTIFIER_NAMESPACES[field]
        return self.token(prefix, value)


def _mask(value: str, keep_last: int) -> str:
    alnum = [i for i, c in enumerate(value) if c.isalnum()]
    visible = set(alnum[-keep_last:]) if keep_last else set()
    return "".join("*" if (c.isalnum() and i not in visible) else c for i, c in enumerate(value))


def merge_spans(findings: Sequence[Finding]) -> list[tuple[int, int, str]]:
    """Overlapping findings become one span; its entity is the highest-scoring (then longest) one."""
    merged: list[tuple[int, int, Finding]] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if merged and f.start < merged[-1][1]:
            start, end, lead = merged[-1]
            better = (f.score, f.end - f.start) > (lead.score, lead.end - lead.start)
            merged[-1] = (start, max(end, f.end), f if better else lead)
        else:
            merged.append((f.start, f.end, f))
    return [(s, e, lead.entity_type) for s, e, lead in merged]


def redact_text(text: str, findings: Sequence[Finding], config: PiiConfig, pseudonymizer: Pseudonymizer) -> str:
    if not findings:
        return text
    out: list[str] = []
    pos = 0
    for start, end, entity in merge_spans(findings):
        if start < pos or end > len(text):
            raise ValueError(f"finding [{start}, {end}) does not fit a text of {len(text)} characters")
        out.append(text[pos:start])
        value = text[start:end]
        policy = config.policies[entity]
        if policy.operator == "replace":
            out.append(f"<{entity}>")
        elif policy.operator == "mask":
            out.append(_mask(value, policy.keep_last))
        else:
            out.append(pseudonymizer.entity_token(entity, value))
        pos = end
    out.append(text[pos:])
    return "".join(out)
