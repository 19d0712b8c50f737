"""Endpoint metrics from vLLM-shaped /metrics text and the request log; the operations assets."""

from __future__ import annotations

import http.server
import logging
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from aiplat.net import free_port
from aiplat.operations.metrics import add_rates, histogram_quantile, request_log_metrics, server_metrics
from aiplat.operations.requests import RequestLog, RequestRecord
from tests.operations_helpers import record, vllm_metrics_text

MODEL = "ticket-triage"
E2E = [0.4] * 50 + [1.2] * 40 + [4.0] * 10  # 100 requests
TTFT = [0.03] * 90 + [0.2] * 10


def test_histogram_quantile_matches_prometheus() -> None:
    # 100 observations: 50 in (0, 0.5], 40 in (1.0, 1.5], 10 in (2.5, 5.0]
    buckets = [(0.5, 50), (1.0, 50), (1.5, 90), (2.5, 90), (5.0, 100), (float("inf"), 100)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.95, buckets) == pytest.approx(2.5 + 2.5 * 0.5)
    assert histogram_quantile(0.5, []) is None


def test_server_metrics_from_vllm_text(tmp_path: Path) -> None:
    text = vllm_metrics_text(MODEL, E2E, TTFT, generation_tokens=6400, prompt_tokens=9000,
                             http={"2xx": 97, "5xx": 3})
    assert "vllm:e2e_request_latency_seconds_bucket{engine=\"0\",le=\"0.5\",model_name=\"ticket-triage\"}" in text
    m = server_metrics(text)[MODEL]
    assert m["e2e_p50_ms"] == pytest.approx(500.0)  # rank 50 ends exactly at the 0.5 s bucket
    assert m["e2e_p99_ms"] == pytest.approx((2.5 + 2.5 * 0.9) * 1000)
    assert m["ttft_p50_ms"] == pytest.approx((0.02 + 0.02 * 50 / 90) * 1000)
    assert m["requests_total"] == 100 and m["generation_tokens_total"] == 6400
    assert m["http_error_rate"] == pytest.approx(0.03)
    assert m["per_request_tokens_per_s"] == pytest.approx(6400 / sum(E2E))

    state = tmp_path / "scrape.json"
    first = add_rates("k", 1000.0, m, state)
    assert "output_tokens_per_s" not in first  # no previous scrape: no rate, not a made-up one
    later = dict(m, generation_tokens_total=7400.0, requests_total=110.0)
    second = add_rates("k", 1010.0, later, state)
    assert second["output_tokens_per_s"] == pytest.approx(100.0) and second["requests_per_s"] == pytest.approx(1.0)
    restarted = add_rates("k", 1020.0, dict(m, generation_tokens_total=5.0), state)
    assert "output_tokens_per_s" not in restarted


def test_request_log_metrics_per_endpoint() -> None:
    records = [record(i, "team:ml", "triage", 100.0 * (i + 1), status=500 if i == 0 else 200) for i in range(10)]
    m = request_log_metrics(records, window_s=10)["ticket-triage"]
    assert m["log_requests"] == 10 and m["log_error_rate"] == pytest.approx(0.1)
    assert m["log_latency_p50_ms"] == pytest.approx(550.0)
    assert m["log_output_tokens_per_s"] == pytest.approx(50.0)


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/metrics":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def metrics_server():
    """A plain HTTP server answering /metrics with the vLLM-shaped text (no vLLM in unit tests)."""
    _MetricsHandler.body = vllm_metrics_text(MODEL, E2E, TTFT, 6400, 9000, {"2xx": 100}).encode()
    port = free_port("127.0.0.1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _MetricsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def _register_live(registry_path: Path, url: str) -> None:
    from aiplat.serving.registry import EndpointRecord, EndpointRegistry, ServerRecord

    live = ServerRecord(url=url, port=int(url.rsplit(":", 1)[1]), pid=0, create_time=0.0, model_version="3",
                        model_path="/models/v3", served_model_name=MODEL, started_at="", log_file="", pid_file="")
    EndpointRegistry(registry_path).update(MODEL, lambda _: EndpointRecord(MODEL, live))


def test_endpoint_metrics_asset(state_dir: Path, metrics_server: str) -> None:
    from assets.operations import build_operations_assets
    from resources.operations import OperationsResource
    from resources.vllm import LocalVllmResource

    endpoint_metrics, _ = build_operations_assets([])
    registry = state_dir / "serving" / "endpoints.json"
    _register_live(registry, metrics_server)
    log = RequestLog(state_dir / "requests.jsonl")
    now = datetime.now(timezone.utc)
    for i in range(4):
        log.append(RequestRecord(now - timedelta(minutes=i), MODEL, MODEL, "team:ml", "triage", 10, 20, 250.0,
                                 503 if i == 0 else 200))
    resources = {"vllm": LocalVllmResource(registry_path=str(registry)),
                 "operations": OperationsResource(request_log_path=str(log.path))}
    result = dg.materialize([endpoint_metrics], resources=resources)
    assert result.success
    md = result.asset_materializations_for_node("endpoint_metrics")[0].metadata
    assert md[f"{MODEL}/{MODEL}/e2e_p50_ms"].value == pytest.approx(500.0)
    assert md[f"{MODEL}/{MODEL}/model_version"].value == "3"
    assert md[f"{MODEL}/log_error_rate"].value == pytest.approx(0.25)
    assert md["endpoints_scraped"].value == 1
    # The second scrape has a previous one to compute a rate against.
    again = dg.materialize([endpoint_metrics], resources=resources)
    md2 = again.asset_materializations_for_node("endpoint_metrics")[0].metadata
    assert md2[f"{MODEL}/{MODEL}/output_tokens_per_s"].value == 0.0


def test_cost_report_asset_budget_check_fails_with_alert(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from assets.operations import BUDGET_CHECK, build_operations_assets
    from resources.operations import OperationsResource

    _, cost_report = build_operations_assets([])

    log = RequestLog(state_dir / "requests.jsonl")
    for i in range(6):
        log.append(record(i * 3, "team:ml" if i % 2 else "team:search", "triage", 2000, completion=400))
    ops = OperationsResource(request_log_path=str(log.path), team_daily_budgets={"team:ml": 0.001, "team:search": 100.0},
                             reports_dir=str(state_dir / "reports"))
    run_config = {"ops": {"cost_report": {"config": {"day": "2026-11-25"}}}}
    with caplog.at_level(logging.ERROR, logger="aiplat.alerts"):
        result = dg.materialize([cost_report], resources={"operations": ops}, run_config=run_config)
    assert result.success  # the report exists; the budget check is what fails
    md = result.asset_materializations_for_node("cost_report")[0].metadata
    assert md["requests"].value == 6
    assert md["team:ml/total_cost"].value + md["team:search/total_cost"].value == pytest.approx(md["total_cost"].value)
    assert Path(md["chart"].value).read_bytes()[:4] == b"\x89PNG"
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == BUDGET_CHECK and check.passed is False
    assert "AIPLAT_ALERT budget team=team:ml day=2026-11-25" in check.description
    assert any("AIPLAT_ALERT budget team=team:ml" in r.getMessage() for r in caplog.records)

    within = OperationsResource(request_log_path=str(log.path), team_daily_budgets={"team:ml": 100.0},
                                reports_dir=str(state_dir / "reports"))
    ok = dg.materialize([cost_report], resources={"operations": within}, run_config=run_config)
    assert ok.get_asset_check_evaluations()[0].passed is True


# --- prod: the same numbers asked of Prometheus ---------------------------------------------------

def _vector(*series: tuple[dict, str]) -> dict:
    """An /api/v1/query answer in the shape Prometheus' HTTP API documents (instant vector)."""
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": m, "value": [1795760000.0, v]} for m, v in series]}}


def test_prometheus_queries_match_the_dashboard_and_group_by_server_or_endpoint() -> None:
    from aiplat.operations.prometheus import queries

    by_metric = {q.metric: q.promql for q in queries("10m")}
    assert by_metric["prom_ttft_p95_ms"] == ("histogram_quantile(0.95, sum by (le, base_model, model_name) "
                                             "(rate(vllm:time_to_first_token_seconds_bucket[10m])))")
    assert "rate(vllm:generation_tokens_total[10m])" in by_metric["prom_output_tokens_per_s"]
    # Per endpoint only the gateway knows (vLLM counts every adapter's traffic under its base model).
    assert 'aiplat_gateway_requests_total{status=~"[45].."}' in by_metric["prom_http_error_rate"]
    assert "sum by (endpoint)" in by_metric["prom_http_error_rate"]
    dashboard = (Path(__file__).resolve().parents[1] / "deploy" / "observability" / "grafana-dashboard.json").read_text()
    assert "vllm:time_to_first_token_seconds_bucket" in dashboard and "vllm:generation_tokens_total" in dashboard


def test_prometheus_answers_become_per_endpoint_numbers_and_nan_is_dropped() -> None:
    """No Prometheus server can run on this machine: httpx's MockTransport answers each query with
    the JSON of Prometheus' documented HTTP API, so the request building and parsing are real."""
    import httpx

    from aiplat.operations.prometheus import PrometheusError, endpoint_metrics

    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        promql = request.url.params["query"]
        asked.append(promql)
        labels = {"base_model": "vllm-base-smollm2", "model_name": "smollm2"}
        if "time_to_first_token" in promql and "0.95" in promql:
            return httpx.Response(200, json=_vector((labels, "0.125")))
        if "generation_tokens_total" in promql:
            return httpx.Response(200, json=_vector((labels, "42.5"), ({**labels, "base_model": "vllm-base-x"}, "NaN")))
        if "aiplat_gateway_requests_total" in promql:
            return httpx.Response(200, json=_vector(({"endpoint": "ticket-triage"}, "0.02")))
        return httpx.Response(200, json=_vector())

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        got = endpoint_metrics("http://prometheus:9090", "5m", client=client)
    assert got == {"vllm-base-smollm2/smollm2": {"prom_ttft_p95_ms": 125.0, "prom_output_tokens_per_s": 42.5},
                   "ticket-triage": {"prom_http_error_rate": 0.02}}
    assert len(asked) == 10

    def broken(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error at char 5"})

    with httpx.Client(transport=httpx.MockTransport(broken)) as client, pytest.raises(PrometheusError, match="bad_data"):
        endpoint_metrics("http://prometheus:9090", client=client)
