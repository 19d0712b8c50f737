"""Cost attribution: token cost and GPU-hours per day, team and feature, from the request log.

Token cost = tokens x the configured rates. GPU-hours of an endpoint on a day = the time it was busy
(the union of its requests' [end - latency, end] intervals, so requests batched together are not
counted twice) x the GPUs it runs on; that time is shared among the day's (team, feature) pairs in
proportion to the request time each used on that endpoint. Every request is counted exactly once,
so the rows add up to the whole.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from aiplat.operations.requests import RejectedLine, RequestRecord

log = logging.getLogger("aiplat.alerts")

COLUMNS = ["day", "team", "feature", "requests", "errors", "prompt_tokens", "completion_tokens",
           "token_cost", "gpu_hours", "gpu_cost", "total_cost"]
# The same numbers one level finer: per registered model (and its version) within team and feature.
MODEL_COLUMNS = ["day", "team", "model", "model_version", "feature", *COLUMNS[3:]]


@dataclass(frozen=True)
class CostRates:
    prompt_per_1k_tokens: float = 0.0005
    completion_per_1k_tokens: float = 0.0015
    gpu_hour: float = 2.50
    gpus_per_endpoint: float = 1.0


@dataclass(frozen=True)
class BudgetBreach:
    day: date
    team: str
    cost: float
    budget: float

    def alert_line(self) -> str:
        return (f"AIPLAT_ALERT budget team={self.team} day={self.day.isoformat()} cost={self.cost:.4f} "
                f"budget={self.budget:.4f} over_by={self.cost - self.budget:.4f}")


@dataclass
class CostReport:
    rows: pd.DataFrame  # COLUMNS, one row per (day, team, feature)
    totals: dict[str, float]  # computed from the records directly, not from the rows
    endpoint_gpu_hours: dict[tuple[date, str], float]
    breaches: list[BudgetBreach] = field(default_factory=list)
    rejected: list[RejectedLine] = field(default_factory=list)
    window: tuple[date, date] | None = None  # the UTC days the report covers, inclusive
    model_rows: pd.DataFrame | None = None  # MODEL_COLUMNS, one row per (day, team, model, version, feature)

    def by_team(self) -> pd.DataFrame:
        return self.rows.groupby("team", as_index=False)[COLUMNS[3:]].sum()

    def by_model(self) -> pd.DataFrame:
        """Per team and model (all versions and features), the rows adding up to the whole."""
        return self.model_rows.groupby(["team", "model"], as_index=False)[COLUMNS[3:]].sum()


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def token_cost(r: RequestRecord, rates: CostRates) -> float:
    return r.prompt_tokens / 1000 * rates.prompt_per_1k_tokens + r.completion_tokens / 1000 * rates.completion_per_1k_tokens


def _grouped(records: list[RequestRecord], rates: CostRates, key, names: list[str]) -> tuple[pd.DataFrame, dict]:
    """One row per (day, *key(record)); an endpoint's busy GPU time shared among the keys that used
    it that day in proportion to their request time."""
    groups: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_endpoint_day: dict[tuple[date, str], list[RequestRecord]] = defaultdict(list)
    for r in records:
        g = groups[(r.day, *key(r))]
        g["requests"] += 1
        g["errors"] += 0 if r.ok else 1
        g["prompt_tokens"] += r.prompt_tokens
        g["completion_tokens"] += r.completion_tokens
        g["token_cost"] += token_cost(r, rates)
        by_endpoint_day[(r.day, r.endpoint)].append(r)

    endpoint_gpu_hours: dict[tuple[date, str], float] = {}
    for (day, endpoint), reqs in by_endpoint_day.items():
        hours = busy_seconds((r.timestamp.timestamp() - r.latency_ms / 1000, r.timestamp.timestamp()) for r in reqs) \
            / 3600 * rates.gpus_per_endpoint
        endpoint_gpu_hours[(day, endpoint)] = hours
        used: dict[tuple, float] = defaultdict(float)
        for r in reqs:
            used[key(r)] += r.latency_ms
        total_used = sum(used.values())
        for k, ms in used.items():
            share = ms / total_used if total_used else 1 / len(used)
            groups[(day, *k)]["gpu_hours"] += hours * share

    rows = []
    for (day, *k), g in sorted(groups.items()):
        gpu_cost = g["gpu_hours"] * rates.gpu_hour
        rows.append({"day": day, **dict(zip(names, k)), "requests": int(g["requests"]),
                     "errors": int(g["errors"]), "prompt_tokens": int(g["prompt_tokens"]),
                     "completion_tokens": int(g["completion_tokens"]), "token_cost": g["token_cost"],
                     "gpu_hours": g["gpu_hours"], "gpu_cost": gpu_cost, "total_cost": g["token_cost"] + gpu_cost})
    return pd.DataFrame(rows, columns=["day", *names, *COLUMNS[3:]]), endpoint_gpu_hours


def attribute(records: list[RequestRecord], rates: CostRates, budgets: Mapping[str, float] | None = None,
              rejected: list[RejectedLine] | None = None, endpoint_models: Mapping[str, str] | None = None) -> CostReport:
    """`endpoint_models` names the registered model behind each endpoint (from the model specs); a
    request to an endpoint no spec declares is attributed to the endpoint's name."""
    models = dict(endpoint_models or {})
    frame, endpoint_gpu_hours = _grouped(records, rates, lambda r: (r.team, r.feature), ["team", "feature"])
    model_frame, _ = _grouped(records, rates, lambda r: (r.team, models.get(r.endpoint, r.endpoint), r.model, r.feature),
                              ["team", "model", "model_version", "feature"])

    # Start the sums at 0.0: a day without traffic still totals floats, not the int 0.
    whole_gpu_hours = sum(endpoint_gpu_hours.values(), 0.0)
    whole_token_cost = sum((token_cost(r, rates) for r in records), 0.0)
    totals = {
        "requests": float(len(records)),
        "prompt_tokens": float(sum(r.prompt_tokens for r in records)),
        "completion_tokens": float(sum(r.completion_tokens for r in records)),
        "token_cost": whole_token_cost,
        "gpu_hours": whole_gpu_hours,
        "gpu_cost": whole_gpu_hours * rates.gpu_hour,
        "total_cost": whole_token_cost + whole_gpu_hours * rates.gpu_hour,
    }
    report = CostReport(frame, totals, endpoint_gpu_hours, rejected=list(rejected or []), model_rows=model_frame)
    report.breaches = check_budgets(report, budgets or {})
    return report


def check_budgets(report: CostReport, budgets: Mapping[str, float]) -> list[BudgetBreach]:
    """Each (day, team) whose total cost is above the team's daily budget."""
    if report.rows.empty or not budgets:
        return []
    per_day = report.rows.groupby(["day", "team"])["total_cost"].sum()
    return [BudgetBreach(day, team, float(cost), float(budgets[team]))
            for (day, team), cost in per_day.items() if team in budgets and cost > budgets[team]]


def emit_budget_alerts(report: CostReport, step_log=None) -> list[str]:
    """Each breach as one stable line to the `aiplat.alerts` logger (what a log shipper matches) and the step's log."""
    lines = [b.alert_line() for b in report.breaches]
    for line in lines:
        log.error(line)
        if step_log is not None:
            step_log.error(line)
    return lines


def filter_team(report: CostReport, team: str) -> pd.DataFrame:
    wanted = team if team.startswith("team:") else f"team:{team}"
    return report.rows[report.rows["team"] == wanted]


def write_chart(report: CostReport, path: Path, title: str = "Cost by team and feature") -> Path:
    """A stacked bar chart (PNG): one bar per team, one segment per feature, total cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if report.rows.empty:
        ax.text(0.5, 0.5, "no requests in this period", ha="center", va="center", transform=ax.transAxes)
    else:
        pivot = report.rows.pivot_table(index="team", columns="feature", values="total_cost", aggfunc="sum", fill_value=0.0)
        pivot.plot(kind="bar", stacked=True, ax=ax)
        ax.set_ylabel("cost")
        ax.legend(title="feature", fontsize="small")
        ax.tick_params(axis="x", labelrotation=0)
    ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def model_markdown_table(frame: pd.DataFrame) -> str:
    """The per-model rows (MODEL_COLUMNS)."""
    if frame.empty:
        return "(no requests)"
    head = "| day | team | model | version | feature | requests | errors | token cost | GPU-h | total |"
    rows = [head, "|" + "---|" * 10]
    for r in frame.itertuples(index=False):
        rows.append(f"| {r.day} | {r.team} | {r.model} | {r.model_version} | {r.feature} | {r.requests} | {r.errors} | "
                    f"{r.token_cost:.4f} | {r.gpu_hours:.4f} | {r.total_cost:.4f} |")
    return "\n".join(rows)


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no requests)"
    head = "| day | team | feature | requests | errors | prompt tok | completion tok | token cost | GPU-h | GPU cost | total |"
    rows = [head, "|" + "---|" * 11]
    for r in frame.itertuples(index=False):
        rows.append(f"| {r.day} | {r.team} | {r.feature} | {r.requests} | {r.errors} | {r.prompt_tokens} | "
                    f"{r.completion_tokens} | {r.token_cost:.4f} | {r.gpu_hours:.4f} | {r.gpu_cost:.4f} | {r.total_cost:.4f} |")
    return "\n".join(rows)


def day_window(since: date | None, until: date | None, today: date) -> tuple[date, date]:
    """Defaults: yesterday (the last complete UTC day) when neither is given."""
    if since is None and until is None:
        yesterday = today - timedelta(days=1)
        return yesterday, yesterday
    return since or today, until or today
