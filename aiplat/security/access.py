"""Who may promote, roll back and deploy a model: its owner team, or the platform team.

The owner team is the registered model's `owner_team` tag in MLflow, else the configured mapping.
A model with neither is the platform team's alone. The identity comes from Dagster run tags
(`aiplat/actor`, `aiplat/team`) when the action runs in a run, else from the environment
(AIPLAT_ACTOR / AIPLAT_TEAM via aiplat.config; in prod the deployment sets them for its identity).
Every decision, allowed or refused, goes into the audit log before the caller acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiplat import config
from aiplat.security.audit_log import AuditLog

PLATFORM_TEAM = "team:platform"
OWNER_TAG = "owner_team"
ACTIONS = ("promote", "rollback", "deploy", "stop")
RUN_TAG_ACTOR = "aiplat/actor"
RUN_TAG_TEAM = "aiplat/team"


class AccessDenied(PermissionError):
    def __init__(self, message: str, entry: dict) -> None:
        super().__init__(message)
        self.entry = entry


def normalize_team(team: str | None) -> str | None:
    if not team or not team.strip():
        return None
    team = team.strip().lower()
    return team if team.startswith("team:") else f"team:{team}"


@dataclass(frozen=True)
class Identity:
    actor: str
    team: str | None
    source: str  # env | dagster-run


def identity_from_env() -> Identity:
    import getpass

    actor = config.actor_from_env()
    if actor is None:
        try:
            actor = getpass.getuser()
        except (KeyError, OSError):
            actor = "unknown"
    return Identity(actor, normalize_team(config.team_from_env()), "env")


def identity_from_run_tags(tags: Mapping[str, str]) -> Identity | None:
    team = normalize_team(tags.get(RUN_TAG_TEAM))
    actor = tags.get(RUN_TAG_ACTOR) or tags.get("dagster/user")
    if team is None and actor is None:
        return None
    return Identity(actor or "unknown", team, "dagster-run")


def current_identity(run_tags: Mapping[str, str] | None = None) -> Identity:
    """Run tags when present (a Dagster step), else the environment (CLI)."""
    from_run = identity_from_run_tags(run_tags) if run_tags else None
    return from_run or identity_from_env()


def owner_team(client, model_name: str, mapping: Mapping[str, str] | None = None) -> str | None:
    """The model's owner team: its MLflow `owner_team` tag, else `mapping[model_name]`, else None."""
    tag = None
    if client is not None:
        from mlflow.exceptions import MlflowException

        try:
            tag = (client.get_registered_model(model_name).tags or {}).get(OWNER_TAG)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    return normalize_team(tag) or normalize_team((mapping or {}).get(model_name))


def authorize(
    action: str,
    model: str,
    version: str | None,
    identity: Identity,
    owner: str | None,
    log: AuditLog | None = None,
    **context: str,
) -> dict:
    """Allow `action` to the owner team or the platform team; log the decision; raise AccessDenied."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    allowed_teams = sorted({t for t in (owner, PLATFORM_TEAM) if t})
    allowed = identity.team in allowed_teams
    if identity.team is None:
        reason = "no team in the caller's identity (set AIPLAT_TEAM or the aiplat/team run tag)"
    elif allowed:
        reason = "owner team" if identity.team == owner else "platform team"
    else:
        reason = f"{identity.team} is neither the owner ({owner or 'none'}) nor {PLATFORM_TEAM}"
    entry = (log or AuditLog()).append(
        "access", action=action, model=model, version=str(version) if version is not None else None,
        actor=identity.actor, team=identity.team, identity_source=identity.source, owner_team=owner,
        decision="allowed" if allowed else "refused", reason=reason, **context,
    )
    if not allowed:
        raise AccessDenied(f"{identity.actor} ({identity.team or 'no team'}) may not {action} {model}"
                           f"{' version ' + str(version) if version is not None else ''}: {reason}", entry)
    return entry


def record(event: str, model: str, version: str | None, identity: Identity, log: AuditLog | None = None,
           **fields: str) -> dict:
    """Log what an allowed action did (promoted, deployed, rolled back) once it is done."""
    return (log or AuditLog()).append(event, model=model, version=str(version) if version is not None else None,
                                      actor=identity.actor, team=identity.team, **fields)
