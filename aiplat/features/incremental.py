"""Feature tables that grow with new batches, not with history (issue 16 item 3).

The feature tables are built from the current version of every ticket ever landed
(aiplat.intake.combine.current_tickets: a later batch's version of a ticket wins). Recomputing them
from all landed batches on every run makes each run's cost grow with the history. Instead each
table remembers which batches it folded in (and which materialization of each, by its event-log
storage id) in its own Parquet file's metadata, and a run folds in only the batches landed since:

- ticket features are per ticket: the new batches' tickets are computed and replace their earlier
  rows (a re-landed ticket's new version wins, as in a rebuild);
- customer features summarize a customer's earlier tickets: only the customers the new batches touch
  (their own, and the previous owners of re-landed tickets) are recomputed, from their tickets in
  all batches (the history read is filtered to those customers); every other customer's rows stay.

Either way the table equals what a full rebuild writes (tests/test_features_incremental.py checks
that). A full rebuild happens when there is nothing to fold into, when the code that computes the
table changed, when a folded batch was re-materialized or removed, when a new batch lies before a
folded one in landing order (its tickets would not win over the later ones), or on request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from aiplat.features import tables
from aiplat.intake.combine import current_tickets

STATE_KEY = b"aiplat.folded"
# The modules whose code computes the tables: a change to any of them rebuilds both.
_CODE_MODULES = ("aiplat.features.tables", "aiplat.features.language", "aiplat.intake.combine", __name__)


def table_code(view: str) -> str:
    """A digest of the code that computes `view`: a table folded by other code is rebuilt."""
    import hashlib
    import importlib
    import inspect

    digest = hashlib.sha256(view.encode())
    for module in _CODE_MODULES:
        digest.update(inspect.getsource(importlib.import_module(module)).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class FoldState:
    """What a feature table was built from: batch -> storage id of the materialization folded in
    (in landing order), and the code that computed it."""

    batches: Mapping[str, int]
    code: str

    def to_metadata(self) -> dict[bytes, bytes]:
        return {STATE_KEY: json.dumps({"batches": list(self.batches.items()), "code": self.code}).encode()}

    @staticmethod
    def from_metadata(metadata: Mapping[bytes, bytes] | None) -> "FoldState | None":
        raw = (metadata or {}).get(STATE_KEY)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return FoldState({str(b): int(s) for b, s in data["batches"]}, str(data["code"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable state: rebuilt, never trusted


@dataclass(frozen=True)
class FoldPlan:
    full: bool
    reason: str
    new: tuple[str, ...] = ()  # batches to fold in (all available ones on a full rebuild)
    state: FoldState = field(default_factory=lambda: FoldState({}, ""))  # the table's state after the run


def plan_fold(previous: FoldState | None, available: Sequence[tuple[str, int]], code: str,
              rebuild: bool = False) -> FoldPlan:
    """What a run must read. `available` is every materialized batch with its latest storage id,
    in landing order."""
    after = FoldState(dict(available), code)
    everything = tuple(b for b, _ in available)
    if rebuild:
        return FoldPlan(True, "full rebuild requested", everything, after)
    if previous is None:
        return FoldPlan(True, "no previous table to fold into", everything, after)
    if previous.code != code:
        return FoldPlan(True, f"the table's code changed ({previous.code[:12]} -> {code[:12]})", everything, after)
    current = dict(available)
    gone = [b for b in previous.batches if b not in current]
    if gone:
        return FoldPlan(True, f"batch {gone[0]} is no longer materialized", everything, after)
    changed = [b for b, sid in previous.batches.items() if current[b] != sid]
    if changed:
        return FoldPlan(True, f"batch {changed[0]} was materialized again since it was folded in", everything, after)
    new = tuple(b for b in everything if b not in previous.batches)
    last_folded = max((everything.index(b) for b in previous.batches), default=-1)
    early = [b for b in new if everything.index(b) < last_folded]
    if early:
        return FoldPlan(True, f"batch {early[0]} landed before batches already folded in", everything, after)
    return FoldPlan(False, f"{len(new)} new batch(es)" if new else "no new batch", new, after)


def fold_ticket_features(previous: pd.DataFrame | None, new_tickets: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ticket table after folding in `new_tickets` (the new batches' rows, in landing order),
    and the rows computed for it."""
    current = current_tickets(new_tickets)
    computed = tables.ticket_features(current)
    if previous is None or previous.empty:
        return computed, computed
    kept = previous[~previous["ticket_id"].isin(computed["ticket_id"])]
    merged = pd.concat([kept, computed], ignore_index=True) if len(kept) else computed
    return merged.sort_values("ticket_id", kind="stable").reset_index(drop=True), computed


def fold_customer_features(
    previous: pd.DataFrame | None,
    new_tickets: pd.DataFrame,
    history: Callable[[set[str] | None, set[str] | None], pd.DataFrame],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The customer table after folding in `new_tickets`, and the rows computed for it.
    `history(customers, tickets)` returns the rows of the already folded batches (in landing order)
    whose customer is in `customers` or whose ticket is in `tickets`."""
    new_current = current_tickets(new_tickets)
    touched = set(new_current["customer_id"].astype(str))
    # A re-landed ticket may have moved to another customer: its previous owner changes too.
    moved = history(None, set(new_current["ticket_id"].astype(str)))
    touched |= set(moved["customer_id"].astype(str))
    earlier = history(touched, None)
    tickets = current_tickets(pd.concat([earlier, new_tickets], ignore_index=True) if len(earlier) else new_tickets)
    computed = tables.customer_features(tickets[tickets["customer_id"].astype(str).isin(touched)])
    if previous is None or previous.empty:
        return computed, computed
    kept = previous[~previous["customer_id"].isin(touched)]
    merged = pd.concat([kept, computed], ignore_index=True) if len(kept) else computed
    return merged.sort_values(["customer_id", "event_timestamp"], kind="stable").reset_index(drop=True), computed
