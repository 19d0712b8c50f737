"""Helpers for the operations tests: request-log records and a vLLM-shaped /metrics text.

The /metrics text is produced by prometheus_client's real exposition code from known observations,
with the metric names, labels (model_name, engine) and bucket bounds of vLLM 0.32's
vllm/v1/metrics/loggers.py and the http_requests_total counter of prometheus-fastapi-instrumentator
that vLLM mounts, so expected percentiles can be computed by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from aiplat.operations.requests import RequestRecord

REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


def vllm_metrics_text(model: str, e2e_s: list[float], ttft_s: list[float], generation_tokens: int,
                      prompt_tokens: int, http: dict[str, int]) -> str:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    labels = {"model_name": model, "engine": "0"}
    e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                    ["model_name", "engine"], buckets=REQUEST_LATENCY_BUCKETS, registry=registry)
    ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                     ["model_name", "engine"], buckets=TTFT_BUCKETS, registry=registry)
    for v in e2e_s:
        e2e.labels(**labels).observe(v)
    for v in ttft_s:
        ttft.labels(**labels).observe(v)
    Counter("vllm:generation_tokens", "Number of generation tokens processed.", ["model_name", "engine"],
            registry=registry).labels(**labels).inc(generation_tokens)
    Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", ["model_name", "engine"],
            registry=registry).labels(**labels).inc(prompt_tokens)
    Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", ["model_name", "engine"],
          registry=registry).labels(**labels).set(2)
    requests = Counter("http_requests", "Total number of requests by method, status and handler.",
                       ["method", "status", "handler"], registry=registry)
    for status, count in http.items():
        requests.labels("POST", status, "/v1/completions").inc(count)
    requests.labels("GET", "2xx", "/v1/models").inc(0)
    return generate_latest(registry).decode()


T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)


def record(seconds: float, team: str, feature: str, latency_ms: float, endpoint: str = "ticket-triage",
           prompt: int = 100, completion: int = 50, status: int = 200) -> RequestRecord:
    return RequestRecord(T0 + timedelta(seconds=seconds), endpoint, endpoint, team, feature, prompt, completion,
                         latency_ms, status)
