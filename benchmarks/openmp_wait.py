"""Spinning vs passive OpenMP waiting on a shared machine (aiplat.config.prefer_passive_openmp).

Evaluation-style generation (the platform's own aiplat.evaluation.generate on the prepared
SmolLM2 base: 6 prompts x 16 new tokens, 3 times) in a fresh process, with OMP_WAIT_POLICY left at
OpenMP's default (threads spin a while before they sleep) and set to PASSIVE, each time while a second
process keeps the cores busy the way a vLLM server or a second run does (torch matrix products on
as many threads as there are cores, spinning). Both policies run in the same invocation, one after
the other, twice each (ABAB); a quiet baseline of each without the busy process comes first.

    .venv/bin/python benchmarks/openmp_wait.py [--threads 2]

Prints seconds per case and the ratio spinning / passive under load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GENERATE = r"""
import sys, time
from pathlib import Path
from aiplat.evaluation import generate as gen
from aiplat.models.base import base_models_dir
from aiplat.training import prompts
lm = gen.load(base_models_dir() / "smollm2-135m-instruct", int(sys.argv[1]))
rows = [{"subject": f"Invoice problem {i}", "message": "I was charged twice for the router. " * 6, "product": "router",
         "channel": "email", "priority": "high", "category": "billing", "agent_reply": ""} for i in range(6)]
gen.generate(lm, rows[:1], [], 4, 1, 384, fmt=prompts.TRIAGE)  # warm-up
t = time.perf_counter()
for _ in range(3):
    gen.generate(lm, rows, [], 16, 6, 384, fmt=prompts.TRIAGE)
print(time.perf_counter() - t)
"""

# Imports torch without the platform (so OpenMP's default policy), then multiplies matrices until killed.
BUSY = "import torch\nx = torch.randn(768, 768)\nwhile True:\n    x = torch.tanh(x @ x)\n"


def run_generation(policy: str, threads: int) -> float:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": str(ROOT)}
    # The platform's import sets PASSIVE unless the variable is set: an empty value keeps it out
    # and leaves OpenMP at its own default (spin a while, then sleep).
    env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", GENERATE, str(threads)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    names = {"": "default", "PASSIVE": "passive"}
    for policy, name in names.items():
        results[f"quiet {name}"] = [run_generation(policy, args.threads)]
        print(f"quiet, {name:7}: {results[f'quiet {name}'][0]:7.1f} s", flush=True)
    busy = subprocess.Popen([sys.executable, "-c", BUSY], env={"PATH": os.environ.get("PATH", ""),
                                                              "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(3)
        for policy in ("", "PASSIVE", "", "PASSIVE"):
            seconds = run_generation(policy, args.threads)
            results.setdefault(f"busy {names[policy]}", []).append(seconds)
            print(f"beside a busy process, {names[policy]:7}: {seconds:7.1f} s", flush=True)
    finally:
        busy.kill()
    spin, passive = (min(results[f"busy {n}"]) for n in ("default", "passive"))
    print(f"under load, OpenMP default / passive = {spin / passive:.2f}x "
          f"(quiet: {results['quiet default'][0] / results['quiet passive'][0]:.2f}x)")


if __name__ == "__main__":
    main()
