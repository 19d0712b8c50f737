"""The registry refuses for itself: MLflow's authentication app, fed by the platform's accounts.

The `champion` alias is what serving follows, so the MLflow server must refuse an alias move by
anyone but the model's owner team and the platform. The tracking server runs MLflow's own
`basic-auth` app (`mlflow server --app-name basic-auth`) with two platform-side pieces:

- **Who is calling** (`authenticate_request`, the auth app's `authorization_function`): the Basic
  auth password is a platform token, verified against the platform's account store (the same one
  the CLI and the gateway use; revoking an account shuts MLflow too, at once). The username the
  client sends is ignored: the token alone names the account, so a team cannot claim to be
  `svc-dagster`. The account's MLflow user is made on its first request; platform-team accounts
  are MLflow admins (the promotion account among them), every other account is a plain user.
- **What each may do** (`sync_registry_grants`): the server's default permission is READ; each
  account of a registered model's owner team gets EDIT on it (the spec names the owner, never the
  `owner_team` tag), and every other non-admin grant on it is revoked, so a team that created a
  model under another team's name (and got MANAGE for it) loses it. Run after each registration
  and by `aiplat accounts sync-registry`.

Clients present their credential through MLflow's own variables (MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD): Dagster steps the code location's service token, the CLI the caller's.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiplat.config import MLFLOW_CREDENTIAL_ENV
from aiplat.security.identity import PLATFORM_TEAM, Account, CredentialError, account_store, login_name

AUTH_FUNCTION = "aiplat.security.mlflow_auth:authenticate_request"
OWNER_PERMISSION = "EDIT"  # set aliases and tags, register versions; not delete, not grant
DEFAULT_PERMISSION = "READ"  # every authenticated account, on everything it has no grant for
CLIENT_USERNAME = "aiplat-token"  # sent for form's sake: the server reads the account from the token
USERNAME_ENV, PASSWORD_ENV = MLFLOW_CREDENTIAL_ENV


def is_admin(account: Account) -> bool:
    return account.team == PLATFORM_TEAM


# --- client side -----------------------------------------------------------------------------------

def present(token: str | None) -> None:
    """Make this process's MLflow clients send `token` (None or empty: send nothing, and a server
    with authentication answers 401). MLflow reads its credentials from these variables only."""
    from aiplat.config import set_mlflow_credential

    set_mlflow_credential(CLIENT_USERNAME if token else None, token or None)


def registry_user(tracking_uri: str) -> dict | None:
    """The MLflow user this process's credential signs in as ({username, is_admin}), or None when
    the server runs without authentication (a plain `mlflow server`: every caller may do anything)."""
    with warnings.catch_warnings():  # mlflow.server's import warns about its own use of starlette
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server.auth.routes import GET_CURRENT_USER
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = http_request(get_default_host_creds(tracking_uri), GET_CURRENT_USER, "GET")
    if response.status_code == 404:
        return None
    return verify_rest_response(response, GET_CURRENT_USER).json()["user"]


def require_authentication(tracking_uri: str) -> dict | None:
    """`registry_user`, and in prod an error when the registry has no authentication: there the
    alias is the gate, and a registry anyone may write is no gate (no silent dev fallback)."""
    from aiplat.config import runtime
    from aiplat.training.tracking import redact_uri

    user = registry_user(tracking_uri)
    if user is None and runtime() == "prod":
        raise RuntimeError(f"the MLflow server at {redact_uri(tracking_uri)} runs without authentication; prod "
                           "needs `mlflow server --app-name basic-auth` with the platform's authorization "
                           f"function ({AUTH_FUNCTION}; docs/deploy.md)")
    return user


# --- server side (runs inside `mlflow server --app-name basic-auth`) ---------------------------------

_provisioned: dict[str, bool] = {}  # MLflow username -> admin flag, as made or checked by this worker


def authenticate_request():
    """MLflow's `authorization_function`: a werkzeug Authorization naming the verified account's
    MLflow user, or the auth app's 401 response."""
    from flask import request
    from mlflow.server.auth import make_basic_auth_response, store
    from werkzeug.datastructures import Authorization

    presented = request.authorization
    if presented is None or not presented.password:
        return make_basic_auth_response()
    try:
        account = account_store().verify(presented.password)
    except CredentialError:
        return make_basic_auth_response()
    username = login_name(account.name)
    _provision(store, username, is_admin(account))
    return Authorization("basic", {"username": username, "password": ""})


def _provision(store, username: str, admin: bool) -> None:
    if _provisioned.get(username) == admin:
        return
    if not store.has_user(username):
        try:
            # The password is never used: this server authenticates tokens, not MLflow passwords.
            store.create_user(username, secrets.token_urlsafe(32), is_admin=admin)
        except Exception:  # noqa: BLE001 - another worker made it meanwhile; the update below settles the flag
            pass
    if store.get_user(username).is_admin != admin:
        store.update_user(username, is_admin=admin)
    _provisioned[username] = admin


def write_server_config(path: Path, database_uri: str) -> Path:
    """The auth app's ini (mode 600): default READ, the platform's authorization function. The
    bootstrap admin MLflow insists on gets a random password nobody holds (tokens log in, not it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([
        "[mlflow]",
        f"default_permission = {DEFAULT_PERMISSION}",
        f"database_uri = {database_uri}",
        "admin_username = bootstrap-admin",
        f"admin_password = {secrets.token_urlsafe(32)}",
        f"authorization_function = {AUTH_FUNCTION}",
        "",
    ])
    if path.is_file():  # keep the first bootstrap password: MLflow ignores it once the admin exists
        return path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def server_args(mlflow_dir: Path, state: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The extra `mlflow server` arguments and environment that turn authentication on: the auth app,
    its ini and user store beside the tracking store, and (`state`) where the accounts are."""
    ini = write_server_config(Path(mlflow_dir) / "auth.ini", f"sqlite:///{Path(mlflow_dir) / 'auth.db'}")
    # The auth app's CSRF protection (its sign-up and admin forms) needs a key that outlives restarts.
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(Path(mlflow_dir) / "flask-secret")}
    if state is not None:
        from aiplat.config import RUNTIME_ENV_VAR, STATE_DIR_ENV_VAR

        env.update({STATE_DIR_ENV_VAR: str(state), RUNTIME_ENV_VAR: "local"})
    return ["--app-name", "basic-auth"], env


def _secret(path: Path) -> str:
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text(encoding="utf-8").strip()


# --- grants ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GrantChange:
    model: str
    user: str
    change: str  # granted | revoked | updated
    permission: str | None


def sync_registry_grants(tracking_uri: str, owners: Mapping[str, str], accounts: Iterable[Account] | None = None,
                         models: Iterable[str] | None = None) -> list[GrantChange]:
    """Make each registered model's grants follow its spec owner: EDIT for every account of the owner
    team, nothing beyond the default READ for any other non-admin account. Acts through the caller's
    MLflow credential (an admin's: the service account in a run, the platform team in the CLI).
    `models` limits the sync to those names; models not registered yet are skipped. A server
    without authentication has no grants to keep: nothing is done locally, an error in prod."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from aiplat.security.identity import normalize_team

    if require_authentication(tracking_uri) is None:
        return []
    auth, registry = _auth_client(tracking_uri), MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    accounts = [a for a in (accounts if accounts is not None else account_store().accounts()) if not is_admin(a)]
    changes: list[GrantChange] = []
    for model in sorted(set(models) if models is not None else owners):
        owner = normalize_team(owners.get(model))
        try:
            registry.get_registered_model(model)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        for account in accounts:
            user = login_name(account.name)
            wanted = OWNER_PERMISSION if owner and account.team == owner else DEFAULT_PERMISSION
            _ensure_user(auth, user)
            current = auth.get_user_permission(user, "registered_model", model).permission
            if current == wanted:
                continue
            if wanted == DEFAULT_PERMISSION:
                auth.revoke_user_permission(user, "registered_model", model)
                changes.append(GrantChange(model, user, "revoked", current))
            else:
                auth.grant_user_permission(user, "registered_model", model, wanted)
                changes.append(GrantChange(model, user, "granted", wanted))
    return changes


def _auth_client(tracking_uri: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server.auth.client import AuthServiceClient
    return AuthServiceClient(tracking_uri)


def _ensure_user(auth, user: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        auth.get_user(user)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(user, secrets.token_urlsafe(32))


# --- the prod tracking server's entry point ---------------------------------------------------------

SERVER_SECRETS = {
    "MLFLOW_BACKEND_STORE_URI": "the tracking and registry store (PostgreSQL)",
    "MLFLOW_AUTH_DATABASE_URI": "the auth app's user and permission store (PostgreSQL)",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "the auth app's bootstrap admin (MLflow requires one; nobody signs in with it)",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "the auth app's CSRF key (the same on every replica)",
}


def serve(argv: list[str], config: Path) -> None:
    """Exec `mlflow server --app-name basic-auth ARGV` with the platform's authorization function,
    after checking every setting it needs (a missing one is an error naming it, not a silent
    default) and writing the auth app's ini, whose database URI holds a password, into `config`."""
    from aiplat.config import mlflow_server_env, prod_secret
    from aiplat.security.identity import ACCOUNTS_FILE_ENV

    settings = {name: prod_secret(name, why) for name, why in
                {**SERVER_SECRETS, ACCOUNTS_FILE_ENV: "the platform's account store the server authenticates"}.items()}
    write_server_config(config, settings["MLFLOW_AUTH_DATABASE_URI"])
    os.execvpe("mlflow", ["mlflow", "server", "--app-name", "basic-auth", *argv],
               mlflow_server_env({"MLFLOW_AUTH_CONFIG_PATH": str(config)}))


if __name__ == "__main__":  # the tracking server's container command (deploy/kubernetes/mlflow.yaml)
    import sys

    from aiplat.config import MissingSecret, mlflow_auth_config_path

    try:
        serve(sys.argv[1:], mlflow_auth_config_path())
    except MissingSecret as e:
        raise SystemExit(f"aiplat mlflow server: {e}") from None
