"""Attacks on the model registry, each refused by the MLflow server itself (issue 18 item 1).

One real `mlflow server --app-name basic-auth` for the module, authenticating the accounts of a
private state folder through the platform's authorization function, as the local stack runs it.
On a plain MLflow server (what the platform ran before) the first attacks succeed: one REST call
moved `champion`, and the `owner_team` tag was anyone's to edit.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aiplat.security import mlflow_auth
from aiplat.security.identity import ensure_local_accounts, init_local_accounts
from tests.evaluation_helpers import mlflow_server

pytestmark = pytest.mark.slow

TRIAGE, DRAFTS = "auth-triage", "auth-drafts"
OWNERS = {TRIAGE: "team:ml", DRAFTS: "team:support"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The server, the accounts' tokens, and two registered models (one per team) with a version each."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    state = root / "state"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIPLAT_STATE_DIR", str(state))
        mp.setenv("AIPLAT_ENV", "local")
        files = init_local_accounts(set(OWNERS.values()))
        tokens = {name: path.read_text().strip() for name, path in files.items()}
        with mlflow_server(root / "mlflow", accounts_state=state) as uri:
            mp.setenv(mlflow_auth.USERNAME_ENV, "")
            mp.setenv(mlflow_auth.PASSWORD_ENV, "")
            mlflow_auth.present(tokens["svc:dagster"])
            client = MlflowClient(uri, registry_uri=uri)
            experiment = client.create_experiment("auth-attacks")
            versions = {}
            for model in OWNERS:
                client.create_registered_model(model, tags={"owner_team": OWNERS[model]})
                run = client.create_run(experiment)
                versions[model] = client.create_model_version(
                    model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version
            mlflow_auth.sync_registry_grants(uri, OWNERS)
            yield {"uri": uri, "tokens": tokens, "versions": versions, "state": state}


@pytest.fixture
def as_account(registry: dict, monkeypatch: pytest.MonkeyPatch):
    """This process's MLflow clients sign in with an account's token (restored after the test)."""
    monkeypatch.setenv(mlflow_auth.USERNAME_ENV, "")
    monkeypatch.setenv(mlflow_auth.PASSWORD_ENV, "")

    def sign_in(account: str | None) -> MlflowClient:
        mlflow_auth.present(registry["tokens"][account] if account else None)
        return MlflowClient(registry["uri"], registry_uri=registry["uri"])

    return sign_in


def _refused(call) -> str:
    with pytest.raises(MlflowException) as refused:
        call()
    return refused.value.error_code


def test_an_anonymous_or_forged_caller_is_refused(registry: dict) -> None:
    search = f"{registry['uri']}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=("svc-dagster", "aiplat_forged"), timeout=10).status_code == 401
    assert requests.get(search, auth=("ml", registry["tokens"]["ml"]), timeout=10).status_code == 200
    # /health stays open for the probes.
    assert requests.get(f"{registry['uri']}/health", timeout=10).status_code == 200


def test_one_rest_call_by_another_team_cannot_move_champion(registry: dict, as_account) -> None:
    """The round-one attack: any caller moved the alias serving follows."""
    move = {"name": TRIAGE, "alias": "champion", "version": registry["versions"][TRIAGE]}
    response = requests.post(f"{registry['uri']}/api/2.0/mlflow/registered-models/alias", json=move,
                             auth=("support", registry["tokens"]["support"]), timeout=10)
    assert response.status_code == 403
    client = as_account("support")
    assert _refused(lambda: client.set_registered_model_alias(TRIAGE, "champion", registry["versions"][TRIAGE])) \
        == "PERMISSION_DENIED"
    assert _refused(lambda: client.delete_registered_model_alias(TRIAGE, "champion")) == "PERMISSION_DENIED"
    assert "champion" not in (as_account("svc:dagster").get_registered_model(TRIAGE).aliases or {})


def test_the_username_is_not_the_identity_the_token_is(registry: dict) -> None:
    """A team's token presented under the service account's name is still the team."""
    move = {"name": TRIAGE, "alias": "champion", "version": registry["versions"][TRIAGE]}
    response = requests.post(f"{registry['uri']}/api/2.0/mlflow/registered-models/alias", json=move,
                             auth=("svc-dagster", registry["tokens"]["support"]), timeout=10)
    assert response.status_code == 403
    me = requests.get(f"{registry['uri']}/api/2.0/mlflow/users/current",
                      auth=("svc-dagster", registry["tokens"]["support"]), timeout=10).json()["user"]
    assert (me["username"], me["is_admin"]) == ("support", False)


def test_another_team_cannot_rewrite_the_owner_tag_or_register_versions(registry: dict, as_account) -> None:
    client = as_account("support")
    assert _refused(lambda: client.set_registered_model_tag(TRIAGE, "owner_team", "team:support")) == "PERMISSION_DENIED"
    assert _refused(lambda: client.delete_registered_model(TRIAGE)) == "PERMISSION_DENIED"
    assert as_account("ml").get_registered_model(TRIAGE).tags["owner_team"] == "team:ml"


def test_a_team_cannot_grant_itself_rights_or_become_admin(registry: dict, as_account) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    as_account("support")
    auth = AuthServiceClient(registry["uri"])
    assert _refused(lambda: auth.grant_user_permission("support", "registered_model", TRIAGE, "MANAGE")) \
        == "PERMISSION_DENIED"
    assert _refused(lambda: auth.update_user_admin("support", True)) == "PERMISSION_DENIED"
    assert _refused(lambda: auth.create_user("support-2", "a-password-of-my-own")) == "PERMISSION_DENIED"
    assert mlflow_auth.registry_user(registry["uri"]) == {"id": mlflow_auth.registry_user(registry["uri"])["id"],
                                                         "username": "support", "is_admin": False}


def test_no_account_can_take_the_service_accounts_mlflow_name(registry: dict, monkeypatch) -> None:
    """`svc:dagster` signs in to MLflow as `svc-dagster` (an admin): an account literally named so
    would share that MLflow user, so the account store refuses it."""
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(registry["state"]))
    with pytest.raises(ValueError, match="would sign in to MLflow as 'svc-dagster'"):
        ensure_local_accounts().add("svc-dagster", "team:support")
    assert ensure_local_accounts().get("svc-dagster") is None


def test_a_revoked_account_is_refused_at_once(registry: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(registry["state"]))
    store = ensure_local_accounts()
    token = store.add("leaver", "team:ml")
    search = f"{registry['uri']}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, auth=("leaver", token), timeout=10).status_code == 200
    assert store.revoke("leaver")
    assert requests.get(search, auth=("leaver", token), timeout=10).status_code == 401


def test_the_owner_team_and_the_platform_may_move_the_alias(registry: dict, as_account) -> None:
    version = registry["versions"][DRAFTS]
    as_account("support").set_registered_model_alias(DRAFTS, "previous", version)
    as_account("platform-admin").set_registered_model_alias(DRAFTS, "previous", version)
    assert as_account("ml").get_registered_model(DRAFTS).aliases["previous"] == version
    assert _refused(lambda: as_account("ml").set_registered_model_alias(DRAFTS, "previous", version)) \
        == "PERMISSION_DENIED"


def test_a_model_created_under_another_teams_name_is_taken_back_by_the_sync(registry: dict, as_account) -> None:
    """Squatting: the creator of a registered model gets MANAGE on it; the spec decides who owns it."""
    squatted = "auth-squatted"
    squatter = as_account("support")
    squatter.create_registered_model(squatted)
    squatter.set_registered_model_tag(squatted, "owner_team", "team:support")  # MANAGE: allowed, before the sync
    as_account("svc:dagster")
    changes = mlflow_auth.sync_registry_grants(registry["uri"], {squatted: "team:ml"})
    assert {(c.user, c.change) for c in changes} == {("ml", "granted"), ("support", "revoked")}
    assert _refused(lambda: as_account("support").set_registered_model_tag(squatted, "owner_team", "team:support")) \
        == "PERMISSION_DENIED"
    as_account("ml").set_registered_model_tag(squatted, "owner_team", "team:ml")
    assert as_account("support").get_registered_model(squatted).tags["owner_team"] == "team:ml"
    # Idempotent: a second sync changes nothing.
    as_account("svc:dagster")
    assert mlflow_auth.sync_registry_grants(registry["uri"], {squatted: "team:ml"}) == []


def test_the_cli_signs_in_to_mlflow_as_its_caller_not_as_the_service(registry: dict, monkeypatch) -> None:
    """`aiplat accounts sync-registry` is the platform's; a team's token is refused by the access
    check, and a team's CLI MLflow client cannot do what the team may not."""
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(registry["state"]),
           "AIPLAT_STATE_DIR": str(registry["state"]), "AIPLAT_ENV": "local", "MLFLOW_TRACKING_URI": registry["uri"]}
    sync = [sys.executable, "-m", "aiplat.cli", "accounts", "sync-registry"]
    refused = subprocess.run(sync, env={**env, "AIPLAT_TOKEN": registry["tokens"]["support"]}, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "access denied" in refused.stderr
    done = subprocess.run(sync, env={**env, "AIPLAT_TOKEN": registry["tokens"]["platform-admin"]}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "change(s)" in done.stdout

    from aiplat.commands import _resources

    monkeypatch.setenv("AIPLAT_STATE_DIR", str(registry["state"]))
    monkeypatch.setenv("AIPLAT_TOKEN", registry["tokens"]["support"])
    monkeypatch.setenv(mlflow_auth.USERNAME_ENV, "")
    monkeypatch.setenv(mlflow_auth.PASSWORD_ENV, "")
    client = _resources.mlflow(registry["uri"]).client
    assert _refused(lambda: client.set_registered_model_alias(TRIAGE, "champion", "1")) == "PERMISSION_DENIED"
    monkeypatch.delenv("AIPLAT_TOKEN")
    anonymous = _resources.mlflow(registry["uri"]).client
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        anonymous.search_registered_models()


def test_prod_refuses_a_registry_without_authentication(shared_mlflow: str, monkeypatch) -> None:
    """A plain `mlflow server` has no gate: locally the grants are skipped, in prod it is an error."""
    assert mlflow_auth.registry_user(shared_mlflow) is None
    monkeypatch.setenv("AIPLAT_ENV", "local")
    assert mlflow_auth.sync_registry_grants(shared_mlflow, OWNERS) == []
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    with pytest.raises(RuntimeError, match="without authentication"):
        mlflow_auth.sync_registry_grants(shared_mlflow, OWNERS)


def test_the_prod_server_runs_on_postgresql_and_authenticates_platform_tokens(postgres_url: str, tmp_path) -> None:
    """deploy/kubernetes/mlflow.yaml's container command, for real: PostgreSQL stores, the account
    store from a mounted file, every setting named when missing."""
    import os
    import time
    import uuid

    import psycopg2
    import yaml

    from aiplat.net import free_port
    from aiplat.security.identity import FileAccountStore

    manifest = yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "mlflow.yaml").read_text())
    [deployment] = [d for d in manifest if d and d["kind"] == "Deployment"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "aiplat.security.mlflow_auth"]

    suffix = uuid.uuid4().hex[:8]
    admin = psycopg2.connect(postgres_url.rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    dbs = [f"mlflow_{suffix}", f"mlflow_auth_{suffix}"]
    with admin.cursor() as cur:
        for db in dbs:
            cur.execute(f"CREATE DATABASE {db}")
    store = FileAccountStore(tmp_path / "accounts.json")
    tokens = {"svc": store.add("svc:dagster", "team:platform", "service"), "support": store.add("support", "team:support")}
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the platform ships psycopg2.
    base = postgres_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "AIPLAT_ENV": "prod",
           "AIPLAT_ACCOUNTS_FILE": str(store.path), "MLFLOW_BACKEND_STORE_URI": f"{base}/{dbs[0]}",
           "MLFLOW_AUTH_DATABASE_URI": f"{base}/{dbs[1]}", "MLFLOW_AUTH_ADMIN_PASSWORD": "bootstrap-only",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key", "AIPLAT_MLFLOW_AUTH_CONFIG": str(tmp_path / "auth" / "auth.ini"),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    entry = [sys.executable, "-m", "aiplat.security.mlflow_auth"]
    missing = subprocess.run(entry, env={k: v for k, v in env.items() if k != "MLFLOW_AUTH_DATABASE_URI"},
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "MLFLOW_AUTH_DATABASE_URI is not set" in missing.stderr

    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([*entry, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--artifacts-destination", str(tmp_path / "artifacts")],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        assert oct((tmp_path / "auth" / "auth.ini").stat().st_mode & 0o777) == "0o600"
        api = f"{uri}/api/2.0/mlflow"
        assert requests.get(f"{api}/registered-models/search", timeout=10).status_code == 401
        created = requests.post(f"{api}/registered-models/create", json={"name": "prod-auth"},
                                auth=("svc-dagster", tokens["svc"]), timeout=10)
        assert created.status_code == 200, created.text
        move = requests.post(f"{api}/registered-models/alias", json={"name": "prod-auth", "alias": "champion",
                                                                     "version": "1"},
                             auth=("support", tokens["support"]), timeout=10)
        assert move.status_code == 403
        with psycopg2.connect(postgres_url.rsplit("/", 1)[0] + f"/{dbs[1]}") as conn, conn.cursor() as cur:
            cur.execute("SELECT username, is_admin FROM users ORDER BY username")
            assert ("svc-dagster", True) in cur.fetchall()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        log.close()
        with admin.cursor() as cur:
            for db in dbs:
                cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
