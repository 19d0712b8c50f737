"""FinOps: `aiplat cost report --capacity` turns measured GPU-hours (request log for inference, the
Dagster instance's GPU-pool runs for training) into a reserved / on-demand / spot plan with its
assumptions, and a chargeback per team that adds up to the plan."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.operations.capacity import (CapacityAssumptions, TrainingRun, hourly_inference_gpus, plan,
                                        reserved_gpus_for, training_runs_from_records)
from aiplat.operations.requests import RequestLog, RequestRecord
from resources.kubernetes import GPU_POOL_TAG, K8S_CONFIG_TAG, GpuPlacement

A = CapacityAssumptions()


def _cost(profile: list[float], r: int, a: CapacityAssumptions) -> float:
    reserved = max(r, a.min_inference_gpus)
    return reserved * len(profile) * a.reserved_gpu_hour + sum(max(0.0, d - reserved) for d in profile) * a.on_demand_gpu_hour


@pytest.mark.parametrize("profile", [
    [1.5] * 24,                              # steady 1.5 GPUs
    [2.0] * 20 + [0.0] * 4,                  # busy most of the day
    [3.0] * 6 + [0.2] * 18,                  # a short daily peak
    [0.0] * 24,                              # nothing measured: only the always-on floor
    [0.7, 1.9, 2.6, 0.1, 4.0, 3.3] * 4,      # ragged
])
def test_the_reservation_is_the_cheapest_count(profile: list[float]) -> None:
    chosen = reserved_gpus_for(profile, A)
    costs = {r: _cost(profile, r, A) for r in range(0, 7)}
    assert costs[chosen] == pytest.approx(min(costs.values())), (chosen, costs)


def test_a_steeper_discount_reserves_more() -> None:
    profile = [3.0] * 12 + [1.0] * 12  # the 2nd and 3rd GPU are busy half the time
    assert reserved_gpus_for(profile, CapacityAssumptions(reserved_discount=0.40)) == 1
    assert reserved_gpus_for(profile, CapacityAssumptions(reserved_discount=0.60)) == 3


def test_hourly_profile_counts_overlaps_once_and_splits_at_hour_edges() -> None:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)

    def rec(end: datetime, seconds: float, endpoint: str = "e") -> RequestRecord:
        return RequestRecord(end, endpoint, "m", "team:ml", "f", 1, 1, seconds * 1000, 200)

    records = [rec(start + timedelta(minutes=30), 1800), rec(start + timedelta(minutes=30), 900),  # overlap
               rec(start + timedelta(hours=1, minutes=15), 1800),                                    # 15 + 15 min
               rec(start + timedelta(minutes=30), 1800, endpoint="other")]
    profile = hourly_inference_gpus(records, gpus_per_endpoint=2, start=start, hours=3)
    assert profile == pytest.approx([2 * (0.5 + 0.25) + 2 * 0.5, 2 * 0.25, 0.0])


def test_training_goes_to_spot_unless_the_overhead_eats_the_discount() -> None:
    window = (datetime(2026, 11, 1).date(),) * 2
    t0 = datetime(2026, 11, 1, 2, tzinfo=timezone.utc)
    runs = [TrainingRun("r1", "team:ml", 2, t0, t0 + timedelta(hours=3))]
    assert plan([], runs, window, A).training_class == "spot"
    costly = CapacityAssumptions(spot_discount=0.10, spot_rerun_overhead=0.30)
    p = plan([], runs, window, costly)
    assert p.training_class == "on-demand" and p.costs["training"] == pytest.approx(6 * costly.on_demand_gpu_hour)


def test_chargeback_adds_up_to_the_plan_and_names_every_team() -> None:
    day = datetime(2026, 11, 1).date()
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    records = [RequestRecord(t0 + timedelta(hours=h, minutes=40), "e", "m", "team:ml" if h % 3 else "team:search",
                             "f", 10, 10, 20 * 60 * 1000, 200) for h in range(24)]
    runs = [TrainingRun("r1", "team:ml", 1, t0, t0 + timedelta(hours=5)),
            TrainingRun("r2", "team:vision", 4, t0, t0 + timedelta(hours=1))]
    p = plan(records, runs, (day, day), A, inference_by_team={"team:ml": 16 / 3, "team:search": 8 / 3},
             token_cost={"team:ml": 1.0, "team:search": 0.5, "team:docs": 0.25})
    assert set(p.chargeback) == {"team:ml", "team:search", "team:vision", "team:docs"}
    total = sum(c["total"] for c in p.chargeback.values())
    assert total == pytest.approx(p.total + 1.75)
    assert p.chargeback["team:vision"]["training"] == pytest.approx(4 * (1 + A.spot_rerun_overhead) * A.spot_gpu_hour)
    assert p.chargeback["team:ml"]["inference"] == pytest.approx(2 * p.chargeback["team:search"]["inference"])
    assert p.total < p.costs["all_on_demand"]


def test_cli_plans_from_the_request_log_and_the_dagster_runs(state_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Real data paths: the request log the gateway writes (RequestLog) and training runs recorded by
    a real Dagster instance (a job in the GPU pool executed against it)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    now = datetime.now(timezone.utc)
    today = now.date()
    log = RequestLog()  # <state>/operations/requests.jsonl, what the report reads
    start_of_day = datetime.combine(today, datetime.min.time(), timezone.utc)
    for i in range(6):
        end = start_of_day + timedelta(minutes=10 + i * 10)
        log.append(RequestRecord(end, "ticket-triage", "ticket-triage", "team:ml" if i % 2 else "team:search",
                                 "triage", 100, 50, 5 * 60 * 1000, 200))

    @dg.op
    def fine_tune_stand_in() -> None:
        time.sleep(0.3)

    placement = GpuPlacement(gpus=2, team="vision")
    job = dg.GraphDefinition(name="gpu_job", node_defs=[fine_tune_stand_in]).to_job(
        tags={GPU_POOL_TAG: "gpu_training", K8S_CONFIG_TAG: json.dumps(placement.k8s_config())})
    with dg.DagsterInstance.get() as instance:
        assert job.execute_in_process(instance=instance).success
        [record] = instance.get_run_records(dg.RunsFilter(tags={GPU_POOL_TAG: "gpu_training"}))
        expected_training = (record.end_time - record.start_time) / 3600 * 2
        runs, notes = training_runs_from_records([record])
    assert runs[0].team == "team:vision" and runs[0].gpus == 2 and notes == []

    out = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["cost", "report", "--since", today.isoformat(), "--until", today.isoformat(),
                                      "--capacity", "--capacity-json", str(out)])
    assert result.exit_code == 0, result.output
    assert "assumptions:" in result.output and "reserved GPU pays off when busy more than 60%" in result.output
    plan_json = json.loads(out.read_text())
    hours = plan_json["gpu_hours"]
    assert hours["team:vision"]["training"] == pytest.approx(expected_training, rel=1e-6)
    # Six 5-minute requests, 10 minutes apart: 30 busy minutes on one GPU, split by request time.
    assert hours["team:ml"]["inference"] + hours["team:search"]["inference"] == pytest.approx(0.5)
    assert sum(plan_json["inference_hourly_gpus"]) == pytest.approx(0.5)
    assert plan_json["training_class"] == "spot" and plan_json["reserved_gpus"] == 1
    chargeback_total = sum(c["total"] for c in plan_json["chargeback"].values())
    assert chargeback_total == pytest.approx(plan_json["total"] + sum(plan_json["token_cost"].values()))
    assert plan_json["token_cost"]["team:ml"] == pytest.approx(3 * (100 / 1000 * 0.0005 + 50 / 1000 * 0.0015))
