"""The one control sequence for changing what serves: authorize -> verify -> act -> audit.

Every serving change (deploy a version, roll back, stop an endpoint, load or unload an adapter,
move an adapter route) goes through `controlled`, called by the assets and the CLI alike:
1. authorize: the caller's verified identity against the model's owner team (its spec) or the
   platform team; the decision is logged before anything else happens (AccessDenied otherwise);
2. verify: the bytes about to serve against their build signature and promotion attestation;
   a refusal is logged as `<action> refused: <kind>` and nothing is touched;
3. act: the change itself; a failure is logged as `<action> failed` with its reason;
4. audit: what was done, with what the act returned.
The caller decides what to verify and what to do; it cannot skip or reorder the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiplat.security.access import authorize, owner_team, record
from aiplat.security.audit_log import AuditLog
from aiplat.security.identity import Identity

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """Who asks, where their decisions are logged, and the model owners they are checked against."""

    identity: Identity
    audit: AuditLog
    owners: Mapping[str, str]
    context: Mapping[str, str] = field(default_factory=dict)  # logged with every entry (dagster_run_id, ...)


@dataclass(frozen=True)
class Change:
    """One serving change: `action` (an aiplat.security.access action) of `model` `version` on `endpoint`."""

    action: str
    model: str
    version: str | None
    endpoint: str
    done: str  # the audit event once it is done ("deployed", "adapter loaded", ...)


def controlled(caller: Caller, change: Change, act: Callable[[], T], verify: Callable[[], Any] | None = None,
               details: Callable[[T], Mapping[str, Any]] | None = None) -> T:
    """Run `change` through the sequence in the module doc; returns what `act` returned.

    Raises AccessDenied (refused, logged), SignatureError / ApprovalError from `verify` (logged as
    refused; nothing acted), or whatever `act` raised (logged as failed)."""
    from aiplat.security.signing import SignatureError

    where = {"endpoint": change.endpoint, **caller.context}
    owner = owner_team(change.model, caller.owners)
    authorize(change.action, change.model, change.version, caller.identity, owner, caller.audit, **where)
    if verify is not None:
        try:
            verify()
        except SignatureError as e:  # ApprovalError included: signed is not approved
            record(f"{change.action} refused: {e.kind}", change.model, change.version, caller.identity, caller.audit,
                   reason=str(e), **where)
            raise
    try:
        result = act()
    except Exception as e:
        record(f"{change.action} failed", change.model, change.version, caller.identity, caller.audit,
               reason=f"{type(e).__name__}: {e}"[:500], **where)
        raise
    extra = {k: str(v) for k, v in (details(result) if details else {}).items()}
    record(change.done, change.model, change.version, caller.identity, caller.audit, **{**where, **extra})
    return result
