"""The request log: one JSON line per inference request, labelled with the team and feature it served.

Whoever fronts the endpoints (the gateway in prod, `aiplat chat` and the load tests locally) appends
a line per request with `RequestLog.append`. The team and feature come from the request's headers
(`X-AIPLAT-Team`, `X-AIPLAT-Feature`) and the API key, whose team wins: the mapping holds the
sha256 of each key, never the key, so configuration and metadata stay free of secrets.
A line that does not parse is never dropped silently: `read` returns it with its line number and
the reason, and the reports show the count.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path

from aiplat.config import state_dir

UNATTRIBUTED = "unattributed"
HEADER_TEAM = "x-aiplat-team"
HEADER_FEATURE = "x-aiplat-feature"
FIELDS = ("timestamp", "endpoint", "model", "team", "feature", "prompt_tokens", "completion_tokens", "latency_ms", "status")


class RequestLogError(ValueError):
    pass


def default_request_log_path() -> Path:
    return state_dir() / "operations" / "requests.jsonl"


def key_fingerprint(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def labels_for_request(headers: Mapping[str, str], api_key_teams: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(team, feature) of a request. A mapped API key decides the team: a header must not bill
    another team with this team's key. The team header counts only for a request whose key maps to
    no team (local use, or a shared key); the feature always comes from its header."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    team = (api_key_teams or {}).get(key_fingerprint(key), "") if key else ""
    team = (team or (lower.get(HEADER_TEAM) or "")).strip().lower()  # `team:ML` is `team:ml`
    feature = (lower.get(HEADER_FEATURE) or "").strip() or UNATTRIBUTED
    if team and not team.startswith("team:"):
        team = f"team:{team}"
    return team or UNATTRIBUTED, feature


@dataclass(frozen=True)
class RequestRecord:
    timestamp: datetime  # when the response finished (UTC)
    endpoint: str
    model: str
    team: str
    feature: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    status: int  # HTTP status
    pii: str = ""  # PII guardrail actions, e.g. "prompt:mask PERSON=1; response:log PHONE_NUMBER=2" (never values)
    # Grounded endpoints only: the KB chunk ids in the prompt ("kb=<id>,<id>", "kb=none") or "kb=unavailable"
    # (never passage text). Left out of the line when empty, so other endpoints' lines are unchanged.
    grounding: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def day(self) -> date:
        return self.timestamp.date()

    def to_json(self) -> str:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat(timespec="milliseconds")
        if not self.grounding:
            del data["grounding"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> RequestRecord:
        missing = [f for f in FIELDS if f not in data]
        if missing:
            raise RequestLogError(f"missing fields {missing}")
        try:
            ts = datetime.fromisoformat(str(data["timestamp"]))
        except ValueError:
            raise RequestLogError(f"timestamp {data['timestamp']!r} is not ISO 8601") from None
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
        try:
            record = cls(ts, str(data["endpoint"]), str(data["model"]), str(data["team"] or UNATTRIBUTED),
                         str(data["feature"] or UNATTRIBUTED), int(data["prompt_tokens"]),
                         int(data["completion_tokens"]), float(data["latency_ms"]), int(data["status"]),
                         str(data.get("pii") or ""), str(data.get("grounding") or ""))
        except (TypeError, ValueError) as e:
            raise RequestLogError(f"a numeric field is not a number: {e}") from None
        if record.prompt_tokens < 0 or record.completion_tokens < 0 or record.latency_ms < 0:
            raise RequestLogError("token counts and latency must not be negative")
        return record


@dataclass(frozen=True)
class RejectedLine:
    line: int
    reason: str


class RequestLog:
    def __init__(self, path: Path | None = None, fsync: bool = True) -> None:
        self.path = Path(path) if path else default_request_log_path()
        self.fsync = fsync  # off only to measure what durability costs (benchmarks/gateway.py)

    def append(self, record: RequestRecord) -> None:
        self.append_many([record])

    def append_many(self, records: list[RequestRecord]) -> None:
        """All `records` in one write under the lock, then one fsync (the gateway's group commit)."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = "".join(record.to_json() + "\n" for record in records).encode("utf-8")
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {self.path}")
            # Durability policy: every line is on disk before append returns (the gateway bills from it).
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, since: date | None = None, until: date | None = None) -> tuple[list[RequestRecord], list[RejectedLine]]:
        """Records with since <= day <= until, and every line that could not be read."""
        records: list[RequestRecord] = []
        rejected: list[RejectedLine] = []
        try:
            f = self.path.open(encoding="utf-8")
        except FileNotFoundError:
            return records, rejected
        with f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    if not isinstance(raw, dict):
                        raise RequestLogError("not a JSON object")
                    record = RequestRecord.from_dict(raw)
                except (ValueError, RequestLogError) as e:
                    rejected.append(RejectedLine(number, f"{self.path}:{number}: {e}"))
                    continue
                if (since and record.day < since) or (until and record.day > until):
                    continue
                records.append(record)
        return records, rejected
