"""The point-in-time training set: labeled tickets, features as of each ticket, splits and a hash.

The join itself is Feast's `get_historical_features` (aiplat.features.store); this module builds
its entity frame, finishes its result (split, canonical order, hash) and holds the brute-force
as-of join that tests hold Feast's join against.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from aiplat.features.tables import utc_timestamps

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Percent buckets of sha256(ticket_id): [0, 80) train, [80, 90) validation, [90, 100) test.
SPLIT_BOUNDS: tuple[int, int] = (80, 90)

LABEL_COLUMN = "label"
REPLY_COLUMN = "reply_target"
ENTITY_COLUMNS: tuple[str, ...] = ("ticket_id", "customer_id", "event_timestamp")
TEXT_COLUMNS: tuple[str, ...] = ("subject", "message")


def labeled_entities(tickets: pd.DataFrame) -> pd.DataFrame:
    """Tickets that can teach: a category (the label) and an agent reply (the reply target).

    Input is current redacted tickets (one row per ticket_id). The result is Feast's entity frame:
    join keys, `event_timestamp` = the ticket's `created_at`, plus the label, target and text.
    """
    reply = tickets["agent_reply"].fillna("").astype(str)
    keep = tickets["category"].notna() & (reply.str.strip().str.len() > 0)
    df = tickets[keep]
    entities = pd.DataFrame(
        {
            "ticket_id": df["ticket_id"].astype(str),
            "customer_id": df["customer_id"].astype(str),
            "event_timestamp": utc_timestamps(df["created_at"], "created_at", df["ticket_id"]),
            "subject": df["subject"].fillna("").astype(str),
            "message": df["message"].fillna("").astype(str),
            LABEL_COLUMN: df["category"].astype(str),
            REPLY_COLUMN: reply[keep],
        }
    )
    return entities.sort_values("ticket_id", kind="stable").reset_index(drop=True)


def split_of(ticket_id: str) -> str:
    """Deterministic split: the same ticket lands in the same split on every run and machine."""
    bucket = int(hashlib.sha256(ticket_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < SPLIT_BOUNDS[0]:
        return "train"
    if bucket < SPLIT_BOUNDS[1]:
        return "validation"
    return "test"


def finish_training_set(joined: pd.DataFrame, feature_columns: list[str]) -> pd.DataFrame:
    """Canonical column order and row order (by ticket_id), plus the `split` column."""
    leading = [*ENTITY_COLUMNS, *TEXT_COLUMNS, LABEL_COLUMN, REPLY_COLUMN]
    missing = [c for c in [*leading, *feature_columns] if c not in joined.columns]
    if missing:
        raise ValueError(f"the joined training set lacks the column(s) {', '.join(missing)}")
    out = joined[[*leading, *feature_columns]].copy()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    out["split"] = [split_of(t) for t in out["ticket_id"]]
    return out.sort_values("ticket_id", kind="stable").reset_index(drop=True)


def _canonical(value: object) -> object:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.tz_convert("UTC").isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return None if math.isnan(f) else repr(f)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def content_hash(df: pd.DataFrame) -> str:
    """sha256 over a canonical serialization: rows by ticket_id, columns by name, JSON per row.

    Independent of row and column order; floats use repr (round-trip exact), timestamps ISO 8601
    in UTC, missing values null.
    """
    columns = sorted(df.columns)
    ordered = df.sort_values("ticket_id", kind="stable") if "ticket_id" in df.columns else df
    h = hashlib.sha256()
    h.update(json.dumps(columns).encode("utf-8"))
    for record in ordered[columns].itertuples(index=False, name=None):
        line = json.dumps([_canonical(v) for v in record], ensure_ascii=False, separators=(",", ":"))
        h.update(b"\n")
        h.update(line.encode("utf-8"))
    return h.hexdigest()


def split_counts(df: pd.DataFrame) -> dict[str, int]:
    counts = df["split"].value_counts()
    return {s: int(counts.get(s, 0)) for s in SPLITS}


@dataclass(frozen=True)
class ViewSpec:
    """What the reference join needs to know about one feature view."""

    join_key: str
    ttl: timedelta | None
    features: tuple[str, ...]


def asof_join_reference(entities: pd.DataFrame, table: pd.DataFrame, view: ViewSpec) -> pd.DataFrame:
    """Brute-force point-in-time join, one entity row at a time, for checking Feast's join.

    For each entity row: among the table's rows with the same key and
    `entity_ts - ttl <= event_timestamp <= entity_ts`, the one with the latest event_timestamp;
    none (all features missing) when no row qualifies. Returns the entity frame's rows, in order,
    with the view's feature columns added.
    """
    ent_ts = pd.to_datetime(entities["event_timestamp"], utc=True)
    tab_ts = pd.to_datetime(table["event_timestamp"], utc=True)
    by_key: dict[object, np.ndarray] = {
        k: idx for k, idx in table.groupby(view.join_key, sort=False).indices.items()
    }
    tab_ts_values = tab_ts.to_numpy()
    picked: list[int] = []
    for key, ts in zip(entities[view.join_key].to_numpy(), ent_ts.to_numpy()):
        candidates = by_key.get(key)
        best = -1
        if candidates is not None:
            for i in candidates:
                t = tab_ts_values[i]
                if t > ts:
                    continue
                if view.ttl and t < ts - np.timedelta64(view.ttl):
                    continue
                if best < 0 or t > tab_ts_values[best]:
                    best = int(i)
        picked.append(best)
    rows = np.array(picked, dtype="int64")
    out = entities.reset_index(drop=True).copy()
    found = rows >= 0
    for feature in view.features:
        values = table[feature].to_numpy()
        column = pd.Series([values[r] if r >= 0 else None for r in rows], dtype="object")
        out[feature] = column.where(found, None)
    return out
