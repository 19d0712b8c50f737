"""The deletion guard: a KB snapshot may not silently empty the served index.

KB files are full snapshots, so a truncated export (one article instead of two hundred) reads as
"delete everything else". Before the index is touched, the chunks the snapshot asks for are
compared with what the served alias holds; if more than `max_delete_share` of the served rows
would go, the change waits for an operator who confirms that exact count. A confirmation names a
count, not a blanket permission: a different snapshot with another count is stopped again.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from aiplat.retrieval.diff import diff_chunks, key_set_sha256
from aiplat.retrieval.store import IndexStore

GUARD_CHECK = "kb_index_deletion_guard"
GUARD_ASSET = "kb_chunks"
# The op Dagster makes for the check (`<asset>_<check>`): where run config for it goes.
GUARD_OP = f"{GUARD_ASSET}_{GUARD_CHECK}"
DEFAULT_MAX_DELETE_SHARE = 0.10
AUDIT_EVENT = "kb_index_deletions_confirmed"


@dataclass(frozen=True)
class DeletionPlan:
    served_collection: str | None
    served_rows: int
    snapshot_rows: int
    deleted: int  # chunk positions the served index holds and the snapshot no longer has
    articles_deleted: int
    max_delete_share: float
    chunk_set_sha256: str

    @property
    def share(self) -> float:
        return self.deleted / self.served_rows if self.served_rows else 0.0

    @property
    def needs_confirmation(self) -> bool:
        return self.share > self.max_delete_share

    def describe(self) -> str:
        return (
            f"this KB snapshot would delete {self.deleted} of {self.served_rows} rows "
            f"({self.share:.1%}, {self.articles_deleted} articles) from the served index "
            f"{self.served_collection}, above the allowed {self.max_delete_share:.0%}"
        )

    def metadata(self) -> dict:
        return {
            "served_collection": self.served_collection or "",
            "served_rows": self.served_rows,
            "snapshot_rows": self.snapshot_rows,
            "deleted": self.deleted,
            "articles_deleted": self.articles_deleted,
            "delete_share": round(self.share, 4),
            "max_delete_share": self.max_delete_share,
            "chunk_set_sha256": self.chunk_set_sha256,
        }


def plan_deletions(store: IndexStore, chunks: pd.DataFrame, max_delete_share: float = DEFAULT_MAX_DELETE_SHARE) -> DeletionPlan:
    """What applying `chunks` (chunk_id, article_id, chunk_index) would remove from the served alias.

    Compared with the served collection whatever the next build's mode: a rebuild for a new model
    ends with the alias on a collection holding only the snapshot's chunks, the same loss.
    """
    if not 0.0 <= max_delete_share <= 1.0:
        raise ValueError(f"max_delete_share={max_delete_share} must be in [0, 1]")
    served = store.served_collection()
    existing = store.keys(served) if served else pd.DataFrame({"chunk_id": [], "article_id": [], "chunk_index": []})
    diff = diff_chunks(existing, chunks)
    return DeletionPlan(
        served_collection=served,
        served_rows=len(existing),
        snapshot_rows=len(chunks),
        deleted=diff.deleted,
        articles_deleted=diff.articles_deleted,
        max_delete_share=max_delete_share,
        chunk_set_sha256=key_set_sha256(chunks["chunk_id"]),
    )


@dataclass(frozen=True)
class GuardDecision:
    passed: bool
    description: str
    confirmed: bool = False


def judge(plan: DeletionPlan, confirm_deletions: int | None) -> GuardDecision:
    """Passes when within the share, or when the operator confirmed exactly `plan.deleted`."""
    if not plan.needs_confirmation:
        return GuardDecision(True, f"deletes {plan.deleted} of {plan.served_rows} served rows "
                                   f"({plan.share:.1%}), within the allowed {plan.max_delete_share:.0%}")
    how = (f"to apply it, confirm the count: aiplat index reindex --confirm-deletions {plan.deleted} "
           f"(or run config ops.{GUARD_OP}.config.confirm_deletions: {plan.deleted})")
    if confirm_deletions is None or confirm_deletions < 0:
        return GuardDecision(False, f"BLOCKED: {plan.describe()}; the served index is unchanged. {how}")
    if confirm_deletions != plan.deleted:
        return GuardDecision(False, f"BLOCKED: {plan.describe()}, but the operator confirmed {confirm_deletions}; "
                                    f"the served index is unchanged. {how}")
    return GuardDecision(True, f"CONFIRMED: {plan.describe()}; an operator confirmed {plan.deleted}", confirmed=True)


def evaluate_guard(plan: DeletionPlan, confirm_deletions: int | None, identity, audit, run_id: str = "") -> tuple[GuardDecision, dict | None]:
    """Judge the plan; a confirmation that lets a mass deletion through is appended to the audit
    log (who, which collection, how many rows, which chunk set, which run) before anything is
    deleted. Returns the decision and the audit entry (None when nothing needed confirming)."""
    decision = judge(plan, confirm_deletions)
    if not decision.confirmed:
        return decision, None
    entry = audit.append(
        AUDIT_EVENT, actor=identity.actor, team=identity.team, identity_source=identity.source,
        requested_by=identity.requested_by,
        collection=plan.served_collection, deleted=plan.deleted, served_rows=plan.served_rows,
        snapshot_rows=plan.snapshot_rows, chunk_set_sha256=plan.chunk_set_sha256, dagster_run_id=run_id,
    )
    return decision, entry


def confirm_run_config(deletions: int) -> dict:
    """Run config that confirms `deletions` for the guard (what the CLI flag passes)."""
    return {"ops": {GUARD_OP: {"config": {"confirm_deletions": int(deletions)}}}}


def guard_passed_in_run(instance, run_id: str, plan: DeletionPlan) -> bool:
    """Did this run's deletion guard pass for exactly this chunk set and count?

    kb_index asks before writing, so a selection without the guard (kb_index picked alone in the
    UI) cannot apply a mass deletion the guard would have stopped.
    """
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.check_name != GUARD_CHECK or not evaluation.passed:
            continue
        meta = evaluation.metadata
        if meta.get("chunk_set_sha256") and meta["chunk_set_sha256"].value == plan.chunk_set_sha256 \
                and meta["deleted"].value == plan.deleted:
            return True
    return False
