"""Per model of the current instance (DAGSTER_HOME): the latest eval report's metrics against the gate
thresholds it was judged by, the gate verdict, and how long its fine-tune and eval steps ran.

Used by scripts/measure_default_demo.sh to check that the DEFAULT specs pass their gates on the default
demo corpus (what "Materialize all" runs); prints "not materialized" for a step that has not run yet.
"""

from __future__ import annotations

import json
import sys
import time

import dagster as dg


def _step_minutes(instance: dg.DagsterInstance, key: dg.AssetKey) -> str:
    """Wall time of the step that made the latest materialization of `key` (or of a step still running)."""
    step = "__".join(key.path)
    for record in instance.get_run_records(limit=50):
        for stats in instance.get_run_step_stats(record.dagster_run.run_id, step_keys=[step]):
            if stats.start_time:
                end = stats.end_time
                state = stats.status.value if stats.status else "RUNNING"
                if end is None:  # no step end: still running, or the run died (e.g. killed for memory)
                    state = f"no end, run {record.dagster_run.status.value}"
                minutes = ((end or time.time()) - stats.start_time) / 60
                return f"{minutes:.1f} min ({state}, run {record.dagster_run.run_id[:8]})"
    return "not run"


def _metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict | None:
    event = instance.get_latest_materialization_event(key)
    if event is None:
        return None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def main(models: list[str]) -> None:
    from aiplat.specs import load_specs

    instance = dg.DagsterInstance.get()
    specs = [s for s in load_specs() if not models or s.name in models]
    for spec in specs:
        name, prefix = spec.name, spec.key_prefix
        tuned, report = dg.AssetKey([prefix, "fine_tuned_model"]), dg.AssetKey([prefix, "eval_report"])
        print(f"== {name}")
        print(f"  fine-tune step: {_step_minutes(instance, tuned)}")
        meta = _metadata(instance, tuned)
        if meta:
            print("  fine-tune:", {k: meta.get(k) for k in ("model_version", "final_train_loss", "eval_loss",
                                                            "tokens_per_second")})
        print(f"  eval step: {_step_minutes(instance, report)}")
        meta = _metadata(instance, report)
        if meta is None:
            print("  eval report: not materialized")
            continue
        print(f"  gate passed: {meta.get('gate_passed')}  reasons: {json.dumps(meta.get('gate_reasons'))}")
        print(f"  thresholds: {json.dumps(meta.get('thresholds'))}")
        for metric, row in (meta.get("comparison") or {}).items():
            print(f"  {metric:22s} {json.dumps(row)}")


if __name__ == "__main__":
    main(sys.argv[1:])
