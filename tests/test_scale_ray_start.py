"""A private local Ray instance whose start misses Ray's fixed 30 s wait for its raylet (seen on a
loaded 2-core machine: every test of a module failed in its set-up) is started again, after what
the failed start left running is stopped (aiplat.scale.ray_cluster)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from aiplat.scale import ray_cluster

RAY_TIMEOUT = ("The current node timed out during startup. This could happen because some of the raylet "
               "failed to startup or the GCS has become overloaded.")  # Ray's own message (ray/_private/node.py)


@pytest.fixture
def private_ray(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIPLAT_ENV", "local")
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(tmp_path / "state"))  # no stack head to join
    ray_cluster.shutdown()
    yield
    ray_cluster.shutdown()


def _left_behind() -> subprocess.Popen:
    """A child process that looks like one of Ray's (its argv names a file under ray/)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "/site-packages/ray/core/raylet"])


def test_a_start_that_times_out_is_cleaned_up_and_tried_again(private_ray, monkeypatch, caplog) -> None:
    import ray

    # Fault injected: a raylet that registers later than Ray's fixed wait cannot be caused on
    # demand. The first ray.init starts a process and fails with Ray's own timeout; the next are real.
    real, calls, stray = ray.init, [], []

    def late_raylet(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            stray.append(_left_behind())
            raise Exception(RAY_TIMEOUT)
        return real(*args, **kwargs)

    monkeypatch.setattr(ray, "init", late_raylet)
    with caplog.at_level(logging.WARNING, logger=ray_cluster.__name__):
        joined = ray_cluster.RayCluster(num_cpus=1).connect()
    assert len(calls) == 2 and joined.private and joined.cpus == 1.0
    assert ray.is_initialized()
    stray[0].wait(timeout=15)  # what the failed start left running was stopped (it would sleep 120 s)
    assert "attempt 1 of 3" in caplog.text


def test_other_start_errors_are_not_retried_and_the_last_timeout_is_raised(private_ray, monkeypatch) -> None:
    import ray

    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs)
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(ValueError, match="num_cpus"):
        ray_cluster.RayCluster(num_cpus=1).connect()
    assert len(calls) == 1

    strays = []

    def always_late(*args, **kwargs):
        calls.append(kwargs)
        strays.append(_left_behind())
        raise Exception(RAY_TIMEOUT)

    monkeypatch.setattr(ray, "init", always_late)
    with pytest.raises(Exception, match="timed out during startup"):
        ray_cluster.RayCluster(num_cpus=1).connect()
    assert len(calls) == 1 + ray_cluster.START_ATTEMPTS and ray_cluster.current() is None
    # The last attempt's processes are left to the caller's error path (the process ends, or Ray's own
    # reaper); the earlier ones were stopped before each new try.
    for stopped in strays[:-1]:
        stopped.wait(timeout=15)  # each would sleep 120 s
    assert strays[-1].poll() is None
    strays[-1].kill()
    strays[-1].wait()
