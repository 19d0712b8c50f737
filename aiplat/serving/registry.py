"""The registry of endpoints: one JSON file under the state folder that says what serves where.

Written atomically (temp file + rename) under an exclusive lock, so a reader never sees half a
file and two writers (a Dagster step and the CLI) never lose each other's changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from aiplat.config import state_dir
from aiplat.locks import exclusive

REGISTRY_VERSION = 1


def serving_dir() -> Path:
    return state_dir() / "serving"


def default_registry_path() -> Path:
    return serving_dir() / "endpoints.json"


@dataclass(frozen=True)
class ServerRecord:
    """One running vLLM server: which model it serves and how to find and stop its process."""

    url: str
    port: int
    pid: int
    create_time: float  # aiplat.processes.start_time: with pid, tells our process from a later one that reused the PID
    model_version: str
    model_path: str
    served_model_name: str
    started_at: str
    log_file: str
    pid_file: str
    health: str = "ready"  # ready | unhealthy | down (as of `checked_at`)
    checked_at: str = ""
    registered_name: str = ""
    attestation: str = ""  # the promotion attestation it was verified with: a rollback verifies it again

    @classmethod
    def from_dict(cls, data: dict) -> ServerRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EndpointRecord:
    """A named endpoint: the server that takes its traffic, and a candidate while a canary runs."""

    name: str
    live: ServerRecord | None
    candidate: ServerRecord | None = None
    history: list[dict] = field(default_factory=list)  # deploys, switches, rollbacks (newest last)

    @classmethod
    def from_dict(cls, data: dict) -> EndpointRecord:
        return cls(
            name=data["name"],
            live=ServerRecord.from_dict(data["live"]) if data.get("live") else None,
            candidate=ServerRecord.from_dict(data["candidate"]) if data.get("candidate") else None,
            history=list(data.get("history", [])),
        )

    def to_dict(self) -> dict:
        return asdict(self)


class RegistryError(Exception):
    pass


class EndpointRegistry:
    """Read and update the endpoints file. All updates go through `update`, which holds the lock."""

    HISTORY_KEPT = 50

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_registry_path()

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _locked(self):
        return exclusive(self._lock_path)

    def _read(self) -> dict[str, EndpointRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RegistryError(f"endpoint registry {self.path} is unreadable: {e}") from e
        if not isinstance(raw, dict) or not isinstance(raw.get("endpoints"), dict):
            raise RegistryError(f"endpoint registry {self.path} has no 'endpoints' object")
        try:
            return {name: EndpointRecord.from_dict(entry) for name, entry in raw["endpoints"].items()}
        except (KeyError, TypeError) as e:
            raise RegistryError(f"endpoint registry {self.path} has a malformed entry: {e}") from e

    def _write(self, endpoints: dict[str, EndpointRecord]) -> None:
        payload = {"version": REGISTRY_VERSION, "endpoints": {n: e.to_dict() for n, e in sorted(endpoints.items())}}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def all(self) -> dict[str, EndpointRecord]:
        with self._locked():
            return self._read()

    def get(self, name: str) -> EndpointRecord | None:
        return self.all().get(name)

    def update(self, name: str, change: Callable[[EndpointRecord | None], EndpointRecord | None]) -> EndpointRecord | None:
        """Apply `change` to one entry under the lock; returning None removes the entry."""
        with self._locked():
            endpoints = self._read()
            new = change(endpoints.get(name))
            if new is None:
                endpoints.pop(name, None)
            else:
                endpoints[name] = EndpointRecord(new.name, new.live, new.candidate, new.history[-self.HISTORY_KEPT:])
            self._write(endpoints)
            return new
