"""Load tests of an endpoint with vLLM's own load generator, `vllm bench serve`.

One `bench serve` run per concurrency (--max-concurrency), on a JSONL sample of prompts (vLLM's
`custom` dataset), each saving its result JSON (--save-result); the numbers kept are requests/s,
output tokens/s, and p50/p95/p99 of time to first token and end-to-end latency.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiplat.serving.server import ServerSettings, server_env, vllm_python

LAUNCHER = Path(__file__).with_name("vllm_bench_launcher.py")
PERCENTILES = (50, 95, 99)

# Prompts of the shape product teams send; used when the caller has no load sample.
DEFAULT_LOAD_SAMPLE: tuple[str, ...] = (
    "My invoice shows a charge I do not recognise. What should I do?",
    "The dashboard has been loading for ten minutes. Is there an outage?",
    "How do I add a second administrator to our account?",
    "Please cancel my subscription at the end of the month.",
    "Your app logs me out every time I switch networks.",
    "Can I export all my tickets to a spreadsheet?",
    "The password reset e-mail never arrives.",
    "Why was my card declined when I upgraded my plan?",
)


class LoadTestError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadLevel:
    concurrency: int
    completed: int
    failed: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_ms: dict[str, float]  # p50/p95/p99
    e2e_ms: dict[str, float]

    def metrics(self) -> dict[str, float]:
        """Flat, stable names for plotting over time (e.g. `c8_ttft_p95_ms`)."""
        prefix = f"c{self.concurrency}_"
        out = {
            prefix + "requests_per_s": self.requests_per_s,
            prefix + "output_tokens_per_s": self.output_tokens_per_s,
            prefix + "failed": float(self.failed),
        }
        for p in PERCENTILES:
            out[f"{prefix}ttft_p{p}_ms"] = self.ttft_ms[f"p{p}"]
            out[f"{prefix}e2e_p{p}_ms"] = self.e2e_ms[f"p{p}"]
        return out


@dataclass(frozen=True)
class LoadTestReport:
    url: str
    served_model_name: str
    output_len: int
    num_prompts: int
    levels: list[LoadLevel] = field(default_factory=list)
    tool: str = "vllm bench serve"
    dataset: str = "custom"

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for level in self.levels:
            out.update(level.metrics())
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def parse_result(raw: dict, concurrency: int) -> LoadLevel:
    """The numbers of one `bench serve --save-result` JSON."""
    try:
        return LoadLevel(
            concurrency=concurrency,
            completed=int(raw["completed"]),
            failed=int(raw.get("failed", 0)),
            duration_s=round(float(raw["duration"]), 3),
            requests_per_s=round(float(raw["request_throughput"]), 3),
            output_tokens_per_s=round(float(raw["output_throughput"]), 2),
            ttft_ms={f"p{p}": round(float(raw[f"p{p}_ttft_ms"]), 1) for p in PERCENTILES},
            e2e_ms={f"p{p}": round(float(raw[f"p{p}_e2el_ms"]), 1) for p in PERCENTILES},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise LoadTestError(f"bench serve result lacks {e} (keys: {', '.join(sorted(raw))[:400]})") from e


def dataset_args(dataset: Path | None, output_len: int, input_len: int) -> list[str]:
    """vLLM's `custom` dataset replays the load sample (it needs pandas in the vLLM venv, the
    `vllm[bench]` extra); without it, `random` prompts of `input_len` tokens."""
    if dataset is not None:
        return ["--dataset-name", "custom", "--dataset-path", str(dataset), "--custom-output-len", str(output_len)]
    return ["--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--random-range-ratio", "0.0"]


def vllm_env_has(python: Path, module: str) -> bool:
    probe = subprocess.run([str(python), "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
                           capture_output=True)
    return probe.returncode == 0


def bench_argv(python: Path, url: str, served_model_name: str, tokenizer: str, dataset: Path | None, num_prompts: int,
               concurrency: int, output_len: int, result_dir: Path, result_file: str, input_len: int = 64) -> list[str]:
    return [
        str(python), str(LAUNCHER), "bench", "serve",
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", served_model_name, "--served-model-name", served_model_name, "--tokenizer", tokenizer,
        *dataset_args(dataset, output_len, input_len),
        "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--request-rate", "inf",
        "--ignore-eos", "--temperature", "0", "--num-warmups", "1",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", ",".join(map(str, PERCENTILES)),
        "--save-result", "--result-dir", str(result_dir), "--result-filename", result_file, "--disable-tqdm",
    ]


def run_load_test(
    url: str,
    served_model_name: str,
    tokenizer: str,
    concurrencies: Sequence[int] = (1, 4, 8),
    prompts: Sequence[str] = DEFAULT_LOAD_SAMPLE,
    num_prompts: int | None = None,
    output_len: int = 32,
    settings: ServerSettings | None = None,
    timeout_s: float = 900.0,
    progress: Callable[[str], None] | None = None,
    result_dir: Path | None = None,
) -> LoadTestReport:
    """`vllm bench serve` against `url` once per concurrency; raises LoadTestError with its output."""
    say = progress or (lambda _m: None)
    if not prompts:
        raise LoadTestError("the load sample is empty")
    if any(c < 1 for c in concurrencies):
        raise LoadTestError(f"concurrencies must be >= 1, got {list(concurrencies)}")
    python = vllm_python(settings or ServerSettings())
    levels = []
    with tempfile.TemporaryDirectory(prefix="aiplat-bench-") as tmp:
        work = Path(result_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        dataset: Path | None = None
        if vllm_env_has(python, "pandas"):
            dataset = work / "prompts.jsonl"
            dataset.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        else:
            say("the vLLM venv has no pandas (vllm[bench] extra): using vLLM's random dataset, not the load sample")
        for concurrency in concurrencies:
            n = num_prompts or max(len(prompts), 2 * concurrency)
            result_file = f"bench-c{concurrency}-{int(time.time())}.json"
            argv = bench_argv(python, url, served_model_name, tokenizer, dataset, n, concurrency, output_len,
                              work, result_file)
            say(f"vllm bench serve: {n} requests at concurrency {concurrency} against {url}")
            try:
                done = subprocess.run(argv, env=server_env(settings or ServerSettings()), capture_output=True,
                                      text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired as e:
                raise LoadTestError(f"vllm bench serve at concurrency {concurrency} ran past {timeout_s:.0f} s") from e
            result_path = work / result_file
            if done.returncode != 0 or not result_path.is_file():
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
                raise LoadTestError(f"vllm bench serve at concurrency {concurrency} exited {done.returncode}:\n{tail}")
            levels.append(parse_result(json.loads(result_path.read_text()), concurrency))
    return LoadTestReport(url, served_model_name, output_len, levels[0].completed if levels else 0, levels,
                          dataset="custom (load sample)" if dataset else "random")
