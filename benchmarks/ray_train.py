"""Distributed fine-tuning: seconds per optimizer step of the single-process fine-tune vs Ray Train
(aiplat.training.distributed) with 1 and 2 DDP workers, on the same model, data and
hyperparameters, in one process (ratios, same run).

`batch_size` is the global batch in every path (each Ray worker takes batch_size / N of it), so
the three do the same work per step. Seconds/step is the step loop alone (rank 0's, on Ray:
forward, backward with DDP's gradient all-reduce, optimizer, the step metrics sent to the driver);
"wall" adds what a Dagster step pays per fine-tune on Ray (controller and worker processes
starting, each worker importing torch and loading the model), not the one-time start of the local
Ray instance, which is timed on its own. Locally each Ray worker gets one CPU (one torch thread);
the single process uses every core.

    .venv/bin/python benchmarks/ray_train.py [--steps 40] [--batch-size 4]
    .venv/bin/python benchmarks/ray_train.py --model smollm2 --steps 6   # the real base (slow on CPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (built on the fly) or smollm2 (the prepared base)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    args = parser.parse_args()

    os.environ.setdefault("AIPLAT_ENV", "local")
    from aiplat.scale.ray_cluster import RayCluster
    from aiplat.training.distributed import fine_tune_on_ray
    from aiplat.training.lora import FineTuneParams, fine_tune
    from aiplat.training.sample import sample_training_set

    tmp = Path(tempfile.mkdtemp(prefix="aiplat-bench-ray-train-"))
    if args.model == "tiny":
        from tests.training_helpers import TINY_PARAMS, build_tiny

        base = build_tiny(tmp / "tiny")
        params = FineTuneParams(**{**TINY_PARAMS, "steps": args.steps, "batch_size": args.batch_size})
    else:
        from aiplat.models.base import prepare_base_model

        base = prepare_base_model().path
        params = FineTuneParams(steps=args.steps, batch_size=args.batch_size, max_length=256, seed=1)
    df = sample_training_set(120)
    print(f"{args.model} model, {params.steps} steps, global batch {params.batch_size}, {os.cpu_count()} CPUs",
          flush=True)

    fine_tune(base, df, params.model_copy(update={"steps": 2}), tmp / "warm")  # imports and caches warm
    t = time.perf_counter()
    single = fine_tune(base, df, params, tmp / "single")
    single_wall = time.perf_counter() - t
    single_step = single.train_seconds / params.steps
    print(f"single process      : {single_step:.4f} s/step (wall {single_wall:.1f} s; final loss "
          f"{single.final_loss:.4f})", flush=True)

    cluster = RayCluster()
    t = time.perf_counter()
    where = cluster.connect()
    print(f"Ray start ({where.describe()}): {time.perf_counter() - t:.1f} s (once per process)", flush=True)
    weights = "adapter_model.safetensors"
    ratios = []
    for n in (int(w) for w in args.workers.split(",")):
        t = time.perf_counter()
        result = fine_tune_on_ray(base, df, params, tmp / f"ray{n}", cluster=cluster, workers=n)
        wall = time.perf_counter() - t
        step = result.train_seconds / params.steps
        same = (result.adapter_dir / weights).read_bytes() == (single.adapter_dir / weights).read_bytes()
        ratios.append(f"{n} worker{'s' if n > 1 else ''} {single_step / step:.2f}x")
        print(f"Ray Train, {n} worker{'s' if n > 1 else ' '}: {step:.4f} s/step ({single_step / step:.2f}x single; wall "
              f"{wall:.1f} s, {wall - result.train_seconds:.1f} s of it starting; final loss {result.final_loss:.4f}; "
              f"weights identical to single: {same})", flush=True)
    print(f"step-speed ratios vs single process: {', '.join(ratios)}")


if __name__ == "__main__":
    main()
