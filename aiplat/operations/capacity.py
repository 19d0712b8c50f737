"""Capacity plan and chargeback: measured GPU-hours per team and workload kind -> how much GPU
capacity to reserve, to buy on demand and to run on spot, and what each team is charged.

Measured, not estimated:
  inference  GPU-hours from the request log (aiplat.operations.cost: endpoint busy time x GPUs,
             shared among the teams in proportion to the request time they used), per hour of the
             period, so the plan sees the shape of demand, not only its sum
  training   GPU-hours of the Dagster runs in the GPU training pool (tag aiplat/gpu-pool): run wall
             time x the GPUs their `dagster-k8s/config` tag asks for, team from the run's
             aiplat/team tag or the pod label aiplat.io/team

The rule (assumptions are data, printed with every plan):
  * Inference cannot be interrupted: reserved or on demand. The r-th reserved GPU is worth it when
    it would be busy for more than (1 - reserved discount) of the hours (break-even); GPUs are
    reserved one by one while that holds, the remainder runs on demand. The inference node group's
    always-on floor (`min_inference_gpus`) is paid every hour whatever the traffic, so it is counted
    as reserved capacity.
  * Training runs are interruptible (a preempted fine-tune is re-run): spot, charged with a re-run
    overhead, unless that is dearer than on demand.
  * Chargeback: each team pays its own GPU-hours at the effective rate of the capacity class that
    serves them (the reserved/on-demand blend for inference, spot for training) plus its token cost;
    the unused part of reserved capacity is a platform cost, shared in proportion to inference use.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone

from aiplat.operations.cost import busy_seconds
from aiplat.operations.requests import RequestRecord

INFERENCE, TRAINING = "inference", "training"
GPU_POOL_TAG = "aiplat/gpu-pool"
K8S_CONFIG_TAG = "dagster-k8s/config"
UNATTRIBUTED = "unattributed"


@dataclass(frozen=True)
class CapacityAssumptions:
    on_demand_gpu_hour: float = 2.50        # the cost report's gpu_hour
    reserved_discount: float = 0.40         # 1-year reservation / savings plan, no upfront
    spot_discount: float = 0.65             # typical spot price below on demand for these GPUs
    spot_rerun_overhead: float = 0.15       # share of training GPU-hours lost to interruptions and re-run
    min_inference_gpus: int = 1             # the inference node group's always-on floor (infra/)

    @property
    def reserved_gpu_hour(self) -> float:
        return self.on_demand_gpu_hour * (1 - self.reserved_discount)

    @property
    def spot_gpu_hour(self) -> float:
        return self.on_demand_gpu_hour * (1 - self.spot_discount)

    @property
    def break_even_utilisation(self) -> float:
        return 1 - self.reserved_discount

    def lines(self) -> list[str]:
        return [
            f"on-demand GPU-hour {self.on_demand_gpu_hour:.2f}; reserved {self.reserved_gpu_hour:.2f} "
            f"({self.reserved_discount:.0%} off, paid every hour); spot {self.spot_gpu_hour:.2f} ({self.spot_discount:.0%} off)",
            f"a reserved GPU pays off when busy more than {self.break_even_utilisation:.0%} of the hours",
            f"training on spot loses {self.spot_rerun_overhead:.0%} of its GPU-hours to interruptions (re-run, no resume)",
            f"inference keeps {self.min_inference_gpus} GPU(s) always on (counted as reserved)",
            "inference is never put on spot (an interruption drops live requests)",
        ]


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    team: str
    gpus: float
    start: datetime
    end: datetime

    @property
    def gpu_hours(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds()) / 3600 * self.gpus


@dataclass
class CapacityPlan:
    window: tuple[date, date]
    hours: int
    assumptions: CapacityAssumptions
    gpu_hours: dict[str, dict[str, float]]              # team -> kind -> GPU-hours
    inference_hourly_gpus: list[float]                  # busy inference GPUs, one value per hour of the window
    reserved_gpus: int
    inference_on_demand_gpu_hours: float
    training_class: str                                 # "spot" | "on-demand"
    costs: dict[str, float]                             # the plan's cost by line, and all-on-demand for comparison
    chargeback: dict[str, dict[str, float]]             # team -> {inference, training, platform_share, tokens, total}
    token_cost: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.costs["reserved"] + self.costs["inference_on_demand"] + self.costs["training"]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["window"] = [d.isoformat() for d in self.window]
        data["total"] = self.total
        data["assumptions_text"] = self.assumptions.lines()
        return data


def hourly_inference_gpus(records: Iterable[RequestRecord], gpus_per_endpoint: float, start: datetime,
                          hours: int) -> list[float]:
    """Busy GPUs in each hour of [start, start + hours): per endpoint, the union of its requests'
    intervals clipped to the hour, x its GPUs."""
    by_endpoint: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        end = r.timestamp.timestamp()
        by_endpoint[r.endpoint].append((end - r.latency_ms / 1000, end))
    t0 = start.timestamp()
    profile = [0.0] * hours
    for intervals in by_endpoint.values():
        for h in range(hours):
            lo, hi = t0 + 3600 * h, t0 + 3600 * (h + 1)
            clipped = [(max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi]
            profile[h] += busy_seconds(clipped) / 3600 * gpus_per_endpoint
    return profile


def reserved_gpus_for(profile: list[float], assumptions: CapacityAssumptions) -> int:
    """Reserve GPU r while the r-th GPU would be busy at least the break-even share of the hours."""
    if not profile:
        return assumptions.min_inference_gpus
    r = 0
    while True:
        nth_busy = sum(min(1.0, max(0.0, demand - r)) for demand in profile) / len(profile)
        if nth_busy < assumptions.break_even_utilisation:
            break
        r += 1
    return max(r, assumptions.min_inference_gpus)


def training_runs_from_records(records: Iterable) -> tuple[list[TrainingRun], list[str]]:
    """Dagster run records (instance.get_run_records) of the GPU training pool -> runs with team
    and GPUs. Runs that never started are skipped with a note; nothing is dropped silently."""
    runs, notes = [], []
    for record in records:
        run = record.dagster_run
        if record.start_time is None:
            notes.append(f"run {run.run_id}: never started, no GPU time")
            continue
        end = record.end_time or datetime.now(timezone.utc).timestamp()
        config = json.loads(run.tags.get(K8S_CONFIG_TAG, "{}") or "{}")
        limits = config.get("container_config", {}).get("resources", {}).get("limits", {})
        gpus = float(limits.get("nvidia.com/gpu", 1))
        team = run.tags.get("aiplat/team")
        if not team:
            label = config.get("pod_template_spec_metadata", {}).get("labels", {}).get("aiplat.io/team")
            team = f"team:{label}" if label else UNATTRIBUTED
        if team == UNATTRIBUTED:
            notes.append(f"run {run.run_id}: no team tag or label; charged to {UNATTRIBUTED}")
        runs.append(TrainingRun(run.run_id, team, gpus, datetime.fromtimestamp(record.start_time, timezone.utc),
                                datetime.fromtimestamp(end, timezone.utc)))
    return runs, notes


def fetch_training_runs(instance, since: date, until: date) -> tuple[list[TrainingRun], list[str]]:
    import dagster as dg

    start = datetime.combine(since, datetime.min.time(), timezone.utc)
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), timezone.utc)
    records = instance.get_run_records(dg.RunsFilter(tags={GPU_POOL_TAG: "gpu_training"}, created_after=start - timedelta(days=1)))
    runs, notes = training_runs_from_records(records)
    # Only the part of each run inside the window counts.
    clipped = []
    for r in runs:
        s, e = max(r.start, start), min(r.end, end)
        if e > s:
            clipped.append(TrainingRun(r.run_id, r.team, r.gpus, s, e))
    return clipped, notes


def plan(records: list[RequestRecord], training: list[TrainingRun], window: tuple[date, date],
         assumptions: CapacityAssumptions, gpus_per_endpoint: float = 1.0,
         token_cost: Mapping[str, float] | None = None, inference_by_team: Mapping[str, float] | None = None) -> CapacityPlan:
    """`inference_by_team`: the cost report's GPU-hours per team (its attribution); `records` give
    the hourly shape. Both come from the same request log."""
    first, last = window
    start = datetime.combine(first, datetime.min.time(), timezone.utc)
    hours = ((last - first).days + 1) * 24
    profile = hourly_inference_gpus(records, gpus_per_endpoint, start, hours)

    gpu_hours: dict[str, dict[str, float]] = defaultdict(lambda: {INFERENCE: 0.0, TRAINING: 0.0})
    for team, h in (inference_by_team or {}).items():
        gpu_hours[team][INFERENCE] += h
    for run in training:
        gpu_hours[run.team][TRAINING] += run.gpu_hours

    a = assumptions
    reserved = reserved_gpus_for(profile, a)
    on_demand_hours = sum(max(0.0, d - reserved) for d in profile)
    training_hours = sum(r.gpu_hours for r in training)
    spot_cost = training_hours * (1 + a.spot_rerun_overhead) * a.spot_gpu_hour
    on_demand_training = training_hours * a.on_demand_gpu_hour
    training_class = "spot" if spot_cost <= on_demand_training else "on-demand"
    costs = {
        "reserved": reserved * hours * a.reserved_gpu_hour,
        "inference_on_demand": on_demand_hours * a.on_demand_gpu_hour,
        "training": min(spot_cost, on_demand_training),
        # What the same hours would cost all on demand, the always-on floor included.
        "all_on_demand": (sum(max(d, a.min_inference_gpus) for d in profile) + training_hours) * a.on_demand_gpu_hour,
    }

    inference_total = sum(v[INFERENCE] for v in gpu_hours.values())
    inference_cost = costs["reserved"] + costs["inference_on_demand"]
    training_rate = costs["training"] / training_hours if training_hours else 0.0
    chargeback = {}
    for team, kinds in sorted(gpu_hours.items()):
        share = kinds[INFERENCE] / inference_total if inference_total else 0.0
        inference = inference_cost * share
        training_charge = kinds[TRAINING] * training_rate
        tokens = (token_cost or {}).get(team, 0.0)
        chargeback[team] = {"inference": inference, "training": training_charge, "tokens": tokens,
                            "total": inference + training_charge + tokens}
    if not inference_total and inference_cost:
        # No measured inference at all: the always-on floor is the platform's own cost.
        chargeback["platform"] = {"inference": inference_cost, "training": 0.0, "tokens": 0.0, "total": inference_cost}
    for team, tokens in (token_cost or {}).items():
        if team not in chargeback:
            chargeback[team] = {"inference": 0.0, "training": 0.0, "tokens": tokens, "total": tokens}
    return CapacityPlan(window, hours, a, {k: dict(v) for k, v in gpu_hours.items()}, profile, reserved,
                        on_demand_hours, training_class, costs, chargeback, dict(token_cost or {}))


def render(p: CapacityPlan) -> str:
    first, last = p.window
    lines = [f"capacity plan {first}..{last} ({p.hours} h)", "", "assumptions:"]
    lines += [f"  - {line}" for line in p.assumptions.lines()]
    peak = max(p.inference_hourly_gpus, default=0.0)
    mean = sum(p.inference_hourly_gpus) / len(p.inference_hourly_gpus) if p.inference_hourly_gpus else 0.0
    lines += ["", "measured GPU-hours:", "| team | inference | training |", "|---|---|---|"]
    for team, kinds in sorted(p.gpu_hours.items()):
        lines.append(f"| {team} | {kinds[INFERENCE]:.4f} | {kinds[TRAINING]:.4f} |")
    lines += ["", f"inference demand: mean {mean:.3f} GPUs, peak {peak:.3f} GPUs over {len(p.inference_hourly_gpus)} hours",
              "recommendation:",
              f"  reserved:  {p.reserved_gpus} inference GPU(s) for the whole period ({p.costs['reserved']:.2f})",
              f"  on demand: {p.inference_on_demand_gpu_hours:.2f} inference GPU-hours above the reservation ({p.costs['inference_on_demand']:.2f})",
              f"  {p.training_class}: {sum(v[TRAINING] for v in p.gpu_hours.values()):.2f} training GPU-hours ({p.costs['training']:.2f})",
              f"  plan {p.total:.2f} vs all on demand {p.costs['all_on_demand']:.2f}",
              "", "chargeback:", "| team | inference | training | tokens | total |", "|---|---|---|---|---|"]
    for team, c in sorted(p.chargeback.items()):
        lines.append(f"| {team} | {c['inference']:.4f} | {c['training']:.4f} | {c['tokens']:.4f} | {c['total']:.4f} |")
    lines.append(f"chargeback total {sum(c['total'] for c in p.chargeback.values()):.4f} = plan {p.total:.4f} + tokens "
                 f"{sum(p.token_cost.values()):.4f}")
    return "\n".join(lines)
