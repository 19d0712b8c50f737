"""Roll an adapter version out to an endpoint on its base model's shared server, on any backend.

- No route yet (or its server is down): load the version and route all traffic to it.
- The route already sends everything to this version, and the server holds it: nothing to do.
- Otherwise a canary (aiplat.serving.adapter_canary): the candidate is loaded beside the live version,
  gets `policy.weight`% of the endpoint's traffic through the gateway, and is judged on the
  gateway's own request records; it then takes 100% (the old version stays loaded: the rollback
  target) or the live version takes 100% again and the candidate is unloaded (AdapterRolloutFailed).
  A canary left half-way by a killed run (a route still split between two versions) is settled back
  to its live version first, its left-over candidate unloaded and recorded; the canary then runs again
  from the start (`_settled`).
Only this endpoint's route changes; the other models on the same server keep serving as they were.

`roll_back_adapter` is the incident path: no canary, the given earlier version takes 100% at once.
Callers go through aiplat.serving.control (authorize, verify, act, audit) around these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from aiplat.operations.requests import RequestRecord
from aiplat.serving.adapter_canary import AdapterCanaryPolicy, AdapterVerdict, canary_split, decided_split, judge
from aiplat.serving.adapters import adapter_version
from aiplat.serving.backend import AdapterVersion, EndpointState, ServingBackend


@dataclass(frozen=True)
class CanaryTraffic:
    """How a canary gets measured: requests to the endpoint through the gateway, and the gateway's
    request log they land in. Bounded in requests and seconds: no canary waits forever."""

    send: Callable[[str], object]  # one request to the endpoint
    records: Callable[[], Sequence[RequestRecord]]
    max_requests: int = 200
    timeout_s: float = 900.0


def gateway_traffic(gateway_url: str, request_log, prompts: Sequence[str], api_key: str | None = None,
                    max_tokens: int = 16) -> CanaryTraffic:
    """A canary's requests: `prompts` in turn, through the gateway at `gateway_url`, which records each
    under the adapter version that answered in `request_log` (aiplat.operations.requests.RequestLog)."""
    import itertools
    from datetime import date, timedelta

    import httpx

    from aiplat.operations.requests import HEADER_FEATURE
    from aiplat.serving.server import json_headers

    turn = itertools.cycle(prompts)
    # Billed to the key's team in prod (the canary is the platform's own traffic); a feature label says what it was.
    headers = {**json_headers(api_key), HEADER_FEATURE: "canary"}

    def send(endpoint: str) -> int:
        body = {"model": endpoint, "prompt": next(turn), "max_tokens": max_tokens, "temperature": 0}
        try:
            return httpx.post(f"{gateway_url.rstrip('/')}/v1/completions", json=body, headers=headers,
                              timeout=300).status_code
        except httpx.HTTPError as e:
            raise RuntimeError(f"the canary's gateway at {gateway_url} did not answer ({type(e).__name__}: {e}); "
                               "locally: `aiplat stack up gateway`") from e

    # From yesterday: a canary may span midnight (judge keeps only records since the canary started).
    return CanaryTraffic(send, lambda: request_log.read(date.today() - timedelta(days=1))[0])


@dataclass(frozen=True)
class AdapterRollout:
    endpoint: str
    action: str  # deployed | unchanged | switched | rolled back
    live: str  # the adapter version taking the endpoint's traffic now
    previous: str = ""
    verdict: AdapterVerdict | None = None
    settled: tuple[str, ...] = ()  # candidates left in the route by an interrupted canary, taken out first


class AdapterRolloutFailed(RuntimeError):
    """The candidate is not serving; the live version still is, at 100%."""

    def __init__(self, message: str, verdict: AdapterVerdict | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


def roll_out_adapter(backend: ServingBackend, endpoint: str, adapter: AdapterVersion,
                     policy: AdapterCanaryPolicy = AdapterCanaryPolicy(),
                     traffic: CanaryTraffic | None = None,
                     on_settled: Callable[[tuple[str, ...], str], None] | None = None) -> AdapterRollout:
    """See the module doc; `on_settled(left_over, live)` is told when an interrupted canary was settled."""
    state, settled = _settled(backend, endpoint, on_settled)
    if state is None or state.health == "down" or not state.loaded:
        backend.load_adapter(adapter)
        backend.route(endpoint, adapter.base, {adapter.name: 100.0})
        return AdapterRollout(endpoint, "deployed", adapter.name, state.live if state else "", settled=settled)
    if state.live == adapter.name:
        return AdapterRollout(endpoint, "unchanged", adapter.name, settled=settled)
    if state.base and state.base != adapter.base:
        raise ValueError(f"{endpoint} is served over base {state.base!r}, {adapter.name} is an adapter of "
                         f"{adapter.base!r}: a change of base model is a new endpoint, not a canary")
    if traffic is None:
        raise ValueError(f"{endpoint}: a canary needs traffic to measure (CanaryTraffic)")

    live = state.live
    backend.load_adapter(adapter)
    since = datetime.now(timezone.utc)
    backend.route(endpoint, adapter.base, canary_split(endpoint, live, adapter.name, policy))
    verdict = _measure(endpoint, live, adapter.name, policy, traffic, since)
    if verdict.passed is None:  # out of requests or time: the canary proved nothing, so it does not switch
        verdict = AdapterVerdict(endpoint, live, adapter.name, False,
                                 ("undecided at its deadline: " + "; ".join(verdict.reasons),), verdict.figures)
    backend.route(endpoint, adapter.base, decided_split(verdict))
    if not verdict.passed:
        backend.unload_adapter(adapter.base, adapter.name)
        raise AdapterRolloutFailed(f"{verdict.summary()}; {live} serves {endpoint} again at 100%", verdict)
    return AdapterRollout(endpoint, "switched", adapter.name, live, verdict, settled)


def roll_back_adapter(backend: ServingBackend, endpoint: str, previous: AdapterVersion) -> AdapterRollout:
    """`previous` takes all of the endpoint's traffic now; the version it replaces is unloaded."""
    state = backend.live_state(endpoint)
    if state is None:
        raise LookupError(f"endpoint {endpoint!r} has no adapter route to roll back")
    if state.live == previous.name and len(state.split) == 1:
        return AdapterRollout(endpoint, "unchanged", previous.name)
    backend.load_adapter(previous)
    backend.route(endpoint, previous.base, {previous.name: 100.0})
    for name in state.split:
        if name != previous.name:
            backend.unload_adapter(previous.base, name)
    return AdapterRollout(endpoint, "rolled back", previous.name, state.live)


def _settled(backend: ServingBackend, endpoint: str,
             on_settled: Callable[[tuple[str, ...], str], None] | None = None
             ) -> tuple[EndpointState | None, tuple[str, ...]]:
    """The endpoint's state with a canary left half-way settled back to its live version, and the
    left-over candidates it took out of the route.

    Why: a run killed during its canary (kill -9, a lost node; tests/test_fault_drills_serving.py)
    leaves the route split between the live version and its candidate, the candidate loaded and
    answering its share with no verdict ever coming. Nothing else ends that canary, so the next
    rollout of the endpoint does, before anything else: the live version takes 100% again, each
    left-over candidate is unloaded and reported (`on_settled`, which deploy_adapter writes to the
    audit log), and the rollout then proceeds from a settled route: a candidate gets a whole new
    canary, measured from its start, never the half-measured one it had.

    The live version is the first one the split lists: `canary_split` (the only writer of a split
    route) writes it first and both route stores keep that order. The larger share is not used: a
    canary weight of 50 or more gives the candidate as much traffic as the live version, or more."""
    state = backend.live_state(endpoint)
    if state is None or len(state.split) == 1 or state.health == "down":
        return state, ()
    live = next(iter(state.split))
    left_over = tuple(name for name in state.split if name != live)
    backend.route(endpoint, state.base, {live: 100.0})
    for name in left_over:
        backend.unload_adapter(state.base, name)
    if on_settled is not None:
        on_settled(left_over, live)
    return backend.live_state(endpoint), left_over


def _measure(endpoint: str, live: str, candidate: str, policy: AdapterCanaryPolicy, traffic: CanaryTraffic,
             since: datetime) -> AdapterVerdict:
    deadline = time.monotonic() + traffic.timeout_s
    verdict = judge(traffic.records(), endpoint, live, candidate, policy, since)
    sent = 0
    while verdict.passed is None and sent < traffic.max_requests and time.monotonic() < deadline:
        traffic.send(endpoint)
        sent += 1
        verdict = judge(traffic.records(), endpoint, live, candidate, policy, since)
    return verdict


# --- the same, through the control sequence: what the assets and the CLI call ------------------------------

def _verifier(adapter: AdapterVersion, keys, registry=None):
    """The adapter folder checked as a LoRA adapter, as the exact adapter signature recorded on its
    MLflow version (with `registry`, an MlflowClient), and against its promotion attestation."""
    def verify() -> None:
        from pathlib import Path

        from aiplat.security.approval import verify_for_serving
        from aiplat.security.signing import check_against_version
        from aiplat.serving.adapters import check_adapter_folder

        folder = Path(adapter.folder or adapter.source)
        check_adapter_folder(folder)
        if registry is not None:
            check_against_version(registry, adapter.model, adapter.version, folder, keys.signature, adapter=True)
        verify_for_serving(folder, adapter.attestation, keys, model=adapter.model, version=adapter.version)

    return verify


def deploy_adapter(caller, backend: ServingBackend, endpoint: str, adapter: AdapterVersion, keys,
                   policy: AdapterCanaryPolicy = AdapterCanaryPolicy(),
                   traffic: CanaryTraffic | None = None, registry=None) -> AdapterRollout:
    """`roll_out_adapter` after the caller is authorized for `adapter.model` and its bytes verified
    against their signature (and the one recorded on the version in `registry`) and promotion
    attestation (aiplat.serving.control); audited."""
    from aiplat.security.access import record
    from aiplat.serving.control import Change, controlled

    def settled(left_over: tuple[str, ...], live: str) -> None:  # logged when it happens, whatever the canary then says
        record("interrupted canary settled", adapter.model, adapter.version, caller.identity, caller.audit,
               **{"endpoint": endpoint, **caller.context, "unloaded": ",".join(left_over), "live": live,
                  "reason": "left over from an interrupted canary"})

    return controlled(caller, Change("deploy", adapter.model, adapter.version, endpoint, "deployed"),
                      lambda: roll_out_adapter(backend, endpoint, adapter, policy, traffic, settled),
                      _verifier(adapter, keys, registry),
                      lambda r: {"action": r.action, "adapter": r.live, "previous": r.previous or "-",
                                 **({"settled": ",".join(r.settled)} if r.settled else {})})


def roll_back_adapter_controlled(caller, backend: ServingBackend, endpoint: str, previous: AdapterVersion,
                                 keys, registry=None) -> AdapterRollout:
    """`roll_back_adapter` behind the same authorize -> verify -> act -> audit as `deploy_adapter`."""
    from aiplat.serving.control import Change, controlled

    return controlled(caller, Change("rollback", previous.model, previous.version, endpoint, "adapter rolled back"),
                      lambda: roll_back_adapter(backend, endpoint, previous), _verifier(previous, keys, registry),
                      lambda r: {"action": r.action, "adapter": r.live, "from": r.previous or "-"})


def stop_endpoint(caller, backend: ServingBackend, endpoint: str, model: str) -> EndpointState | None:
    from aiplat.serving.control import Change, controlled

    state = backend.live_state(endpoint)
    version = adapter_version(state.live) if state else None
    return controlled(caller, Change("stop", model, version, endpoint, "adapter endpoint stopped"),
                      lambda: backend.stop(endpoint), details=lambda s: {"unrouted": ",".join(s.split) if s else "-"})
