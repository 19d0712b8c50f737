"""One serving interface over both runtimes: a shared server per base model holding LoRA adapters.

`ServingBackend` is what the assets, the CLI and the adapter rollout (aiplat.serving.adapter_rollout)
call; they never ask which runtime they have. Its methods:
- `load_adapter` / `unload_adapter`: put an approved adapter version on its base model's server, or
  take one off; a load counts only once the server lists it over its base and answered through it;
- `route`: which adapter versions answer an endpoint, by weight (the gateway's split);
- `endpoints`, `live_state`: which endpoints have a route; what the endpoint's route says and what its server really holds, read from the
  server, never from the platform's own notes alone;
- `load_test`: `vllm bench serve` against the endpoint's live adapter;
- `stop`: the endpoint's route removed and its adapters unloaded (the other endpoints on the same
  server keep serving).

Local: `LocalServingBackend` starts one vLLM CPU server per base model the first time an adapter of
it is loaded (`--enable-lora`, runtime loading on) and keeps its record in
`<state>/serving/base-servers.json`; routes are the gateway's adapter-routes file.
Kubernetes: `KubernetesServingBackend` writes the base model's desired-adapters ConfigMap and the
gateway's routes ConfigMap into the manifests folder the cluster applies (GitOps); the pod's
adapter-loader sidecar fetches, verifies and loads; the backend confirms on the server's Service.

Neither verifies approvals itself as a policy decision: that is step 2 of aiplat.serving.control,
and each server verifies again where it loads (the local load through aiplat.serving.adapters, the
sidecar in the pod).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiplat.security.approval import ServingKeys
from aiplat.serving.adapter_routes import AdapterRoute, AdapterRoutes
from aiplat.serving.adapters import (
    AdapterError,
    LoadedAdapter,
    WantedAdapter,
    adapter_name,
    load_adapter,
    served_models,
    unload_adapter,
)
from aiplat.serving.server import LoraSettings, ServerSettings, one_token_completion


class EndpointNotFound(LookupError):
    """The endpoint has no route, or its server does not hold what the route names."""


@dataclass(frozen=True)
class AdapterVersion:
    """One registered adapter version to serve over its base model."""

    model: str
    version: str
    base: str  # the base model's served name: which server holds it
    source: str  # where the server fetches it: a local folder, or an s3:// folder of the model store
    attestation: str  # the promotion attestation approving these bytes as this model and version
    folder: str = ""  # a local copy, verified by the control sequence (prod: downloaded from `source`)

    @property
    def name(self) -> str:
        return adapter_name(self.model, self.version)

    def wanted(self) -> WantedAdapter:
        return WantedAdapter(self.model, self.version, self.source, self.attestation)


@dataclass(frozen=True)
class EndpointState:
    """An adapter-served endpoint as its server reports it."""

    endpoint: str
    base: str
    url: str
    split: dict[str, float]  # the route: adapter -> weight
    loaded: tuple[str, ...]  # of the route's adapters, those the server lists over the base
    health: str  # ready | degraded (a routed adapter is missing) | down

    @property
    def live(self) -> str:
        """The live version: the route's first (a canary's split lists the live version first,
        aiplat.serving.adapter_canary.canary_split, whatever weight the candidate has)."""
        return next(iter(self.split))

    @property
    def split_text(self) -> str:
        return ", ".join(f"{name} {weight:g}%" for name, weight in self.split.items())

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.split) - set(self.loaded)))

    def to_dict(self) -> dict:
        return {"endpoint": self.endpoint, "base": self.base, "url": self.url, "split": self.split,
                "loaded": list(self.loaded), "missing": list(self.missing), "live": self.live, "health": self.health}


class ServingBackend(ABC):
    """The serving operations every runtime provides (see the module doc)."""

    @abstractmethod
    def load_adapter(self, adapter: AdapterVersion) -> LoadedAdapter: ...

    @abstractmethod
    def unload_adapter(self, base: str, name: str) -> None: ...

    @abstractmethod
    def route(self, endpoint: str, base: str, split: Mapping[str, float]) -> AdapterRoute: ...

    @abstractmethod
    def endpoints(self) -> list[str]:
        """The endpoints with an adapter route."""

    @abstractmethod
    def live_state(self, endpoint: str) -> EndpointState | None: ...

    @abstractmethod
    def load_test(self, endpoint: str, concurrencies: tuple[int, ...], prompts: tuple[str, ...],
                  num_prompts: int | None, output_len: int, progress: Callable[[str], None] | None = None): ...

    @abstractmethod
    def stop(self, endpoint: str) -> EndpointState | None: ...

    # --- shared by both: the route's adapters must be on the server before traffic goes to them ----------

    def _check_routable(self, base: str, url: str, split: Mapping[str, float], api_key: str | None = None) -> None:
        listed = served_models(url, api_key)
        absent = sorted(name for name in split if listed.get(name, "") != base)
        if absent:
            raise AdapterError(", ".join(absent), f"not loaded over {base!r} on {url}; load it before routing to it")

    def _state(self, endpoint: str, base: str, url: str, split: Mapping[str, float],
               api_key: str | None = None) -> EndpointState:
        try:
            listed = served_models(url, api_key)
        except (AdapterError, OSError):
            return EndpointState(endpoint, base, url, dict(split), (), "down")
        loaded = tuple(sorted(name for name in split if listed.get(name) == base))
        return EndpointState(endpoint, base, url, dict(split), loaded,
                             "ready" if len(loaded) == len(split) else "degraded")


def _still_routed(routes: Mapping[str, AdapterRoute], url: str, skip: str) -> set[str]:
    return {name for other, route in routes.items() if other != skip and route.base_url == url for name, _ in route.split}


# --- local: vLLM on this machine's CPU -----------------------------------------------------------------


@dataclass
class LocalServingBackend(ServingBackend):
    """One vLLM CPU server per base model (started on first use), adapters loaded at run time."""

    settings: ServerSettings
    keys: ServingKeys
    bases: Mapping[str, Path]  # base model served name -> its prepared folder
    registry_path: Path | None = None
    routes: AdapterRoutes = field(default_factory=AdapterRoutes)
    progress: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        from aiplat.serving.registry import EndpointRegistry, serving_dir

        self._servers = EndpointRegistry(self.registry_path or serving_dir() / "base-servers.json")
        if self.settings.lora is None:
            self.settings = replace(self.settings, lora=LoraSettings())

    def server(self, base: str):
        """The running server of `base` (ServerRecord), started when there is none or it is down."""
        from aiplat.locks import exclusive
        from aiplat.serving.registry import EndpointRecord
        from aiplat.serving.server import check_health, start_server

        if base not in self.bases:
            raise AdapterError(base, f"no prepared base model named {base!r} (known: {', '.join(sorted(self.bases))})")
        with exclusive(self._servers.path.with_suffix(f".{base}.start.lock")):
            entry = self._servers.get(base)
            if entry is not None and entry.live is not None and check_health(entry.live).health == "ready":
                return entry.live
            self.base_digest(base, verify=True)
            record = start_server(f"base-{base}", Path(self.bases[base]), "base", base, self.settings, self.progress)
            self._servers.update(base, lambda _: EndpointRecord(base, record))
            return record

    def base_digest(self, base: str, verify: bool = False) -> str:
        """The folder hash of prepared base `base` (its manifest's); with `verify`, its files are
        hashed again first (before a server starts from them) and a mismatch is an AdapterError."""
        from aiplat.models.manifest import compute_manifest, read_manifest

        folder = Path(self.bases[base])
        recorded = (read_manifest(folder) or {}).get("folder_sha256")
        if not recorded:
            raise AdapterError(base, f"{folder} has no manifest: prepare it with the base_model asset")
        if verify and compute_manifest(folder).folder_sha256 != recorded:
            raise AdapterError(base, f"{folder} no longer matches its manifest ({recorded[:12]}): a file was changed "
                                     "after it was prepared; not serving it (materialize base_model again)")
        return recorded

    def servers(self) -> list:
        """(base model, ServerRecord) of each shared server this backend started."""
        return [(base, entry.live) for base, entry in sorted(self._servers.all().items()) if entry.live is not None]

    def _running(self, base: str):
        entry = self._servers.get(base)
        if entry is None or entry.live is None:
            raise AdapterError(base, f"no server of base model {base!r} is running")
        return entry.live

    def load_adapter(self, adapter: AdapterVersion) -> LoadedAdapter:
        url = self.server(adapter.base).url
        folder = Path(adapter.folder or adapter.source)
        if served_models(url).get(adapter.name) == adapter.base:
            return LoadedAdapter(adapter.name, adapter.model, adapter.version, str(folder), adapter.base, "")
        return load_adapter(url, adapter.base, folder, model=adapter.model, version=adapter.version,
                            attestation=adapter.attestation, keys=self.keys, max_rank=self.settings.lora.max_lora_rank,
                            base_sha256=self.base_digest(adapter.base))

    def unload_adapter(self, base: str, name: str) -> None:
        unload_adapter(self._running(base).url, name, missing_ok=True)

    def route(self, endpoint: str, base: str, split: Mapping[str, float]) -> AdapterRoute:
        url = self._running(base).url
        self._check_routable(base, url, split)
        return self.routes.set(endpoint, url, split)

    def _base_of(self, url: str) -> str:
        for base, entry in self._servers.all().items():
            if entry.live is not None and entry.live.url == url:
                return base
        return ""

    def endpoints(self) -> list[str]:
        return sorted(self.routes.all())

    def live_state(self, endpoint: str) -> EndpointState | None:
        route = self.routes.get(endpoint)
        if route is None:
            return None
        return self._state(endpoint, self._base_of(route.base_url), route.base_url, dict(route.split))

    def load_test(self, endpoint: str, concurrencies: tuple[int, ...], prompts: tuple[str, ...],
                  num_prompts: int | None, output_len: int, progress: Callable[[str], None] | None = None):
        from aiplat.serving.loadtest import LoadTestError, run_load_test

        state = self.live_state(endpoint)
        if state is None or state.health != "ready":
            raise LoadTestError(f"endpoint {endpoint!r} is {state.health if state else 'not routed'}; not load-testing it")
        return run_load_test(state.url, state.live, str(self.bases[state.base]), concurrencies, prompts, num_prompts,
                             output_len, self.settings, progress=progress)

    def stop(self, endpoint: str) -> EndpointState | None:
        state = self.live_state(endpoint)
        if state is None:
            return None
        self.routes.remove(endpoint)
        keep = _still_routed(self.routes.all(), state.url, endpoint)
        if state.health != "down":
            for name in sorted(set(state.split) - keep):
                unload_adapter(state.url, name, missing_ok=True)
        return state

    def stop_server(self, base: str) -> None:
        """Stop `base`'s server (its routes then answer 502 until it is started again)."""
        from aiplat.serving.server import stop_server

        entry = self._servers.get(base)
        if entry is not None and entry.live is not None:
            stop_server(entry.live)
        self._servers.update(base, lambda _: None)


# --- Kubernetes: desired state as manifests, confirmed on the server's Service --------------------------


@dataclass
class KubernetesServingBackend(ServingBackend):
    """Adapter servers in a cluster (aiplat.serving.k8s_adapters), changed through the manifests the
    cluster applies; every change is confirmed against the running server before it counts."""

    servers: Mapping[str, object]  # base served name -> k8s_adapters.AdapterServerSpec
    manifests_dir: Path
    api_key: str | None = None
    service_url: Callable[[object], str] | None = None  # spec -> URL of its Service (default: cluster DNS)
    confirm_timeout_s: float = 300.0
    poll_s: float = 2.0
    namespace: str = "team-ml"
    s3_client: object = None  # boto3 S3 client of the model store (None: from the environment)

    def url(self, base: str) -> str:
        from aiplat.serving.k8s import PORT

        spec = self._spec(base)
        return self.service_url(spec) if self.service_url else f"http://{spec.name}.{spec.namespace}.svc:{PORT}"

    def _spec(self, base: str):
        if base not in self.servers:
            raise AdapterError(base, f"no adapter server for base model {base!r} (known: {', '.join(sorted(self.servers))})")
        return self.servers[base]

    # The platform's intent, kept in the rendered manifests themselves (what the cluster applies).
    def _desired_file(self, base: str) -> Path:
        return Path(self.manifests_dir) / f"{self._spec(base).name}.yaml"

    def desired(self, base: str) -> list[WantedAdapter]:
        import json

        import yaml

        path = self._desired_file(base)
        if not path.is_file():
            return []
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap":
                raw = json.loads(doc["data"]["desired.json"])
                return [WantedAdapter(a["model"], str(a["version"]), a["source"], a.get("attestation", ""))
                        for a in raw.get("adapters", [])]
        return []

    def _write_desired(self, base: str, wanted: list[WantedAdapter]) -> None:
        from aiplat.serving.k8s import to_yaml
        from aiplat.serving.k8s_adapters import render_adapter_server

        _atomic_write(self._desired_file(base), to_yaml(render_adapter_server(self._spec(base), wanted)))

    def _routes_file(self) -> Path:
        return Path(self.manifests_dir) / "aiplat-adapter-routes.yaml"

    def _routes(self) -> dict[str, AdapterRoute]:
        import json

        import yaml

        path = self._routes_file()
        if not path.is_file():
            return {}
        doc = yaml.safe_load(path.read_text())
        raw = json.loads(doc["data"]["adapter-routes.json"])
        return {name: AdapterRoute(name, entry["base_url"], tuple((a, float(w)) for a, w in entry["split"].items()),
                                   entry.get("updated", "")) for name, entry in raw.items()}

    def _write_routes(self, routes: Mapping[str, AdapterRoute]) -> None:
        from aiplat.serving.k8s import to_yaml
        from aiplat.serving.k8s_adapters import routes_configmap

        _atomic_write(self._routes_file(), to_yaml([routes_configmap(list(routes.values()), self.namespace)]))

    def _wait(self, base: str, condition: Callable[[dict], bool], what: str) -> dict:
        deadline = time.monotonic() + self.confirm_timeout_s
        last: object = None
        while True:
            try:
                listed = served_models(self.url(base), self.api_key)
                if condition(listed):
                    return listed
                last = sorted(listed)
            except (AdapterError, OSError) as e:
                last = e
            if time.monotonic() >= deadline:
                raise AdapterError(what, f"the server of {base!r} did not confirm within {self.confirm_timeout_s:.0f} s "
                                         f"(last seen: {last}); see the adapter-loader container's log")
            time.sleep(self.poll_s)

    def load_adapter(self, adapter: AdapterVersion) -> LoadedAdapter:
        if adapter.folder:  # the copy the control sequence verified goes to the store the pod pulls from
            from aiplat.serving.adapter_loader import s3_publish

            s3_publish(Path(adapter.folder), adapter.source, self.s3_client)
        previous = self.desired(adapter.base)
        self._write_desired(adapter.base, [w for w in previous if w.name != adapter.name] + [adapter.wanted()])
        try:
            self._wait(adapter.base, lambda listed: listed.get(adapter.name) == adapter.base, adapter.name)
            problem = one_token_completion(self.url(adapter.base), adapter.name, api_key=self.api_key)
            if problem is not None:
                raise AdapterError(adapter.name, f"listed but not answering: {problem}")
        except AdapterError:
            self._write_desired(adapter.base, previous)  # the sidecar refused it: leave the intent as it was
            raise
        return LoadedAdapter(adapter.name, adapter.model, adapter.version, adapter.source, adapter.base, "")

    def unload_adapter(self, base: str, name: str) -> None:
        self._write_desired(base, [w for w in self.desired(base) if w.name != name])
        self._wait(base, lambda listed: name not in listed, name)

    def route(self, endpoint: str, base: str, split: Mapping[str, float]) -> AdapterRoute:
        from datetime import datetime, timezone

        url = self.url(base)
        self._check_routable(base, url, split, self.api_key)
        route = AdapterRoute(endpoint, url, tuple((a, float(w)) for a, w in split.items()),
                             datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._write_routes({**self._routes(), endpoint: route})
        return route

    def _base_of(self, url: str) -> str:
        return next((base for base in self.servers if self.url(base) == url), "")

    def endpoints(self) -> list[str]:
        return sorted(self._routes())

    def live_state(self, endpoint: str) -> EndpointState | None:
        route = self._routes().get(endpoint)
        if route is None:
            return None
        return self._state(endpoint, self._base_of(route.base_url), route.base_url, dict(route.split), self.api_key)

    def load_test(self, endpoint: str, concurrencies: tuple[int, ...], prompts: tuple[str, ...],
                  num_prompts: int | None, output_len: int, progress: Callable[[str], None] | None = None):
        from aiplat.serving.loadtest import LoadTestError

        # `vllm bench serve` needs vLLM and the base model's tokenizer, which the platform image (where
        # Dagster steps run) does not carry; a made-up report would be worse than none.
        raise LoadTestError(f"{endpoint}: in Kubernetes, load-test through the gateway with `vllm bench serve` "
                            "from the serving image; a Dagster step has no vLLM to run it")

    def stop(self, endpoint: str) -> EndpointState | None:
        state = self.live_state(endpoint)
        if state is None:
            return None
        routes = self._routes()
        routes.pop(endpoint, None)
        self._write_routes(routes)
        keep = _still_routed(routes, state.url, endpoint)
        if state.base:
            self._write_desired(state.base, [w for w in self.desired(state.base)
                                             if w.name in keep or w.name not in state.split])
        return state


def _atomic_write(path: Path, text: str) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
