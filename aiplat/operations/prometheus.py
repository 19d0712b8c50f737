"""Serving numbers from the Prometheus that scrapes the vLLM pods and the gateway (prod).

In prod Dagster does not reach each pod; Prometheus already scrapes them all
(deploy/observability/prometheus.yml puts the `base_model` label on every vLLM series). One vLLM
server per base model serves every adapter, and vLLM counts adapter traffic under the base model,
so its series are per base server; per-endpoint figures come from the metering gateway's series.
The asset asks Prometheus' HTTP API the same PromQL the Grafana panels use, over one window, so the
numbers in Dagster and on the dashboard agree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import httpx

BY = "base_model, model_name"


class PrometheusError(RuntimeError):
    pass


@dataclass(frozen=True)
class Query:
    metric: str  # the metadata name it fills, per endpoint/model
    promql: str
    scale: float = 1.0  # seconds -> ms


def queries(window: str = "5m") -> list[Query]:
    out: list[Query] = []
    for prefix, histogram in (("e2e", "vllm:e2e_request_latency_seconds"), ("ttft", "vllm:time_to_first_token_seconds")):
        for q in (0.5, 0.95, 0.99):
            out.append(Query(f"prom_{prefix}_p{int(q * 100)}_ms",
                             f"histogram_quantile({q}, sum by (le, {BY}) (rate({histogram}_bucket[{window}])))", 1000.0))
    out += [
        Query("prom_output_tokens_per_s", f"sum by ({BY}) (rate(vllm:generation_tokens_total[{window}]))"),
        Query("prom_prompt_tokens_per_s", f"sum by ({BY}) (rate(vllm:prompt_tokens_total[{window}]))"),
        Query("prom_requests_per_s", f"sum by ({BY}) (rate(vllm:e2e_request_latency_seconds_count[{window}]))"),
        Query("prom_http_error_rate",
              f'sum by (endpoint) (rate(aiplat_gateway_requests_total{{status=~"[45].."}}[{window}]))'
              f' / sum by (endpoint) (rate(aiplat_gateway_requests_total[{window}]))'),
    ]
    return out


def parse_vector(payload: dict) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of an instant-vector answer of /api/v1/query; NaN samples (no traffic in the
    window) are dropped rather than reported as numbers."""
    if payload.get("status") != "success":
        raise PrometheusError(f"query failed: {payload.get('errorType', '?')}: {payload.get('error', payload)}")
    data = payload.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusError(f"expected an instant vector, got {data.get('resultType')!r}")
    out = []
    for item in data.get("result", []):
        value = float(item["value"][1])
        if not math.isnan(value) and not math.isinf(value):
            out.append((dict(item.get("metric") or {}), value))
    return out


def query(client: httpx.Client, base_url: str, promql: str, timeout: float) -> list[tuple[dict[str, str], float]]:
    try:
        response = client.get(f"{base_url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=timeout)
        payload = response.json()
    except (httpx.HTTPError, ValueError) as e:
        raise PrometheusError(f"Prometheus at {base_url} did not answer {promql!r}: {e}") from None
    return parse_vector(payload)


def endpoint_metrics(base_url: str, window: str = "5m", timeout: float = 10.0,
                     client: httpx.Client | None = None) -> dict[str, dict[str, float]]:
    """{"<base server>/<model>" (vLLM's series) or "<endpoint>" (the gateway's): {metric: value}} for
    every series Prometheus has."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    own = client is None
    client = client or httpx.Client()
    try:
        for q in queries(window):
            for labels, value in query(client, base_url, q.promql, timeout):
                where = labels.get("base_model") or labels.get("endpoint") or "unlabelled"
                key = f"{where}/{labels['model_name']}" if labels.get("model_name") else where
                out[key][q.metric] = value * q.scale
    finally:
        if own:
            client.close()
    return dict(out)
