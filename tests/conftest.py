"""Shared fixtures.

Tests that need a service on 127.0.0.1 (PostgreSQL, Redis) use `require_service`: on a laptop
without it they skip with the reason; under CI (CI=true) a missing service is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiplat.net import port_open

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name: str, host: str, port: int) -> None:
    if port_open(host, port, timeout=2.0):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message}; CI must provide it (a missing service is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private AIPLAT_STATE_DIR, so tests never touch the developer's .aiplat/."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(path))
    monkeypatch.setenv("AIPLAT_ENV", "local")
    return path


def built_vllm_env():
    """The developer's / CI's built vLLM venv (aiplat.stack.VllmEnv), looked up before a test sets a
    private state dir: skipped on a laptop without it, a failure in CI (which must build it)."""
    from aiplat.stack import VLLM_SETUP, vllm_env

    env = vllm_env()
    if not env.ready:
        message = f"no vLLM environment at {env.path}; build it with {VLLM_SETUP}"
        if IN_CI:
            pytest.fail(f"{message} (CI must build it)")
        pytest.skip(message)
    return env

