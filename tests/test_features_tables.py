"""Feature functions on hand-made data: windows, history-only customer rows, text features,
input errors, splits, hashes, gates and the reference as-of join."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from aiplat.features import gates, tables, training
from aiplat.features.language import detect_language
from aiplat.features.sample import redacted_tickets

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=timezone.utc)
CUST = "cust_0123456789abcdef"


def _ticket(i: int, days: float, category: str, product: str, priority: str = "normal", customer: str = CUST) -> dict:
    return {
        "ticket_id": f"T{i}",
        "customer_id": customer,
        "subject": "Cannot log in",
        "message": "Hello, I have a problem with my account and it is not working, please help.",
        "agent_reply": "We fixed it.",
        "category": category,
        "product": product,
        "channel": "email",
        "priority": priority,
        "created_at": T0 + timedelta(days=days),
        "pii_entities": 1,
    }


@pytest.fixture
def history() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _ticket(0, 0, "billing", "a"),
            _ticket(1, 1, "billing", "b"),
            _ticket(2, 10, "technical", "b", priority="urgent"),
            _ticket(3, 40, "account", "a"),
            _ticket(4, 100, "billing", "c"),
            _ticket(5, 100, "returns", "c"),  # same moment as T4: one row for both
            _ticket(6, 5, "general", "z", customer="cust_ffffffffffffffff"),
        ]
    )


def test_customer_rows_summarize_only_earlier_tickets(history: pd.DataFrame) -> None:
    cf = tables.customer_features(history)
    mine = cf[cf["customer_id"] == CUST].set_index("event_timestamp")
    assert len(mine) == 5  # six tickets, two at the same moment
    at40 = mine.loc[pd.Timestamp(T0 + timedelta(days=40))]
    assert (at40["tickets_prior_total"], at40["tickets_7d"], at40["tickets_30d"], at40["tickets_90d"]) == (3, 0, 1, 3)
    assert at40["top_product"] == "b"
    assert at40["share_account_90d"] == 0.0  # T3 itself (account) is not its own history

    at100 = mine.loc[pd.Timestamp(T0 + timedelta(days=100))]
    assert (at100["tickets_prior_total"], at100["tickets_30d"], at100["tickets_90d"]) == (4, 0, 2)
    assert at100["share_technical_90d"] == 0.5 and at100["share_account_90d"] == 0.5
    assert at100["share_billing_90d"] == 0.0 and at100["share_returns_90d"] == 0.0
    assert at100["high_priority_rate_90d"] == 0.5
    assert at100["tickets_per_week_90d"] == pytest.approx(2 / (90 / 7))
    assert at100["tenure_days"] == 100.0
    assert at100["top_product"] == "a"  # a:2, b:2 -> tie broken by name

    first = mine.iloc[0]
    assert first["tickets_prior_total"] == 0 and first["top_product"] == "" and first["tenure_days"] == 0.0
    other = cf[cf["customer_id"] == "cust_ffffffffffffffff"]
    assert len(other) == 1 and other["tickets_prior_total"].iloc[0] == 0
    assert list(cf.columns) == ["customer_id", "event_timestamp", *tables.CUSTOMER_FEATURE_COLUMNS]


def test_ticket_features(history: pd.DataFrame) -> None:
    frame = history.copy()
    frame.loc[0, "subject"] = "abc"
    prefix = "Hallo, ich habe ein Problem mit der Rechnung und bitte um Hilfe "
    frame.loc[0, "message"] = prefix + "x" * (997 - len(prefix))
    frame.loc[0, "pii_entities"] = 2
    tf = tables.ticket_features(frame).set_index("ticket_id")
    row = tf.loc["T0"]
    assert row["subject_chars"] == 3 and row["message_chars"] == 997
    assert row["pii_per_1k_chars"] == pytest.approx(2.0)
    assert row["language"] == "de" and tf.loc["T1", "language"] == "en"
    assert "category" not in tf.columns  # the label is not a feature
    assert tf.loc["T2", "event_timestamp"] == pd.Timestamp(T0 + timedelta(days=10))


def test_language_heuristic() -> None:
    assert detect_language("Bonjour, je ne peux pas me connecter avec mon compte") == "fr"
    assert detect_language("Hola, no puedo entrar en mi cuenta, por favor ayuda") == "es"
    assert detect_language("ok") == "und"
    assert detect_language("") == "und"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop(columns=["pii_entities"]), "lack the column(s) pii_entities"),
        (lambda df: df.assign(created_at=["not a date"] + list(df["created_at"][1:])), "ticket 'T0': created_at"),
        (lambda df: df.assign(category=list(df["category"][:-1]) + ["refunds"]), "ticket 'T6': unknown category 'refunds'"),
        (lambda df: pd.concat([df, df.iloc[[2]]]), "ticket 'T2' appears twice"),
        (lambda df: df.assign(customer_id=[None] + list(df["customer_id"][1:])), "ticket 'T0': customer_id is empty"),
    ],
)
def test_bad_input_names_the_record(history: pd.DataFrame, change, message: str) -> None:
    with pytest.raises(tables.FeatureInputError) as err:
        tables.customer_features(change(history))
    assert message in str(err.value)


def test_splits_are_deterministic_and_proportioned() -> None:
    ids = [f"T{i:06d}" for i in range(5000)]
    splits = [training.split_of(t) for t in ids]
    assert splits == [training.split_of(t) for t in ids]
    share = pd.Series(splits).value_counts(normalize=True)
    assert 0.77 < share["train"] < 0.83 and 0.08 < share["validation"] < 0.12 and 0.08 < share["test"] < 0.12


def test_content_hash_is_canonical_and_sensitive() -> None:
    entities = training.labeled_entities(redacted_tickets(50, 10, seed=2))
    df = training.finish_training_set(entities.assign(f=np.linspace(0, 1, len(entities))), ["f"])
    shuffled = df.sample(frac=1, random_state=3)[list(reversed(df.columns))]
    assert training.content_hash(shuffled) == training.content_hash(df)
    changed = df.copy()
    changed.loc[5, "f"] = changed.loc[5, "f"] + 1e-12
    assert training.content_hash(changed) != training.content_hash(df)
    assert training.split_counts(df)["train"] + training.split_counts(df)["validation"] + training.split_counts(df)["test"] == len(df)


def test_reference_asof_join_edges() -> None:
    table = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a"],
            "event_timestamp": pd.to_datetime([T0, T0 + timedelta(days=5), T0 + timedelta(days=20)], utc=True),
            "x": [1, 2, 3],
        }
    )
    entities = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "b"],
            "event_timestamp": pd.to_datetime(
                [
                    T0 - timedelta(seconds=1),  # before any row
                    T0 + timedelta(days=5),  # exactly at a row: inclusive
                    T0 + timedelta(days=19),  # a later row exists (day 20): not used
                    T0 + timedelta(days=40, seconds=1),  # newest row is older than the TTL
                    T0,  # unknown key
                ],
                utc=True,
            ),
        }
    )
    spec = training.ViewSpec(join_key="customer_id", ttl=timedelta(days=20), features=("x",))
    out = training.asof_join_reference(entities, table, spec)
    assert out["x"].tolist() == [None, 2, 2, None, None]
    at_ttl = entities.iloc[[3]].assign(event_timestamp=pd.Timestamp(T0 + timedelta(days=40)))
    assert training.asof_join_reference(at_ttl, table, spec)["x"].tolist() == [3]  # TTL edge inclusive


def test_gates() -> None:
    df = pd.DataFrame(
        {
            "ticket_id": ["a", "b", "c", "d"],
            "customer_id": ["cust_0011223344", "bob@example.com", "cust_aabbccddee", "cust_0099887766"],
            "top_product": ["router", "call +1 555-123-4567", "4111 1111 1111 1111", "4111 1111 1111 1112"],
        }
    )
    findings = gates.find_raw_pii(df, "ticket_id", ("customer_id",))
    assert {(f.row_key, f.column, f.kind) for f in findings} == {
        ("b", "customer_id", "NOT_PSEUDONYMIZED"),
        ("b", "customer_id", "EMAIL_ADDRESS"),
        ("b", "top_product", "PHONE_NUMBER"),
        ("c", "top_product", "CREDIT_CARD"),  # d fails the Luhn check: not a card number
    }
    assert all("bob@example.com" not in str(f) for f in findings)
    assert gates.find_raw_pii(df.iloc[[0]], None, ("customer_id",)) == []

    now = T0 + timedelta(days=10)
    fresh = gates.freshness(pd.Series([T0, T0 + timedelta(days=3)]), timedelta(days=7), now=now)
    assert fresh.fresh and fresh.age == timedelta(days=7)
    assert not gates.freshness(pd.Series([T0]), timedelta(days=7), now=now).fresh
    assert not gates.freshness(pd.Series([], dtype="datetime64[ns, UTC]"), timedelta(days=7), now=now).fresh

    change = gates.schema_change({"a": "int64", "b": "object"}, {"a": "float64", "c": "object"})
    assert (change.added, change.removed, change.retyped, change.changed) == (["c"], ["b"], ["a"], True)
    assert not gates.schema_change(None, {"a": "int64"}).previous_known
