"""Intake throughput: validation + landing of N ticket records beside a plain json.loads loop.

    .venv/bin/python benchmarks/intake.py [--records 100000]

Both run in this process on the same bytes; the ratio is the figure (these machines are noisy).
"Landing" = validate every line, build the typed DataFrame and write it to the lake as Parquet,
i.e. everything the ingest asset does per batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402

from aiplat.demo_data import generate_corpus  # noqa: E402
from aiplat.intake.batches import quarantine_frame, records_frame  # noqa: E402
from aiplat.intake.schema import dataset  # noqa: E402
from aiplat.intake.validate import validate_lines  # noqa: E402
from resources.lake import LakeIOManager  # noqa: E402


def corpus_bytes(n: int) -> bytes:
    base = [r.record for r in generate_corpus(tickets=2000, kb=0).of("tickets")]
    lines = []
    for i in range(n):
        record = dict(base[i % len(base)], ticket_id=f"T-{i:08d}")
        lines.append(json.dumps(record, ensure_ascii=False).encode())
    return b"\n".join(lines) + b"\n"


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    data = corpus_bytes(args.records)
    spec = dataset("tickets")
    with tempfile.TemporaryDirectory() as tmp:
        lake = LakeIOManager(base_uri=tmp)

        def baseline():
            for line in data.splitlines():
                json.loads(line)

        def platform():
            result = validate_lines(data, spec)
            lake._write(records_frame(result, "tickets", "bench-0", "file:///bench.jsonl", "0" * 64),
                        lake.path_for(dg.AssetKey("raw_tickets"), "bench"))
            lake._write(quarantine_frame(result, "file:///bench.jsonl"), lake.path_for(dg.AssetKey("q"), "bench"))
            assert result.accepted == args.records

        def validate_only():
            validate_lines(data, spec)

        t_base = best_of(baseline, args.repeat)
        t_validate = best_of(validate_only, args.repeat)
        t_platform = best_of(platform, args.repeat)
    n = args.records
    print(f"records: {n:,}  bytes: {len(data):,}  (best of {args.repeat})")
    print(f"json.loads loop (baseline)      {n / t_base:>10,.0f} rec/s")
    print(f"validate (schema + quarantine)  {n / t_validate:>10,.0f} rec/s   {t_base / t_validate:.2f}x baseline")
    print(f"validate + land (Parquet)       {n / t_platform:>10,.0f} rec/s   {t_base / t_platform:.2f}x baseline")


if __name__ == "__main__":
    main()
