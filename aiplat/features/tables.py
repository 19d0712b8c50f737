"""Feature tables computed from redacted tickets, in the shape Feast reads (`event_timestamp`).

Customer rows summarize the tickets that came *before* each of the customer's tickets. A row at
time t therefore never contains the ticket that arrives at t, so the training set (joined as of a
ticket's `created_at`) cannot see its own label in the category mix, and serving the newest
ticket reads exactly the row that training would have used for it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from aiplat.intake.schema import TicketCategory
from aiplat.features.language import detect_language

CATEGORIES: tuple[str, ...] = TicketCategory.__args__  # type: ignore[attr-defined]
WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90)
HIGH_PRIORITIES = frozenset({"high", "urgent"})

REQUIRED_TICKET_COLUMNS: tuple[str, ...] = (
    "ticket_id",
    "customer_id",
    "subject",
    "message",
    "category",
    "product",
    "channel",
    "priority",
    "created_at",
    "pii_entities",
)

CUSTOMER_FEATURE_COLUMNS: tuple[str, ...] = (
    "tickets_prior_total",
    *(f"tickets_{w}d" for w in WINDOWS_DAYS),
    "tickets_per_week_90d",
    "high_priority_rate_90d",
    *(f"share_{c}_90d" for c in CATEGORIES),
    "tenure_days",
    "top_product",
)
TICKET_FEATURE_COLUMNS: tuple[str, ...] = (
    "subject_chars",
    "message_chars",
    "message_words",
    "language",
    "pii_entities",
    "pii_per_1k_chars",
    "channel",
    "priority",
    "product",
)


class FeatureInputError(ValueError):
    """The redacted tickets cannot be turned into features; names the record and the reason."""


def utc_timestamps(values: pd.Series, column: str, ids: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC; a missing or unparseable one is an error naming the ticket."""
    parsed = pd.to_datetime(values, utc=True, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        first = ids[bad].iloc[0]
        raise FeatureInputError(
            f"ticket {first!r}: {column} is missing or not a timestamp ({int(bad.sum())} such records)"
        )
    return parsed


def validate_tickets(tickets: pd.DataFrame) -> pd.DataFrame:
    """Check the columns features need; returns a copy with `created_at` as UTC timestamps."""
    missing = [c for c in REQUIRED_TICKET_COLUMNS if c not in tickets.columns]
    if missing:
        raise FeatureInputError(f"redacted tickets lack the column(s) {', '.join(missing)}")
    df = tickets.copy()
    for column in ("ticket_id", "customer_id", "product", "category"):
        empty = df[column].isna() | (df[column].astype(str).str.len() == 0)
        if empty.any():
            first = df.loc[empty, "ticket_id"].iloc[0] if column != "ticket_id" else f"row {empty.idxmax()}"
            raise FeatureInputError(f"ticket {first!r}: {column} is empty ({int(empty.sum())} such records)")
    duplicated = df["ticket_id"].duplicated()
    if duplicated.any():
        raise FeatureInputError(
            f"ticket {df.loc[duplicated, 'ticket_id'].iloc[0]!r} appears twice; combine batches first "
            "(aiplat.intake.combine.current_tickets)"
        )
    unknown = ~df["category"].isin(CATEGORIES)
    if unknown.any():
        row = df[unknown].iloc[0]
        raise FeatureInputError(f"ticket {row['ticket_id']!r}: unknown category {row['category']!r}")
    df["created_at"] = utc_timestamps(df["created_at"], "created_at", df["ticket_id"])
    pii = pd.to_numeric(df["pii_entities"], errors="coerce")
    if pii.isna().any() or (pii < 0).any():
        first = df.loc[pii.isna() | (pii < 0), "ticket_id"].iloc[0]
        raise FeatureInputError(f"ticket {first!r}: pii_entities is not a non-negative count")
    df["pii_entities"] = pii.astype("int64")
    return df


def _top_products(products: np.ndarray, hi: np.ndarray) -> list[str]:
    """For each row, the most frequent product among the first hi[i] tickets (ties: by name)."""
    out: list[str] = []
    counts: Counter[str] = Counter()
    best, best_n = "", 0
    seen = 0
    for h in hi:
        while seen < h:
            p = products[seen]
            counts[p] += 1
            # Counts only grow, so the leader changes only to the product just counted.
            if counts[p] > best_n or (counts[p] == best_n and p < best):
                best, best_n = p, counts[p]
            seen += 1
        out.append(best)
    return out


def customer_features(tickets: pd.DataFrame) -> pd.DataFrame:
    """One row per (customer_id, event_timestamp) where a ticket of the customer arrived."""
    df = validate_tickets(tickets)
    columns = ["customer_id", "event_timestamp", *CUSTOMER_FEATURE_COLUMNS]
    if df.empty:
        return _typed_customer_frame(pd.DataFrame(columns=columns))
    df = df.sort_values(["customer_id", "created_at", "ticket_id"], kind="stable")
    parts: dict[str, list] = {c: [] for c in columns}
    day_ns = np.int64(86_400 * 10**9)
    for customer_id, group in df.groupby("customer_id", sort=True):
        ts = group["created_at"].to_numpy(dtype="datetime64[ns]").astype("int64")
        at = np.unique(ts)
        hi = np.searchsorted(ts, at, side="left")  # tickets strictly before each moment
        row: dict[str, object] = {"tickets_prior_total": hi}
        category = group["category"].to_numpy()
        high = np.isin(group["priority"].to_numpy(), list(HIGH_PRIORITIES)).astype("int64")
        cum_high = np.concatenate([[0], np.cumsum(high)])
        cum_cat = {
            c: np.concatenate([[0], np.cumsum(category == c)]) for c in CATEGORIES
        }
        for w in WINDOWS_DAYS:
            lo = np.searchsorted(ts, at - w * day_ns, side="left")
            row[f"tickets_{w}d"] = hi - lo
            if w == 90:
                n = hi - lo
                with np.errstate(invalid="ignore", divide="ignore"):
                    row["tickets_per_week_90d"] = n / (90 / 7)
                    row["high_priority_rate_90d"] = np.where(n > 0, (cum_high[hi] - cum_high[lo]) / np.maximum(n, 1), 0.0)
                    for c in CATEGORIES:
                        row[f"share_{c}_90d"] = np.where(
                            n > 0, (cum_cat[c][hi] - cum_cat[c][lo]) / np.maximum(n, 1), 0.0
                        )
        row["tenure_days"] = (at - ts[0]) / day_ns
        row["top_product"] = _top_products(group["product"].to_numpy(), hi)
        row["customer_id"] = np.full(len(at), customer_id, dtype=object)
        row["event_timestamp"] = at
        for c in columns:
            parts[c].append(np.asarray(row[c]))
    frame = pd.DataFrame({c: np.concatenate(parts[c]) for c in columns})
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"].astype("int64"), utc=True)
    return _typed_customer_frame(frame)


def _typed_customer_frame(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["customer_id"] = df["customer_id"].astype(str)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    for c in CUSTOMER_FEATURE_COLUMNS:
        if c == "top_product":
            df[c] = df[c].astype(str)
        elif c.startswith("tickets_") and not c.startswith("tickets_per"):
            df[c] = df[c].astype("int64")
        else:
            df[c] = df[c].astype("float64")
    return df.reset_index(drop=True)


def ticket_features(tickets: pd.DataFrame) -> pd.DataFrame:
    """One row per ticket, timestamped when it was created."""
    df = validate_tickets(tickets)
    subject = df["subject"].fillna("").astype(str)
    message = df["message"].fillna("").astype(str)
    chars = subject.str.len() + message.str.len()
    out = pd.DataFrame(
        {
            "ticket_id": df["ticket_id"].astype(str),
            "event_timestamp": df["created_at"],
            "subject_chars": subject.str.len().astype("int64"),
            "message_chars": message.str.len().astype("int64"),
            "message_words": message.str.split().str.len().fillna(0).astype("int64"),
            "language": [detect_language(f"{s}\n{m}") for s, m in zip(subject, message)],
            "pii_entities": df["pii_entities"].astype("int64"),
            # Density over the redacted text: the only text downstream ever sees.
            "pii_per_1k_chars": (df["pii_entities"] * 1000 / chars.where(chars > 0)).fillna(0.0).astype("float64"),
            "channel": df["channel"].astype(str),
            "priority": df["priority"].astype(str),
            "product": df["product"].astype(str),
        }
    )
    return out.sort_values("ticket_id", kind="stable").reset_index(drop=True)
