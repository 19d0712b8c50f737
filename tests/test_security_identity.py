"""Identity is verified, never declared: the attacks of issue 18 as tests.

A hostile insider with CLI and UI access sets AIPLAT_TEAM / AIPLAT_ACTOR, run tags or a made-up
token; none of it may grant a right. Rights come from a credential in the platform's account store
(aiplat.security.identity). Real files and the real CLI; no servers are needed (every privileged
case here is decided before a vLLM process would start)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.security.access import AccessDenied, authorize, current_identity
from aiplat.security.audit_log import AuditLog
from aiplat.security.identity import (
    PLATFORM_OPERATOR,
    SERVICE_ACCOUNT,
    CredentialError,
    account_store,
    caller_identity,
    ensure_local_accounts,
    init_local_accounts,
    token_file,
)
from aiplat.serving.adapter_routes import AdapterRoutes
from tests.identity_helpers import act_as, token_for
from tests.test_endpoints_cli import ENDPOINT, no_mlflow, switched  # noqa: F401
from tests.test_serving_signature import routes, signed_adapter  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_mlflow")


def _stop():
    return CliRunner().invoke(cli, ["endpoints", "stop", ENDPOINT])


@pytest.mark.parametrize("claimed", ["team:platform", "ml"])
def test_a_team_in_the_environment_grants_nothing(state_dir: Path, switched: AdapterRoutes, claimed: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`AIPLAT_TEAM=team:platform AIPLAT_ACTOR=anyone aiplat ...` was allowed and audited as "anyone"."""
    monkeypatch.delenv("AIPLAT_TOKEN", raising=False)
    monkeypatch.delenv("AIPLAT_TOKEN_FILE", raising=False)
    monkeypatch.setenv("AIPLAT_TEAM", claimed)
    monkeypatch.setenv("AIPLAT_ACTOR", "anyone")
    before = switched.path.read_bytes()
    result = _stop()
    assert result.exit_code == 1, result.output
    assert "access denied" in result.output and "no credential" in result.output
    assert switched.path.read_bytes() == before and ENDPOINT in switched.all()
    (entry,) = AuditLog().entries()
    assert entry["decision"] == "refused" and entry["team"] is None and entry["actor"] != "anyone"
    assert entry["identity_source"] == "none"


@pytest.mark.parametrize("token", ["aiplat_madeup", "", "team:platform"])
def test_a_forged_or_revoked_token_is_refused(state_dir: Path, switched: AdapterRoutes, token: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if not token:  # a real platform token, then revoked
        token = token_for("team:platform", "leaver")
        assert account_store().revoke("leaver")
    monkeypatch.setenv("AIPLAT_TOKEN", token)
    before = switched.path.read_bytes()
    result = _stop()
    assert result.exit_code == 1 and "not known to the platform" in result.output, result.output
    assert switched.path.read_bytes() == before
    (entry,) = AuditLog().entries()
    assert entry["decision"] == "refused" and entry["identity_source"] == "unknown-credential"


def test_another_teams_token_is_refused_and_the_owners_is_allowed(state_dir: Path, switched: AdapterRoutes,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    act_as(monkeypatch, "team:search", "mallory")
    monkeypatch.setenv("AIPLAT_TEAM", "team:ml")  # what she would like to be: ignored
    result = _stop()
    assert result.exit_code == 1 and "mallory (team:search) may not stop ticket-triage" in result.output
    act_as(monkeypatch, "team:ml", "alice")
    result = _stop()
    assert result.exit_code == 0, result.output
    assert ENDPOINT not in switched.all()
    entries = list(AuditLog().entries())
    assert [(e["actor"], e.get("decision")) for e in entries] == [
        ("mallory", "refused"), ("alice", "allowed"), ("alice", None)]
    assert all(e.get("identity_source", "credential") == "credential" for e in entries)


def test_a_token_file_is_a_credential_too(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPLAT_TOKEN", raising=False)
    ensure_local_accounts()
    monkeypatch.setenv("AIPLAT_TOKEN_FILE", str(token_file(PLATFORM_OPERATOR)))
    who = caller_identity()
    assert (who.actor, who.team, who.source) == (PLATFORM_OPERATOR, "team:platform", "credential")
    monkeypatch.setenv("AIPLAT_TOKEN_FILE", str(tmp_path / "missing.token"))
    assert caller_identity().source == "unknown-credential"


def test_run_tags_name_the_launcher_but_the_run_acts_as_the_service_account(state_dir: Path) -> None:
    """Any UI user sets `aiplat/team`; a run's rights are the code location's service account's,
    bounded by the graph's gates, and the tags are kept as attribution only."""
    who = current_identity({"aiplat/team": "team:platform", "aiplat/actor": "mallory"})
    assert (who.actor, who.team, who.source, who.requested_by) == (SERVICE_ACCOUNT, "team:platform", "service", "mallory")
    log = AuditLog()
    authorize("rollback", "ticket-triage", "2", who, "team:ml", log)
    (entry,) = log.entries()
    assert entry["actor"] == SERVICE_ACCOUNT and entry["requested_by"] == "mallory"


def test_a_replaced_service_token_file_grants_nothing(state_dir: Path) -> None:
    ensure_local_accounts()
    token_file(SERVICE_ACCOUNT).write_text("aiplat_not-the-service-token\n")
    who = current_identity({})
    assert who.team is None and who.source == "unknown-credential"
    with pytest.raises(AccessDenied, match="not known to the platform"):
        authorize("deploy", "ticket-triage", "2", who, "team:ml", AuditLog())


def test_the_store_keeps_digests_only_and_files_are_private(state_dir: Path) -> None:
    written = init_local_accounts(["team:ml", "support"])
    assert set(written) == {SERVICE_ACCOUNT, PLATFORM_OPERATOR, "ml", "support"}
    store = account_store()
    text = store.path.read_text()
    for name, path in written.items():
        token = path.read_text().strip()
        assert token not in text  # only its SHA-256 is stored
        assert store.verify(token).name == name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(written["ml"].parent).st_mode) == 0o700
    # A second init keeps every token (the token files stay valid).
    again = {name: path.read_text() for name, path in init_local_accounts(["team:ml", "support"]).items()}
    assert again == {name: path.read_text() for name, path in written.items()}
    with pytest.raises(CredentialError):
        store.verify("aiplat_" + "x" * 43)


def test_prod_needs_its_account_store(monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> None:
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    monkeypatch.delenv("AIPLAT_ACCOUNTS_FILE", raising=False)
    with pytest.raises(Exception, match="AIPLAT_ACCOUNTS_FILE"):
        account_store()
    with pytest.raises(RuntimeError, match="locally only"):
        init_local_accounts([])


def test_only_the_platform_team_adds_and_revokes_accounts(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    act_as(monkeypatch, "team:ml", "alice")
    refused = runner.invoke(cli, ["accounts", "add", "alice-admin", "--team", "platform"])
    assert refused.exit_code == 1 and "access denied: alice (team:ml) may not accounts" in refused.output
    assert account_store().get("alice-admin") is None

    act_as(monkeypatch, "team:platform", "ops")
    added = runner.invoke(cli, ["accounts", "add", "carol", "--team", "support"])
    assert added.exit_code == 0, added.output
    token = added.output.strip().splitlines()[-1]
    monkeypatch.setenv("AIPLAT_TOKEN", token)
    assert runner.invoke(cli, ["accounts", "whoami"]).output.strip() == "carol (team:support)"
    listed = runner.invoke(cli, ["accounts", "list"]).output
    assert "carol" in listed and token not in listed

    act_as(monkeypatch, "team:platform", "ops")
    assert runner.invoke(cli, ["accounts", "revoke", "carol"]).exit_code == 0
    monkeypatch.setenv("AIPLAT_TOKEN", token)
    gone = runner.invoke(cli, ["accounts", "whoami"])
    assert gone.exit_code == 1 and "not known to the platform" in gone.output
    events = [(e["event"], e.get("decision"), e["actor"]) for e in AuditLog().entries()]
    assert events == [("access", "refused", "alice"), ("access", "allowed", "ops"), ("account added", None, "ops"),
                      ("access", "allowed", "ops"), ("account revoked", None, "ops")]
    AuditLog().verify()


def test_init_makes_a_token_file_per_spec_owner(state_dir: Path) -> None:
    from aiplat.specs import spec_owners

    result = CliRunner().invoke(cli, ["accounts", "init"])
    assert result.exit_code == 0, result.output
    teams = {t.removeprefix("team:") for t in spec_owners().values()} - {"platform"}
    assert teams and all(token_file(t).is_file() for t in teams)
    for team in teams:
        assert account_store().verify(token_file(team).read_text()).team == f"team:{team}"


def test_processes_starting_together_on_a_fresh_state_folder_all_verify(state_dir: Path) -> None:
    """A run's steps or test workers may each be the first to need the local accounts; the one lock
    around check-and-write leaves a token file that matches the store for every one of them."""
    import subprocess
    import sys

    from aiplat.config import project_root

    code = ("from aiplat.security.access import current_identity; "
            "who = current_identity({}); print(who.source, who.team)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(project_root()),
           "AIPLAT_ENV": "local", "AIPLAT_STATE_DIR": str(state_dir)}
    children = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(4)]
    outputs = [child.communicate(timeout=120)[0].strip() for child in children]
    assert outputs == ["service team:platform"] * 4
    assert [a.name for a in account_store().accounts()].count(SERVICE_ACCOUNT) == 1
