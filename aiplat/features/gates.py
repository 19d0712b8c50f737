"""What the feature stage's asset checks decide: no raw PII, fresh enough, schema changes.

Pure functions over DataFrames and metadata, so the checks in assets/features.py stay thin and
the rules are tested directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pandas as pd

# A keyed HMAC token from the pii stage: `<kind>_<hex>` (e.g. `cust_3f9a...`).
PSEUDONYM = re.compile(r"^[a-z]+_[0-9a-f]{8,64}$")

RAW_PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "EMAIL_ADDRESS": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "US_SSN": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "PHONE_NUMBER": re.compile(r"(?:\+\d{1,3}[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"),
    "CREDIT_CARD": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
    "IBAN_CODE": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b"),
    "IP_ADDRESS": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
}


def _luhn_ok(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class PiiFinding:
    column: str
    row_key: str
    kind: str


def find_raw_pii(
    df: pd.DataFrame, key_column: str | None, pseudonymous_columns: tuple[str, ...] = ()
) -> list[PiiFinding]:
    """Raw PII values in any text column, and pseudonymous columns holding non-pseudonyms.

    Findings name the row (by `key_column`, else by position) and the kind, never the value
    itself: the check's metadata must not repeat the PII it caught.
    """
    findings: list[PiiFinding] = []
    df = df.reset_index(drop=True)
    if key_column is not None and key_column in df.columns:
        keys = df[key_column].astype(str)
    else:
        keys = pd.Series([f"row {i}" for i in range(len(df))])
    for column in pseudonymous_columns:
        if column not in df.columns:
            continue
        bad = ~df[column].astype(str).str.fullmatch(PSEUDONYM)
        findings += [PiiFinding(column, k, "NOT_PSEUDONYMIZED") for k in keys[bad]]
    text_columns = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    for column in text_columns:
        values = df[column].astype(str)
        for kind, pattern in RAW_PII_PATTERNS.items():
            hits = values.str.contains(pattern, regex=True)
            for idx in hits[hits].index:
                if kind == "CREDIT_CARD" and not any(_luhn_ok(m) for m in pattern.findall(values[idx])):
                    continue
                findings.append(PiiFinding(column, keys[idx], kind))
    return findings


@dataclass(frozen=True)
class Freshness:
    newest: datetime | None
    age: timedelta | None
    ttl: timedelta
    fresh: bool


def freshness(event_timestamps: pd.Series, ttl: timedelta, now: datetime | None = None) -> Freshness:
    """Fresh when the newest feature row is younger than the view's TTL (else it stops serving)."""
    now = now or datetime.now(timezone.utc)
    ts = pd.to_datetime(event_timestamps, utc=True)
    if ts.empty:
        return Freshness(None, None, ttl, False)
    newest = ts.max().to_pydatetime()
    age = now - newest
    return Freshness(newest, age, ttl, age <= ttl)


@dataclass(frozen=True)
class SchemaChange:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    retyped: list[str] = field(default_factory=list)
    previous_known: bool = True

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.retyped)


def column_types(df: pd.DataFrame) -> dict[str, str]:
    return {str(c): str(t) for c, t in df.dtypes.items()}


def schema_change(previous: dict[str, str] | None, current: dict[str, str]) -> SchemaChange:
    """Columns added, removed or retyped since the previous materialization."""
    if previous is None:
        return SchemaChange(previous_known=False)
    return SchemaChange(
        added=sorted(set(current) - set(previous)),
        removed=sorted(set(previous) - set(current)),
        retyped=sorted(c for c in set(current) & set(previous) if current[c] != previous[c]),
    )


def missing_view_columns(df: pd.DataFrame, declared: list[str]) -> list[str]:
    """Columns the Feast view declares that the table does not have."""
    return [c for c in declared if c not in df.columns]
