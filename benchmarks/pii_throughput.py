"""PII scanner throughput: the platform's scanner vs a naive analyze() loop vs bare spaCy NER.

All three run in this process on the same demo tickets (subject, message and agent reply of each
record), with the model loaded and warm before timing; the platform's findings are compared with
the naive loop's for equality. Usage:

    .venv/bin/python benchmarks/pii_throughput.py [--records 2000] [--workers 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()

    import spacy

    from aiplat.demo_data import generate_corpus
    from aiplat.pii.config import dataset_config
    from aiplat.pii.engine import Scanner, analyzer, scan_naive

    config = dataset_config("tickets")
    tickets = [r.record for r in generate_corpus(seed=args.seed, tickets=args.records, kb=0).of("tickets")][: args.records]
    texts = [r[f] for r in tickets for f in config.text_fields]
    n = len(tickets)
    print(f"{n} records ({len(texts)} texts, {sum(map(len, texts)) / len(texts):.0f} chars avg), "
          f"model {config.nlp.model_name}, {os.cpu_count()} CPUs")

    analyzer(config)
    scan_naive(texts[:20], config)  # warm-up
    t = time.perf_counter()
    naive = scan_naive(texts, config)
    naive_s = time.perf_counter() - t

    with Scanner(config, workers=args.workers, batch_size=args.batch_size, min_parallel=1) as scanner:
        scanner.warm_up()
        scanner.scan(texts[:20])
        t = time.perf_counter()
        platform = scanner.scan(texts)
        platform_s = time.perf_counter() - t
    with Scanner(config, workers=1, batch_size=args.batch_size) as single:
        t = time.perf_counter()
        batched = single.scan(texts)
        batched_s = time.perf_counter() - t

    nlp = spacy.load(config.nlp.model_name, exclude=["tagger", "parser", "attribute_ruler", "lemmatizer"])
    list(nlp.pipe(texts[:20]))
    t = time.perf_counter()
    ents = sum(len(d.ents) for d in nlp.pipe(texts, batch_size=args.batch_size))
    ceiling_s = time.perf_counter() - t

    rate = {k: n / s for k, s in (("naive", naive_s), ("batched", batched_s), ("platform", platform_s),
                                   ("ceiling", ceiling_s))}
    print(f"naive AnalyzerEngine.analyze loop : {rate['naive']:8.1f} records/s")
    print(f"platform, 1 process (nlp.pipe)    : {rate['batched']:8.1f} records/s  ({rate['batched'] / rate['naive']:.2f}x naive)")
    print(f"platform, {args.workers} Ray workers           : {rate['platform']:8.1f} records/s  "
          f"({rate['platform'] / rate['naive']:.2f}x naive, {rate['platform'] / rate['ceiling']:.2f}x ceiling)")
    print(f"bare spaCy nlp.pipe, NER only     : {rate['ceiling']:8.1f} records/s  ({ents} entities; the ceiling)")
    same = platform == naive and batched == naive
    print(f"findings identical to the naive loop: {same} "
          f"({sum(map(len, naive))} findings)")
    if not same:
        raise SystemExit("findings differ from the naive path")


if __name__ == "__main__":
    main()
