"""Serving benchmark: the vLLM endpoint beside plain transformers `generate`, same model, same
prompts, same number of output tokens, at concurrency 1 and 8, in one run.

- vLLM: a real server from the vLLM venv (aiplat.serving), requests sent `c` at a time over HTTP
  (chat completions, greedy, ignore_eos so every request produces exactly --output-len tokens).
- transformers: AutoModelForCausalLM.generate in this process; concurrency c = batches of c prompts
  (left-padded), greedy, min_new_tokens = max_new_tokens = --output-len. float32 (CPU bf16
  matmuls without AMX are slower than fp32); vLLM serves bf16.

Prints output tokens/s, per-request latency p50/p95/p99 for each, and the ratio vLLM/transformers.

    .venv/bin/python benchmarks/serving.py [--model-folder DIR] [--output-len 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = [
    "A customer says the invoice total is wrong. Draft a short reply.",
    "Classify this ticket: 'The app crashes when I upload a photo.'",
    "Summarize: the user cannot reset the password because no e-mail arrives.",
    "Which team handles a refund that was not received after ten days?",
    "Write a polite apology for a delayed shipment.",
    "Explain in two sentences how to export tickets to CSV.",
    "A customer wants to add a second admin. What are the steps?",
    "Is 'card declined on upgrade' a billing or a technical issue?",
    "Suggest a title for a ticket about slow dashboard loading.",
    "Reply to a customer asking to cancel at the end of the month.",
    "What should support ask first when the app logs users out on network change?",
    "Give three tags for a ticket about duplicate charges.",
    "Rewrite more politely: 'We can't help you with that.'",
    "What is the capital of France? Answer in one sentence.",
    "List two causes of a 502 error on a web dashboard.",
    "Draft a one-line status update for an ongoing outage.",
]


def percentiles(values: list[float]) -> dict[str, float]:
    from aiplat.evaluation.metrics import percentile

    return {f"p{q}": round(percentile(values, q), 1) for q in (50, 95, 99)}


def bench_vllm(url: str, served: str, prompts: list[str], concurrency: int, output_len: int) -> dict:
    import httpx

    def one(prompt: str) -> tuple[float, int]:
        start = time.perf_counter()
        r = httpx.post(f"{url}/v1/chat/completions", timeout=600, json={
            "model": served, "messages": [{"role": "user", "content": prompt}], "max_tokens": output_len,
            "temperature": 0, "ignore_eos": True})
        r.raise_for_status()
        return (time.perf_counter() - start) * 1000, r.json()["usage"]["completion_tokens"]

    one(prompts[0])  # warm-up, not counted
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - start
    tokens = sum(t for _, t in results)
    return {"requests": len(prompts), "output_tokens": tokens, "wall_s": round(wall, 2),
            "output_tokens_per_s": round(tokens / wall, 1), "latency_ms": percentiles([l for l, _ in results])}


def bench_transformers(model_dir: Path, prompts: list[str], concurrency: int, output_len: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]

    def generate(batch: list[str]) -> int:
        enc = tokenizer(batch, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return int((out.shape[1] - enc["input_ids"].shape[1]) * len(batch))

    generate(texts[:1])  # warm-up
    latencies, tokens = [], 0
    start = time.perf_counter()
    for i in range(0, len(texts), concurrency):
        batch = texts[i:i + concurrency]
        t0 = time.perf_counter()
        tokens += generate(batch)
        latencies += [(time.perf_counter() - t0) * 1000] * len(batch)  # each request waits for its batch
    wall = time.perf_counter() - start
    return {"requests": len(texts), "output_tokens": tokens, "wall_s": round(wall, 2),
            "output_tokens_per_s": round(tokens / wall, 1), "latency_ms": percentiles(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-folder", type=Path, default=None, help="default: prepare SmolLM2-135M-Instruct")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--requests-c1", type=int, default=8, help="requests at concurrency 1")
    ap.add_argument("--requests-c8", type=int, default=16, help="requests at concurrency 8")
    ap.add_argument("--enforce-eager", action="store_true", help="start vLLM without torch.compile")
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    args = ap.parse_args()

    from aiplat.stack import vllm_env

    python = vllm_env().python  # resolved before the private state dir below is set
    model_dir = args.model_folder
    with tempfile.TemporaryDirectory(prefix="aiplat-bench-serving-") as tmp:
        os.environ["AIPLAT_STATE_DIR"] = tmp  # private registry, logs and PID files
        from aiplat.serving.server import ServerSettings, start_server, stop_server

        if model_dir is None:
            from aiplat.models.base import base_models_dir, prepare_base_model

            os.environ.pop("AIPLAT_STATE_DIR")
            model_dir = prepare_base_model(dest_root=base_models_dir(), progress=print).path
            os.environ["AIPLAT_STATE_DIR"] = tmp
        levels = {1: PROMPTS[: args.requests_c1], 8: (PROMPTS * 4)[: args.requests_c8]}
        results: dict = {"model": str(model_dir), "output_len": args.output_len, "vllm": {}, "transformers": {}}

        settings = ServerSettings(python=str(python), enforce_eager=args.enforce_eager, max_num_seqs=8,
                                  start_timeout_s=900)
        t0 = time.perf_counter()
        live = start_server("bench", Path(model_dir), "base", "bench", settings, print)
        results["vllm_start_s"] = round(time.perf_counter() - t0, 1)
        try:
            for c, prompts in levels.items():
                results["vllm"][c] = bench_vllm(live.url, live.served_model_name, prompts, c, args.output_len)
                print(f"vllm         c={c}: {results['vllm'][c]}")
        finally:
            stop_server(live)
        for c, prompts in levels.items():
            results["transformers"][c] = bench_transformers(model_dir, prompts, c, args.output_len)
            print(f"transformers c={c}: {results['transformers'][c]}")

    print(f"\nmodel {model_dir}, {args.output_len} output tokens per request, vLLM started in {results['vllm_start_s']} s")
    print(f"{'':14}{'conc':>5}{'req':>5}{'out tok/s':>11}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for c in levels:
        for name in ("vllm", "transformers"):
            r = results[name][c]
            lat = r["latency_ms"]
            print(f"{name:14}{c:>5}{r['requests']:>5}{r['output_tokens_per_s']:>11}{lat['p50']:>9}{lat['p95']:>9}{lat['p99']:>9}")
        ratio = results["vllm"][c]["output_tokens_per_s"] / results["transformers"][c]["output_tokens_per_s"]
        results[f"ratio_c{c}"] = round(ratio, 2)
        print(f"{'ratio':14}{c:>5}  vLLM / transformers output tok/s = {ratio:.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
