"""Where the metering gateway sends a request, and who it is billed to.

A request names an endpoint (`model` = a name from `aiplat endpoints list`); a resolver turns it
into the upstream base URL and the model name that upstream serves. Locally that is the endpoint
registry, read at every request so a canary switch or a rollback is followed at once; in prod it
is a URL template pointing at the in-cluster Gateway's per-endpoint route.
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
from aiplat.serving.registry import EndpointRegistry

# Team and feature become Prometheus label values and request-log fields: bounded and plain.
LABEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.\-]{0,79}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ENDPOINT_NAME = re.compile(r"[a-z]([-a-z0-9]{0,40}[a-z0-9])?")


@dataclass(frozen=True)
class Upstream:
    endpoint: str
    base_url: str  # without /v1
    served_model_name: str
    model_label: str  # what the request log's `model` says: the version when known


class UnknownEndpoint(LookupError):
    def __init__(self, endpoint: str, known: list[str]) -> None:
        super().__init__(f"no live endpoint named {endpoint!r} (endpoints: {', '.join(known) or 'none'})")
        self.endpoint, self.known = endpoint, known


class Resolver(Protocol):
    def resolve(self, endpoint: str) -> Upstream: ...

    def endpoints(self) -> list[str]: ...


class RegistryResolver:
    """The local runtime: the endpoint's live vLLM server from the registry, as of this request."""

    def __init__(self, registry: EndpointRegistry | None = None) -> None:
        self.registry = registry or EndpointRegistry()

    def endpoints(self) -> list[str]:
        return sorted(name for name, entry in self.registry.all().items() if entry.live is not None)

    def resolve(self, endpoint: str) -> Upstream:
        entry = self.registry.get(endpoint)
        if entry is None or entry.live is None:
            raise UnknownEndpoint(endpoint, self.endpoints())
        live = entry.live
        return Upstream(endpoint, live.url.rstrip("/"), live.served_model_name, live.model_version)


class TemplateResolver:
    """Prod: `template` with {endpoint} filled in, e.g. http://inference-gateway.gateway-system.svc/{endpoint}
    (the HTTPRoute of aiplat.serving.k8s serves /<endpoint>/v1 and names the model after the endpoint).
    With `known` empty every well-formed name is forwarded and the cluster's routes decide."""

    def __init__(self, template: str, known: tuple[str, ...] = ()) -> None:
        if "{endpoint}" not in template:
            raise ValueError(f"upstream template {template!r} has no {{endpoint}} placeholder")
        self.template, self.known = template, tuple(sorted(known))

    def endpoints(self) -> list[str]:
        return list(self.known)

    def resolve(self, endpoint: str) -> Upstream:
        # The name goes into a URL: only DNS-shaped names, so no request can steer the path.
        if not ENDPOINT_NAME.fullmatch(endpoint) or (self.known and endpoint not in self.known):
            raise UnknownEndpoint(endpoint, list(self.known))
        return Upstream(endpoint, self.template.format(endpoint=endpoint).rstrip("/"), endpoint, endpoint)


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
