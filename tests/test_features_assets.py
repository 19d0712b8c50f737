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
from assets import features as fa
from resources.feast import LocalFeastResource
from resources.lake import LakeIOManager
from tests.chain_helpers import chain_asset, chain_for

# Feast's imports and apply take seconds: one applied store per module, marked slow.
pytestmark = pytest.mark.slow

# The demo triage model's training set (generated from its spec): the point-in-time join downstream.
TRAINING_SET = chain_asset(chain_for("ticket-triage"), "training_set")
TS = "ticket_triage__training_set"
ALL = [*fa.feature_assets, *fa.feature_checks, TRAINING_SET]


def _upstream(frame: pd.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(key=["redacted_tickets"], io_manager_key="lake")
    def redacted_tickets() -> pd.DataFrame:
        return frame

    return redacted_tickets


def _run(frame: pd.DataFrame, instance: dg.DagsterInstance, state: Path, raise_on_error: bool = True):
    return dg.materialize(
        [_upstream(frame), *ALL],
        instance=instance,
        resources={
            "feast": LocalFeastResource(data_dir=str(state / "feast")),
            "lake": LakeIOManager(base_uri=str(state / "lake")),
        },
        raise_on_error=raise_on_error,
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
    landed = pd.concat([frame, update], ignore_index=True)
    result = _run(landed, instance, state)
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
    assert customer["current_tickets"] == 400 and customer["upstream_rows"] == 420
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


def test_second_run_is_incremental_and_reports_schema_unchanged(first_run) -> None:
    state, instance, frame, update, _, _ = first_run
    more = sample.redacted_tickets(50, 60, seed=4, span_days=1)
    more["ticket_id"] = [f"N{i:05d}" for i in range(len(more))]
    result = _run(pd.concat([frame, update, more], ignore_index=True), instance, state)
    assert result.success
    assert {w["mode"] for w in _metadata(result, "online_features")["windows"].values()} == {"incremental"}
    schema = _check(result, "customer_features", "schema_changes")
    assert schema.passed and schema.metadata["previous_known"].value is True
    assert _metadata(result, TS)["current_tickets"] == 450


def test_raw_pii_stops_the_table_and_keeps_the_previous_one(first_run) -> None:
    state, instance, frame, update, _, _ = first_run
    path = state / "feast" / "data" / "customer_features.parquet"
    before = path.read_bytes()
    leaked = frame.copy()
    leaked.loc[leaked.index[:3], "customer_id"] = ["alice@example.com", "bob@example.com", "carol@example.com"]
    result = _run(leaked, instance, state, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure and e.step_key == "customer_features"]
    assert failure and "raw PII" in str(failure[0].event_specific_data.error.message)
    assert "alice@example.com" not in str(failure[0].event_specific_data.error.message)
    assert path.read_bytes() == before
    # Nothing downstream of a failed table ran.
    assert not result.asset_materializations_for_node(TS)
