"""Landed batches: one landed file's content, identified by its content hash."""

from __future__ import annotations

import re

import dagster as dg
import pandas as pd

from aiplat.intake.schema import dataset, record_columns
from aiplat.intake.validate import ValidationResult

# Dynamic partition keys must be short and plain; file stems are not always.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
HASH_CHARS = 12
STEM_CHARS = 80


def raw_asset_key(dataset_name: str) -> dg.AssetKey:
    return dg.AssetKey(f"raw_{dataset_name}")


def key_stem(stem: str) -> str:
    """The file stem as it appears in batch keys: plain characters, at most 80 of them, never empty.

    Several files can share a key stem (`a b.jsonl` and `a_b.jsonl`, long names with a common
    prefix, `x.jsonl` and `x.ndjson`); the content hash in the key tells their batches apart, and
    the ingest step finds a batch's file by that hash, not by its name.
    """
    return _UNSAFE.sub("_", stem)[:STEM_CHARS] or "batch"


def batch_key(stem: str, sha256: str) -> str:
    """`<file stem>-<first 12 hex of sha256>`: a changed file is a new batch, the same content is not."""
    return f"{key_stem(stem)}-{sha256[:HASH_CHARS]}"


def split_batch_key(key: str) -> tuple[str, str]:
    stem, _, digest = key.rpartition("-")
    if not stem or len(digest) != HASH_CHARS:
        raise ValueError(f"{key!r} is not a batch key (<stem>-<{HASH_CHARS} hex chars>)")
    return stem, digest


def records_frame(result: ValidationResult, dataset_name: str, batch: str, source_uri: str, sha256: str) -> pd.DataFrame:
    columns = record_columns(dataset_name)
    df = pd.DataFrame.from_records(result.records, columns=columns)
    for name, field in dataset(dataset_name).record_type.model_fields.items():
        if "datetime" in str(field.annotation).lower():
            df[name] = pd.to_datetime(df[name], utc=True, format="ISO8601")
    df["_batch"] = batch
    df["_source_uri"] = source_uri
    df["_source_sha256"] = sha256
    df["_line"] = pd.Series(result.record_lines, dtype="int64")
    return df


QUARANTINE_COLUMNS = ["source_uri", "line", "reason_code", "reason", "raw_b64"]


def quarantine_frame(result: ValidationResult, source_uri: str) -> pd.DataFrame:
    rows = [q.as_row(source_uri) for q in result.quarantined]
    df = pd.DataFrame.from_records(rows, columns=QUARANTINE_COLUMNS)
    return df.astype({"line": "int64"})
