"""One vLLM OpenAI-compatible server process on the local CPU.

Started from the separate vLLM venv (aiplat.stack.vllm_env, built by scripts/setup_vllm_env.sh) in
its own session, so its PID is its process group and stopping it takes vLLM's engine process
with it. Ready means a real one-token completion came back, not only that /health answered:
/health turns green before the first request has gone through the model.

Overload is vLLM's own: `--max-num-seqs` bounds the running batch and `--max-num-queued-reqs`
bounds everything in flight; past it vLLM answers HTTP 503 at once instead of queueing without
limit (vllm.config.scheduler.SchedulerConfig.max_num_queued_reqs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import psutil

from aiplat.config import child_env, default_signals, local_paths, state_dir
from aiplat.net import free_port
from aiplat.processes import recorded_process, start_time
from aiplat.serving.registry import ServerRecord

HOST = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
READY_PROMPT = "Hello"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServerSettings:
    """How local vLLM servers are started. Defaults fit a 2-core CPU machine."""

    dtype: str = "bfloat16"
    max_model_len: int = 1024
    max_num_seqs: int = 8  # requests decoded together; the rest wait in vLLM's queue
    max_num_queued_reqs: int = 64  # running + waiting; past it vLLM answers 503
    kv_cache_gib: int = 1
    enforce_eager: bool = False  # True starts in ~22 s instead of 30-60 s (no compile), decodes slower
    start_timeout_s: float = 240.0
    extra_args: tuple[str, ...] = ()
    python: str | None = None  # the vLLM venv's python; None = aiplat.stack.vllm_env()
    # Serve LoRA adapters beside the base model, loaded at run time (aiplat.serving.adapters).
    lora: LoraSettings | None = None


@dataclass(frozen=True)
class LoraSettings:
    """Limits of one multi-adapter server (vLLM's own flags; docs/serving-runbook.md, "Adapters").

    `max_loras` adapters take part in one batch: a request for another one waits until a slot is
    free. `max_cpu_loras` adapters stay loaded in host memory; loading one more evicts the least
    recently used from that cache (it stays registered and is read again from its folder on its
    next request). `max_lora_rank` is the largest rank accepted: an adapter above it is refused at
    load time, so it must cover every spec's `lora_r`."""

    max_loras: int = 4
    max_cpu_loras: int = 8
    max_lora_rank: int = 16

    def args(self) -> list[str]:
        return ["--enable-lora", "--max-loras", str(self.max_loras), "--max-cpu-loras", str(self.max_cpu_loras),
                "--max-lora-rank", str(self.max_lora_rank)]


class ServerStartError(RuntimeError):
    """The server did not become ready; the message carries the cause and the log's last lines."""

    def __init__(self, message: str, cause: str, log_tail: str, log_file: Path) -> None:
        super().__init__(message)
        self.cause = cause
        self.log_tail = log_tail
        self.log_file = log_file


def vllm_python(settings: ServerSettings) -> Path:
    if settings.python:
        return Path(settings.python)
    from aiplat.stack import VLLM_SETUP, vllm_env

    env = vllm_env()
    if not env.ready:
        raise ServerStartError(
            f"no vLLM environment at {env.path}; build it with {VLLM_SETUP}",
            cause="vLLM environment missing", log_tail="", log_file=Path(),
        )
    return env.python


def server_argv(python: Path, model_dir: Path, served_model_name: str, port: int, settings: ServerSettings) -> list[str]:
    argv = [
        str(python), "-m", SERVER_MODULE,
        "--model", str(model_dir),
        "--served-model-name", served_model_name,
        "--host", HOST,
        "--port", str(port),
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--max-num-seqs", str(settings.max_num_seqs),
        "--max-num-queued-reqs", str(settings.max_num_queued_reqs),
        "--disable-uvicorn-access-log",
    ]
    if settings.enforce_eager:
        argv.append("--enforce-eager")
    if settings.lora is not None:
        argv += settings.lora.args()
    return argv + list(settings.extra_args)


def server_env(settings: ServerSettings) -> dict[str, str]:
    cache = state_dir() / "cache" / "vllm"
    cache.mkdir(parents=True, exist_ok=True)
    # An explicit environment, not the parent's (see aiplat.config.child_env).
    return child_env({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib),
        # vLLM's default ("auto") pins every server's model worker to the same core (core 0 on a
        # 2-core machine, "core ids=[0]" in each server's log), so the old and new server of a
        # canary, or two models, all compute on one core while the other idles. The worker runs
        # one thread either way; unbound, the OS spreads the servers over the cores.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CACHE_ROOT": str(cache),
        "PYTHONUNBUFFERED": "1",
        # /v1/load_lora_adapter and /v1/unload_lora_adapter exist only with this set. They are
        # behind the server's API key like every /v1 route; the platform verifies each adapter's
        # signature and approval before it asks vLLM to load it.
        **({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if settings.lora is not None else {}),
    })


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- HTTP --------------------------------------------------------------------------------------


def json_headers(api_key: str | None = None) -> dict[str, str]:
    """A JSON request's headers, with the server's API key when it has one."""
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def post_json(url: str, body: dict, timeout: float, api_key: str | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=json_headers(api_key), method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def one_token_completion(url: str, served_model_name: str, timeout: float = 30.0,
                         api_key: str | None = None) -> str | None:
    """None when the server completed one token for a real prompt, else what went wrong."""
    try:
        answer = post_json(
            f"{url}/v1/completions",
            {"model": served_model_name, "prompt": READY_PROMPT, "max_tokens": 1, "temperature": 0},
            timeout, api_key,
        )
    except urllib.error.HTTPError as e:
        return f"completion answered HTTP {e.code}: {e.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"completion failed: {e}"
    choices = answer.get("choices") or []
    if not choices or answer.get("usage", {}).get("completion_tokens", 0) < 1:
        return f"completion returned no token: {json.dumps(answer)[:300]}"
    return None


def health_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- processes ---------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen] = {}  # reaped when stopped, so no zombies stay behind


def process_of(record: ServerRecord) -> psutil.Process | None:
    """The recorded server process if it still runs (a reused PID is not it)."""
    child = _CHILDREN.get(record.pid)
    if child is not None and child.poll() is not None:
        return None
    proc = recorded_process(record.pid, record.create_time)
    try:
        return None if proc is None or proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.NoSuchProcess:
        return None


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return False


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after `grace` seconds."""
    if pid <= 0:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            _reap(pid)
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _group_alive(pid):
                return
            time.sleep(0.2)
    _reap(pid)


def stop_server(record: ServerRecord, grace: float = 15.0) -> None:
    # Linux does not reuse a PID while it is still a process group id, so while any member of
    # the group lives, signalling it can only reach our server's processes.
    if process_of(record) is not None or _group_alive(record.pid):
        stop_group(record.pid, grace)
    Path(record.pid_file).unlink(missing_ok=True)


def log_tail(log_file: Path, offset: int = 0, lines: int = 25) -> str:
    try:
        with log_file.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _cause_from_log(tail: str) -> str | None:
    """The last line that names an error, e.g. `ValueError: ...` from a bad model config."""
    for line in reversed(tail.splitlines()):
        text = line.strip()
        if ("Error" in text or "Exception" in text) and ":" in text and not text.startswith(("File ", "Traceback")):
            return text[-400:]
    return None


def server_paths(endpoint: str, version: str, port: int) -> tuple[Path, Path]:
    """PID file under run/serving/ and log under logs/serving/, one per endpoint, version and port."""
    paths = local_paths()
    stem = f"{endpoint}-v{version}-{port}".replace("/", "_")
    return paths.run / "serving" / f"{stem}.pid", paths.logs / "serving" / f"{stem}.log"


def start_server(
    endpoint: str,
    model_dir: Path,
    model_version: str,
    served_model_name: str,
    settings: ServerSettings,
    progress: Progress | None = None,
    port: int | None = None,
) -> ServerRecord:
    """Start a server and wait until it completes a token; on failure nothing of it stays running."""
    say = progress or (lambda _m: None)
    python = vllm_python(settings)
    port = port or free_port(HOST)
    url = f"http://{HOST}:{port}"
    pid_file, log_file = server_paths(endpoint, model_version, port)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = server_argv(python, Path(model_dir), served_model_name, port, settings)

    with log_file.open("ab") as log:
        log.write(f"\n=== aiplat serving: {endpoint} version {model_version} on {url} at {_now()} ===\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            argv, env=server_env(settings), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=default_signals,
        )
    _CHILDREN[proc.pid] = proc
    try:
        create_time = start_time(proc.pid)
    except psutil.NoSuchProcess:
        create_time = 0.0
    started_at = _now()
    pid_file.write_text(json.dumps({"pid": proc.pid, "create_time": create_time, "port": port,
                                    "started_at": started_at, "argv": argv}, indent=2))
    record = ServerRecord(
        url=url, port=port, pid=proc.pid, create_time=create_time, model_version=str(model_version),
        model_path=str(model_dir), served_model_name=served_model_name, started_at=started_at,
        log_file=str(log_file), pid_file=str(pid_file), health="starting", checked_at=started_at,
    )

    cause = _wait_ready(record, proc, settings.start_timeout_s, say)
    if cause is None:
        say(f"{endpoint} version {model_version} is ready on {url}")
        return replace(record, health="ready", checked_at=_now())

    stop_group(proc.pid, grace=5.0)
    pid_file.unlink(missing_ok=True)
    tail = log_tail(log_file, offset)
    from_log = _cause_from_log(tail)
    detail = f"{cause}" + (f": {from_log}" if from_log else "")
    raise ServerStartError(
        f"vLLM server for endpoint {endpoint!r} (model version {model_version}, {model_dir}) {detail}\n"
        f"last lines of {log_file}:\n{tail}",
        cause=detail, log_tail=tail, log_file=log_file,
    )


# A start-up that keeps writing to its log is slow, not stuck: on a busy 2-core machine vLLM's
# start took over 5 min (measured under load 9-80 while a fine-tune ran beside it), on a quiet one
# 30-60 s. So `timeout` runs from the log's last growth, and the whole start-up gets at most
# START_CAP_FACTOR times that.
START_CAP_FACTOR = 3


def _log_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _wait_ready(record: ServerRecord, proc: subprocess.Popen, timeout: float, say: Progress) -> str | None:
    start = time.monotonic()
    last_report = 0.0
    log_size, last_growth = _log_size(record.log_file), start
    while True:
        code = proc.poll()
        if code is not None:
            return f"exited with code {code} during start-up"
        if health_ok(record.url):
            problem = one_token_completion(record.url, record.served_model_name)
            if problem is None:
                return None
        now = time.monotonic()
        elapsed = now - start
        if (size := _log_size(record.log_file)) != log_size:
            log_size, last_growth = size, now
        if now - last_growth >= timeout:
            return f"was not ready after {elapsed:.0f} s, its log silent for the last {timeout:.0f} s (timed out)"
        if elapsed >= timeout * START_CAP_FACTOR:
            return f"was not ready after {elapsed:.0f} s (timed out; the limit is {START_CAP_FACTOR}x {timeout:.0f} s)"
        if elapsed - last_report >= 10:
            say(f"waiting for vLLM ({record.served_model_name} version {record.model_version}) on {record.url}: {elapsed:.0f} s")
            last_report = elapsed
        time.sleep(0.5)


def check_health(record: ServerRecord) -> ServerRecord:
    """The record with `health` refreshed: down (process gone), unhealthy (no token), or ready."""
    if process_of(record) is None:
        health = "down"
    elif one_token_completion(record.url, record.served_model_name, timeout=20.0) is None:
        health = "ready"
    else:
        health = "unhealthy"
    return replace(record, health=health, checked_at=_now())
