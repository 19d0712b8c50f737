"""Ray scale-out of the heavy data stages: PII scanning and chunk embedding on Ray with 1 and 2
workers vs the single-process path, in one process (ratios, same run).

PII: the same demo tickets (every text field), the same configuration; the findings must be
identical. Embedding: the same texts through the platform's embedding model; the vectors must agree
to float32 rounding (1e-6). The Ray figures include what a Dagster step pays per call (the Ray Data
pipeline and its actors loading the model), not the one-time start of the local Ray instance, which
is timed on its own. Usage:

    .venv/bin/python benchmarks/ray_scale.py [--records 3000] [--texts 4000] [--batch-size 64]

Prints items/s for each path, the ratios against the single process, and Ray's overhead at one
worker (1 - ray1/single; goal <= 10%).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--texts", type=int, default=4000, help="texts to embed")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--only", choices=["pii", "embedding"], default=None)
    args = parser.parse_args()

    from aiplat.demo_data import generate_corpus
    from aiplat.pii.config import dataset_config
    from aiplat.scale.ray_cluster import RayCluster

    config = dataset_config("tickets")
    tickets = [r.record for r in generate_corpus(seed=args.seed, tickets=args.records, kb=0).of("tickets")][: args.records]
    texts = [r[f] for r in tickets for f in config.text_fields if isinstance(r.get(f), str)]
    n = len(tickets)
    print(f"{n} records ({len(texts)} texts), model {config.nlp.model_name}, {os.cpu_count()} CPUs", flush=True)

    cluster = RayCluster()
    t = time.perf_counter()
    where = cluster.connect()
    print(f"Ray start ({where.describe()}): {time.perf_counter() - t:.1f} s (once per process)", flush=True)
    if args.only != "embedding":
        pii(config, texts, n, args.batch_size, cluster)
    if args.only != "pii":
        embedding(texts[: args.texts], cluster)


def pii(config, texts: list[str], n: int, batch_size: int, cluster) -> None:
    from aiplat.pii.engine import Scanner

    single = Scanner(config, workers=1, batch_size=batch_size)
    single.scan(texts[:20])  # the model loaded and warm
    t = time.perf_counter()
    reference = single.scan(texts)
    single_s = time.perf_counter() - t
    print(f"PII, single process       : {n / single_s:8.1f} records/s ({single_s:.1f} s)", flush=True)
    rates = {}
    for workers in (1, 2):
        scanner = Scanner(config, workers=workers, batch_size=batch_size, min_parallel=1, cluster=cluster)
        t = time.perf_counter()
        found = scanner.scan(texts)
        seconds = time.perf_counter() - t
        rates[workers] = n / seconds
        same = found == reference
        print(f"PII, Ray, {workers} worker{'s' if workers > 1 else ' '}       : {rates[workers]:8.1f} records/s "
              f"({seconds:.1f} s; {rates[workers] * single_s / n:.2f}x single; findings identical: {same})", flush=True)
        if not same:
            raise SystemExit("findings on Ray differ from the single-process path")
    single_rate = n / single_s
    print(f"PII ratios vs single process: 1 worker {rates[1] / single_rate:.2f}x, 2 workers "
          f"{rates[2] / single_rate:.2f}x; Ray's overhead at 1 worker {1 - rates[1] / single_rate:.0%} (goal <= 10%)",
          flush=True)


def embedding(texts: list[str], cluster) -> None:
    import numpy as np
    import torch

    from aiplat.retrieval.embedding import encode_on_ray, load_embedder

    embedder = load_embedder()
    embedder.encode(texts[:20])
    n = len(texts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what one Ray actor (num_cpus=1) gets: the per-core baseline
    t = time.perf_counter()
    embedder.encode(texts)
    one_core_s = time.perf_counter() - t
    torch.set_num_threads(threads)
    t = time.perf_counter()
    reference = embedder.encode(texts)
    single_s = time.perf_counter() - t
    print(f"embedding {n} texts, single process, 1 thread : {n / one_core_s:8.1f} texts/s ({one_core_s:.1f} s)",
          flush=True)
    print(f"embedding {n} texts, single process, {threads} threads: {n / single_s:8.1f} texts/s ({single_s:.1f} s)",
          flush=True)
    rates = {}
    for workers in (1, 2):
        t = time.perf_counter()
        vectors = encode_on_ray(embedder, texts, cluster, workers)
        seconds = time.perf_counter() - t
        rates[workers] = n / seconds
        diff = float(np.abs(vectors - reference).max())
        print(f"embedding, Ray, {workers} worker{'s' if workers > 1 else ' '} : {rates[workers]:8.1f} texts/s "
              f"({seconds:.1f} s; {rates[workers] * single_s / n:.2f}x single; max |diff| {diff:.1e})", flush=True)
        if diff >= 1e-6:
            raise SystemExit("vectors on Ray differ from the single-process path beyond float32 rounding")
    single_rate, one_core_rate = n / single_s, n / one_core_s
    print(f"embedding ratios vs single process ({threads} threads): 1 worker {rates[1] / single_rate:.2f}x, 2 workers "
          f"{rates[2] / single_rate:.2f}x; Ray's overhead at 1 worker vs 1 thread {1 - rates[1] / one_core_rate:.0%} "
          "(goal <= 10%)")


if __name__ == "__main__":
    main()
