"""A recorded PID is recognised as the process that was recorded, whatever the wall clock does
(aiplat.processes), and a later process that reused the PID is not taken for it."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from aiplat.processes import recorded_process, start_time
from aiplat.serving.registry import ServerRecord
from aiplat.serving.server import process_of


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _record(pid: int, started: float) -> ServerRecord:
    return ServerRecord(url="http://127.0.0.1:9", port=9, pid=pid, create_time=started, model_version="1",
                        model_path="", served_model_name="m", started_at="", log_file="", pid_file="")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="boot-relative start times are read from /proc")
def test_a_live_server_is_still_itself_after_the_clock_moves(child, monkeypatch: pytest.MonkeyPatch) -> None:
    started = start_time(child.pid)
    assert started == start_time(child.pid) and 0 < started < time.monotonic() + 1
    assert recorded_process(child.pid, started).pid == child.pid
    assert process_of(_record(child.pid, started)) is not None
    # Fault that cannot be caused in a test (the machine's clock is not ours to step): Linux
    # derives the boot time psutil adds to every start time from the wall clock (whole seconds), so
    # a clock step moves psutil's create_time by as much. The recorded start must not move.
    import psutil._pslinux as pslinux

    real = pslinux.boot_time
    epoch = psutil.Process(child.pid).create_time()
    monkeypatch.setattr(pslinux, "boot_time", lambda: real() + 2.0)
    assert psutil.Process(child.pid).create_time() - epoch >= 1.99  # the clock stepped ...
    assert process_of(_record(child.pid, started)) is not None  # ... and the server is still itself


def test_a_reused_pid_or_a_gone_process_is_not_the_recorded_one(child) -> None:
    started = start_time(child.pid)
    assert recorded_process(child.pid, started + 0.5) is None  # another process under the same PID
    assert recorded_process(0, started) is None
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_start = start_time(done.pid)
    done.wait()
    assert recorded_process(done.pid, gone_start) is None
    with pytest.raises(psutil.NoSuchProcess):
        start_time(done.pid)


def test_a_record_written_before_holds_the_epoch_time_and_is_still_recognised(child) -> None:
    epoch = psutil.Process(child.pid).create_time()
    assert recorded_process(child.pid, epoch).pid == child.pid
    assert recorded_process(child.pid, epoch + 5) is None
