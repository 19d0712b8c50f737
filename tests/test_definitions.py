"""The Definitions as a whole: they load, validate with Dagster's own command, and every asset
carries what the audit trail and the UI need (group, owner team, kinds, description)."""

import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from aiplat.config import project_root
from platform_defs.definitions import build_definitions

ROOT = project_root()


def test_dagster_definitions_validate(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {"PATH": str(Path(sys.executable).parent), "DAGSTER_HOME": str(home), "AIPLAT_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "All code locations passed validation" in out.stdout + out.stderr


def test_every_asset_has_group_owner_kinds_and_description(state_dir):
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    problems = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        if not node.group_name or node.group_name == "default":
            problems.append(f"{name}: no group")
        if not any(o.startswith("team:") for o in node.owners):
            problems.append(f"{name}: no team owner")
        if not node.kinds:
            problems.append(f"{name}: no kinds")
        if not (node.description or "").strip():
            problems.append(f"{name}: no description")
    assert problems == []


def test_local_and_prod_define_the_same_resource_keys(state_dir, monkeypatch):
    local = set(build_definitions().resources)
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    prod = set(build_definitions().resources)
    assert local == prod


ENV_READ = re.compile(r"os\.getenv|os\.environ(\.get|\[)")


@pytest.mark.parametrize("package", ["assets", "resources", "sensors", "platform_defs", "aiplat", "feature_repo"])
def test_the_environment_is_read_in_one_place(package):
    """Runtime choices come from aiplat/config.py; nothing else reads the environment."""
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        if path == ROOT / "aiplat" / "config.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if ENV_READ.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_local_instance_config_is_valid(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "platform_defs" / "dagster.local.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_coordinator is not None


# What the platform relies on: every sensor and schedule starts running on a fresh instance.
# (A sensor meant to start stopped would be listed here with the reason.)
EXPECTED_STOPPED: dict[str, str] = {}


def test_every_sensor_and_schedule_starts_running():
    from platform_defs.definitions import build_definitions

    defs = build_definitions()
    repo = defs.get_repository_def()
    states = {s.name: s.default_status for s in repo.sensor_defs} | {s.name: s.default_status for s in repo.schedule_defs}
    assert "kb_reindex_sensor" in states and "landing_zone_sensor" in states
    stopped = {name for name, status in states.items() if status.value != "RUNNING"}
    assert stopped == set(EXPECTED_STOPPED), f"not running by default: {sorted(stopped - set(EXPECTED_STOPPED))}"


def test_local_runs_keep_every_step_in_the_run_process_and_prod_keeps_the_default() -> None:
    """A multiprocess step reloads the whole code location; locally that costs more than it buys."""
    from platform_defs.definitions import build_definitions, executor_for

    assert executor_for("local") is dg.in_process_executor
    assert executor_for("prod") is None
    assert build_definitions().resolve_job_def("refresh_downstream").executor_def.name == "in_process"


def test_processes_of_the_platform_and_their_children_wait_passively_in_openmp() -> None:
    """A fresh interpreter importing the platform (a run worker, the CLI, a Ray worker's driver)
    has OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP, and child_env hands it to the servers it
    starts; an operator's own value is kept."""
    import subprocess
    import sys

    from aiplat.config import child_env

    probe = "import aiplat, os, torch; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads() > 0)"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    fresh = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert fresh.stdout.split() == ["PASSIVE", "True"], fresh.stderr
    kept = subprocess.run([sys.executable, "-c", probe], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, timeout=120)
    assert kept.stdout.split()[0] == "ACTIVE"
    assert child_env()["OMP_WAIT_POLICY"] == "PASSIVE"
