"""Feast itself, against the platform's definitions: apply, point-in-time joins, online reads."""

from __future__ import annotations

import random
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiplat.features import sample, tables, training
from aiplat.features import store as S

# Feast's imports and apply take seconds: one applied store per module, marked slow.
pytestmark = pytest.mark.slow

N_TICKETS = 3000
N_CUSTOMERS = 400


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory):
    """One applied and materialized SQLite-backed store for the module (apply costs seconds)."""
    data_dir = tmp_path_factory.mktemp("feast")
    tickets = sample.redacted_tickets(N_TICKETS, N_CUSTOMERS, seed=11, span_days=500)
    store = S.feature_store(S.repo_config(data_dir, S.sqlite_online_store(data_dir / "online.db"), project="t_store"))
    defs = S.load_definitions()
    frames = {"customer_features": tables.customer_features(tickets), "ticket_features": tables.ticket_features(tickets)}
    for name, frame in frames.items():
        S.write_offline_table(S.source_path(store, defs.view(name)), frame)
    S.apply_definitions(store, defs)
    S.materialize(store, list(frames))
    return store, defs, tickets, frames


def _spec(defs: S.RepoDefinitions, view: str) -> training.ViewSpec:
    fv = defs.view(view)
    return training.ViewSpec(join_key=fv.join_keys[0], ttl=fv.ttl, features=tuple(f.name for f in fv.features))


def _same(a: object, b: object) -> bool:
    a_missing = a is None or (isinstance(a, float) and np.isnan(a)) or a is pd.NA
    b_missing = b is None or (isinstance(b, float) and np.isnan(b)) or b is pd.NA
    if a_missing or b_missing:
        return a_missing and b_missing
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return float(a) == float(b)
    return a == b


def _mismatches(feast_df: pd.DataFrame, reference: pd.DataFrame, features: tuple[str, ...]) -> list[tuple]:
    left = feast_df.set_index("row_id").sort_index()
    right = reference.set_index("row_id").sort_index()
    assert list(left.index) == list(right.index)
    out = []
    for feature in features:
        for row_id, a, b in zip(left.index, left[feature].tolist(), right[feature].tolist()):
            if not _same(a, b):
                out.append((row_id, feature, a, b))
    return out


def test_point_in_time_join_matches_brute_force(applied) -> None:
    store, defs, tickets, frames = applied
    rng = random.Random(5)
    customers = sorted(tickets["customer_id"].unique()) + ["cust_00000000ffffffff"]  # one never seen
    ticket_ids = sorted(tickets["ticket_id"]) + ["T9999999"]
    lo, hi = tickets["created_at"].min() - timedelta(days=30), tickets["created_at"].max() + timedelta(days=200)
    span = int((hi - lo).total_seconds())
    rows = []
    for i in range(4000):
        if i % 4 == 0:
            # Exactly at a feature row's timestamp: the boundary is inclusive.
            src = frames["customer_features"].iloc[rng.randrange(len(frames["customer_features"]))]
            rows.append((src["customer_id"], src["event_timestamp"]))
        else:
            rows.append((rng.choice(customers), lo + timedelta(seconds=rng.randrange(span))))
    entities = pd.DataFrame(
        {
            "row_id": range(len(rows)),
            "customer_id": [c for c, _ in rows],
            "ticket_id": [rng.choice(ticket_ids) for _ in rows],
            "event_timestamp": pd.to_datetime([t for _, t in rows], utc=True),
        }
    )
    joined = S.historical_features(store, entities, S.TRAINING_SERVICE)
    assert len(joined) == len(entities)

    for view in ("customer_features", "ticket_features"):
        spec = _spec(defs, view)
        reference = training.asof_join_reference(entities, frames[view], spec)
        assert _mismatches(joined, reference, spec.features) == []

    # The cases the join must get right are all present in the sample.
    cf = frames["customer_features"]
    ttl = defs.view("customer_features").ttl
    counts = {"no_row_yet": 0, "expired": 0, "later_rows_exist": 0, "hit": 0}
    by_customer = {k: g["event_timestamp"] for k, g in cf.groupby("customer_id")}
    for customer, ts in zip(entities["customer_id"], entities["event_timestamp"]):
        times = by_customer.get(customer, pd.Series([], dtype="datetime64[ns, UTC]"))
        before = times[times <= ts]
        if before.empty:
            counts["no_row_yet"] += 1
        elif before.max() < ts - ttl:
            counts["expired"] += 1
        else:
            counts["hit"] += 1
        counts["later_rows_exist"] += int((times > ts).any())
    assert min(counts.values()) >= 50, counts


def test_training_join_matches_brute_force_and_hides_the_label(applied) -> None:
    store, defs, tickets, frames = applied
    entities = training.labeled_entities(tickets)
    features = S.feature_columns(store, S.TRAINING_SERVICE)
    joined = training.finish_training_set(S.historical_features(store, entities, S.TRAINING_SERVICE), features)
    assert list(joined["ticket_id"]) == list(entities["ticket_id"])
    keyed = entities.assign(row_id=entities["ticket_id"])
    for view in ("customer_features", "ticket_features"):
        spec = _spec(defs, view)
        reference = training.asof_join_reference(keyed, frames[view], spec)
        assert _mismatches(joined.assign(row_id=joined["ticket_id"]), reference, spec.features) == []

    # A ticket's own category never counts in its customer's category mix: for each customer's
    # first ticket the mix is empty, whatever its label.
    first_ids = set(tickets.sort_values("created_at").groupby("customer_id").head(1)["ticket_id"])
    first = joined[joined["ticket_id"].isin(first_ids)]
    assert len(first) > 100
    assert (first["tickets_prior_total"] == 0).all()
    assert (first[[f"share_{c}_90d" for c in tables.CATEGORIES]].to_numpy() == 0).all()

    assert set(joined["split"]) == set(training.SPLITS)
    again = training.finish_training_set(S.historical_features(store, entities, S.TRAINING_SERVICE), features)
    assert training.content_hash(again) == training.content_hash(joined)


def test_online_store_serves_each_entitys_latest_row(applied) -> None:
    store, _, _, frames = applied
    cf = frames["customer_features"]
    latest = cf.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    ids = list(latest.index[:100])
    online = S.online_features(store, "customer_profile_v1", [{"customer_id": c} for c in ids])
    assert online["customer_id"] == ids
    for feature in ("tickets_prior_total", "tickets_90d", "tenure_days", "top_product", "share_billing_90d"):
        assert [_same(a, b) for a, b in zip(online[feature], latest.loc[ids, feature])] == [True] * len(ids), feature


def test_apply_tracks_definition_changes(applied, tmp_path: Path) -> None:
    store, defs, _, _ = applied
    repo = tmp_path / "repo"
    shutil.copytree(S.feature_repo_dir(), repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    unchanged = S.load_definitions(repo)
    assert unchanged.fingerprint() == defs.fingerprint()

    source = (repo / "definitions.py").read_text()
    edited = source.replace("ttl=timedelta(days=90)", "ttl=timedelta(days=60)")
    edited = edited[: edited.index("customer_profile_v1 = FeatureService(")]
    (repo / "definitions.py").write_text(edited)
    changed = S.load_definitions(repo)
    assert changed.fingerprint() != defs.fingerprint()

    result = S.apply_definitions(store, changed)
    try:
        assert result.deleted == ["FeatureService:customer_profile_v1"]
        assert store.get_feature_view("customer_features").ttl == timedelta(days=60)
    finally:
        S.apply_definitions(store, defs)
    assert {s.name for s in store.list_feature_services()} == {"customer_profile_v1", "ticket_triage_v1"}
