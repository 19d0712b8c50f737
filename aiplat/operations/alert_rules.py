"""Prometheus recording and alerting rules for what the platform promises, as code.

`render_rules(operations settings)` builds the rule groups; deploy/observability/alert-rules.yaml is
its output for the deployed settings (regenerate: `aiplat cost alert-rules > deploy/observability/
alert-rules.yaml`), checked and unit-tested with promtool by tests/test_delivery_alerts.py. Team
budgets and token rates come from the same OperationsResource the cost report uses, so the alert
and the report cannot disagree about what a team may spend.

Series the rules read:
  vllm:e2e_request_latency_seconds_bucket, vllm:generation_tokens_total   vLLM /metrics of the shared
      adapter servers, one per base model (the scrape config in prometheus.yml adds `base_model`, the
      server's Deployment name; vLLM counts every adapter's traffic under the base model, so these
      are per base server, never per endpoint)
  aiplat_gateway_requests_total{endpoint,team,feature,status}, aiplat_gateway_tokens_total{team,kind}
      the metering gateway: the only per-endpoint series (it exports no latency histogram and no
      tokens by endpoint)
  aiplat_live_quality_golden_accuracy / _baseline_accuracy / _max_drop{endpoint,model,model_version}
      written by the live_quality asset (aiplat.operations.textfile) for the textfile collector
  DCGM_FI_DEV_GPU_UTIL{pod,namespace,...}   NVIDIA's DCGM exporter
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class AlertSettings:
    team_daily_budgets: Mapping[str, float]
    prompt_per_1k_tokens: float
    completion_per_1k_tokens: float
    p99_latency_seconds: float = 10.0       # per base model's server, over 5 minutes
    max_error_ratio: float = 0.05           # 5xx share of gateway requests per endpoint
    throughput_drop_ratio: float = 0.5      # a base server's tokens/s below half of an hour before
    gpu_idle_utilisation: float = 10.0      # per cent, an allocated GPU doing (almost) nothing
    burn_fast: float = 6.0                  # spending a day's budget in 4 hours (1h window)
    burn_slow: float = 1.0                  # on track to overspend the day (6h window)


def _q(value: float) -> str:
    return repr(float(value))


def _team_budget_series(budgets: Mapping[str, float]) -> list[dict]:
    # One recording rule per team: `aiplat:team_daily_budget{team="team:ml"}` = the configured budget.
    return [{"record": "aiplat:team_daily_budget", "expr": f"vector({_q(budget)})", "labels": {"team": team}}
            for team, budget in sorted(budgets.items())]


def render_rules(s: AlertSettings) -> dict:
    serving = {
        "name": "aiplat-serving",
        "rules": [
            # vLLM's figures are per shared server (base model): adapters are not told apart.
            {"record": "aiplat:base_model_latency_seconds:p99_5m",
             "expr": "histogram_quantile(0.99, sum by (le, base_model) "
                     "(rate(vllm:e2e_request_latency_seconds_bucket[5m])))"},
            {"record": "aiplat:endpoint_error_ratio:5m",
             "expr": 'sum by (endpoint) (rate(aiplat_gateway_requests_total{status=~"5.."}[5m])) '
                     "/ sum by (endpoint) (rate(aiplat_gateway_requests_total[5m]))"},
            {"record": "aiplat:base_model_generation_tokens:rate5m",
             "expr": "sum by (base_model) (rate(vllm:generation_tokens_total[5m]))"},
            {"alert": "ModelLatencyP99High",
             "expr": f"aiplat:base_model_latency_seconds:p99_5m > {_q(s.p99_latency_seconds)}",
             "for": "10m", "labels": {"severity": "page"},
             "annotations": {"summary": "p99 latency of the {{ $labels.base_model }} server is {{ $value | humanizeDuration }}",
                             "description": f"Above {s.p99_latency_seconds:g}s for 10 minutes on the base model's shared "
                                            "server (every endpoint on it): check queueing (vllm:num_requests_waiting), "
                                            "the GPUs of its pods and which endpoint's traffic grew "
                                            "(aiplat_gateway_requests_total by endpoint)."}},
            {"alert": "EndpointErrorRateHigh",
             "expr": f"aiplat:endpoint_error_ratio:5m > {_q(s.max_error_ratio)}",
             "for": "5m", "labels": {"severity": "page"},
             "annotations": {"summary": "{{ $labels.endpoint }} answers {{ $value | humanizePercentage }} of requests with 5xx",
                             "description": f"More than {s.max_error_ratio:.0%} server errors at the gateway for 5 minutes."}},
            {"alert": "TokenThroughputDropped",
             "expr": f"aiplat:base_model_generation_tokens:rate5m < {_q(s.throughput_drop_ratio)} "
                     "* (aiplat:base_model_generation_tokens:rate5m offset 1h) "
                     "and (aiplat:base_model_generation_tokens:rate5m offset 1h) > 0",
             "for": "15m", "labels": {"severity": "ticket"},
             "annotations": {"summary": "The {{ $labels.base_model }} server generates {{ $value | humanize }} tokens/s, "
                                        f"under {s.throughput_drop_ratio:.0%} of an hour ago",
                             "description": "Traffic moved away or the server slowed down: compare the gateway's request "
                                            "rate of the endpoints on this base model (aiplat_gateway_requests_total by endpoint)."}},
        ],
    }
    budget = {
        "name": "aiplat-budget",
        "rules": _team_budget_series(s.team_daily_budgets) + [
            # Token spend per team per hour, at the configured rates.
            {"record": "aiplat:team_token_cost:rate1h",
             "expr": f'sum by (team) (rate(aiplat_gateway_tokens_total{{kind="prompt"}}[1h])) * 3600 / 1000 * {_q(s.prompt_per_1k_tokens)} '
                     f'+ sum by (team) (rate(aiplat_gateway_tokens_total{{kind="completion"}}[1h])) * 3600 / 1000 * {_q(s.completion_per_1k_tokens)}'},
            {"record": "aiplat:team_token_cost:rate6h",
             "expr": f'sum by (team) (rate(aiplat_gateway_tokens_total{{kind="prompt"}}[6h])) * 3600 / 1000 * {_q(s.prompt_per_1k_tokens)} '
                     f'+ sum by (team) (rate(aiplat_gateway_tokens_total{{kind="completion"}}[6h])) * 3600 / 1000 * {_q(s.completion_per_1k_tokens)}'},
            # Burn rate 1 = spending exactly the daily budget over 24 hours.
            {"record": "aiplat:team_budget_burn:1h",
             "expr": "aiplat:team_token_cost:rate1h * 24 / on (team) aiplat:team_daily_budget"},
            {"record": "aiplat:team_budget_burn:6h",
             "expr": "aiplat:team_token_cost:rate6h * 24 / on (team) aiplat:team_daily_budget"},
            {"alert": "TeamBudgetBurnFast",
             "expr": f"aiplat:team_budget_burn:1h > {_q(s.burn_fast)} and aiplat:team_budget_burn:6h > {_q(s.burn_slow)}",
             "for": "5m", "labels": {"severity": "page"},
             "annotations": {"summary": "{{ $labels.team }} burns its daily token budget {{ $value | humanize }}x too fast",
                             "description": "At this rate the day's budget is gone within hours; `aiplat cost report "
                                            "--team` shows which feature spends it."}},
            {"alert": "TeamBudgetBurnSlow",
             "expr": f"aiplat:team_budget_burn:6h > {_q(s.burn_slow)}",
             "for": "1h", "labels": {"severity": "ticket"},
             "annotations": {"summary": "{{ $labels.team }} is on track to exceed its daily token budget",
                             "description": "Six-hour spend extrapolated to a day is above the budget."}},
        ],
    }
    quality = {
        "name": "aiplat-quality",
        "rules": [
            {"alert": "LiveQualityRegressed",
             "expr": "aiplat_live_quality_baseline_accuracy - aiplat_live_quality_golden_accuracy "
                     "> on (endpoint, model, model_version) aiplat_live_quality_max_drop",
             "labels": {"severity": "page"},
             "annotations": {"summary": "{{ $labels.model }} v{{ $labels.model_version }} on {{ $labels.endpoint }} "
                                        "lost {{ $value | humanizePercentage }} golden accuracy",
                             "description": "The live golden-set check (live_quality asset) is below its baseline by "
                                            "more than the allowed drop; its asset check failed too."}},
            {"alert": "LiveQualityStale",
             "expr": "time() - aiplat_live_quality_timestamp_seconds > 2 * 86400",
             "labels": {"severity": "ticket"},
             "annotations": {"summary": "No live-quality reading for {{ $labels.endpoint }} in two days",
                             "description": "The live_quality asset has not run: check its schedule in Dagster."}},
        ],
    }
    gpu = {
        "name": "aiplat-gpu",
        "rules": [
            {"record": "aiplat:gpu_utilisation:avg30m",
             "expr": "avg by (namespace, pod) (avg_over_time(DCGM_FI_DEV_GPU_UTIL[30m]))"},
            {"alert": "GpuIdleWhileAllocated",
             "expr": f'aiplat:gpu_utilisation:avg30m{{pod!=""}} < {_q(s.gpu_idle_utilisation)}',
             "for": "30m", "labels": {"severity": "ticket"},
             "annotations": {"summary": "GPUs of {{ $labels.namespace }}/{{ $labels.pod }} average {{ $value | humanize }}% busy",
                             "description": "An allocated GPU doing almost nothing costs the same as a busy one: "
                                            "scale the base model's server down or check the run."}},
            # The shared adapter servers' pods: Deployment `vllm-base-<base model>` (AdapterServerSpec.name).
            {"alert": "GpuSaturated",
             "expr": 'aiplat:gpu_utilisation:avg30m{pod=~"vllm-base-.*"} > 95',
             "for": "30m", "labels": {"severity": "ticket"},
             "annotations": {"summary": "Inference GPUs of {{ $labels.pod }} are saturated",
                             "description": "Add a replica to the base model's server or give it more GPUs before "
                                            "latency suffers on every endpoint it serves."}},
        ],
    }
    return {"groups": [serving, budget, quality, gpu]}


def settings_from(operations) -> AlertSettings:
    """The alert settings of an OperationsResource (budgets and token rates)."""
    return AlertSettings(operations.budgets(), operations.prompt_per_1k_tokens,
                         operations.completion_per_1k_tokens)


HEADER = ("# Generated by aiplat.operations.alert_rules (regenerate: aiplat cost alert-rules > "
          "deploy/observability/alert-rules.yaml).\n# Checked and unit-tested with promtool: tests/test_delivery_alerts.py.\n")


def to_yaml(rules: dict) -> str:
    return HEADER + yaml.safe_dump(rules, sort_keys=False, width=120)
