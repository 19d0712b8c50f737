"""Who is calling: an account the platform verifies from a credential, never a name the caller sets.

An account has a name (the actor in the audit log), a team and a token. The store keeps only the
token's SHA-256 (tokens are 256-bit random strings, so a plain digest is enough, as for the
gateway's API keys); presenting the token proves the account. Nothing else grants a right:
AIPLAT_TEAM / AIPLAT_ACTOR, the `aiplat/team` run tag and the X-AIPLAT-Team header are at most
attribution ("requested by"), never authorization.

Where the credential comes from:
- the CLI: the caller's token in AIPLAT_TOKEN, or in the file AIPLAT_TOKEN_FILE names (mode 600);
- Dagster runs and sensors: the code location's own service account (`svc:dagster`, platform team).
  Whoever launches a run from the UI acts through the graph as that account, so a run can do only
  what the graph's gates allow (a champion that passed the platform's gate, a signed artifact),
  whatever tags or config its launcher sets; in prod the UI sits behind an authenticating proxy
  (docs/operations.md).

Locally the store is <state>/security/accounts.json (mode 600) and `aiplat accounts init` (run by
`make dev` / `make test`) writes one token file per account under <state>/credentials/ (mode 600):
the platform's service account, a platform operator and one account per team that owns a model
spec. In prod the store is a file mounted read-only from a Secret (AIPLAT_ACCOUNTS_FILE) and the
service token comes from AIPLAT_SERVICE_TOKEN; a missing one is an error naming it.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from aiplat.config import prod_secret, runtime, state_dir
from aiplat.locks import exclusive
from aiplat.operations.requests import key_fingerprint

TOKEN_ENV = "AIPLAT_TOKEN"
TOKEN_FILE_ENV = "AIPLAT_TOKEN_FILE"
ACCOUNTS_FILE_ENV = "AIPLAT_ACCOUNTS_FILE"
SERVICE_TOKEN_ENV = "AIPLAT_SERVICE_TOKEN"
SERVICE_ACCOUNT = "svc:dagster"
PLATFORM_OPERATOR = "platform-admin"
PLATFORM_TEAM = "team:platform"
RUN_TAG_ACTOR = "aiplat/actor"  # who launched a run: attribution only
TOKEN_PREFIX = "aiplat_"
ACCOUNT_KINDS = ("person", "service")


class CredentialError(PermissionError):
    """No credential, or one the platform does not know."""


def normalize_team(team: str | None) -> str | None:
    if not team or not team.strip():
        return None
    team = team.strip().lower()
    return team if team.startswith("team:") else f"team:{team}"


@dataclass(frozen=True)
class Identity:
    """A verified caller (`source` = credential | service) or an unverified one (`team` None)."""

    actor: str
    team: str | None
    source: str  # credential | service | none | unknown-credential
    requested_by: str | None = None  # who launched a run (attribution only: a tag the launcher sets)


@dataclass(frozen=True)
class Account:
    name: str
    team: str
    kind: str
    token_sha256: str
    created: str


def login_name(account_name: str) -> str:
    """The account's name where ':' cannot appear: its MLflow Basic-auth username and its token
    file's stem (`svc:dagster` -> `svc-dagster`)."""
    return account_name.replace(":", "-")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class AccountStore(ABC):
    """Accounts by name, with the digest of their token; `verify` turns a token into an Identity."""

    @abstractmethod
    def accounts(self) -> list[Account]: ...

    @abstractmethod
    def _write(self, accounts: list[Account]) -> None: ...

    def verify(self, token: str) -> Account:
        digest = key_fingerprint(token.strip())
        # Compare every digest in constant time: the time taken tells nothing about near misses.
        found = [a for a in self.accounts() if hmac.compare_digest(a.token_sha256, digest)]
        if not found:
            raise CredentialError("the credential is not known to the platform (revoked, mistyped or forged)")
        return found[0]

    def get(self, name: str) -> Account | None:
        return next((a for a in self.accounts() if a.name == name), None)

    def add(self, name: str, team: str, kind: str = "person") -> str:
        """Create `name` (or rotate its token); return the new token, which is stored nowhere else."""
        team_n = normalize_team(team)
        if not name.strip() or team_n is None:
            raise ValueError("an account needs a name and a team")
        if kind not in ACCOUNT_KINDS:
            raise ValueError(f"unknown account kind {kind!r}; one of {', '.join(ACCOUNT_KINDS)}")
        with self._locked():
            return self._add_unlocked(name.strip(), team_n, kind)

    def _add_unlocked(self, name: str, team: str, kind: str) -> str:
        # Other systems know accounts by a derived name (MLflow's Basic auth cannot carry ':', so
        # `svc:dagster` is the MLflow user `svc-dagster`): two accounts must never share one.
        others = [a for a in self.accounts() if a.name != name]
        clash = next((a.name for a in others if login_name(a.name) == login_name(name)), None)
        if clash is not None:
            raise ValueError(f"account {name!r} would sign in to MLflow as {login_name(name)!r}, which is "
                             f"{clash!r}'s; choose another name")
        token = new_token()
        account = Account(name, team, kind, key_fingerprint(token), datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._write([*others, account])
        return token

    def revoke(self, name: str) -> bool:
        with self._locked():
            current = self.accounts()
            kept = [a for a in current if a.name != name]
            if len(kept) == len(current):
                return False
            self._write(kept)
        return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        yield


class FileAccountStore(AccountStore):
    """A JSON file (mode 600), rewritten atomically under an flock; read-only where mounted from a Secret."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def accounts(self) -> list[Account]:
        if not self.path.is_file():
            return []
        try:
            rows = json.loads(self.path.read_text(encoding="utf-8"))["accounts"]
            return [Account(**row) for row in rows]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CredentialError(f"the account store {self.path} is unreadable: {e}") from e

    def _write(self, accounts: list[Account]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(self.path, json.dumps({"accounts": [asdict(a) for a in sorted(accounts, key=lambda a: a.name)]},
                                             indent=2))

    def _locked(self):
        return exclusive(self.path.with_suffix(".lock"))


# --- where things are ------------------------------------------------------------------------------

def credentials_dir() -> Path:
    return state_dir() / "credentials"


def token_file(account: str) -> Path:
    """The local token file of `account` (`svc:dagster` -> svc-dagster.token)."""
    return credentials_dir() / f"{login_name(account)}.token"


def account_store() -> FileAccountStore:
    if runtime() == "prod":
        return FileAccountStore(Path(prod_secret(ACCOUNTS_FILE_ENV, "the platform's account store (a Secret mounted read-only)")))
    return FileAccountStore(state_dir() / "security" / "accounts.json")


def _write_private(path: Path, text: str) -> None:
    """Mode 600, written aside and renamed: a reader meanwhile sees the old contents or the new
    ones, never an empty file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_token_file(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    _write_private(path, token + "\n")


def init_local_accounts(teams: Iterable[str] = (), store: FileAccountStore | None = None) -> dict[str, Path]:
    """Create the local store with the service account, the platform operator and one account per
    team (named after the team: `team:ml` -> `ml`); write each token file. Accounts that exist keep
    their token unless their token file is gone (then the token is rotated and written again).
    Returns {account: token file}. Local only: prod accounts are made by the platform team."""
    if runtime() == "prod":
        raise RuntimeError("accounts are initialized locally only; in prod the platform team manages the "
                           f"store that {ACCOUNTS_FILE_ENV} names")
    store = store or account_store()
    wanted = {SERVICE_ACCOUNT: (PLATFORM_TEAM, "service"), PLATFORM_OPERATOR: (PLATFORM_TEAM, "person")}
    for team in teams:
        team_n = normalize_team(team)
        if team_n and team_n != PLATFORM_TEAM:
            wanted.setdefault(team_n.removeprefix("team:"), (team_n, "person"))
    written = {}
    # One lock around check-and-write: two processes starting on a fresh state folder (a run's
    # steps, test workers) must not leave a token file that is not the stored token's.
    with store._locked():
        for name, (team, kind) in wanted.items():
            path = token_file(name)
            existing = store.get(name)
            if existing is None or existing.team != team or not path.is_file():
                write_token_file(path, store._add_unlocked(name, team, kind))
            written[name] = path
    return written


def ensure_local_accounts() -> FileAccountStore:
    """The local store, made on first use (with the model specs' teams), so a fresh state folder works."""
    store = account_store()
    if runtime() == "local" and (not store.exists or not token_file(SERVICE_ACCOUNT).is_file()):
        from aiplat.specs.load import spec_owners

        try:
            teams = set(spec_owners().values())
        except Exception:  # noqa: BLE001 - a broken spec must not lock the platform out; the spec check reports it
            teams = set()
        init_local_accounts(teams, store)
    return store


# --- who is calling --------------------------------------------------------------------------------

def presented_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The caller's credential: AIPLAT_TOKEN, else the contents of the file AIPLAT_TOKEN_FILE names."""
    env = os.environ if environ is None else environ
    token = (env.get(TOKEN_ENV) or "").strip()
    if token:
        return token
    path = (env.get(TOKEN_FILE_ENV) or "").strip()
    if path:
        try:
            return Path(path).expanduser().read_text(encoding="utf-8").strip() or None
        except OSError as e:
            raise CredentialError(f"{TOKEN_FILE_ENV}={path}: cannot read the credential ({e.strerror})") from e
    return None


def caller_identity(environ: Mapping[str, str] | None = None) -> Identity:
    """The CLI caller, verified from their credential. Without one (or with an unknown one) the
    identity has no team, and every access check refuses it with the reason."""
    try:
        token = presented_token(environ)
    except CredentialError:
        return Identity(_os_user(), None, "unknown-credential")
    if token is None:
        return Identity(_os_user(), None, "none")
    try:
        account = ensure_local_accounts().verify(token)
    except CredentialError:
        return Identity(_os_user(), None, "unknown-credential")
    return Identity(account.name, account.team, "credential")


def service_token() -> str:
    if runtime() == "prod":
        return prod_secret(SERVICE_TOKEN_ENV, "the Dagster code location's service account")
    ensure_local_accounts()
    return token_file(SERVICE_ACCOUNT).read_text(encoding="utf-8").strip()


def run_identity(run_tags: Mapping[str, str] | None = None) -> Identity:
    """A Dagster run or sensor acts as the code location's service account, verified like any
    credential; the launcher (the `dagster/user` or `aiplat/actor` tag) is kept for the audit log
    as attribution only."""
    tags = run_tags or {}
    requested_by = tags.get("dagster/user") or tags.get(RUN_TAG_ACTOR)
    try:
        account = ensure_local_accounts().verify(service_token())
    except CredentialError:
        return Identity(SERVICE_ACCOUNT, None, "unknown-credential", requested_by)
    return Identity(account.name, account.team, "service", requested_by)


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def refusal_reason(identity: Identity) -> str:
    if identity.source == "none":
        return (f"no credential: set {TOKEN_FILE_ENV} to your token file (locally "
                f"{token_file(PLATFORM_OPERATOR)} for the platform team) or {TOKEN_ENV} to the token")
    if identity.source == "unknown-credential":
        return "the credential presented is not known to the platform (revoked, mistyped or forged)"
    return "no team"
