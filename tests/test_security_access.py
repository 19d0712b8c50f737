"""Access control for promote/rollback/deploy and the hash-chained audit log (real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiplat.security.access import (
    AccessDenied,
    Identity,
    authorize,
    current_identity,
    owner_team,
)
from aiplat.security.audit_log import AuditLog, AuditLogTampered


@pytest.fixture
def log(state_dir: Path) -> AuditLog:
    return AuditLog()


def test_wrong_team_is_refused_and_logged(log: AuditLog) -> None:
    who = Identity("mallory", "team:search", "credential")
    with pytest.raises(AccessDenied, match="team:search is neither the owner \\(team:ml\\)"):
        authorize("promote", "ticket-triage", "3", who, "team:ml", log)
    (entry,) = list(log.entries())
    assert entry["decision"] == "refused" and entry["actor"] == "mallory" and entry["action"] == "promote"
    assert log.verify().entries == 1


def test_owner_and_platform_are_allowed_and_logged(log: AuditLog) -> None:
    authorize("deploy", "ticket-triage", "3", Identity("alice", "team:ml", "credential"), "team:ml", log)
    authorize("rollback", "ticket-triage", "2", Identity("ops", "team:platform", "service"), "team:ml", log)
    entries = list(log.entries())
    assert [(e["actor"], e["decision"], e["reason"]) for e in entries] == [
        ("alice", "allowed", "owner team"), ("ops", "allowed", "platform team")]
    assert entries[1]["prev"] == entries[0]["hash"]


def test_no_team_and_unowned_model(log: AuditLog) -> None:
    with pytest.raises(AccessDenied, match="no team"):
        authorize("deploy", "m", "1", Identity("bob", None, "credential"), "team:ml", log)
    # A model without owner is the platform team's alone.
    with pytest.raises(AccessDenied):
        authorize("deploy", "m", "1", Identity("alice", "team:ml", "credential"), None, log)
    authorize("deploy", "m", "1", Identity("ops", "team:platform", "credential"), None, log)
    assert [e["decision"] for e in log.entries()] == ["refused", "refused", "allowed"]


def test_identity_from_a_credential_and_in_a_run(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.identity_helpers import act_as

    monkeypatch.setenv("AIPLAT_ACTOR", "someone-else")  # names nobody
    act_as(monkeypatch, "ml", "alice")
    assert current_identity() == Identity("alice", "team:ml", "credential")
    # In a run (tags given, even none): the code location's service account; tags are attribution.
    tagged = current_identity({"aiplat/actor": "sensor", "aiplat/team": "team:support"})
    assert tagged == Identity("svc:dagster", "team:platform", "service", requested_by="sensor")
    assert current_identity({"dagster/partition": "x"}).source == "service"


@pytest.mark.parametrize("edit", ["change", "delete", "reorder"])
def test_tampered_log_is_detected(log: AuditLog, edit: str) -> None:
    for team in ("team:ml", "team:platform", "team:ml"):
        authorize("deploy", "ticket-triage", "3", Identity("a", team, "credential"), "team:ml", log)
    assert log.verify().entries == 3
    lines = log.path.read_text().splitlines()
    if edit == "change":
        entry = json.loads(lines[0])
        entry["actor"] = "someone-else"
        lines[0] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        expected = "line 1 was altered"
    elif edit == "delete":
        del lines[1]
        expected = "line 2: its prev hash"
    else:
        lines[1], lines[2] = lines[2], lines[1]
        expected = "line 2: its prev hash"
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditLogTampered, match=expected):
        log.verify()


def test_an_owner_tag_edited_in_the_mlflow_ui_grants_nothing(tmp_path: Path) -> None:
    """Before: the registered model's `owner_team` tag, which any visitor of the MLflow UI can edit
    in place, decided the owner team and won over the spec. Now only the spec (reviewed files) does."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("tagged", tags={"owner_team": "team:ml"})
    client.set_registered_model_tag("tagged", "owner_team", "team:search")  # the attack, one REST call
    specs = {"tagged": "team:ml", "untagged": "search"}
    assert owner_team("tagged", specs) == "team:ml"
    assert owner_team("untagged", specs) == "team:search"
    assert owner_team("absent", specs) is None  # no spec: the platform team's alone
    eve = Identity("eve", "team:search", "credential")
    with pytest.raises(AccessDenied, match="neither the owner \\(team:ml\\)"):
        authorize("promote", "tagged", "1", eve, owner_team("tagged", specs), AuditLog(tmp_path / "audit.jsonl"))


def test_model_specs_come_from_the_shipped_folder_in_prod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A spec names its model's owner team, so in prod no variable may point the access checks at
    another folder (a CLI user could otherwise write a spec that names their own team)."""
    from aiplat.config import models_dir, project_root

    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("AIPLAT_ENV", "local")
    assert models_dir() == tmp_path.resolve()
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    assert models_dir() == project_root() / "models"
