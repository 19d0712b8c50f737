"""Serving without a server: the committed manifests (strict Kubernetes validation), the base-server
registry, `bench serve` result parsing and the CLI's offline commands. The tests with real vLLM
servers are in test_serving_adapters_live.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from kubernetes_validate.utils import all_versions

from aiplat.config import project_root
from aiplat.serving import k8s
from aiplat.evaluation.metrics import percentile
from aiplat.serving.loadtest import LoadTestError, parse_result
from aiplat.serving.registry import EndpointRecord, EndpointRegistry, RegistryError, ServerRecord

K8S_VERSIONS = sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)})
EXAMPLES = sorted((project_root() / "deploy" / "serving").glob("*.yaml"))

def _validate(doc: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# --- manifests --------------------------------------------------------------------------------


def test_an_unsupported_gpu_count_is_refused() -> None:
    assert k8s.tensor_parallel_size(4) == 4
    with pytest.raises(ValueError, match="3 GPUs"):
        k8s.tensor_parallel_size(3)


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


def test_a_base_model_changed_after_it_was_prepared_starts_no_server(state_dir: Path, tmp_path: Path) -> None:
    """The local backend hashes a base's files again before it starts a server from them: one changed
    since its manifest was written is refused by name, and no server is started or recorded."""
    from aiplat.models.manifest import write_manifest
    from aiplat.security.approval import ServingKeys
    from aiplat.serving.adapters import AdapterError
    from aiplat.serving.backend import LocalServingBackend
    from aiplat.serving.server import ServerSettings

    base = tmp_path / "tiny-base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"\0" * 64)
    prepared = write_manifest(base).folder_sha256
    backend = LocalServingBackend(ServerSettings(), ServingKeys(tmp_path / "s.pub", tmp_path / "a.pub"),
                                  {"tiny": base}, registry_path=tmp_path / "base-servers.json")
    assert backend.base_digest("tiny", verify=True) == prepared
    (base / "model.safetensors").write_bytes(b"\1" * 64)
    assert backend.base_digest("tiny") == prepared  # the manifest's, unverified
    with pytest.raises(AdapterError, match=r"tiny-base no longer matches its manifest .*not serving it"):
        backend.server("tiny")
    assert backend.servers() == []
