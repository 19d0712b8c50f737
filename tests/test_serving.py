"""Serving without a server: manifests (strict Kubernetes validation), the endpoint registry, the
canary's comparison, `bench serve` result parsing, the resource and the CLI's offline commands.
The tests with real vLLM servers are in test_serving_live.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from kubernetes_validate.utils import all_versions

from aiplat.config import project_root
from aiplat.serving import k8s
from aiplat.serving.canary import CanaryPolicy, Reply, agreement, canary_prompts, compare, percentile
from aiplat.serving.loadtest import LoadTestError, parse_result
from aiplat.serving.registry import EndpointRecord, EndpointRegistry, RegistryError, ServerRecord

K8S_VERSIONS = sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)})
EXAMPLES = sorted((project_root() / "deploy" / "serving").glob("*.yaml"))

# Gateway API is a CRD, which kubernetes-validate has no schema for, and the CRD's own schema is
# not available offline. This is the part of gateway.networking.k8s.io/v1 HTTPRoute the platform
# writes, transcribed from the Gateway API reference, closed with additionalProperties=false so a
# misspelt field fails (structural validation, not the full CRD schema).
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}
HTTPROUTE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": _NAME, "namespace": _NAME}},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["parentRefs", "rules"],
            "properties": {
                "hostnames": {"type": "array", "items": {"type": "string"}},
                "parentRefs": {"type": "array", "minItems": 1, "maxItems": 32, "items": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"group": {"type": "string"}, "kind": {"type": "string"}, "name": _NAME,
                                   "namespace": _NAME, "sectionName": {"type": "string"},
                                   "port": {"type": "integer"}}}},
                "rules": {"type": "array", "minItems": 1, "maxItems": 16, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "matches": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                            "path": {"type": "object", "additionalProperties": False, "required": ["type", "value"], "properties": {
                                "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                "value": {"type": "string", "pattern": "^/"}}}}}},
                        "filters": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
                            "type": {"enum": ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                                             "RequestRedirect", "URLRewrite", "ExtensionRef"]}}}},
                        "backendRefs": {"type": "array", "minItems": 1, "maxItems": 16, "items": {
                            "type": "object", "additionalProperties": False, "required": ["name"],
                            "properties": {"group": {"type": "string"}, "kind": {"type": "string"}, "name": _NAME,
                                           "namespace": _NAME, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                           "weight": {"type": "integer", "minimum": 0, "maximum": 1000000}}}},
                        "timeouts": {"type": "object", "additionalProperties": False, "properties": {
                            "request": {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"},
                            "backendRequest": {"type": "string"}}},
                    }}},
            },
        },
    },
}


def _spec(version: str, gpus: int = 1) -> k8s.EndpointSpec:
    return k8s.EndpointSpec("ticket-triage", version, f"s3://models/ticket-triage/v{version}", "ticket-triage", gpus=gpus)


def _validate(doc: dict) -> None:
    if doc["kind"] == "HTTPRoute":
        jsonschema.validate(doc, HTTPROUTE_SCHEMA)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# --- manifests --------------------------------------------------------------------------------


@pytest.mark.parametrize("gpus", [1, 4])
def test_rendered_canary_is_valid_and_splits_traffic(gpus: int) -> None:
    assert K8S_VERSIONS[0].startswith("1.30") and len(K8S_VERSIONS) >= 3
    docs = k8s.render_endpoint(_spec("3", gpus), _spec("4", gpus), canary_weight=10)
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "Deployment", "Service", "HTTPRoute"]
    for doc in docs:
        _validate(doc)
    deployment = docs[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == k8s.DEFAULT_IMAGE == "aiplat-vllm-serving"  # the overlays' image variable
    assert pod["priorityClassName"] == "inference"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    args = container["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == str(gpus)
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[-1] == "ticket-triage" and "/v1/completions" in probe[3] and '"max_tokens": 1' in probe[3]
    assert probe[:3] == ["sh", "-c", 'exec python3 -c "$0" "$1" "$VLLM_API_KEY"']  # the key from the container
    # Each Service selects exactly its own version's pods.
    assert docs[1]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert docs[3]["spec"]["selector"]["aiplat.dev/model-version"] == "4"
    weights = {b["name"]: b["weight"] for b in docs[4]["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"vllm-ticket-triage-v3": 90, "vllm-ticket-triage-v4": 10}


def test_readiness_script_is_valid_python() -> None:
    script = k8s.deployment(_spec("1"))["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"][3]
    compile(script, "<readiness>", "exec")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="3 GPUs"):
        k8s.render_endpoint(_spec("1", gpus=3))
    with pytest.raises(ValueError, match="percentage"):
        k8s.http_route("ticket-triage", _spec("1"), _spec("2"), canary_weight=120)
    with pytest.raises(ValueError, match="needs a candidate"):
        k8s.http_route("ticket-triage", _spec("1"), None, canary_weight=5)
    with pytest.raises(ValueError, match="another version"):
        k8s.render_endpoint(_spec("1"), _spec("1"), 10)


def test_validation_catches_misspelt_fields() -> None:
    # The guards the tests above rely on: both validators reject unknown fields.
    deployment = k8s.deployment(_spec("1"))
    deployment["spec"]["template"]["spec"]["priorityClassNam"] = "inference"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    route = k8s.http_route("ticket-triage", _spec("1"))
    route["spec"]["rules"][0]["backendRefs"][0]["weigth"] = 5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, HTTPROUTE_SCHEMA)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_committed_examples_are_valid_and_current(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        _validate(doc)
    # The committed file is what the CLI renders today (its first comment line says how).
    command = path.read_text().splitlines()[0].split("regenerate: aiplat ", 1)[1].rstrip(")").split()
    result = CliRunner().invoke(__import__("aiplat.cli", fromlist=["cli"]).cli, command)
    assert result.exit_code == 0, result.output
    assert list(yaml.safe_load_all(result.output)) == docs


# --- registry ---------------------------------------------------------------------------------


def _server(version: str, port: int = 8001) -> ServerRecord:
    return ServerRecord(url=f"http://127.0.0.1:{port}", port=port, pid=0, create_time=0.0, model_version=version,
                        model_path="/m", served_model_name="triage", started_at="t", log_file="l", pid_file="p")


def test_registry_round_trip_and_concurrent_updates(tmp_path: Path) -> None:
    registry = EndpointRegistry(tmp_path / "endpoints.json")
    registry.update("a", lambda _: EndpointRecord("a", _server("1"), history=[]))

    def add(i: int) -> None:
        registry.update("a", lambda e: EndpointRecord(e.name, e.live, e.candidate, e.history + [{"i": i}]))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entry = registry.get("a")
    assert entry.live == _server("1")
    assert sorted(h["i"] for h in entry.history) == list(range(20))  # no update lost
    assert json.loads((tmp_path / "endpoints.json").read_text())["endpoints"]["a"]["live"]["model_version"] == "1"
    assert not list(tmp_path.glob(".*.tmp"))
    registry.update("a", lambda _: None)
    assert registry.all() == {}


def test_unreadable_registry_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text("{not json")
    with pytest.raises(RegistryError, match=str(path)):
        EndpointRegistry(path).all()


# --- canary comparison ------------------------------------------------------------------------


def _replies(texts: list[str], latency: float = 100.0, ok: bool = True) -> list[Reply]:
    return [Reply(f"p{i}", ok, latency + i, text=t if ok else "", error="" if ok else "HTTP 500: boom")
            for i, t in enumerate(texts)]


def test_canary_passes_identical_answers_and_fails_each_threshold() -> None:
    policy = CanaryPolicy(max_p95_ratio=1.5, p95_slack_ms=0, min_agreement=0.8)
    same = ["Paris.", "billing", "yes", "Sorry for the delay."]
    assert compare(_replies(same), _replies(same), policy)[0] == []

    slow = compare(_replies(same), _replies(same, latency=1000), policy)[0]
    assert len(slow) == 1 and slow[0].startswith("p95 latency")

    wrong = compare(_replies(same), _replies(["Berlin.", "technical", "no", "Sorry for the delay."]), policy)
    assert len(wrong[0]) == 1 and wrong[0][0].startswith("answer agreement 25%")
    assert wrong[4][0]["live"] == "Paris." and wrong[4][0]["candidate"] == "Berlin."

    broken = compare(_replies(same), _replies(same, ok=False), policy)[0]
    assert any(r.startswith("error rate 100.0%") and "HTTP 500" in r for r in broken)


def test_agreement_tolerates_whitespace_and_case() -> None:
    share, differing = agreement(_replies(["The capital is Paris."]), _replies(["the capital  is paris."]), 0.9)
    assert share == 1.0 and differing == []


def test_canary_prompts_take_a_deterministic_share() -> None:
    sample = [f"q{i}" for i in range(10)]
    first = canary_prompts(["probe"], sample, 0.3, seed=1)
    assert first[0] == "probe" and len(first) == 4 and set(first[1:]) <= set(sample)
    assert canary_prompts(["probe"], sample, 0.3, seed=1) == first
    assert canary_prompts(["probe"], sample, 0.0) == ["probe"]
    with pytest.raises(ValueError, match="load_share"):
        CanaryPolicy(load_share=1.5)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 95) == 0.0
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([5.0], 99) == 5.0


# --- bench serve results ----------------------------------------------------------------------


def test_parse_bench_serve_result() -> None:
    raw = {"completed": 8, "failed": 0, "duration": 4.2, "request_throughput": 1.9, "output_throughput": 61.5}
    for p in (50, 95, 99):
        raw[f"p{p}_ttft_ms"] = 100.0 + p
        raw[f"p{p}_e2el_ms"] = 1000.0 + p
    level = parse_result(raw, 8)
    metrics = level.metrics()
    assert metrics["c8_output_tokens_per_s"] == 61.5 and metrics["c8_ttft_p95_ms"] == 195.0
    assert metrics["c8_e2e_p99_ms"] == 1099.0 and all(isinstance(v, float) for v in metrics.values())
    del raw["p95_e2el_ms"]
    with pytest.raises(LoadTestError, match="p95_e2el_ms"):
        parse_result(raw, 8)


# --- resource and CLI without servers ---------------------------------------------------------


def test_prod_resource_renders_a_weighted_rollout(tmp_path: Path) -> None:
    from aiplat.serving.champion import ModelRef
    from resources.vllm import ProdVllmResource

    prod = ProdVllmResource(gateway_url="https://gw.example", model_store_prefix="s3://m", gpus=2,
                            canary_weight=20, manifests_dir=str(tmp_path))
    result = prod.roll_out("ticket-triage", ModelRef("5", Path("/unused"), "ticket-triage"), live_version="4")
    docs = list(yaml.safe_load_all(Path(result.live.pid_file).read_text()))
    route = docs[-1]
    assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [80, 20]
    assert result.live.url == "https://gw.example/ticket-triage"
    for doc in docs:
        _validate(doc)


def test_cli_lists_nothing_and_refuses_unknown_endpoints(state_dir: Path) -> None:
    from aiplat.cli import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["endpoints", "list"])
    assert listed.exit_code == 0 and "no endpoints" in listed.output
    chat = runner.invoke(cli, ["chat", "nope", "hello"])
    assert chat.exit_code != 0 and "no live endpoint named 'nope'" in chat.output


def test_help_does_not_import_vllm_or_torch() -> None:
    code = ("import sys; from click.testing import CliRunner; from aiplat.cli import cli; "
            "r = CliRunner().invoke(cli, ['endpoints', '--help']); assert r.exit_code == 0, r.output; "
            "CliRunner().invoke(cli, ['chat', '--help']); "
            "print(sorted(m for m in ('torch', 'transformers', 'openai', 'dagster') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("writes_log", [True, False])
def test_a_start_up_that_keeps_logging_is_waited_for_up_to_the_cap_and_a_silent_one_is_not(tmp_path, writes_log) -> None:
    """A real child process that never answers (no server on the port): one that keeps writing
    its log is slow, not stuck, so the wait runs to START_CAP_FACTOR x the timeout; one that
    writes nothing is called stuck after the timeout."""
    from aiplat.net import free_port
    from aiplat.serving import server

    log = tmp_path / "vllm.log"
    log.write_text("starting\n")
    script = f"while true; do echo tick >> {log}; sleep 0.2; done" if writes_log else "sleep 60"
    proc = subprocess.Popen(["bash", "-c", script])
    port = free_port()
    record = ServerRecord(url=f"http://127.0.0.1:{port}", port=port, pid=proc.pid, create_time=0.0, model_version="1",
                          model_path="/m", served_model_name="m", started_at="t", log_file=str(log), pid_file="p")
    try:
        cause = server._wait_ready(record, proc, timeout=1.5, say=lambda _m: None)
    finally:
        proc.kill()
        proc.wait()
    if writes_log:
        assert f"the limit is {server.START_CAP_FACTOR}x 2 s" in cause
    else:
        assert "its log silent for the last 2 s" in cause
