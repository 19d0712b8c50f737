"""The append-only audit log: one JSON line per security-relevant attempt, hash-chained.

Each line carries `prev` (the previous line's hash) and `hash` = sha256(prev + the line's other
fields as canonical JSON), so editing, inserting, reordering or deleting a line in the middle breaks
the chain at that line and `verify` names it. Lines are written with O_APPEND under an exclusive
lock, so concurrent writers (a Dagster step, the CLI) never interleave or fork the chain.
A chain cannot show that its own tail was cut: `head()` gives the last hash to keep elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from aiplat.config import state_dir

GENESIS = "0" * 64


class AuditLogTampered(RuntimeError):
    """The chain does not hold; the message names the first line that breaks it."""


def default_audit_log_path() -> Path:
    return state_dir() / "audit" / "audit.jsonl"


def _canonical(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def line_hash(prev: str, fields: dict) -> str:
    return hashlib.sha256((prev + _canonical(fields)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VerifiedLog:
    path: Path
    entries: int
    head: str


class AuditLog:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_audit_log_path()

    def _last_hash(self, fd: int) -> str:
        size = os.fstat(fd).st_size
        if size == 0:
            return GENESIS
        block, data = 4096, b""
        while True:  # read backwards until the last full line is in hand
            start = max(0, size - len(data) - block)
            chunk = os.pread(fd, size - len(data) - start, start)
            data = chunk + data
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or start == 0:
                break
        try:
            return json.loads(lines[-1])["hash"]
        except (ValueError, KeyError) as e:
            raise AuditLogTampered(f"audit log {self.path}: last line is not a chained entry ({e}); refusing to append") from e

    def append(self, event: str, **fields) -> dict:
        """Append one entry and return it (with `at`, `prev` and `hash`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            read_fd = os.open(self.path, os.O_RDONLY)
            try:
                prev = self._last_hash(read_fd)
            finally:
                os.close(read_fd)
            entry = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields,
                     "prev": prev}
            entry["hash"] = line_hash(prev, entry)
            os.write(fd, (_canonical(entry) + "\n").encode("utf-8"))
            os.fsync(fd)
            return entry
        finally:
            os.close(fd)  # closing releases the lock

    def entries(self) -> Iterator[dict]:
        try:
            with self.path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except ValueError as e:
                            raise AuditLogTampered(f"audit log {self.path} line {number} is not JSON: {e}") from None
        except FileNotFoundError:
            return

    def verify(self) -> VerifiedLog:
        prev, count = GENESIS, 0
        for number, entry in enumerate(self.entries(), 1):
            stored = entry.get("hash")
            fields = {k: v for k, v in entry.items() if k != "hash"}
            if entry.get("prev") != prev:
                raise AuditLogTampered(
                    f"audit log {self.path} line {number}: its prev hash does not match line {number - 1} "
                    "(a line was removed, inserted or reordered)"
                )
            if line_hash(prev, fields) != stored:
                raise AuditLogTampered(f"audit log {self.path} line {number} was altered: its hash does not match its content")
            prev, count = stored, count + 1
        return VerifiedLog(self.path, count, prev)

    def head(self) -> str:
        return self.verify().head
