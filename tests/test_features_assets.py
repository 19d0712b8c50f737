"""The feature assets end to end through dagster.materialize, with a stand-in redacted upstream."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.features import sample, training
from aiplat.features import tables
from aiplat.intake.combine import current_tickets
from aiplat.provenance import frame_hash
from assets import features as fa
from assets.intake import TICKET_BATCHES
from resources.feast import LocalFeastResource
from resources.lake import LakeIOManager
from tests.chain_helpers import chain_asset, chain_for

# Feast's imports and apply take seconds: one applied store per module, marked slow.
pytestmark = pytest.mark.slow

# The demo triage model's training set (generated from its spec): the point-in-time join downstream.
TRAINING_SET = chain_asset(chain_for("ticket-triage"), "training_set")
TS = "ticket_triage__training_set"
ALL = [*fa.feature_assets, *fa.feature_checks, TRAINING_SET]


def _upstream(batches: dict[str, pd.DataFrame]) -> dg.AssetsDefinition:
    """redacted_tickets as the pii group leaves it: one lake file per landed batch (partition)."""

    @dg.asset(key=["redacted_tickets"], io_manager_key="lake", partitions_def=TICKET_BATCHES)
    def redacted_tickets(context) -> pd.DataFrame:
        return batches[context.partition_key]

    return redacted_tickets


def _run(batches: dict[str, pd.DataFrame], instance: dg.DagsterInstance, state: Path, raise_on_error: bool = True,
         run_config: dict | None = None):
    """Land and redact `batches` (new partitions, or new versions of landed ones), then materialize
    the feature group and the training set downstream of every landed batch."""
    resources = {"feast": LocalFeastResource(data_dir=str(state / "feast")), "lake": LakeIOManager(base_uri=str(state / "lake"))}
    upstream = _upstream(batches)
    known = set(instance.get_dynamic_partitions(TICKET_BATCHES.name))
    instance.add_dynamic_partitions(TICKET_BATCHES.name, [b for b in batches if b not in known])
    for batch in batches:
        dg.materialize([upstream], partition_key=batch, instance=instance, resources=resources)
    return dg.materialize(
        [upstream, *ALL], selection=[a.key for a in fa.feature_assets] + [TRAINING_SET.key],
        instance=instance, resources=resources, raise_on_error=raise_on_error, run_config=run_config,
    )


def _check(result: dg.ExecuteInProcessResult, asset: str, name: str) -> dg.AssetCheckEvaluation:
    for ev in result.get_asset_check_evaluations():
        if ev.asset_key == dg.AssetKey(asset) and ev.check_name == name:
            return ev
    raise AssertionError(f"no evaluation of {asset}:{name}")


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [mat] = [m for m in result.asset_materializations_for_node(asset)]
    return {k: v.value for k, v in mat.metadata.items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("state")
    instance = dg.DagsterInstance.ephemeral()
    # Two landed batches; the second updates 20 tickets: the last landed version must win.
    frame = sample.redacted_tickets(400, 60, seed=3, span_days=120)
    update = frame.sample(20, random_state=1).copy()
    update["category"] = "returns"
    update["_batch"] = "batch-late"
    result = _run({"batch-early": frame, "batch-late": update}, instance, state)
    # Read what the first run wrote now: later tests in this module (any order) rewrite the table.
    written = {
        "customer_features": pd.read_parquet(_metadata(result, "customer_features")["dagster/uri"]),
        "training_set": pd.read_parquet(state / "lake" / "ticket_triage" / "training_set.parquet"),
    }
    return state, instance, frame, update, result, written


def test_assets_materialize_with_metadata_and_passing_checks(first_run) -> None:
    state, _, frame, update, result, written = first_run
    assert result.success
    customer = _metadata(result, "customer_features")
    assert (customer["mode"], customer["mode_reason"]) == ("full rebuild", "no previous table to fold into")
    assert customer["batches_read"] == ["batch-early", "batch-late"] and customer["batches_folded"] == 2
    assert customer["dagster/row_count"] == len(written["customer_features"])
    assert Path(customer["dagster/uri"]).is_relative_to(state / "feast")

    registry = _metadata(result, "feature_registry")
    assert registry["feature_services"] == ["customer_profile_v1", "ticket_triage_v1"]
    assert registry["feature_views"] == ["customer_features", "ticket_features"]
    assert len(registry["definitions_hash"]) == 64

    online = _metadata(result, "online_features")
    assert {w["mode"] for w in online["windows"].values()} == {"backfill"}

    ts = _metadata(result, TS)
    labeled = int((frame["agent_reply"].str.len() > 0).sum())
    assert ts["dagster/row_count"] == labeled
    assert sum(ts["split_counts"].values()) == labeled
    assert ts["feature_service"] == "ticket_triage_v1"

    for asset in ("customer_features", "ticket_features"):
        for name in ("no_raw_pii", "within_ttl", "schema_changes"):
            assert _check(result, asset, name).passed, (asset, name)

    assert training.content_hash(written["training_set"]) == ts["content_hash"]
    # The late batch's category won for the tickets it updated.
    by_id = written["training_set"].set_index("ticket_id")["label"]
    updated = [t for t in update["ticket_id"] if t in by_id.index]
    assert updated and all(by_id[t] == "returns" for t in updated)


def test_cli_reads_the_materialized_online_store(first_run, monkeypatch: pytest.MonkeyPatch) -> None:
    state, _, frame, _, _, _ = first_run
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(state))
    monkeypatch.setenv("AIPLAT_ENV", "local")
    table = pd.read_parquet(state / "feast" / "data" / "customer_features.parquet")
    latest = table.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    customer = latest.index[0]
    out = CliRunner().invoke(
        cli, ["features", "get", "--service", "customer_profile_v1", "--entity", f"customer_id={customer}", "--json"]
    )
    assert out.exit_code == 0, out.output
    values = json.loads(out.output[out.output.index("{"):])
    assert values["customer_id"] == [customer]
    assert values["tickets_prior_total"] == [int(latest.loc[customer, "tickets_prior_total"])]
    assert values["top_product"] == [latest.loc[customer, "top_product"]]

    unknown = CliRunner().invoke(cli, ["features", "get", "--service", "nope_v1", "--entity", f"customer_id={customer}"])
    assert unknown.exit_code != 0 and "unknown feature service 'nope_v1'" in unknown.output
    bad = CliRunner().invoke(cli, ["features", "get", "--service", "customer_profile_v1", "--entity", "customer_id"])
    assert bad.exit_code != 0 and "KEY=VALUE" in bad.output


def test_cli_reads_a_service_over_two_entities(first_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """ticket_triage_v1 joins tickets and customers: both keys make one entity row."""
    state, _, frame, _, _, _ = first_run
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(state))
    monkeypatch.setenv("AIPLAT_ENV", "local")
    row = frame.iloc[0]
    ticket_id, customer = str(row["ticket_id"]), str(row["customer_id"])
    both = CliRunner().invoke(cli, ["features", "get", "--service", "ticket_triage_v1", "--entity", f"ticket_id={ticket_id}",
                                    "--entity", f"customer_id={customer}", "--json"])
    assert both.exit_code == 0, both.output
    values = json.loads(both.output[both.output.index("{"):])
    assert values["ticket_id"] == [ticket_id] and values["customer_id"] == [customer]
    features = [k for k in values if k not in ("ticket_id", "customer_id")]
    assert features and any(values[k] != [None] for k in features)

    one = CliRunner().invoke(cli, ["features", "get", "--service", "ticket_triage_v1", "--entity", f"customer_id={customer}"])
    assert one.exit_code != 0 and "ticket_triage_v1 joins on customer_id, ticket_id" in one.output


def test_a_new_batch_is_folded_in_and_the_tables_equal_a_full_rebuild(first_run) -> None:
    """Issue 16 item 3: a run after one new batch reads that batch (and the touched customers'
    earlier tickets), computes only its rows, and writes what a rebuild from every batch writes."""
    state, instance, frame, update, _, _ = first_run
    _run({}, instance, state)  # whatever other tests of this module left is folded in first
    data = state / "feast" / "data"
    stamps = {v: (data / f"{v}.parquet").stat().st_mtime_ns for v in ("customer_features", "ticket_features")}
    idle = _run({}, instance, state)
    for view, stamp in stamps.items():  # nothing new: the table is neither recomputed nor rewritten
        meta = _metadata(idle, view)
        assert (meta["mode_reason"], meta["rows_computed"]) == ("no new batch", 0), meta
        assert (data / f"{view}.parquet").stat().st_mtime_ns == stamp
        assert meta["content_hash"] == frame_hash(pd.read_parquet(data / f"{view}.parquet"))
    more = sample.redacted_tickets(50, 60, seed=4, span_days=1)
    more["ticket_id"] = [f"N{i:05d}" for i in range(len(more))]
    batch = f"batch-new-{len(instance.get_dynamic_partitions(TICKET_BATCHES.name))}"
    result = _run({batch: more}, instance, state)
    assert result.success
    for view in ("customer_features", "ticket_features"):
        meta = _metadata(result, view)
        assert (meta["mode"], meta["batches_read"]) == ("incremental", [batch]), meta
    ticket_meta, customer_meta = _metadata(result, "ticket_features"), _metadata(result, "customer_features")
    assert ticket_meta["rows_computed"] == 50 < ticket_meta["dagster/row_count"]
    assert 0 < customer_meta["rows_computed"] < customer_meta["dagster/row_count"]
    assert {w["mode"] for w in _metadata(result, "online_features")["windows"].values()} == {"incremental"}
    schema = _check(result, "customer_features", "schema_changes")
    assert schema.passed and schema.metadata["previous_known"].value is True

    lake = LakeIOManager(base_uri=str(state / "lake"))
    everything = current_tickets(lake.read_partitions(fa.REDACTED_TICKETS, list(instance.get_dynamic_partitions(TICKET_BATCHES.name))))
    pd.testing.assert_frame_equal(pd.read_parquet(data / "ticket_features.parquet"), tables.ticket_features(everything))
    pd.testing.assert_frame_equal(pd.read_parquet(data / "customer_features.parquet"), tables.customer_features(everything))
    assert _metadata(result, TS)["current_tickets"] == len(everything)

    # The rebuild path: run config, from every batch, the same tables.
    rebuilt = _run({}, instance, state, run_config={"ops": {v: {"config": {"full_rebuild": True}}
                                                           for v in ("customer_features", "ticket_features")}})
    assert _metadata(rebuilt, "ticket_features")["mode_reason"] == "full rebuild requested"
    pd.testing.assert_frame_equal(pd.read_parquet(data / "customer_features.parquet"), tables.customer_features(everything))


def test_raw_pii_stops_the_table_and_keeps_the_previous_one(first_run) -> None:
    state, instance, frame, update, _, _ = first_run
    path = state / "feast" / "data" / "customer_features.parquet"
    before = path.read_bytes()
    leaked = frame.copy()
    leaked.loc[leaked.index[:3], "customer_id"] = ["alice@example.com", "bob@example.com", "carol@example.com"]
    try:
        result = _run({"batch-early": leaked}, instance, state, raise_on_error=False)
    finally:
        restore = _upstream({"batch-early": frame})  # the landed batch as it was, for the other tests
        dg.materialize([restore], partition_key="batch-early", instance=instance,
                       resources={"lake": LakeIOManager(base_uri=str(state / "lake"))})
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure and e.step_key == "customer_features"]
    assert failure and "raw PII" in str(failure[0].event_specific_data.error.message)
    assert "alice@example.com" not in str(failure[0].event_specific_data.error.message)
    assert path.read_bytes() == before
    # Nothing downstream of a failed table ran.
    assert not result.asset_materializations_for_node(TS)
