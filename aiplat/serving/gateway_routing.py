"""Where the metering gateway sends a request, and who it is billed to.

A request names an endpoint (`model` = a name from `aiplat endpoints list`); a resolver turns it
into the upstream base URL and the model name that upstream serves. Every endpoint is a LoRA
adapter on its base model's shared vLLM server, so the gateway's one resolver is
aiplat.serving.adapter_routes.AdapterRouteResolver over the adapter-routes file (locally
`<state>/serving/adapter-routes.json`, written by the serving backend; in prod the
`aiplat-adapter-routes` ConfigMap mounted into the gateway pod), read at every request so a canary
switch or a rollback is followed at once. This module holds what any resolver shares and the
gateway's other settings files (API-key -> team mapping, hard budgets).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from aiplat.serving.gateway_auth import normalize_team

# Team and feature become Prometheus label values and request-log fields: bounded and plain.
LABEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.\-]{0,79}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ENDPOINT_NAME = re.compile(r"[a-z]([-a-z0-9]{0,40}[a-z0-9])?")


@dataclass(frozen=True)
class Upstream:
    endpoint: str
    base_url: str  # without /v1
    served_model_name: str
    model_label: str  # what the request log's `model` says: the adapter version that answered


class UnknownEndpoint(LookupError):
    def __init__(self, endpoint: str, known: list[str]) -> None:
        super().__init__(f"no live endpoint named {endpoint!r} (endpoints: {', '.join(known) or 'none'})")
        self.endpoint, self.known = endpoint, known


class RoutesUnreadable(Exception):
    """The resolver's routes exist but cannot be read (a broken file): the gateway answers 503,
    since no endpoint can be told apart from an unknown one."""


class Resolver(Protocol):
    def resolve(self, endpoint: str) -> Upstream:
        """The endpoint's upstream, as of now; UnknownEndpoint if none, RoutesUnreadable if the routes are broken."""
        ...

    def endpoints(self) -> list[str]: ...


def load_api_key_teams(path: Path) -> dict[str, str]:
    """{sha256(API key): team} from a JSON or YAML file; an entry that is not a digest is refused
    without echoing it, since it may be a pasted key."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) if Path(path).suffix in (".yaml", ".yml") \
            else json.loads(Path(path).read_text() or "{}")
    except FileNotFoundError:
        raise ValueError(f"API-key mapping {path} does not exist") from None
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"API-key mapping {path} is not readable JSON/YAML: {type(e).__name__}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"API-key mapping {path} must be an object of sha256 -> team")
    mapping: dict[str, str] = {}
    for number, (digest, team) in enumerate(raw.items(), 1):
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"API-key mapping {path}: entry {number} is not a lowercase sha256 hex digest; "
                             "store the output of `aiplat gateway hash-key`, never the key itself")
        if not isinstance(team, str) or not LABEL_VALUE.fullmatch(team):
            raise ValueError(f"API-key mapping {path}: entry {number} ({digest[:12]}...) has no valid team name")
        mapping[digest] = normalize_team(team)
    return mapping


def load_hard_budgets(path: Path) -> dict[str, float]:
    """{team: daily hard budget} from a JSON or YAML file; team names normalized (`ML` = `team:ml`)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"hard budgets {path} are not readable JSON/YAML: {type(e).__name__}") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"hard budgets {path} must be an object of team -> daily amount")
    budgets: dict[str, float] = {}
    for team, amount in raw.items():
        name = normalize_team(str(team))
        if not LABEL_VALUE.fullmatch(name) or isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                or amount < 0:
            raise ValueError(f"hard budgets {path}: entry {team!r} needs a team name and an amount >= 0")
        if name in budgets:
            raise ValueError(f"hard budgets {path}: {name} is listed twice (team names are case-insensitive)")
        budgets[name] = float(amount)
    return budgets


def label_problem(header: str, value: str) -> str | None:
    """Why a team/feature label cannot be used, or None."""
    if LABEL_VALUE.fullmatch(value):
        return None
    return f"{header} must be 1-80 letters, digits or ':_.-' (got {len(value)} characters)"
