"""Telling a recorded process from a later one that reused its PID.

A PID file (the stack's services, the vLLM servers) records a PID and when that process started.
psutil's create_time() is an epoch time: the process's start in clock ticks after boot plus the
boot time, which Linux derives from the wall clock at every read (/proc/stat `btime`, whole
seconds). A clock adjustment, or its fraction of a second crossing a whole second, moves that sum
by a second or more: in a CI run a live vLLM server was taken for a dead one half an hour after it
started, and the backend tried to start another. The start in ticks after boot never moves, so on
Linux that is what is recorded and compared.
"""

from __future__ import annotations

import os
import sys

import psutil

# Records written before start_time() existed hold psutil's epoch time (any value this large).
_EPOCH_RECORD = 1e9


def start_time(pid: int) -> float:
    """When process `pid` started: seconds after boot on Linux (from /proc, unaffected by the
    clock), else psutil's epoch create time. Raises psutil.NoSuchProcess when it is gone."""
    if not sys.platform.startswith("linux"):
        return psutil.Process(pid).create_time()
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        raise psutil.NoSuchProcess(pid) from None
    # Fields after "pid (comm) "; comm may hold spaces and parentheses, so split after its last ")".
    after_comm = data[data.rindex(b")") + 2:].split()
    return int(after_comm[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime


def recorded_process(pid: int, started: float) -> psutil.Process | None:
    """Process `pid` if it is the one recorded with start_time() `started`, else None (gone, or
    its PID now belongs to another process)."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if started > _EPOCH_RECORD:
            same = abs(proc.create_time() - started) <= 1.0
        else:
            same = abs(start_time(pid) - started) < 0.05  # the same clock ticks: equal
    except psutil.NoSuchProcess:
        return None
    return proc if same else None
