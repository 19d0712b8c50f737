"""Which landed files are new batches: the decision the landing sensor and `aiplat ingest` share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aiplat.intake.batches import batch_key
from aiplat.provenance import sha256_bytes


@dataclass(frozen=True)
class NewBatch:
    dataset: str
    key: str
    uri: str
    sha256: str

    @property
    def run_key(self) -> str:
        # The content hash alone: the same bytes landed twice (even renamed) make one run.
        return f"{self.dataset}:{self.sha256}"


@dataclass
class LandingCursor:
    """What the sensor has seen: per file URI its version and hash, and every content hash seen."""

    files: dict[str, list[str]] = field(default_factory=dict)  # uri -> [version, sha256]
    seen: dict[str, list[str]] = field(default_factory=dict)  # dataset -> sha256s

    @classmethod
    def parse(cls, raw: str | None) -> "LandingCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(files=data.get("files", {}), seen=data.get("seen", {}))

    def serialize(self) -> str:
        return json.dumps({"files": self.files, "seen": self.seen}, sort_keys=True, separators=(",", ":"))


def find_new_batches(zone, datasets: list[str], cursor: LandingCursor) -> tuple[list[NewBatch], list[str]]:
    """New batches since `cursor` (which is updated in place) and notes on what was skipped.

    A file whose version (mtime/ETag) is unchanged is not read again; a changed file is hashed,
    and only content never seen before becomes a batch.
    """
    batches: list[NewBatch] = []
    notes: list[str] = []
    for dataset in datasets:
        seen = set(cursor.seen.get(dataset, []))
        for landed in zone.list_files(dataset):
            known = cursor.files.get(landed.uri)
            if known and known[0] == landed.version:
                continue
            sha = sha256_bytes(zone.read_bytes(landed))
            cursor.files[landed.uri] = [landed.version, sha]
            if sha in seen:
                notes.append(f"{landed.uri}: content already taken in (sha256 {sha[:12]}...), no new batch")
                continue
            seen.add(sha)
            batches.append(NewBatch(dataset=dataset, key=batch_key(landed.stem, sha), uri=landed.uri, sha256=sha))
        cursor.seen[dataset] = sorted(seen)
    return batches, notes
