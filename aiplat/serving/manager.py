"""EndpointManager: the local runtime's endpoints, one vLLM server per deployed model version.

The registry entry of an endpoint changes only after its new server completed a token, so a
start that fails (bad model, crash, timeout) leaves the previous server serving and the entry
as it was; the error names the cause from the new server's log.

With `keys`, a model folder is verified before any server starts for it: against its build
signature (aiplat.security.signing: a changed, added or missing file raises SignatureError) and
against its promotion attestation (aiplat.security.approval: signed but never approved raises
ApprovalError); neither the registry nor the live server is touched then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from aiplat.security.approval import Approval, ServingKeys
from aiplat.serving.champion import ModelRef
from aiplat.serving.registry import EndpointRecord, EndpointRegistry, ServerRecord
from aiplat.serving.server import (
    Progress,
    ServerSettings,
    check_health,
    start_server,
    stop_server,
)


class EndpointNotFound(LookupError):
    pass


class CandidateBusy(RuntimeError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _event(kind: str, **fields: str) -> dict:
    return {"at": _now(), "event": kind, **fields}


def validate_endpoint_name(name: str) -> str:
    # Also a Kubernetes object name and a served-model name in prod: keep it DNS-1035 shaped.
    import re

    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,40}[a-z0-9])?", name or ""):
        raise ValueError(
            f"endpoint name {name!r} must be lowercase letters, digits and '-', start with a letter, at most 42 characters"
        )
    return name


@dataclass
class EndpointManager:
    settings: ServerSettings = ServerSettings()
    registry: EndpointRegistry | None = None
    progress: Progress | None = None
    keys: ServingKeys | None = None  # set: only signed and approved folders are started

    def verify(self, model: ModelRef) -> Approval | None:
        """The model's verified approval, or SignatureError / ApprovalError; None when this manager
        checks nothing (tests of the server mechanics only)."""
        if self.keys is None:
            return None
        from aiplat.security.approval import verify_for_serving

        return verify_for_serving(model.path, model.attestation, self.keys, model=model.registered_name,
                                  version=model.version)

    def __post_init__(self) -> None:
        if self.registry is None:
            self.registry = EndpointRegistry()

    # --- reading --------------------------------------------------------------------------

    def list(self, check: bool = False) -> list[EndpointRecord]:
        records = sorted(self.registry.all().values(), key=lambda r: r.name)
        if not check:
            return records
        return [self.refresh(r.name) for r in records]

    def get(self, name: str) -> EndpointRecord:
        record = self.registry.get(name)
        if record is None or record.live is None:
            known = ", ".join(sorted(self.registry.all())) or "none"
            raise EndpointNotFound(f"no live endpoint named {name!r} (endpoints: {known})")
        return record

    def refresh(self, name: str) -> EndpointRecord:
        """Re-check health of the endpoint's servers and store it."""
        def change(current: EndpointRecord | None) -> EndpointRecord | None:
            if current is None:
                return None
            return replace(
                current,
                live=check_health(current.live) if current.live else None,
                candidate=check_health(current.candidate) if current.candidate else None,
            )

        updated = self.registry.update(name, change)
        if updated is None:
            raise EndpointNotFound(f"no endpoint named {name!r}")
        return updated

    # --- changing -------------------------------------------------------------------------

    def start_candidate(self, name: str, model: ModelRef, served_model_name: str | None = None) -> ServerRecord:
        """Start `model` beside the live server as the endpoint's candidate (not taking traffic).

        Raises ServerStartError (cause from the log) when it does not become ready; the
        endpoint's registry entry is then unchanged.
        """
        validate_endpoint_name(name)
        self.verify(model)  # before anything starts or is written
        current = self.registry.get(name)
        if current and current.candidate:
            raise CandidateBusy(
                f"endpoint {name!r} already has a candidate (version {current.candidate.model_version} on "
                f"{current.candidate.url}); finish or discard that canary first"
            )
        served = served_model_name or (current.live.served_model_name if current and current.live else name)
        server = replace(start_server(name, model.path, model.version, served, self.settings, self.progress),
                         registered_name=model.registered_name, attestation=model.attestation)

        def change(entry: EndpointRecord | None) -> EndpointRecord:
            entry = entry or EndpointRecord(name=name, live=None)
            return replace(entry, candidate=server,
                           history=entry.history + [_event("candidate started", version=model.version, url=server.url)])

        self.registry.update(name, change)
        return server

    def promote_candidate(self, name: str, reason: str = "") -> EndpointRecord:
        """Switch the endpoint to its candidate, then stop the old live server."""
        old: list[ServerRecord] = []

        def change(entry: EndpointRecord | None) -> EndpointRecord:
            if entry is None or entry.candidate is None:
                raise EndpointNotFound(f"endpoint {name!r} has no candidate to switch to")
            if entry.live:
                old.append(entry.live)
            event = _event("switched", version=entry.candidate.model_version, url=entry.candidate.url,
                           model_path=entry.candidate.model_path,
                           previous_version=entry.live.model_version if entry.live else "",
                           previous_path=entry.live.model_path if entry.live else "",
                           previous_model=entry.live.registered_name if entry.live else "",
                           previous_attestation=entry.live.attestation if entry.live else "", reason=reason)
            return replace(entry, live=entry.candidate, candidate=None, history=entry.history + [event])

        updated = self.registry.update(name, change)
        for server in old:
            stop_server(server)
        return updated

    def discard_candidate(self, name: str, reason: str = "", version: str = "") -> EndpointRecord | None:
        """Stop the candidate; the live server and its entry stay as they are."""
        gone: list[ServerRecord] = []

        def change(entry: EndpointRecord | None) -> EndpointRecord | None:
            if entry is None:
                return None
            if entry.candidate:
                gone.append(entry.candidate)
            event = _event("candidate discarded",
                           version=entry.candidate.model_version if entry.candidate else version, reason=reason)
            if entry.live is None:
                return None  # a first deploy that failed leaves no endpoint behind
            return replace(entry, candidate=None, history=entry.history + [event])

        updated = self.registry.update(name, change)
        for server in gone:
            stop_server(server)
        return updated

    def deploy(self, name: str, model: ModelRef, served_model_name: str | None = None) -> EndpointRecord:
        """Start `model` and switch the endpoint to it as soon as it is ready (no canary)."""
        self.start_candidate(name, model, served_model_name)
        return self.promote_candidate(name, reason="direct deploy")

    def previous_model(self, name: str) -> ModelRef:
        """The version the endpoint served before its last switch (what a rollback returns to)."""
        entry = self.get(name)
        for event in reversed(entry.history):
            if event.get("event") == "switched" and event.get("previous_version") and event.get("previous_path"):
                return ModelRef(event["previous_version"], Path(event["previous_path"]), event.get("previous_model", ""),
                                uri=event["previous_path"], attestation=event.get("previous_attestation", ""))
        raise EndpointNotFound(f"endpoint {name!r} has no earlier version to roll back to")

    def stop(self, name: str) -> EndpointRecord:
        """Stop every server of the endpoint and remove it from the registry."""
        stopped: list[EndpointRecord] = []

        def change(entry: EndpointRecord | None) -> None:
            if entry is None:
                raise EndpointNotFound(f"no endpoint named {name!r}")
            stopped.append(entry)
            return None

        self.registry.update(name, change)
        for server in (stopped[0].live, stopped[0].candidate):
            if server:
                stop_server(server)
        return stopped[0]

    def stop_all(self) -> list[str]:
        names = sorted(self.registry.all())
        for name in names:
            self.stop(name)
        return names


def server_log(record: ServerRecord) -> Path:
    return Path(record.log_file)
