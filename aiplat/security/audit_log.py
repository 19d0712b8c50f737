"""The append-only audit log: one entry per security-relevant attempt, chained and keyed.

Each entry carries `prev` (the previous entry's MAC), `kid` (which key) and `hash` =
HMAC-SHA256(platform key, prev + the entry's other fields as canonical JSON). Without the key nobody
can write an entry that verifies, so editing a line and recomputing the chain ("re-chaining") is
detected at the first line touched; removing, inserting or reordering lines breaks `prev`.
Cutting the tail leaves a valid chain, so the head is also anchored outside the log:
- `FileAuditLog` (local; the file on a volume) keeps a keyed anchor (entry count + head MAC)
  beside the log, rewritten atomically under the same lock at every append; a log shorter than its
  anchor, or whose entry at the anchor's count is not the anchor's head, is truncated. (Someone who
  can write both files can still restore an *older* anchor with the log cut to match: keep
  `aiplat audit --verify`'s head somewhere else too, or use PostgreSQL.)
- `PostgresAuditLog` (prod): rows in a table the writers may only INSERT into and SELECT from
  (`install` grants exactly that), so a writer can neither cut nor rewrite the trail.

The key: locally a random key in <state>/security/audit-hmac.key (mode 600, made on first use);
in prod `AIPLAT_AUDIT_HMAC_KEY` (a Secret via dg.EnvVar), whose absence is an error naming it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiplat.config import prod_secret, runtime, state_dir

GENESIS = "0" * 64
KEY_ENV = "AIPLAT_AUDIT_HMAC_KEY"
_ADVISORY_LOCK = 0x41504C4154  # "APLAT": serializes appends across writer processes
_ANCHOR_PURPOSE = "aiplat-audit-anchor"


class AuditLogTampered(RuntimeError):
    """The trail does not hold. `kind` says how (unreadable, unkeyed, bad_key, forged, broken_link,
    truncated, anchor_missing, anchor_forged); `entry` is the 1-based entry where it shows, if any."""

    def __init__(self, message: str, kind: str, entry: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.entry = kind, entry


def default_audit_log_path() -> Path:
    return state_dir() / "audit" / "audit.jsonl"


def local_key_path() -> Path:
    return state_dir() / "security" / "audit-hmac.key"


def audit_key(configured: str | bytes | None = None) -> bytes:
    """The platform's audit key: `configured` (prod: the resource's dg.EnvVar), else in prod
    AIPLAT_AUDIT_HMAC_KEY (an error naming it when unset), else the local key file."""
    if configured:
        return configured.encode() if isinstance(configured, str) else configured
    if runtime() == "prod":
        return prod_secret(KEY_ENV).encode()
    path = local_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it") from None
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def key_id(key: bytes) -> str:
    """Names a key without revealing it (a digest of a 256-bit random key)."""
    return hashlib.sha256(b"aiplat-audit-kid" + key).hexdigest()[:16]


def _canonical(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_mac(key: bytes, prev: str, fields: dict) -> str:
    return hmac.new(key, (prev + _canonical(fields)).encode("utf-8"), hashlib.sha256).hexdigest()


def anchor_mac(key: bytes, entries: int, head: str) -> str:
    return hmac.new(key, f"{_ANCHOR_PURPOSE}:{entries}:{head}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class VerifiedLog:
    path: Any  # where the trail lives (a Path, or a description of the table)
    entries: int
    head: str


def verify_chain(numbered: Iterable[tuple[int, dict]], key: bytes, where: str, unit: str = "line") -> tuple[int, str]:
    """(entries, head MAC) of a chain that holds, else AuditLogTampered naming the first bad `unit`."""
    kid, prev, count = key_id(key), GENESIS, 0
    for number, entry in numbered:
        count += 1
        stored = entry.get("hash")
        fields = {k: v for k, v in entry.items() if k != "hash"}
        if "kid" not in entry:
            raise AuditLogTampered(f"{where} {unit} {number} carries no key id: it was not written by the platform's "
                                   "keyed writer (an unkeyed chain, or a line added by hand)", "unkeyed", number)
        if entry["kid"] != kid:
            raise AuditLogTampered(f"{where} {unit} {number} was keyed with key {entry['kid']}, but the key in use is "
                                   f"{kid}: wrong {KEY_ENV} (bad key), or entries forged under another key",
                                   "bad_key", number)
        if entry.get("prev") != prev:
            raise AuditLogTampered(f"{where} {unit} {number}: its prev hash does not match {unit} {number - 1} "
                                   f"(a {unit} was removed, inserted or reordered)", "broken_link", number)
        if not isinstance(stored, str) or not hmac.compare_digest(entry_mac(key, prev, fields), stored):
            raise AuditLogTampered(f"{where} {unit} {number} was altered: it does not verify under the platform key "
                                   "(edited, or re-chained by someone without the key)", "forged", number)
        prev = stored
    return count, prev


class AuditLog(ABC):
    """The audit trail's interface. `AuditLog(path)` on the base class gives the file backend (the
    default everywhere a path or nothing is given); prod builds `PostgresAuditLog` from its resource."""

    def __new__(cls, *args: Any, **kwargs: Any) -> AuditLog:
        return super().__new__(FileAuditLog if cls is AuditLog else cls)

    @abstractmethod
    def append(self, event: str, **fields: Any) -> dict:
        """Append one entry and return it (with `at`, `kid`, `prev` and `hash`)."""

    @abstractmethod
    def entries(self) -> Iterator[dict]:
        """Every entry, oldest first (not verified)."""

    @abstractmethod
    def verify(self) -> VerifiedLog:
        """The trail's length and head, or AuditLogTampered saying what is wrong and where."""

    def head(self) -> str:
        return self.verify().head

    def _entry(self, key: bytes, prev: str, event: str, fields: dict) -> dict:
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields,
                 "kid": key_id(key), "prev": prev}
        entry["hash"] = entry_mac(key, prev, entry)
        return entry


class FileAuditLog(AuditLog):
    """JSON lines with O_APPEND under an exclusive lock (concurrent writers never interleave or fork
    the chain), fsynced, plus the keyed anchor `<log>.anchor`."""

    def __init__(self, path: Path | None = None, key: str | bytes | None = None) -> None:
        self.path = Path(path) if path else default_audit_log_path()
        self._configured_key = key

    @property
    def anchor_path(self) -> Path:
        return self.path.with_name(self.path.name + ".anchor")

    def _key(self) -> bytes:
        return audit_key(self._configured_key)

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
            raise AuditLogTampered(f"audit log {self.path}: last line is not a chained entry ({e}); refusing to append",
                                   "unreadable") from e

    def _write_anchor(self, key: bytes, entries: int, head: str) -> None:
        tmp = self.anchor_path.with_name(f".{self.anchor_path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"entries": entries, "head": head, "kid": key_id(key), "mac": anchor_mac(key, entries, head)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.anchor_path)

    def _anchor(self) -> dict | None:
        try:
            return json.loads(self.anchor_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def append(self, event: str, **fields: Any) -> dict:
        key = self._key()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            read_fd = os.open(self.path, os.O_RDONLY)
            try:
                prev = self._last_hash(read_fd)
            finally:
                os.close(read_fd)
            anchor = self._anchor()
            entries = int(anchor.get("entries", 0)) if anchor and anchor.get("head") == prev else None
            if entries is None:  # no anchor yet, or it lags (a crash between the two writes): count
                entries = sum(1 for _ in self.entries())
            entry = self._entry(key, prev, event, fields)
            os.write(fd, (_canonical(entry) + "\n").encode("utf-8"))
            os.fsync(fd)
            self._write_anchor(key, entries + 1, entry["hash"])
            return entry
        finally:
            os.close(fd)  # closing releases the lock

    def _numbered(self) -> Iterator[tuple[int, dict]]:
        try:
            with self.path.open(encoding="utf-8") as f:
                number = 0
                for line in f:
                    if not line.strip():
                        continue
                    number += 1
                    try:
                        entry = json.loads(line)
                    except ValueError as e:
                        raise AuditLogTampered(f"audit log {self.path} line {number} is not JSON: {e}", "unreadable",
                                               number) from None
                    if not isinstance(entry, dict):
                        raise AuditLogTampered(f"audit log {self.path} line {number} is not an object", "unreadable",
                                               number)
                    yield number, entry
        except FileNotFoundError:
            return

    def entries(self) -> Iterator[dict]:
        for _number, entry in self._numbered():
            yield entry

    def verify(self) -> VerifiedLog:
        key = self._key()
        where = f"audit log {self.path}"
        heads: dict[int, str] = {}

        def remembering() -> Iterator[tuple[int, dict]]:
            for number, entry in self._numbered():
                heads[number] = entry.get("hash", "")
                yield number, entry

        count, head = verify_chain(remembering(), key, where)
        anchor = self._anchor()
        if anchor is None:
            if count:
                raise AuditLogTampered(f"{where}: its anchor {self.anchor_path} is missing, so a cut tail cannot be "
                                       "ruled out", "anchor_missing")
            return VerifiedLog(self.path, 0, GENESIS)
        anchored, anchored_head = anchor.get("entries"), anchor.get("head")
        if not isinstance(anchored, int) or not isinstance(anchored_head, str) or not hmac.compare_digest(
                anchor_mac(key, anchored, anchored_head), str(anchor.get("mac", ""))):
            raise AuditLogTampered(f"{where}: the anchor {self.anchor_path} does not verify under the platform key "
                                   "(forged, or a bad key)", "anchor_forged")
        if count < anchored:
            raise AuditLogTampered(f"{where} is truncated: the anchor records {anchored} lines, the log has {count} "
                                   f"(lines {count + 1}..{anchored} were cut)", "truncated", count + 1)
        if anchored and heads.get(anchored) != anchored_head:
            raise AuditLogTampered(f"{where}: line {anchored} is not the anchored head (the tail was cut and "
                                   "rewritten)", "truncated", anchored)
        return VerifiedLog(self.path, count, head)


class PostgresAuditLog(AuditLog):
    """The trail as rows of `table` (line = the entry's canonical JSON, as the file would hold it).
    Writers connect with a role that `install` granted INSERT and SELECT only."""

    def __init__(self, dsn: str, key: str | bytes | None = None, table: str = "aiplat_audit_log") -> None:
        if not table.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"table name {table!r} must be letters, digits, '_' and one optional schema '.'")
        self.dsn, self.table, self._configured_key = dsn, table, key

    @property
    def path(self) -> str:  # what messages and the trail call its location; never the DSN (it may hold a password)
        return f"postgres table {self.table}"

    def _connect(self) -> Any:
        import psycopg2

        return psycopg2.connect(self.dsn)

    @staticmethod
    def install(admin_dsn: str, writers: Iterable[str], table: str = "aiplat_audit_log") -> None:
        """Create the table (idempotent) and grant each writer role INSERT and SELECT only: no
        UPDATE, DELETE or TRUNCATE, so a writer cannot rewrite or cut the trail."""
        import psycopg2
        from psycopg2 import sql

        name = sql.Identifier(*table.split("."))
        sequence = sql.Identifier(*(table + "_seq_seq").split("."))
        with psycopg2.connect(admin_dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (seq bigserial PRIMARY KEY, "
                                "at timestamptz NOT NULL DEFAULT now(), line text NOT NULL)").format(name))
            cur.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(name))
            for role in writers:
                cur.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(name, sql.Identifier(role)))
                cur.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(name, sql.Identifier(role)))
                cur.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequence, sql.Identifier(role)))
        conn.close()

    def append(self, event: str, **fields: Any) -> dict:
        from psycopg2 import sql

        key = self._key()
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                # One writer at a time reads the head and inserts after it (a transaction-scoped lock
                # needs no table privilege beyond INSERT/SELECT).
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
                cur.execute(sql.SQL("SELECT line FROM {} ORDER BY seq DESC LIMIT 1").format(self._name()))
                row = cur.fetchone()
                prev = json.loads(row[0])["hash"] if row else GENESIS
                entry = self._entry(key, prev, event, fields)
                cur.execute(sql.SQL("INSERT INTO {} (line) VALUES (%s)").format(self._name()), (_canonical(entry),))
            return entry
        finally:
            conn.close()

    def _name(self) -> Any:
        from psycopg2 import sql

        return sql.Identifier(*self.table.split("."))

    def _key(self) -> bytes:
        return audit_key(self._configured_key)

    def _numbered(self) -> Iterator[tuple[int, dict]]:
        from psycopg2 import sql

        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT seq, line FROM {} ORDER BY seq").format(self._name()))
                rows = cur.fetchall()
        finally:
            conn.close()
        for number, (seq, line) in enumerate(rows, 1):
            try:
                yield number, json.loads(line)
            except ValueError:
                raise AuditLogTampered(f"{self.path} entry {number} (seq {seq}) is not JSON", "unreadable",
                                       number) from None

    def entries(self) -> Iterator[dict]:
        for _number, entry in self._numbered():
            yield entry

    def verify(self) -> VerifiedLog:
        count, head = verify_chain(self._numbered(), self._key(), self.path, unit="entry")
        return VerifiedLog(self.path, count, head)
