"""Feature tables folded batch by batch equal the tables rebuilt from every batch (issue 16 item 3),
and the plan says when folding is not safe. Pure functions over sample data; the assets over a real
partitioned lake are in tests/test_features_assets.py."""

from __future__ import annotations

import pandas as pd
import pytest

from aiplat.features import incremental, sample, tables
from aiplat.intake.combine import current_tickets


def _batches() -> list[pd.DataFrame]:
    """Four landed batches over 30 customers; batch 3 re-lands 15 earlier tickets (other category,
    and 5 of them moved to another customer), batch 4 is all new tickets."""
    first = sample.redacted_tickets(300, 30, seed=5, span_days=200)
    second = sample.redacted_tickets(120, 30, seed=6, span_days=60)
    second["ticket_id"] = [f"B{i:05d}" for i in range(len(second))]
    third = first.sample(15, random_state=2).copy()
    third["category"] = "returns"
    third.loc[third.index[:5], "customer_id"] = second["customer_id"].iloc[0]
    fourth = sample.redacted_tickets(40, 30, seed=7, span_days=5)
    fourth["ticket_id"] = [f"D{i:05d}" for i in range(len(fourth))]
    return [first, second, third, fourth]


def _history(folded: list[pd.DataFrame]):
    def history(customers, tickets):
        rows = pd.concat(folded, ignore_index=True) if folded else pd.DataFrame(columns=list(tables.REQUIRED_TICKET_COLUMNS))
        if customers is not None:
            return rows[rows["customer_id"].isin(customers)]
        return rows[rows["ticket_id"].isin(tickets)]
    return history


def test_folding_batch_by_batch_equals_the_full_rebuild_at_every_step() -> None:
    batches = _batches()
    customers = tickets = None
    for n, batch in enumerate(batches, 1):
        customers, computed_c = incremental.fold_customer_features(customers, batch, _history(batches[:n - 1]))
        tickets, computed_t = incremental.fold_ticket_features(tickets, batch)
        everything = current_tickets(pd.concat(batches[:n], ignore_index=True))
        pd.testing.assert_frame_equal(customers, tables.customer_features(everything))
        pd.testing.assert_frame_equal(tickets, tables.ticket_features(everything))
        if n > 1:  # only what the batch touched was computed
            assert len(computed_t) == batch["ticket_id"].nunique() < len(tickets)
            assert set(computed_c["customer_id"]) < set(customers["customer_id"]) or n == 2
    # The moved tickets left their previous customers' counts: those customers were recomputed too.
    moved = batches[2].iloc[:5]
    before = current_tickets(pd.concat(batches[:2], ignore_index=True)).set_index("ticket_id").loc[moved["ticket_id"], "customer_id"]
    last = customers.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    everything = current_tickets(pd.concat(batches, ignore_index=True))
    for customer in set(before) - {moved["customer_id"].iloc[0]}:
        owned = (everything["customer_id"] == customer).sum()
        assert last.loc[customer, "tickets_prior_total"] == owned - 1


def test_an_empty_batch_changes_nothing() -> None:
    first = _batches()[0]
    table, _ = incremental.fold_ticket_features(None, first)
    again, computed = incremental.fold_ticket_features(table, first.iloc[0:0])
    assert computed.empty
    pd.testing.assert_frame_equal(again, table)


STATE = incremental.FoldState({"b1": 10, "b2": 20}, "code-1")


@pytest.mark.parametrize(("available", "code", "rebuild", "full", "reason", "new"), [
    ([("b1", 10), ("b2", 20), ("b3", 30)], "code-1", False, False, "1 new batch", ("b3",)),
    ([("b1", 10), ("b2", 20)], "code-1", False, False, "no new batch", ()),
    ([("b1", 10), ("b2", 20), ("b3", 30)], "code-1", True, True, "full rebuild requested", ("b1", "b2", "b3")),
    ([("b1", 10), ("b2", 20)], "code-2", False, True, "code changed", ("b1", "b2")),
    ([("b1", 10), ("b2", 25)], "code-1", False, True, "batch b2 was materialized again", ("b1", "b2")),
    ([("b2", 20), ("b3", 30)], "code-1", False, True, "batch b1 is no longer materialized", ("b2", "b3")),
    # b0 landed first but was materialized only now: its tickets must not win over b1's and b2's.
    ([("b0", 40), ("b1", 10), ("b2", 20)], "code-1", False, True, "batch b0 landed before batches already folded",
     ("b0", "b1", "b2")),
])
def test_the_plan_folds_only_when_the_result_equals_a_rebuild(available, code, rebuild, full, reason, new) -> None:
    plan = incremental.plan_fold(STATE, available, code, rebuild)
    assert (plan.full, plan.new) == (full, new) and reason in plan.reason
    assert dict(plan.state.batches) == dict(available) and plan.state.code == code


def test_the_state_round_trips_and_a_table_without_one_is_rebuilt() -> None:
    assert incremental.FoldState.from_metadata(STATE.to_metadata()) == STATE
    assert incremental.FoldState.from_metadata({incremental.STATE_KEY: b"{not json"}) is None
    assert incremental.plan_fold(None, [("b1", 1)], "c").reason == "no previous table to fold into"
    assert incremental.table_code("customer_features") != incremental.table_code("ticket_features")
