"""Per-endpoint numbers from vLLM's Prometheus /metrics and from the request log.

/metrics is parsed with prometheus_client's own text parser. Percentiles come from vLLM's
histograms the way Prometheus' histogram_quantile computes them (linear inside the bucket), so
the asset's numbers and the Grafana panels agree. Counters only mean something as rates: the
previous scrape of each server is kept in a small state file and a rate is reported only when the
counter did not go backwards (a restarted server starts from zero).
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiplat.config import state_dir
from aiplat.operations.requests import RequestRecord

E2E = "vllm:e2e_request_latency_seconds"
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
GENERATION_TOKENS = "vllm:generation_tokens_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
HTTP_REQUESTS = "http_requests_total"  # prometheus-fastapi-instrumentator, status grouped as 2xx/4xx/5xx


class ScrapeError(RuntimeError):
    pass


def scrape(url: str, timeout: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as response:
            return response.read().decode("utf-8")
    except OSError as e:
        raise ScrapeError(f"could not scrape {url}/metrics: {e}") from None


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return [Sample(s.name, dict(s.labels), float(s.value))
                for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as e:
        raise ScrapeError(f"/metrics text does not parse: {e}") from None


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its upper bound is the best estimate
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _model_samples(samples: list[Sample]) -> dict[str, list[Sample]]:
    by_model: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.name.startswith("vllm:") and "model_name" in s.labels:
            by_model[s.labels["model_name"]].append(s)
    return by_model


def _sum(samples: list[Sample], name: str) -> float:
    return sum(s.value for s in samples if s.name == name)


def _buckets(samples: list[Sample], histogram: str) -> list[tuple[float, float]]:
    per_bound: dict[float, float] = defaultdict(float)
    for s in samples:
        if s.name == f"{histogram}_bucket":
            per_bound[float(s.labels["le"])] += s.value  # summed over engines
    return list(per_bound.items())


def server_metrics(text: str) -> dict[str, dict[str, float]]:
    """Per served model: latency and TTFT percentiles (ms), token and request counters, queue, errors."""
    samples = parse(text)
    http = [s for s in samples if s.name == HTTP_REQUESTS and s.labels.get("handler", "").startswith("/v1/")]
    http_total = sum(s.value for s in http)
    http_errors = sum(s.value for s in http if s.labels.get("status", "").startswith(("4", "5")))
    out: dict[str, dict[str, float]] = {}
    for model, mine in _model_samples(samples).items():
        m: dict[str, float] = {}
        for prefix, histogram in (("e2e", E2E), ("ttft", TTFT), ("itl", ITL)):
            buckets = _buckets(mine, histogram)
            for q in (0.5, 0.95, 0.99):
                value = histogram_quantile(q, buckets)
                if value is not None:
                    m[f"{prefix}_p{int(q * 100)}_ms"] = value * 1000
        e2e_sum, requests = _sum(mine, f"{E2E}_sum"), _sum(mine, f"{E2E}_count")
        generated = _sum(mine, GENERATION_TOKENS)
        m.update({
            "requests_total": requests,
            "generation_tokens_total": generated,
            "prompt_tokens_total": _sum(mine, PROMPT_TOKENS),
            "requests_running": _sum(mine, RUNNING),
            "requests_waiting": _sum(mine, WAITING),
            "kv_cache_usage": _sum(mine, KV_CACHE),
        })
        if e2e_sum > 0:
            m["per_request_tokens_per_s"] = generated / e2e_sum
        if http_total > 0:
            m["http_error_rate"] = http_errors / http_total
            m["http_requests_total"] = http_total
        out[model] = m
    return out


def scrape_state_path() -> Path:
    return state_dir() / "operations" / "scrape_state.json"


def add_rates(key: str, now: float, metrics: dict[str, float], path: Path | None = None) -> dict[str, float]:
    """Add tokens/s and requests/s since the previous scrape of `key`; remember this scrape."""
    path = path or scrape_state_path()
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        state = {}
    previous = state.get(key)
    result = dict(metrics)
    if previous and now > previous["at"]:
        elapsed = now - previous["at"]
        for counter, rate in (("generation_tokens_total", "output_tokens_per_s"),
                              ("prompt_tokens_total", "prompt_tokens_per_s"), ("requests_total", "requests_per_s")):
            delta = metrics.get(counter, 0.0) - previous.get(counter, 0.0)
            if delta >= 0:  # a counter going down means the server restarted: no rate this time
                result[rate] = delta / elapsed
    state[key] = {"at": now, **{k: metrics.get(k, 0.0) for k in ("generation_tokens_total", "prompt_tokens_total", "requests_total")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = q * (len(ordered) - 1)
    low, high = math.floor(index), math.ceil(index)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def request_log_metrics(records: list[RequestRecord], window_s: float) -> dict[str, dict[str, float]]:
    """Per endpoint, from the request log: count, error rate, latency percentiles, tokens/s."""
    by_endpoint: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_endpoint[r.endpoint].append(r)
    out: dict[str, dict[str, float]] = {}
    for endpoint, reqs in by_endpoint.items():
        latencies = [r.latency_ms for r in reqs]
        out[endpoint] = {
            "log_requests": float(len(reqs)),
            "log_error_rate": sum(0 if r.ok else 1 for r in reqs) / len(reqs),
            "log_latency_p50_ms": _percentile(latencies, 0.5),
            "log_latency_p95_ms": _percentile(latencies, 0.95),
            "log_latency_p99_ms": _percentile(latencies, 0.99),
            "log_output_tokens_per_s": sum(r.completion_tokens for r in reqs) / window_s,
        }
    return out
