"""Multi-LoRA serving: N adapters on one vLLM server vs N merged copies, each on its own server.

Same machine, same process run, real vLLM CPU servers over the real SmolLM2-135M base:
- memory: resident memory (RSS of each server's whole process group) of one LoRA server holding N
  adapters, of N merged-model servers, and of one plain server (the unit the ratios use);
- time until a new version serves: start a server for a merged copy until its first token, vs
  `aiplat.serving.adapters.load_adapter` (signature + approval check, load, confirmed by a token);
- throughput: output tokens/s at concurrency C, requests spread over the N adapters, vs the base
  model alone on a plain server (the single-model figure).

Goals (issue 14): memory <= 1.3x one server, a new version live in <= 1/5 of a server start,
throughput >= 0.8x the single-model figure. Adapters have random (seeded) weights: the cost of
serving an adapter does not depend on what it learned.

    .venv/bin/python benchmarks/multi_lora.py [--adapters 4] [--concurrency 8] [--requests 32]
        [--output-len 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = "A customer says the invoice total is wrong. Draft a short reply."


def group_rss_mib(pid: int) -> float:
    import psutil

    total = 0
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pid:
                total += proc.memory_info().rss
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def make_adapter(base: Path, dest: Path, seed: int, merged: Path | None = None) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    peft_model.save_pretrained(dest, safe_serialization=True)
    if merged is not None:
        import shutil

        peft_model.merge_and_unload().save_pretrained(merged, safe_serialization=True)
        for f in base.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
                shutil.copy2(f, merged / f.name)
    return dest


def throughput(url: str, models: list[str], requests: int, concurrency: int, output_len: int) -> float:
    import httpx

    def one(i: int) -> int:
        r = httpx.post(f"{url}/v1/completions", timeout=900, json={
            "model": models[i % len(models)], "prompt": PROMPT, "max_tokens": output_len, "temperature": 0,
            "ignore_eos": True})
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    one(0)  # warm
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(requests)))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--base", type=Path, default=None, help="base model folder (default: the prepared SmolLM2)")
    args = parser.parse_args()

    # The developer's prepared base model and vLLM venv, found before the state folder is made private.
    from aiplat.models.base import prepare_base_model
    from aiplat.stack import VLLM_SETUP, vllm_env

    base = args.base or prepare_base_model().path
    env = vllm_env()
    if not env.ready:
        raise SystemExit(f"no vLLM environment at {env.path}; build it with {VLLM_SETUP}")
    work = Path(tempfile.mkdtemp(prefix="bench-multi-lora-"))
    os.environ["AIPLAT_STATE_DIR"] = str(work / "state")  # private keys, PID files and logs
    try:
        run(args, base, env, work)
    finally:  # four merged copies: about 2 GB
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def run(args, base: Path, env, work: Path) -> None:
    from aiplat.config import local_paths
    from aiplat.security.approval import attest, dev_approval_key_pair
    from aiplat.security.signing import dev_key_pair, sign_model
    from aiplat.serving import adapters
    from aiplat.serving.server import LoraSettings, ServerSettings, start_server, stop_server

    plain = ServerSettings(enforce_eager=True, dtype="float32", python=str(env.python), start_timeout_s=900)
    lora = ServerSettings(**{**plain.__dict__, "lora": LoraSettings(max_loras=args.adapters,
                                                                     max_cpu_loras=2 * args.adapters,
                                                                     max_lora_rank=8)})
    print(f"base {base}; work {work}; state {local_paths().root}", flush=True)

    names = [f"bench-{i}" for i in range(args.adapters)]
    folders, merged = {}, {}
    for i, name in enumerate(names):
        folders[name] = make_adapter(base, work / f"{name}-adapter", seed=i, merged=work / f"{name}-merged")
        sign_model(folders[name], dev_key_pair())
        merged[name] = work / f"{name}-merged"
    print(f"{args.adapters} adapters and merged copies written", flush=True)

    def approval(folder: Path, model: str, version: str) -> str:
        from aiplat.security.signing import verify_model

        digest = verify_model(folder, dev_key_pair().public_key)
        return attest(dev_approval_key_pair(), model=model, version=version, model_digest=digest,
                      eval_report_sha256="b" * 64, policy_sha256="b" * 64, approver="benchmark",
                      approver_team="team:platform")

    from aiplat.security.approval import ServingKeys

    keys = ServingKeys(dev_key_pair().public_key, dev_approval_key_pair().public_key)
    results: dict = {"adapters": args.adapters, "concurrency": args.concurrency, "output_len": args.output_len}

    # 1. The single-model figure: the base model alone on a plain server.
    t0 = time.perf_counter()
    single = start_server("bench-single", base, "base", "base", plain)
    results["plain_start_s"] = round(time.perf_counter() - t0, 1)
    try:
        results["single_rss_mib"] = round(group_rss_mib(single.pid))
        results["single_tok_s"] = round(throughput(single.url, ["base"], args.requests, args.concurrency,
                                                   args.output_len), 1)
    finally:
        stop_server(single)
    print(f"single model: start {results['plain_start_s']} s, {results['single_rss_mib']} MiB, "
          f"{results['single_tok_s']} tok/s", flush=True)

    # 2. One LoRA server, N adapters loaded at run time, mixed traffic.
    served = start_server("bench-lora", base, "base", "base", lora)
    try:
        loads = []
        for name in names:
            t0 = time.perf_counter()
            adapters.load_adapter(served.url, "base", folders[name], model=name, version="1",
                                  attestation=approval(folders[name], name, "1"), keys=keys, max_rank=8)
            loads.append(time.perf_counter() - t0)
        results["adapter_load_s"] = [round(x, 2) for x in loads]
        results["lora_rss_mib"] = round(group_rss_mib(served.pid))
        results["lora_mixed_tok_s"] = round(throughput(served.url, [adapters.adapter_name(n, "1") for n in names],
                                                       args.requests, args.concurrency, args.output_len), 1)
        # Where the difference comes from: the LoRA server answering for the base model alone (the
        # cost of --enable-lora itself) and for one adapter alone (the cost of applying an adapter).
        results["lora_base_only_tok_s"] = round(throughput(served.url, ["base"], args.requests, args.concurrency,
                                                           args.output_len), 1)
        results["lora_one_adapter_tok_s"] = round(throughput(served.url, [adapters.adapter_name(names[0], "1")],
                                                             args.requests, args.concurrency, args.output_len), 1)
    finally:
        stop_server(served)
    print(f"LoRA server: loads {results['adapter_load_s']} s, {results['lora_rss_mib']} MiB, "
          f"{results['lora_mixed_tok_s']} tok/s mixed, {results['lora_one_adapter_tok_s']} one adapter, "
          f"{results['lora_base_only_tok_s']} base only", flush=True)

    # 3. N merged copies, one server each (all up at once, as N models would be).
    records, starts = [], []
    try:
        for name in names:
            t0 = time.perf_counter()
            records.append(start_server(f"bench-{name}", merged[name], "1", name, plain))
            starts.append(time.perf_counter() - t0)
        results["merged_start_s"] = [round(x, 1) for x in starts]
        results["merged_rss_mib"] = round(sum(group_rss_mib(r.pid) for r in records))
    finally:
        for record in records:
            stop_server(record)
    print(f"{args.adapters} merged servers: starts {results['merged_start_s']} s, {results['merged_rss_mib']} MiB",
          flush=True)

    median_load = sorted(results["adapter_load_s"])[len(loads) // 2]
    median_start = sorted(results["merged_start_s"])[len(starts) // 2]
    results["ratios"] = {
        "lora_memory_vs_one_server": round(results["lora_rss_mib"] / results["single_rss_mib"], 2),
        "merged_memory_vs_one_server": round(results["merged_rss_mib"] / results["single_rss_mib"], 2),
        "new_version_time_vs_server_start": round(median_load / median_start, 3),
        "mixed_throughput_vs_single_model": round(results["lora_mixed_tok_s"] / results["single_tok_s"], 2),
        "one_adapter_throughput_vs_single_model": round(results["lora_one_adapter_tok_s"] / results["single_tok_s"], 2),
        "lora_server_base_only_vs_single_model": round(results["lora_base_only_tok_s"] / results["single_tok_s"], 2),
    }
    print(json.dumps(results["ratios"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
