"""Every CLI command group resolves its resources through the runtime (platform_defs.resources):
under AIPLAT_ENV=prod with the prod settings missing, each one stops with an error naming a
variable it needs, never quietly falling back to the local runtime's services or keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiplat.cli import COMMAND_MODULES, cli

# Prod settings a command may need; none is set in these tests.
PROD_VARS = re.compile(r"\b(MLFLOW_TRACKING_URI|AIPLAT_[A-Z_]+|AWS_REGION|DAGSTER_HOME|DAGSTER_PG_[A-Z_]+)\b")

# One representative command per group that touches a runtime resource, and why groups are absent.
COMMANDS: dict[str, list[str]] = {
    "models": ["models", "list"],
    "promote": ["promote", "ticket-triage", "1"],
    "rollback": ["rollback", "ticket-triage"],
    # deploy authorizes and audits through the runtime's resources before anything starts
    "endpoints": ["endpoints", "deploy", "ticket-triage", "{folder}", "--version", "1"],
    "adapters": ["adapters", "list"],  # the name `endpoints` had while both kinds of serving existed
    "chat": ["chat", "ticket-triage", "hello"],
    "index": ["index", "status"],
    "features": ["features", "get", "--service", "customer_profile_v1", "--entity", "customer_id=c1"],
    "cost": ["cost", "report"],
    "audit": ["audit", "ticket-triage", "1"],
    "pii": ["pii", "scan", "{input}", "--output", "{output}"],
    "ingest": ["ingest", "{input}", "--dataset", "tickets"],
    "materialize": ["materialize"],
    "gateway": ["gateway", "serve", "--port", "9"],
    "k8s": ["k8s", "sweep", "--namespace", "team-ml", "--dry-run"],
    "accounts": ["accounts", "list"],
}
LOCAL_ONLY = {
    "stack": "starts the local runtime's own processes; prod services run in the cluster",
    "demo-data": "writes a synthetic corpus to a folder the caller names; no platform resource",
    "pipeline": "CI's client of a Dagster webserver named by --url (AIPLAT_DAGSTER_URL) and token; no runtime resource",
}


def test_every_command_group_is_covered() -> None:
    assert set(COMMAND_MODULES) == set(COMMANDS) | set(LOCAL_ONLY)


@pytest.mark.parametrize("group", sorted(COMMANDS))
def test_prod_command_names_the_missing_variable(group: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if PROD_VARS.fullmatch(n) and n != "AIPLAT_ENV"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    # A local state folder full of services must not be used instead.
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(tmp_path / "state"))
    src = tmp_path / "in.jsonl"
    src.write_text('{"ticket_id": "T1", "message": "hello"}\n')
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    argv = [a.format(input=src, output=tmp_path / "out.jsonl", folder=folder) for a in COMMANDS[group]]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code != 0, f"{argv} succeeded under prod without its settings:\n{result.output}"
    named = PROD_VARS.findall(result.output)
    assert named, f"{argv}: the error names no variable:\n{result.output}\n{result.exception!r}"
    assert not (tmp_path / "out.jsonl").exists()
