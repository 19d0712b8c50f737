"""Batch inference (the `<model>/predictions` asset's path): demo tickets scored by a LoRA adapter on a
real vLLM CPU server, through Ray Data with 1 and 2 workers vs the same requests sent from this
process (AskBatches called directly, no Ray), in one process (ratios, same run).

The server is the platform's own (aiplat.serving.server, SmolLM2-135M from the prepared base, LoRA
on); the adapter is a PEFT LoRA adapter with random weights (what it answers is not measured, only
how fast tickets go through). Ray's one-time start is timed on its own. Usage:

    .venv/bin/python benchmarks/batch_inference.py [--tickets 240] [--concurrency 4] [--batch-size 32]

Prints tickets/s per path and the ratios against the in-process path.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per sender")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import pandas as pd

    from aiplat.demo_data import generate_corpus
    from aiplat.models.base import base_models_dir, prepare_base_model
    from aiplat.scale.batch_inference import AskBatches, PROMPT_FIELDS, ScoringTarget, score_tickets
    from aiplat.scale.ray_cluster import RayCluster
    from aiplat.serving import adapters
    from aiplat.serving.server import LoraSettings, ServerSettings, start_server, stop_server
    from aiplat.stack import vllm_env
    from aiplat.training.prompts import TRIAGE

    python = vllm_env().python  # before the private state folder below
    base = prepare_base_model(dest_root=base_models_dir(), progress=print).path
    rows = [r.record for r in generate_corpus(seed=5, tickets=args.tickets, kb=0).of("tickets")][: args.tickets]
    tickets = pd.DataFrame(rows)
    with tempfile.TemporaryDirectory(prefix="aiplat-bench-batch-") as tmp:
        os.environ["AIPLAT_STATE_DIR"] = tmp
        folder = _adapter(base, Path(tmp) / "adapter")
        settings = ServerSettings(python=str(python), enforce_eager=True, max_num_seqs=8, start_timeout_s=900,
                                  lora=LoraSettings(max_loras=2, max_lora_rank=8))
        server = start_server("bench", base, "base", "base", settings, print)
        try:
            adapters._request(f"{server.url}/v1/load_lora_adapter", "POST",
                              {"lora_name": "triage@1", "lora_path": str(folder)})
            target = ScoringTarget(server.url, "triage@1", "1", concurrency=args.concurrency,
                                   prompt_format=TRIAGE.key())
            items = [json.dumps({k: str(r.get(k) or "") for k in PROMPT_FIELDS}) for r in rows]
            sender = AskBatches(target.to_json())
            sender({"item": items[:8]})  # warm: the adapter's first requests
            t = time.perf_counter()
            for i in range(0, len(items), args.batch_size):
                sender({"item": items[i:i + args.batch_size]})
            plain_s = time.perf_counter() - t
            n = len(items)
            print(f"in this process (no Ray)  : {n / plain_s:7.2f} tickets/s ({plain_s:.1f} s)", flush=True)

            cluster = RayCluster()
            t = time.perf_counter()
            where = cluster.connect()
            print(f"Ray start ({where.describe()}): {time.perf_counter() - t:.1f} s (once per process)", flush=True)
            for workers in (1, 2):
                scored = score_tickets(tickets, target, cluster, workers=workers, batch_size=args.batch_size)
                assert [p.ticket_id for p in scored.predictions] == list(tickets["ticket_id"].astype(str))
                assert not scored.failed, scored.failed[0].error
                print(f"Ray, {workers} worker(s)          : {scored.tickets_per_s:7.2f} tickets/s "
                      f"({scored.seconds:.1f} s) = {plain_s / scored.seconds:.2f}x the in-process path", flush=True)
        finally:
            stop_server(server)


def _adapter(base: Path, dest: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(dest, safe_serialization=True)
    return dest


if __name__ == "__main__":
    main()
