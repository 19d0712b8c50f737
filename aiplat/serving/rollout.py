"""Roll a model version out to an endpoint: the one function the asset and the CLI call.

No live endpoint yet: start it (a failed start leaves nothing behind and says why).
Live endpoint already serves this version and is healthy: nothing to do.
Otherwise: canary, then switch or roll back (aiplat.serving.canary).
A manager with a public key verifies the model's signature first; a SignatureError leaves the
endpoint's registry entry and servers exactly as they were (not even a leftover canary is cleared).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiplat.serving.canary import DEFAULT_PROBES, CanaryPolicy, CanaryVerdict, Rollback, run_canary
from aiplat.serving.champion import ModelRef
from aiplat.serving.manager import EndpointManager
from aiplat.serving.registry import ServerRecord
from aiplat.serving.server import ServerStartError, check_health


class RolloutFailed(RuntimeError):
    """The new version is not serving; the previous endpoint (if any) still is."""

    def __init__(self, message: str, verdict: CanaryVerdict | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


@dataclass(frozen=True)
class RolloutResult:
    endpoint: str
    action: str  # deployed | switched | unchanged
    live: ServerRecord
    verdict: CanaryVerdict | None = None


def roll_out(
    manager: EndpointManager,
    name: str,
    model: ModelRef,
    policy: CanaryPolicy = CanaryPolicy(),
    rollback: Rollback | None = None,
    probes: Sequence[str] = DEFAULT_PROBES,
    load_sample: Sequence[str] = (),
) -> RolloutResult:
    manager.verify(model)
    current = manager.registry.get(name)
    if current is not None and current.candidate is not None:
        # A canary that died half-way (killed step): its candidate takes no traffic; clear it.
        manager.discard_candidate(name, reason="left over from an interrupted canary")
        current = manager.registry.get(name)
    live = current.live if current else None
    if live is not None and check_health(live).health == "down":
        # Its process is gone: nothing serves, nothing to compare against; start the new version.
        manager.stop(name)
        live = None

    if live is None:
        try:
            record = manager.deploy(name, model)
        except ServerStartError as e:
            note = rollback() if rollback else ""
            raise RolloutFailed(f"endpoint {name!r} was not deployed: {e}" + (f"\nrollback: {note}" if note else "")) from e
        return RolloutResult(name, "deployed", record.live)

    if live.model_version == str(model.version) and live.model_path == str(model.path):
        return RolloutResult(name, "unchanged", manager.refresh(name).live)

    verdict = run_canary(manager, name, model, policy, probes, load_sample, rollback)
    if not verdict.passed:
        raise RolloutFailed(verdict.summary, verdict)
    return RolloutResult(name, "switched", manager.get(name).live, verdict)
