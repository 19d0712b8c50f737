"""Who may promote, roll back, deploy and stop a model: its owner team, or the platform team.

The owner team is the model spec's `owner` (files under code review, shipped in the image; in
prod no variable can point elsewhere). The registered model's `owner_team` tag in MLflow is a label
for the MLflow UI, where any visitor can edit it: it grants nothing. A model without a spec is the
platform team's alone. The identity is verified
(aiplat.security.identity): the CLI caller's credential, or in a Dagster run the code location's
service account; run tags and environment variables name nobody. Every decision, allowed or
refused, goes into the audit log before the caller acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiplat.security.audit_log import AuditLog
from aiplat.security.identity import PLATFORM_TEAM, Identity, caller_identity, normalize_team, refusal_reason, run_identity

__all__ = ["ACTIONS", "PLATFORM_TEAM", "AccessDenied", "Identity", "authorize", "current_identity", "normalize_team",
           "owner_team", "record"]

OWNER_TAG = "owner_team"
ACTIONS = ("promote", "rollback", "deploy", "stop", "accounts")


class AccessDenied(PermissionError):
    def __init__(self, message: str, entry: dict) -> None:
        super().__init__(message)
        self.entry = entry


def current_identity(run_tags: Mapping[str, str] | None = None) -> Identity:
    """In a Dagster run (its tags given, even empty): the service account; else the CLI caller."""
    return run_identity(run_tags) if run_tags is not None else caller_identity()


def owner_team(model_name: str, owners: Mapping[str, str] | None = None) -> str | None:
    """The model's owner team from its spec (`owners`: model name -> owner, aiplat.specs.spec_owners),
    else None (platform team only). Never the MLflow `owner_team` tag: anyone can edit that."""
    return normalize_team((owners or {}).get(model_name))


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
        reason = refusal_reason(identity)
    elif allowed:
        reason = "owner team" if identity.team == owner else "platform team"
    else:
        reason = f"{identity.team} is neither the owner ({owner or 'none'}) nor {PLATFORM_TEAM}"
    entry = (log or AuditLog()).append(
        "access", action=action, model=model, version=str(version) if version is not None else None,
        actor=identity.actor, team=identity.team, identity_source=identity.source, owner_team=owner,
        **({"requested_by": identity.requested_by} if identity.requested_by else {}),
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
