"""Shared machinery of the fault drills (tests/test_fault_drills_*.py).

A drill runs a real step of the platform in a child process (tests/fault_drill_child.py), waits for
the moment it wants (a marker the child's pause hook writes), causes the fault for real (SIGKILL of
the run's process, a dependency's server stopped, a full disk), then checks what is left.

Recovery times are measured and printed (`DRILL ...` lines, run pytest with -s to see them) and
written to $AIPLAT_DRILL_FIGURES when set; they are figures for the README, never assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 240


def child_env(state_dir: Path, dagster_home: Path, **extra: str) -> dict[str, str]:
    """An explicit environment for the run's process: nothing of the test's own is passed on."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(REPO),
        "AIPLAT_ENV": "local",
        "AIPLAT_STATE_DIR": str(state_dir),
        "DAGSTER_HOME": str(dagster_home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_TRACKING_URI": "",
    }
    env.update(extra)
    return env


@dataclass
class ChildRun:
    """A run of the real Definitions in its own process."""

    proc: subprocess.Popen
    marker: Path
    release: Path
    log: Path
    started: float = field(default_factory=time.monotonic)

    def wait_marker(self, timeout: float = 180) -> float:
        """Blocks until the pause hook fired; returns when (monotonic). Fails if the run ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.marker.exists():
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {self.proc.returncode}) before the drill point:\n{self.tail()}")
            time.sleep(0.05)
        self.kill9()
        raise AssertionError(f"the drill point was not reached in {timeout}s:\n{self.tail()}")

    def kill9(self) -> int:
        """SIGKILL, the way an OOM killer or a lost node ends a run: no handler, no cleanup."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=30)

    def let_go(self) -> None:
        self.release.write_text("go")

    def result(self, timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"the run did not end in {timeout}s:\n{self.tail()}") from None
        lines = [l for l in self.log.read_text(errors="replace").splitlines() if l.startswith("{\"success\"")]
        if not lines:
            raise AssertionError(f"the run left no summary (rc {self.proc.returncode}):\n{self.tail()}")
        return json.loads(lines[-1])

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def start_child(work: Path, env: dict[str, str], *, job: str | None = None, assets: list[str] | None = None,
                partition: str | None = None, run_config: dict | None = None, pause: str | None = None,
                pause_when: str = "before", hold: bool = True, resources: dict | None = None,
                tags: dict | None = None, preexec=None, cli: list[str] | None = None) -> ChildRun:
    """Starts the child; `pause` = "module:Attr.path" whose first call stops the run at a known point
    (until killed when `hold`, else until `ChildRun.let_go`)."""
    work.mkdir(parents=True, exist_ok=True)
    n = len(list(work.glob("spec-*.json")))
    marker, release, log = work / f"marker-{n}", work / f"release-{n}", work / f"child-{n}.log"
    spec: dict[str, Any] = {"job": job, "assets": assets, "partition": partition, "run_config": run_config,
                            "resources": resources, "tags": tags, "cli": cli}
    if pause:
        spec["pause"] = {"target": pause, "marker": str(marker), "when": pause_when,
                         "release": None if hold else str(release)}
    spec_path = work / f"spec-{n}.json"
    spec_path.write_text(json.dumps(spec))
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_drill_child", str(spec_path)], cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
    out.close()
    return ChildRun(proc, marker, release, log)


def report(drill: str, outcome: str, recovery_s: float | None) -> None:
    """Prints (and appends to $AIPLAT_DRILL_FIGURES) one figure for the README's table."""
    figure = f"{recovery_s:.1f}" if recovery_s is not None else "-"
    line = f"DRILL {drill} | {outcome} | recovery {figure} s"
    print(line)
    target = os.environ.get("AIPLAT_DRILL_FIGURES")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps({"drill": drill, "outcome": outcome, "recovery_s": recovery_s}) + "\n")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PrivateServer:
    """A dependency's server of the drill's own (never the shared one others use), stoppable and
    restartable on the same port with the same data."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, user: str | None = None,
                 ready_timeout: float = 60):
        self.name, self.argv, self.port, self.log, self.user = name, argv, port, log, user
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrivateServer":
        from aiplat.net import wait_for_port

        preexec = None
        if self.user:
            import pwd

            entry = pwd.getpwnam(self.user)

            def preexec():
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec,
                                         start_new_session=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if not wait_for_port("127.0.0.1", self.port, timeout=self.ready_timeout):
            self.kill()
            raise AssertionError(f"{self.name} did not open port {self.port}:\n{self.log.read_text()[-2000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL to the server's whole process group: it is down, with no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __enter__(self) -> "PrivateServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def _missing(message: str) -> None:
    """A laptop without the server binary skips; CI, which installs them, fails."""
    import pytest

    from tests.conftest import IN_CI

    if IN_CI:
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(message)


def private_redis(folder: Path) -> PrivateServer:
    """redis-server on a free port, append-only file fsynced per write (as a production Redis that
    must keep the online store across a restart)."""
    import shutil

    from aiplat.net import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"]
    return PrivateServer("redis", argv, port, folder / "redis.log")


def private_postgres(folder: Path) -> PrivateServer:
    """A PostgreSQL cluster of its own (initdb into a fresh folder, trust auth) on a free port. As
    root, the server runs as the `postgres` system user (PostgreSQL refuses to run as root)."""
    import glob
    import pwd
    import shutil

    from aiplat.net import free_port

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        _missing("no PostgreSQL server binaries under /usr/lib/postgresql")
    bindir = Path(bins[-1]).parent
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if user:
        shutil.chown(folder, entry.pw_uid, entry.pw_gid)

    def as_user():
        if user:
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True, preexec_fn=as_user, env={"PATH": os.environ.get("PATH", "")})
    port = free_port()
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(folder),
            "-c", "fsync=on"]
    log = folder / "postgres.log"
    log.touch()
    if user:
        shutil.chown(log, entry.pw_uid, entry.pw_gid)
    return PrivateServer("postgres", argv, port, log, user=user)


def wait_for_text(path: Path, text: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Until `text` appears in the file (a run's log); returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {text!r} appeared:\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout}s")


def landed_batch(instance, batch: str) -> None:
    """A redacted batch file a drill wrote into the lake, recorded as the pii stage records it: a partition of
    ticket_batches and a materialization of redacted_tickets (the feature tables fold in the
    materialized batches)."""
    import dagster as dg

    instance.add_dynamic_partitions("ticket_batches", [batch])
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="redacted_tickets", partition=batch))
