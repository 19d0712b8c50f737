"""Does the reply drafter's default fine-tune (models/reply-drafter.yaml) pass its gate on 2 CPU
cores, and how long does it take? Base model vs fine-tune, same held-out drafts, in one process.

A proxy of the real chain, without servers: the demo corpus with its PII replaced by the entity
name at the ground-truth spans (what redaction does), KB passages retrieved by exact cosine search
over the redacted KB chunks with the platform's embedder (what kb_index answers, without Milvus),
then the spec's fine-tune and its generation eval (aiplat.training / aiplat.evaluation).

    .venv/bin/python benchmarks/reply_drafter_gate.py [--tickets 600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _redacted(record, fields) -> dict:
    out = dict(record.record)
    for name in fields:
        text = str(out.get(name) or "")
        for span in sorted(record.spans.get(name, ()), key=lambda s: s.start, reverse=True):
            text = text[: span.start] + f"<{span.entity}>" + text[span.end:]
        out[name] = text
    return out


def main() -> None:
    from aiplat import demo_data
    from aiplat.config import project_root
    from aiplat.evaluation.evaluate import evaluate_model, headline, prepare_inputs
    from aiplat.evaluation.gate import decide
    from aiplat.evaluation.settings import EvalSettings, GateThresholds
    from aiplat.features.training import split_of
    from aiplat.models.base import prepare_base_model
    from aiplat.policy import load_policy
    from aiplat.retrieval.chunking import chunk_articles
    from aiplat.retrieval.embedding import load_embedder
    from aiplat.specs import find_spec
    from aiplat.training.lora import fine_tune
    from assets.model_lifecycle import prompt_format

    parser = argparse.ArgumentParser()
    parser.add_argument("--tickets", type=int, default=600)
    args = parser.parse_args()

    spec = find_spec("reply-drafter", project_root() / "models")
    fmt = prompt_format(spec)
    corpus = demo_data.generate_corpus(tickets=args.tickets, kb=60)
    tickets = pd.DataFrame([_redacted(r, ("subject", "message", "agent_reply")) for r in corpus.of("tickets")])
    tickets = tickets[tickets["agent_reply"].fillna("").str.strip().str.len() > 0].drop_duplicates("ticket_id")
    kb = pd.DataFrame([_redacted(r, ("title", "body")) for r in corpus.of("kb_articles")])
    chunks = chunk_articles(kb.drop_duplicates("article_id", keep="last"))
    embedder = load_embedder()
    chunk_vectors = embedder.encode([f"{t}\n{x}" for t, x in zip(chunks["title"], chunks["text"])])
    queries = embedder.encode([f"{s}\n{m}" for s, m in zip(tickets["subject"], tickets["message"])])
    r = spec.training.retrieval
    top = np.argsort(-(queries @ chunk_vectors.T), axis=1)[:, : r.top_k]
    tickets["kb_passages"] = ["\n\n".join(" ".join(f"{chunks['title'].iloc[j]}: {chunks['text'].iloc[j]}".split())
                                          [: r.max_passage_chars] for j in row) for row in top]
    df = pd.DataFrame({"ticket_id": tickets["ticket_id"].astype(str), "subject": tickets["subject"],
                       "message": tickets["message"], "category": tickets["category"],
                       "agent_reply": tickets["agent_reply"], "kb_passages": tickets["kb_passages"]})
    df["split"] = [split_of(t) for t in df["ticket_id"]]

    base = prepare_base_model().path
    settings = EvalSettings(max_test_examples=spec.evaluation.max_test_examples, max_new_tokens=spec.evaluation.max_new_tokens,
                            batch_size=spec.evaluation.batch_size, latency_samples=2)
    inputs = prepare_inputs(df, settings, fmt)
    policy = load_policy(project_root() / "aiplat" / "policy" / "gate_policy.yaml")
    thresholds = GateThresholds.only(policy.tighten(spec.task, spec.evaluation.thresholds, where=spec.source_file))
    print(f"{len(df)} tickets ({(df.split == 'train').sum()} train, {len(inputs.test_rows)} test drafts), "
          f"{len(chunks)} KB chunks; spec fine-tune {spec.fine_tune.steps} steps, r={spec.fine_tune.lora_r}")

    t0 = time.perf_counter()
    base_eval = evaluate_model(base, inputs, settings)
    base_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = fine_tune(base, df, spec.fine_tune, Path(tmp) / "ft", fmt=fmt)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cand_eval = evaluate_model(result.adapter_dir, inputs, settings, base=base)
        cand_s = time.perf_counter() - t0
    decision = decide(thresholds, headline(cand_eval), headline(base_eval))
    b, c = headline(base_eval), headline(cand_eval)
    print(f"fine-tune: {train_s:.0f} s; eval: base {base_s:.0f} s, candidate {cand_s:.0f} s")
    for metric in ("reply_rouge_l", "groundedness", "leak_findings"):
        ratio = f"{c[metric] / b[metric]:.2f}x" if b[metric] else "-"
        print(f"{metric:15} base {b[metric]:.3f}  fine-tuned {c[metric]:.3f}  ({ratio} the base)")
    print(f"gate under the shipped policy + spec: {'PASSED' if decision['passed'] else 'FAILED'} {decision['reasons']}")
    for sample in cand_eval["samples"][:3]:
        print(f"  expected: {sample['expected'][:100]!r}\n  drafted:  {sample['output'][:100]!r}")


if __name__ == "__main__":
    main()
