"""deploy/observability: the Grafana dashboard imports as is and queries the metrics the platform parses
(vLLM's, per base model's shared server) and the metering gateway exports (per endpoint); the scrape
config keeps the adapter servers' pods."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from aiplat.operations import metrics
from aiplat.serving import k8s_adapters
from aiplat.serving.gateway import GatewayMetrics

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "observability"


def test_dashboard_panels_query_known_metrics() -> None:
    dash = json.loads((ROOT / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["id"] is None  # importable: no instance-specific id
    titles = {p["title"] for p in dash["panels"]}
    assert {"End-to-end latency", "Time to first token", "Token throughput", "GPU utilisation (DCGM)"} <= titles
    assert any(t.startswith("Error rate") for t in titles)
    # What the gateway really exports (counters as Prometheus names them, with _total).
    gateway = {f.name + ("_total" if f.type == "counter" else "") for f in GatewayMetrics().registry.collect()}
    known = {metrics.E2E, metrics.TTFT, metrics.GENERATION_TOKENS, metrics.PROMPT_TOKENS, metrics.RUNNING,
             metrics.WAITING, metrics.KV_CACHE, metrics.HTTP_REQUESTS,
             "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"} | gateway
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name in re.findall(r"(vllm:[a-z0-9_]+|(?<![a-z_])http_requests_total|aiplat_gateway_[a-z_]+|DCGM_[A-Z_]+)", expr):
                used.add(re.sub(r"_bucket$", "", name))
            # vLLM's series are per base server: no scrape relabel gives them an endpoint any more.
            if "vllm:" in expr or re.search(r"(?<![a-z_])http_requests_total", expr):
                assert "endpoint" not in expr, expr
    assert used and used <= known, used - known
    assert "aiplat_gateway_requests_total" in used  # per-endpoint figures come from the gateway


def test_prometheus_config_keeps_the_rendered_vllm_pods() -> None:
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    vllm = next(job for job in config["scrape_configs"] if job["job_name"] == "vllm")
    spec = k8s_adapters.AdapterServerSpec(base_name="smollm2-135m-instruct", base_uri="s3://m/base/smollm2-135m-instruct/")
    labels = spec.labels()
    template = k8s_adapters.deployment(spec)["spec"]["template"]
    assert template["metadata"]["labels"] == labels  # the pods carry what Prometheus selects on
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    # Prometheus turns pod label names into __meta_kubernetes_pod_label_<name with non-word chars as _>.
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"\W", "_", k): v for k, v in template["metadata"]["labels"].items()}
    targets = {}
    for rule in vllm["relabel_configs"]:
        (source,) = rule["source_labels"]
        if source.startswith("__meta_kubernetes_pod_label_"):
            assert source in meta, f"{source} is not a label the serving manifests set"
            if rule.get("action") == "keep":
                assert re.fullmatch(rule["regex"], meta[source])
        if source == "__meta_kubernetes_pod_container_port_name" and rule.get("action") == "keep":
            assert {p for p in ports if re.fullmatch(rule["regex"], p)} == {"http"}
        if rule.get("target_label"):
            targets[rule["target_label"]] = source
    # vLLM's series get the server's base model (what the alert rules group by), nothing per endpoint.
    assert meta[targets["base_model"]] == spec.name == "vllm-base-smollm2-135m-instruct"
    assert "endpoint" not in targets and "model_version" not in targets
