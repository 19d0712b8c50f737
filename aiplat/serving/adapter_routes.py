"""Which adapter versions answer an endpoint, by weight: the gateway's canary split per model.

An endpoint served as LoRA adapters on a shared base-model server has a route: the server's URL
and a split of its traffic between adapter versions (`ticket-triage@3: 90, ticket-triage@4: 10`).
The gateway reads the routes at every request, draws one adapter by weight and sends the request
to the server with `model` set to that adapter; its request log then records the adapter version
in `model`, so each version's latency, errors and tokens come from the gateway's own records
(vLLM counts adapter traffic under the base model). Switching a canary or rolling it back rewrites
one endpoint's route: the other endpoints on the same server are not touched.

The store is a JSON file: locally under the state folder (`serving/adapter-routes.json`), written
atomically under an flock by the serving backend; in prod the `aiplat-adapter-routes` ConfigMap
(aiplat.serving.k8s_adapters.routes_configmap) that the Kubernetes backend writes into the GitOps
manifests folder, mounted into the gateway pod as a file (aiplat.serving.gateway_k8s). It is the
gateway's only routing: an endpoint without a route does not exist for it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from aiplat.config import state_dir
from aiplat.locks import exclusive
from aiplat.operations.requests import RequestRecord
from aiplat.serving.gateway_routing import RoutesUnreadable, UnknownEndpoint, Upstream


@dataclass(frozen=True)
class AdapterRoute:
    endpoint: str
    base_url: str  # the shared server, without /v1
    split: tuple[tuple[str, float], ...]  # (adapter name, weight > 0)
    updated: str = ""

    def __post_init__(self) -> None:
        if not self.split:
            raise ValueError(f"route {self.endpoint!r}: no adapter to send traffic to")
        if any(weight <= 0 for _, weight in self.split):
            raise ValueError(f"route {self.endpoint!r}: every weight must be > 0 (leave an adapter out instead)")
        if len({name for name, _ in self.split}) != len(self.split):
            raise ValueError(f"route {self.endpoint!r}: an adapter is listed twice")

    def share(self, adapter: str) -> float:
        total = sum(w for _, w in self.split)
        return sum(w for name, w in self.split if name == adapter) / total

    def to_dict(self) -> dict:
        return {"base_url": self.base_url, "split": {name: weight for name, weight in self.split},
                "updated": self.updated}


def default_routes_path() -> Path:
    return state_dir() / "serving" / "adapter-routes.json"


class AdapterRoutes:
    """The route of each adapter-served endpoint (see the module doc)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_routes_path()

    def all(self) -> dict[str, AdapterRoute]:
        """Every route; none while the file does not exist yet (nothing served so far). A file that
        exists but cannot be read is RoutesUnreadable, never taken for "no routes"."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RoutesUnreadable(f"adapter routes {self.path} are unreadable: {type(e).__name__}: {e}") from None
        try:
            return {name: AdapterRoute(name, entry["base_url"], tuple((a, float(w)) for a, w in entry["split"].items()),
                                       entry.get("updated", ""))
                    for name, entry in raw.items()}
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise RoutesUnreadable(f"adapter routes {self.path} are malformed: {type(e).__name__}: {e}") from None

    def get(self, endpoint: str) -> AdapterRoute | None:
        return self.all().get(endpoint)

    def set(self, endpoint: str, base_url: str, split: Mapping[str, float]) -> AdapterRoute:
        """Route `endpoint` to `base_url` with this split (replacing its route; others unchanged)."""
        route = AdapterRoute(endpoint, base_url.rstrip("/"), tuple((a, float(w)) for a, w in split.items()),
                             datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with self._locked():
            routes = self.all()
            routes[endpoint] = route
            self._write(routes)
        return route

    def remove(self, endpoint: str) -> bool:
        with self._locked():
            routes = self.all()
            found = routes.pop(endpoint, None) is not None
            if found:
                self._write(routes)
        return found

    def _write(self, routes: Mapping[str, AdapterRoute]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({name: r.to_dict() for name, r in sorted(routes.items())}, indent=2))
        os.replace(tmp, self.path)

    def _locked(self):
        return exclusive(self.path.with_suffix(".lock"))


class AdapterRouteResolver:
    """The gateway's resolver: an endpoint's route from `routes`, re-read at every request, one
    adapter drawn by weight. An endpoint with no route is UnknownEndpoint listing the routed ones."""

    def __init__(self, routes: AdapterRoutes, rng: random.Random | None = None) -> None:
        self.routes = routes
        self.rng = rng or random.Random()

    def endpoints(self) -> list[str]:
        return sorted(self.routes.all())

    def resolve(self, endpoint: str) -> Upstream:
        routes = self.routes.all()
        route = routes.get(endpoint)
        if route is None:
            raise UnknownEndpoint(endpoint, sorted(routes))
        names, weights = zip(*route.split)
        adapter = self.rng.choices(names, weights=weights)[0]
        # The request log's `model` is the adapter drawn (`<model>@<version>`): each version's figures.
        return Upstream(endpoint, route.base_url, adapter, adapter)


# --- each version's figures, from the gateway's request log -----------------------------------------

@dataclass(frozen=True)
class AdapterFigures:
    adapter: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_p50_ms: float
    latency_p95_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def adapter_figures(records: Sequence[RequestRecord], endpoint: str, since: datetime | None = None) -> dict[str, AdapterFigures]:
    """{adapter version: its figures} for `endpoint`'s requests in the gateway's request log."""
    from aiplat.evaluation.metrics import percentile

    grouped: dict[str, list[RequestRecord]] = {}
    for record in records:
        if record.endpoint == endpoint and (since is None or record.timestamp >= since):
            grouped.setdefault(record.model, []).append(record)
    figures = {}
    for adapter, rows in grouped.items():
        latencies = [r.latency_ms for r in rows if r.ok]
        figures[adapter] = AdapterFigures(
            adapter=adapter, requests=len(rows), errors=sum(not r.ok for r in rows),
            prompt_tokens=sum(r.prompt_tokens for r in rows), completion_tokens=sum(r.completion_tokens for r in rows),
            latency_p50_ms=round(percentile(latencies, 50), 1) if latencies else 0.0,
            latency_p95_ms=round(percentile(latencies, 95), 1) if latencies else 0.0,
        )
    return figures
