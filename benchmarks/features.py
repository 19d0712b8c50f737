"""Feature store benchmark: online retrieval latency and materialization throughput, SQLite vs Redis.

    python benchmarks/features.py [--tickets 20000] [--customers 3000] [--redis-url redis://127.0.0.1:6379/0]

Both online stores are loaded from the same offline tables in one process; SQLite (the local
runtime's store) is the baseline the Redis numbers are divided by.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg

from aiplat.features import sample, tables
from aiplat.features import store as S
from aiplat.net import port_open
from resources.feast import FeastResource, LocalFeastResource, RedisFeastResource

VIEWS = ["customer_features", "ticket_features"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _latency(feast: FeastResource, customers: list[str], batch: int, repeats: int) -> dict[str, float]:
    rng = random.Random(batch)
    for _ in range(10):  # warm caches and connections
        feast.get_online_features("customer_profile_v1", [{"customer_id": c} for c in rng.sample(customers, batch)])
    times = []
    for _ in range(repeats):
        rows = [{"customer_id": c} for c in rng.sample(customers, batch)]
        t = time.perf_counter()
        feast.get_online_features("customer_profile_v1", rows)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": statistics.median(times), "p99_ms": _percentile(times, 99)}


def run(n_tickets: int, n_customers: int, redis_url: str, repeats: int) -> dict[str, dict[str, float]]:
    tickets = sample.redacted_tickets(n_tickets, n_customers, seed=7, span_days=365)
    t = time.perf_counter()
    frames = {"customer_features": tables.customer_features(tickets), "ticket_features": tables.ticket_features(tickets)}
    compute_s = time.perf_counter() - t
    print(f"feature tables: {sum(len(f) for f in frames.values())} rows from {n_tickets} tickets in {compute_s:.2f}s")
    work = Path(tempfile.mkdtemp(prefix="aiplat-bench-features-"))
    project = f"bench_{uuid.uuid4().hex[:8]}"
    backends: dict[str, FeastResource] = {
        "sqlite": LocalFeastResource(project=project, data_dir=str(work), registry_path=str(work / "sqlite_reg.db"))
    }
    if port_open("127.0.0.1", 6379) or not redis_url.startswith("redis://127.0.0.1"):
        backends["redis"] = RedisFeastResource(
            project=project, data_dir=str(work), registry_path=str(work / "redis_reg.db"), redis_url=redis_url
        )
    else:
        print("Redis is not reachable: measuring SQLite only", file=sys.stderr)
    results: dict[str, dict[str, float]] = {}
    try:
        return _measure(backends, frames, tickets, repeats, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(backends, frames, tickets, repeats, results):
    with dg.build_resources(backends) as res:
        first = getattr(res, "sqlite")
        defs = first.definitions()
        for name, frame in frames.items():
            S.write_offline_table(first.table_path(name), frame)
        customers = sorted(tickets["customer_id"].unique())
        for name in backends:
            feast = getattr(res, name)
            S.apply_definitions(feast.store, defs)
            t = time.perf_counter()
            done = S.materialize(feast.store, VIEWS)
            seconds = time.perf_counter() - t
            rows = sum(m.source_rows for m in done)
            one = _latency(feast, customers, 1, repeats)
            hundred = _latency(feast, customers, min(100, len(customers)), max(repeats // 4, 20))
            results[name] = {
                "materialize_rows_per_s": rows / seconds,
                "p50_1_ms": one["p50_ms"],
                "p99_1_ms": one["p99_ms"],
                "p50_100_ms": hundred["p50_ms"],
                "p99_100_ms": hundred["p99_ms"],
            }
        if "redis" in backends:
            res.redis.store.teardown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=20000)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    results = run(args.tickets, args.customers, args.redis_url, args.repeats)
    metrics = ["materialize_rows_per_s", "p50_1_ms", "p99_1_ms", "p50_100_ms", "p99_100_ms"]
    names = list(results)
    print(f"{'metric':<24}" + "".join(f"{n:>12}" for n in names) + ("   redis/sqlite" if len(names) == 2 else ""))
    for m in metrics:
        line = f"{m:<24}" + "".join(f"{results[n][m]:>12.2f}" for n in names)
        if len(names) == 2:
            line += f"   {results['redis'][m] / results['sqlite'][m]:>12.2f}x"
        print(line)


if __name__ == "__main__":
    main()
