"""Where a Dagster instance's time went: each run (start offset, duration, status, job) and the
wall time of every step summed over runs, longest first.

    .venv/bin/python scripts/step_durations.py [DAGSTER_HOME]   (default: the local runtime's)

Used to size the newcomer path's "Materialize all" (tests/test_newcomer_path.py keeps its instance
under pytest's tmp folder) and the local demo.
"""

from __future__ import annotations

import collections
import sys


def main(home: str | None = None) -> None:
    import dagster as dg

    from aiplat.config import dagster_home

    with dg.DagsterInstance.from_config(home or str(dagster_home())) as instance:
        rows, steps = [], collections.Counter()
        for run in instance.get_runs():
            stats = instance.get_run_stats(run.run_id)
            if stats.start_time and stats.end_time:
                rows.append((stats.start_time, stats.end_time - stats.start_time, run.status.value, run.job_name))
            for step in instance.get_run_step_stats(run.run_id):
                if step.start_time and step.end_time:
                    steps[step.step_key] += step.end_time - step.start_time
    rows.sort()
    t0 = rows[0][0] if rows else 0.0
    print("start     duration  status   job")
    for start, took, status, job in rows:
        print(f"{start - t0:7.0f}s {took:8.0f}s  {status:8} {job}")
    print("\nstep wall time, summed over runs")
    for key, seconds in steps.most_common():
        print(f"{seconds:8.1f}s  {key}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
