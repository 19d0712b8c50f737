"""The golden set: hand-written, realistic tickets with their expected category.

It is versioned by file name (golden_v<N>.jsonl) and identified by the sha256 of its bytes, which
every report records; changing a ticket means a new version, so reports stay comparable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aiplat.evaluation.metrics import LABELS
from aiplat.provenance import sha256_bytes

GOLDEN_DIR = Path(__file__).resolve().parent
DEFAULT_GOLDEN_VERSION = "v1"
REQUIRED = ("id", "category", "subject", "message")


class GoldenSetError(ValueError):
    pass


@dataclass(frozen=True)
class GoldenSet:
    version: str
    sha256: str
    rows: list[dict]


def golden_path(version: str = DEFAULT_GOLDEN_VERSION) -> Path:
    return GOLDEN_DIR / f"golden_{version}.jsonl"


def load_golden(version: str = DEFAULT_GOLDEN_VERSION, path: Path | None = None) -> GoldenSet:
    file = path or golden_path(version)
    if not file.is_file():
        raise GoldenSetError(f"golden set {version!r} not found at {file}")
    data = file.read_bytes()
    rows: list[dict] = []
    seen: set[str] = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GoldenSetError(f"{file}:{number}: not JSON ({e.msg})") from None
        missing = [k for k in REQUIRED if not str(row.get(k, "")).strip()]
        if missing:
            raise GoldenSetError(f"{file}:{number}: record {row.get('id')!r} lacks {missing}")
        if row["category"] not in LABELS:
            raise GoldenSetError(f"{file}:{number}: record {row['id']!r} has unknown category {row['category']!r}")
        if row["id"] in seen:
            raise GoldenSetError(f"{file}:{number}: record {row['id']!r} appears twice")
        seen.add(row["id"])
        rows.append(row)
    if not rows:
        raise GoldenSetError(f"golden set {file} is empty")
    return GoldenSet(version=version, sha256=sha256_bytes(data), rows=rows)
