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
                tags: dict | None = None, preexec=None) -> ChildRun:
    """Starts the child; `pause` = "module:Attr.path" whose first call stops the run at a known point
    (until killed when `hold`, else until `ChildRun.let_go`)."""
    work.mkdir(parents=True, exist_ok=True)
    n = len(list(work.glob("spec-*.json")))
    marker, release, log = work / f"marker-{n}", work / f"release-{n}", work / f"child-{n}.log"
    spec: dict[str, Any] = {"job": job, "assets": assets, "partition": partition, "run_config": run_config,
                            "resources": resources, "tags": tags}
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
