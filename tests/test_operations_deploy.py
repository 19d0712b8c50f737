"""deploy/observability: the Grafana dashboard imports as is and queries the metrics the platform parses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from aiplat.operations import metrics
from aiplat.serving.k8s import EndpointSpec

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "observability"


def test_dashboard_panels_query_known_metrics() -> None:
    dash = json.loads((ROOT / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["id"] is None  # importable: no instance-specific id
    titles = {p["title"] for p in dash["panels"]}
    assert {"End-to-end latency", "Time to first token", "Token throughput", "GPU utilisation (DCGM)"} <= titles
    assert any(t.startswith("Error rate") for t in titles)
    known = {metrics.E2E, metrics.TTFT, metrics.GENERATION_TOKENS, metrics.PROMPT_TOKENS, metrics.RUNNING,
             metrics.WAITING, metrics.KV_CACHE, metrics.HTTP_REQUESTS,
             "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"(vllm:[a-z0-9_]+|http_requests_total|DCGM_[A-Z_]+)", target["expr"]):
                used.add(re.sub(r"_bucket$", "", name))
    assert used and used <= known, used - known


def test_prometheus_config_keeps_the_rendered_vllm_pods() -> None:
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    vllm = next(job for job in config["scrape_configs"] if job["job_name"] == "vllm")
    labels = EndpointSpec(endpoint="ticket-triage", model_version="3", model_uri="s3://b/m/v3",
                          served_model_name="ticket-triage", namespace="team-ml", image="vllm", gpus=1).labels()
    # Prometheus turns pod label names into __meta_kubernetes_pod_label_<name with non-word chars as _>.
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"\W", "_", k): v for k, v in labels.items()}
    for rule in vllm["relabel_configs"]:
        (source,) = rule["source_labels"]
        if source.startswith("__meta_kubernetes_pod_label_"):
            assert source in meta, f"{source} is not a label the serving manifests set"
            if rule.get("action") == "keep":
                assert re.fullmatch(rule["regex"], meta[source])
