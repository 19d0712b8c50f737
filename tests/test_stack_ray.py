"""`aiplat stack up ray`: a local Ray head with its dashboard, which large scans join instead of
starting a private instance, and which only a holder of the state folder's token can join."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aiplat import stack
from aiplat.config import child_env
from aiplat.net import free_port

pytestmark = pytest.mark.slow


def test_the_stack_runs_a_ray_head_that_scans_join_and_only_token_holders_can(state_dir: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.pii.config import dataset_config
    from aiplat.pii.engine import Scanner, scan_naive
    from aiplat.scale.ray_cluster import current, shutdown

    port, dashboard = free_port(), free_port()
    monkeypatch.setenv("AIPLAT_RAY_PORT", str(port))
    monkeypatch.setenv("AIPLAT_RAY_DASHBOARD_PORT", str(dashboard))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    shutdown()  # leave a private instance an earlier test of this process may have started
    try:
        [started] = stack.up([stack.RAY], timeout=300)
        assert started.state == "started" and started.url == f"http://127.0.0.1:{dashboard}"
        token = stack.ray_auth_token_path()
        assert token.is_file() and token.stat().st_mode & 0o777 == 0o600
        [running] = stack.status([stack.RAY])
        assert running.state == "running", running.message

        # A process that cannot read the state folder's token is refused by the head itself.
        intruder = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False)"],
            env=child_env({"RAY_AUTH_MODE": "token", "HOME": str(state_dir / "intruder-home")}),
            capture_output=True, text=True, timeout=180)
        assert intruder.returncode != 0 and "token" in intruder.stderr.lower(), intruder.stderr[-2000:]

        # A large scan joins the head (no private instance) and links its dashboard.
        config = dataset_config("tickets")
        texts = [f"Call Ann Lee on 0{i}7700 900 123 or write to ann.lee{i}@example.com" for i in range(40)]
        assert Scanner(config, workers=2, batch_size=8, min_parallel=1).scan(texts) == scan_naive(texts, config)
        joined = current()
        assert joined is not None and not joined.private and joined.address == f"127.0.0.1:{port}"
        assert joined.dashboard_url == f"http://127.0.0.1:{dashboard}"
        assert "the Ray cluster at 127.0.0.1" in joined.describe() and "dashboard http://127.0.0.1" in joined.describe()
    finally:
        shutdown()
        stack.down([stack.RAY])
    assert not stack.port_in_use(port)
