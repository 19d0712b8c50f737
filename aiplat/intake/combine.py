"""How downstream stages see the union of landed batches.

Ticket files are incremental exports: a ticket can reappear in a later batch with an update, and
the last landed version wins. KB files are full snapshots: the latest batch is the whole KB, and an
article missing from it has been deleted.
"""

from __future__ import annotations

import pandas as pd

# Datasets whose every batch is the whole dataset: the latest landed batch is the current state.
SNAPSHOT_DATASETS = frozenset({"kb_articles"})


def current_tickets(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ticket_id, from the most recently landed batch that carries it.

    `df` is the concatenation of batches in landing order (as the lake IO manager delivers it).
    """
    return df.drop_duplicates(subset="ticket_id", keep="last").reset_index(drop=True)


def current_kb_articles(df: pd.DataFrame) -> pd.DataFrame:
    """The latest KB snapshot only."""
    if df.empty:
        return df
    latest = df["_batch"].iloc[-1]
    return df[df["_batch"] == latest].reset_index(drop=True)
