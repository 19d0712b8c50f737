"""KB index benchmark, all in one process against a fresh Milvus Lite server:

1. end-to-end chunks/s of embed + upsert (+ verify + alias swap) beside bare
   SentenceTransformer.encode on the same chunks (the ceiling);
2. cost of a reindex with 1% of the articles changed, as a fraction of the full build (goal < 5%);
3. search QPS and p99 latency at the lowest `ef` whose recall@10 meets the threshold.

    .venv/bin/python benchmarks/index.py --articles 400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from aiplat.retrieval.chunking import chunk_articles
from aiplat.retrieval.embedding import load_embedder
from aiplat.retrieval.index import build_index, embed_chunks
from aiplat.retrieval.lite_server import MilvusLiteServer
from aiplat.retrieval.queries import QUERY_SET
from aiplat.retrieval.recall import exact_top_k, recall_at_k
from aiplat.retrieval.sample_kb import edit_articles, sample_kb_articles
from aiplat.retrieval.settings import IndexSettings
from aiplat.retrieval.store import IndexStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=400)
    ap.add_argument("--changed", type=float, default=0.01, help="fraction of articles changed for the reindex")
    ap.add_argument("--searches", type=int, default=400)
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    args = ap.parse_args()

    embedder = load_embedder()
    articles = sample_kb_articles(args.articles, seed=11)
    chunks = chunk_articles(articles)
    texts = chunks["text"].tolist()
    embedder.encode(texts[:64])  # warm-up: the first encode in a process is much slower

    t0 = time.perf_counter()
    embedder.model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    ceiling_s = time.perf_counter() - t0

    queries = embedder.encode(list(QUERY_SET))
    results: dict[str, object] = {"articles": args.articles, "chunks": len(chunks)}
    with tempfile.TemporaryDirectory() as tmp, MilvusLiteServer(Path(tmp) / "data") as server:
        store = IndexStore.connect(server.uri, settings=IndexSettings(alias="kb_bench", collection_prefix="kbb"))
        t0 = time.perf_counter()
        embedded, stats = embed_chunks(chunks, embedder, store)
        build_index(store, embedded, embedder.model_id, queries)
        full_s = time.perf_counter() - t0
        assert stats["embedded"] == len(chunks)

        changed_articles, _ = edit_articles(articles, args.changed, seed=5)
        changed_chunks = chunk_articles(changed_articles)
        t0 = time.perf_counter()
        embedded2, stats2 = embed_chunks(changed_chunks, embedder, store)
        report = build_index(store, embedded2, embedder.model_id, queries)
        incr_s = time.perf_counter() - t0

        # Search: queries are the fixed set plus chunk texts, so the p99 has enough samples.
        rng = np.random.default_rng(0)
        pool = np.concatenate([queries, np.stack(embedded2["vector"].to_numpy())[rng.choice(len(embedded2), 80)]])
        exact = exact_top_k(np.stack(embedded2["vector"].to_numpy()), embedded2["chunk_id"].tolist(), pool, 10, "COSINE")
        sweep = []
        for ef in (10, 16, 32, 64, 128):
            store.settings = replace(store.settings, search_params={"ef": ef})
            approx = [[h["chunk_id"] for h in store.search("kb_bench", pool[i : i + 1], 10, output_fields=[])[0]]
                      for i in range(len(pool))]
            recall = recall_at_k(approx, exact)
            lat = []
            start = time.perf_counter()
            for i in range(args.searches):
                s = time.perf_counter()
                store.search("kb_bench", pool[i % len(pool)][None, :], 10, output_fields=["article_id"])
                lat.append(time.perf_counter() - s)
            wall = time.perf_counter() - start
            sweep.append({"ef": ef, "recall_at_10": round(recall, 4), "qps": round(args.searches / wall, 1),
                          "p50_ms": round(1000 * float(np.percentile(lat, 50)), 2),
                          "p99_ms": round(1000 * float(np.percentile(lat, 99)), 2)})
        store.close()

    at_threshold = next((s for s in sweep if s["recall_at_10"] >= 0.95), sweep[-1])
    results.update({
        "ceiling_encode_chunks_per_s": round(len(chunks) / ceiling_s, 1),
        "end_to_end_chunks_per_s": round(len(chunks) / full_s, 1),
        "end_to_end_vs_ceiling": round(ceiling_s / full_s, 3),
        "full_build_s": round(full_s, 2),
        "reindex_changed_articles": report.diff.articles_updated,
        "reindex_embedded_chunks": stats2["embedded"],
        "reindex_s": round(incr_s, 3),
        "reindex_fraction_of_full": round(incr_s / full_s, 4),
        "reindex_goal_met": incr_s / full_s < 0.05,
        "search_at_recall_threshold": at_threshold,
        "search_sweep": sweep,
    })
    print(json.dumps(results, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
