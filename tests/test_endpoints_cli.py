"""`aiplat endpoints deploy`, `rollback` and `stop` guard like the `served_endpoint` asset: the caller
must be the model's owner team or the platform team, and the adapter must verify against its
signature, both before the serving backend is asked; every decision is in the runtime's audit log
(prod: the PostgreSQL table at AIPLAT_AUDIT_DATABASE_URL).

No vLLM is needed: every case here is refused before a server would start, and a check that let an
adapter through would reach the backend, leaving a PID file and a log under the state dir or
changing the routes (the assertions catch that). The allowed paths, which do load adapters on a
real server, are in tests/test_serving_adapters_live.py.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.security.audit_log import AuditLog, PostgresAuditLog
from tests.audit_helpers import private_audit_database
from tests.identity_helpers import act_as
from aiplat.security.approval import dev_approval_key_pair
from aiplat.security.signing import dev_key_pair
from aiplat.serving.adapter_routes import AdapterRoutes
from tests.test_serving_signature import (  # noqa: F401 - fixtures
    BASE,
    ENDPOINT,
    _nothing_started,
    _tamper,
    routes,
    signed_adapter,
)

pytestmark = pytest.mark.usefixtures("no_mlflow")


@pytest.fixture
def no_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Locally the owner comes from configuration unless an MLflow is named; the developer's
    MLFLOW_TRACKING_URI must not make these tests depend on a server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _deploy(folder: Path, *extra: str):
    return CliRunner().invoke(cli, ["endpoints", "deploy", ENDPOINT, str(folder), "--version", "2", *extra])


def _rollback(folder: Path):
    return CliRunner().invoke(cli, ["endpoints", "rollback", ENDPOINT, str(folder), "--version", "1"])


def _events(log: AuditLog | None = None) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("decision")) for e in (log or AuditLog()).entries()]


@pytest.mark.parametrize("how", ["flipped byte", "added file", "missing file", "unsigned"])
def test_deploy_refuses_a_tampered_adapter_and_the_live_endpoint_stays(
        state_dir: Path, signed_adapter: Path, routes: AdapterRoutes, how: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    act_as(monkeypatch, "platform")
    expected = _tamper(signed_adapter, how)
    before = routes.path.read_bytes()
    result = _deploy(signed_adapter)
    assert result.exit_code == 1, result.output
    assert expected in result.output and f"endpoint {ENDPOINT!r} is unchanged" in result.output
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    entries = list(AuditLog().entries())
    assert _events() == [("access", "allowed"), ("deploy refused: signature", None)]
    assert entries[0]["action"] == "deploy" and entries[0]["endpoint"] == ENDPOINT and entries[0]["version"] == "2"
    assert expected in entries[1]["reason"] and entries[1]["team"] == "team:platform"
    AuditLog().verify()


@pytest.mark.parametrize("team, reason", [("search", "team:search is neither the owner (team:ml) nor team:platform"),
                                          ("", "no credential")])
def test_deploy_refuses_a_team_that_does_not_own_the_model(state_dir: Path, signed_adapter: Path,
                                                           routes: AdapterRoutes, team: str, reason: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if team:
        act_as(monkeypatch, team, "eve")
    else:  # no credential at all: whatever the environment claims
        monkeypatch.delenv("AIPLAT_TOKEN", raising=False)
        monkeypatch.setenv("AIPLAT_TEAM", "team:ml")
        monkeypatch.setenv("AIPLAT_ACTOR", "eve")
    before = routes.path.read_bytes()
    result = _deploy(signed_adapter)  # intact: only the team stops it
    assert result.exit_code == 1
    assert f"({'team:' + team if team else 'no team'}) may not deploy ticket-triage version 2" in result.output
    assert "access denied: " in result.output and reason in result.output
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    (entry,) = AuditLog().entries()
    assert entry["decision"] == "refused" and entry["action"] == "deploy" and (entry["actor"] == "eve") == bool(team)
    assert entry["owner_team"] == "team:ml" and entry["endpoint"] == ENDPOINT
    assert entry["identity_source"] == ("credential" if team else "none")


def test_model_name_decides_the_owner(state_dir: Path, signed_adapter: Path, routes: AdapterRoutes,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner team of ticket-triage may not deploy it under a model name nobody owns: such a
    model is the platform team's alone."""
    act_as(monkeypatch, "ml")
    result = _deploy(signed_adapter, "--model-name", "unowned-model", "--base", BASE)
    assert result.exit_code == 1 and "may not deploy unowned-model version 2" in result.output
    (entry,) = AuditLog().entries()
    assert entry["model"] == "unowned-model" and entry["owner_team"] is None


@pytest.fixture
def switched(routes: AdapterRoutes) -> AdapterRoutes:
    """The endpoint switched from version 1 (the signed adapter) to version 2: rollback returns to 1."""
    routes.set(ENDPOINT, "http://127.0.0.1:9", {f"{ENDPOINT}@2": 100.0})
    return routes


@pytest.mark.parametrize("how", ["flipped byte", "added file"])
def test_rollback_refuses_a_tampered_previous_adapter(state_dir: Path, signed_adapter: Path, switched: AdapterRoutes,
                                                      how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    act_as(monkeypatch, "ml")
    expected = _tamper(signed_adapter, how)
    before = switched.path.read_bytes()
    result = _rollback(signed_adapter)
    assert result.exit_code == 1, result.output
    assert expected in result.output and f"endpoint {ENDPOINT!r} is unchanged" in result.output
    assert switched.path.read_bytes() == before and switched.get(ENDPOINT).split == ((f"{ENDPOINT}@2", 100.0),)
    _nothing_started(state_dir)
    entries = list(AuditLog().entries())
    assert _events() == [("access", "allowed"), ("rollback refused: signature", None)]
    assert entries[0]["action"] == "rollback" and entries[0]["version"] == "1" and entries[0]["reason"] == "owner team"


def test_rollback_refuses_a_team_that_does_not_own_the_model(state_dir: Path, signed_adapter: Path,
                                                             switched: AdapterRoutes,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    act_as(monkeypatch, "search")
    before = switched.path.read_bytes()
    result = _rollback(signed_adapter)
    assert result.exit_code == 1 and "may not rollback ticket-triage version 1" in result.output
    assert switched.path.read_bytes() == before
    _nothing_started(state_dir)
    assert _events() == [("access", "refused")]


@pytest.fixture
def prod_env(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str):
    """The prod runtime's operations and signing settings, the audit trail in a private PostgreSQL
    database (as its insert-only writer role), and a real MLflow registry (SQLite, no server) whose
    `owner_team` tag someone edited to team:search: the spec's team:ml stays the owner."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).create_registered_model(ENDPOINT, tags={"owner_team": "team:search"})
    prod = tmp_path / "prod"
    env = {
        "AIPLAT_ENV": "prod",
        "AIPLAT_AUDIT_HMAC_KEY": "prod-audit-key-of-the-endpoints-tests",
        "AIPLAT_REQUEST_LOG": str(prod / "requests.jsonl"),
        "AIPLAT_REPORTS_DIR": str(prod / "reports"),
        "AIPLAT_PROMETHEUS_URL": "http://127.0.0.1:9",  # part of the prod operations settings; never called here
        # Only the public key: a host that deploys needs neither the private key nor its password.
        "AIPLAT_SIGNING_PUBLIC_KEY": str(dev_key_pair().public_key),
        "AIPLAT_APPROVAL_PUBLIC_KEY": str(dev_approval_key_pair().public_key),
        "MLFLOW_TRACKING_URI": uri,
        "AIPLAT_ACCOUNTS_FILE": str(prod / "accounts.json"),  # the store a Secret would mount
        # The serving backend's settings (never reached: every case is refused before it acts).
        "AIPLAT_VLLM_GATEWAY_URL": "http://127.0.0.1:9", "AIPLAT_VLLM_API_KEY": "prod-vllm-key-of-the-endpoints-tests",
        "AIPLAT_MODEL_STORE_PREFIX": "s3://aiplat-models", "AIPLAT_SERVING_MANIFESTS_DIR": str(prod / "manifests"),
        "AIPLAT_VLLM_IMAGE": "registry.example/aiplat-vllm-serving:test",
    }
    with private_audit_database(postgres_url) as db:
        env["AIPLAT_AUDIT_DATABASE_URL"] = db.writer_dsn
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for name in ("AIPLAT_SIGNING_PRIVATE_KEY", "AIPLAT_SIGNING_KEY_PASSWORD", "AIPLAT_APPROVAL_PRIVATE_KEY"):
            monkeypatch.delenv(name, raising=False)
        yield env


def _prod_log(prod_env: dict[str, str]) -> PostgresAuditLog:
    return PostgresAuditLog(prod_env["AIPLAT_AUDIT_DATABASE_URL"], key=prod_env["AIPLAT_AUDIT_HMAC_KEY"])


def test_prod_deploy_audits_to_the_prod_log_with_the_owner_from_the_spec(
        state_dir: Path, prod_env: dict[str, str], signed_adapter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    act_as(monkeypatch, "ml")  # the spec's owner, whatever the MLflow tag says
    expected = _tamper(signed_adapter, "flipped byte")
    result = _deploy(signed_adapter)
    assert result.exit_code == 1 and expected in result.output, result.output
    prod_log = _prod_log(prod_env)
    assert _events(prod_log) == [("access", "allowed"), ("deploy refused: signature", None)]
    entry = next(prod_log.entries())
    assert entry["owner_team"] == "team:ml" and entry["reason"] == "owner team"
    assert not (state_dir / "audit").exists()  # nothing went to the local default
    _nothing_started(state_dir)


def test_prod_refusal_by_team_goes_to_the_prod_log(state_dir: Path, prod_env: dict[str, str], signed_adapter: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    act_as(monkeypatch, "search")  # the team the edited MLflow tag names: it grants nothing
    result = _deploy(signed_adapter)
    assert result.exit_code == 1 and "team:search is neither the owner (team:ml)" in result.output
    assert _events(_prod_log(prod_env)) == [("access", "refused")]
    assert not (state_dir / "audit").exists()


def test_prod_cost_report_reads_the_prod_request_log(state_dir: Path, prod_env: dict[str, str]) -> None:
    from aiplat.operations.requests import RequestLog, RequestRecord

    RequestLog(Path(prod_env["AIPLAT_REQUEST_LOG"])).append(RequestRecord(
        datetime(2026, 11, 25, 12, tzinfo=timezone.utc), ENDPOINT, ENDPOINT, "team:search", "triage", 1000, 500, 200.0, 200))
    result = CliRunner().invoke(cli, ["cost", "report", "--since", "2026-11-25", "--until", "2026-11-25"])
    assert result.exit_code == 0, result.output
    assert f"from {prod_env['AIPLAT_REQUEST_LOG']}" in result.output and "1 requests" in result.output


@pytest.mark.parametrize("command", [["endpoints", "deploy", ENDPOINT, "{folder}", "--version", "2"],
                                     ["cost", "report"]])
def test_prod_without_the_audit_log_setting_names_the_variable(state_dir: Path, prod_env: dict[str, str],
                                                               signed_adapter: Path, command: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPLAT_AUDIT_DATABASE_URL")
    act_as(monkeypatch, "platform")
    result = CliRunner().invoke(cli, [c.format(folder=signed_adapter) for c in command])
    assert result.exit_code == 1
    assert "AIPLAT_ENV=prod: resource 'operations' needs AIPLAT_AUDIT_DATABASE_URL set in the environment" \
        in result.output, \
        result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("variable", ["AIPLAT_SIGNING_PUBLIC_KEY", "AIPLAT_APPROVAL_PUBLIC_KEY"])
def test_prod_without_a_public_key_names_the_variable(state_dir: Path, prod_env: dict[str, str], signed_adapter: Path,
                                                      routes: AdapterRoutes, monkeypatch: pytest.MonkeyPatch,
                                                      variable: str) -> None:
    monkeypatch.delenv(variable)
    act_as(monkeypatch, "platform")
    before = routes.path.read_bytes()
    result = _deploy(signed_adapter)
    assert result.exit_code == 1 and f"resource 'model_signing' needs {variable}" in result.output
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    assert list(_prod_log(prod_env).entries()) == []  # settings are checked before any decision is logged


def test_prod_promote_refusal_goes_to_the_prod_log(state_dir: Path, prod_env: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`aiplat promote` uses the same runtime resources: its access decision lands in the prod audit trail."""
    act_as(monkeypatch, "search")
    result = CliRunner().invoke(cli, ["promote", ENDPOINT, "1"])
    assert result.exit_code == 1 and "access denied" in result.output and "(team:search)" in result.output, result.output
    (entry,) = _prod_log(prod_env).entries()
    assert entry["action"] == "promote" and entry["decision"] == "refused" and entry["owner_team"] == "team:ml"
    assert not (state_dir / "audit").exists()


def test_stop_is_refused_to_a_team_that_does_not_own_the_model_and_audited(state_dir: Path, switched: AdapterRoutes,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: any caller could stop an endpoint, unaudited, and its next deploy skipped the canary."""
    act_as(monkeypatch, "search")
    before = switched.path.read_bytes()
    result = CliRunner().invoke(cli, ["endpoints", "stop", ENDPOINT])
    assert result.exit_code == 1 and "may not stop ticket-triage version 2" in result.output
    assert switched.path.read_bytes() == before
    assert _events() == [("access", "refused")]


def test_stop_by_the_owner_team_removes_the_endpoint_and_is_audited(state_dir: Path, switched: AdapterRoutes,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    act_as(monkeypatch, "ml", "ops-alice")
    result = CliRunner().invoke(cli, ["endpoints", "stop", ENDPOINT])
    assert result.exit_code == 0, result.output
    assert ENDPOINT not in switched.all()
    assert _events() == [("access", "allowed"), ("adapter endpoint stopped", None)]
    stopped = list(AuditLog().entries())[-1]
    assert stopped["actor"] == "ops-alice" and stopped["team"] == "team:ml" and stopped["version"] == "2"
