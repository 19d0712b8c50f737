"""Who a gateway request is billed to: a per-team API key, verified; a header only where allowed.

Keys are stored as their sha256 (high-entropy random keys: a plain digest is enough and lets the
gateway look them up in O(1); nothing reversible is ever on disk or in metadata). The rules, in order:
- a bearer key is presented and keys are configured: it must be a known key, else 401 — never a
  fallback to the X-AIPLAT-Team header, which anyone can set;
- no key (or no key registry, locally): the header names the team only where `trust_team_header`
  (local development); in prod the header grants nothing and the request is refused.
Team names are normalized (lower case, `team:` prefix) wherever they enter, so `team:ML` is
`team:ml` for the budget, the metrics and the request log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiplat.security import identity
from aiplat.operations.requests import HEADER_FEATURE, HEADER_TEAM, UNATTRIBUTED, key_fingerprint


def normalize_team(value: str) -> str:
    """`ML`, `team:ML`, ` team:ml ` -> `team:ml`; empty stays empty (the access checks' rule)."""
    return identity.normalize_team(value) or ""


@dataclass(frozen=True)
class Caller:
    team: str
    feature: str
    refused: str | None = None  # why the request must be answered 401, or None
    code: str = ""  # the refusal's error code (unknown_api_key, missing_api_key)
    via: str = "none"  # "key", "header" or "none": how the team was established


def _bearer(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def identify(headers: Mapping[str, str], key_teams: Mapping[str, str], trust_team_header: bool) -> Caller:
    """`headers` as Starlette gives them (case-insensitive lookups); `key_teams` = {sha256(key): team}."""
    feature = (headers.get(HEADER_FEATURE) or "").strip() or UNATTRIBUTED
    key = _bearer(headers)
    if key and key_teams:
        team = key_teams.get(key_fingerprint(key))
        if team is None:
            return Caller(UNATTRIBUTED, feature, "the API key is not known to the gateway", "unknown_api_key")
        return Caller(normalize_team(team), feature, via="key")
    header_team = normalize_team(headers.get(HEADER_TEAM) or "")
    if not trust_team_header:
        reason = "send the API key of your team (Authorization: Bearer ...); the X-AIPLAT-Team header grants nothing here"
        return Caller(UNATTRIBUTED, feature, reason, "missing_api_key")
    if header_team:
        return Caller(header_team, feature, via="header")
    return Caller(UNATTRIBUTED, feature)
