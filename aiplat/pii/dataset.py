"""Scanning and redacting whole datasets: DataFrames for the assets, dict records for the CLI.

Both go through the same two steps: `scan_columns` (every text field of every record, one batch
for the scanner) and `redact_*` (apply the findings). A record's free-text field that is not text
(a number, a list) is an error that names the record and the field: it cannot be scanned, so it
cannot be passed on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from aiplat.pii.config import PiiConfig
from aiplat.pii.engine import Finding, PiiScanError, Scanner
from aiplat.pii.redact import PLACEHOLDER_RE, TOKEN_RE, Pseudonymizer, redact_text

FINDING_COLUMNS = ["record_id", "field", "entity_type", "start", "end", "score", "recognizer"]
RecordFindings = dict[str, list[Finding]]


@dataclass(frozen=True)
class ScanResult:
    per_record: list[RecordFindings]

    def entity_counts(self) -> dict[str, int]:
        counts = Counter(f.entity_type for rec in self.per_record for fs in rec.values() for f in fs)
        return dict(sorted(counts.items()))

    def record_totals(self) -> list[int]:
        return [sum(len(fs) for fs in rec.values()) for rec in self.per_record]

    @property
    def total(self) -> int:
        return sum(self.record_totals())


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value) -> list | None:
    """A list-of-text value as a list (parquet gives numpy arrays), else None."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, str):
        out = value.tolist()
        return out if isinstance(out, list) else None
    return None


def element_key(field: str, j: int) -> str:
    """How findings in element j of a list field are keyed: "tags[2]"."""
    return f"{field}[{j}]"


def scan_columns(columns: Mapping[str, Sequence], lines: Sequence, config: PiiConfig, scanner: Scanner) -> ScanResult:
    """Scan `config.text_fields` and every element of `config.list_fields` of every record;
    `columns[field][i]` is record i's value and `lines[i]` how an error names it: a line number,
    never a value from the data (an id can hold PII)."""
    n = len(lines)
    texts: list[str] = []
    where: list[tuple[int, str]] = []

    def not_text(i: int, field: str, value) -> PiiScanError:
        return PiiScanError(
            f"record on line {lines[i]}: field {field!r} is {type(value).__name__}, not text; it cannot be scanned")

    for field in config.text_fields:
        values = columns.get(field)
        if values is None:
            continue
        for i, value in enumerate(values):
            if _is_missing(value):
                continue
            if not isinstance(value, str):
                raise not_text(i, field, value)
            texts.append(value)
            where.append((i, field))
    for field in config.list_fields:
        values = columns.get(field)
        if values is None:
            continue
        for i, value in enumerate(values):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            items = _as_list(value)
            if items is None:
                raise not_text(i, field, value)
            for j, item in enumerate(items):
                if not isinstance(item, str):
                    raise not_text(i, element_key(field, j), item)
                texts.append(item)
                where.append((i, element_key(field, j)))
    results = scanner.scan(texts)
    if len(results) != len(texts):
        raise PiiScanError(f"scanner returned {len(results)} results for {len(texts)} texts")
    per_record: list[RecordFindings] = [{} for _ in range(n)]
    for (i, field), findings in zip(where, results):
        if findings:
            per_record[i][field] = findings
    return ScanResult(per_record)


def findings_frame(ids: Sequence, scan: ScanResult, extra: Mapping[str, Sequence] | None = None) -> pd.DataFrame:
    """One row per finding: record id, field, entity type, span, score, recognizer. No values."""
    extra = extra or {}
    rows = []
    for i, rec in enumerate(scan.per_record):
        for field, findings in rec.items():
            for f in findings:
                row = {"record_id": ids[i], "field": field, "entity_type": f.entity_type, "start": f.start,
                       "end": f.end, "score": f.score, "recognizer": f.recognizer}
                row.update({k: v[i] for k, v in extra.items()})
                rows.append(row)
    columns = FINDING_COLUMNS + list(extra)
    df = pd.DataFrame.from_records(rows, columns=columns)
    return df.astype({"start": "int64", "end": "int64", "score": "float64"})


def redact_frame(df: pd.DataFrame, scan: ScanResult, config: PiiConfig, pseudonymizer: Pseudonymizer) -> pd.DataFrame:
    """Same rows and columns, free text redacted, identifiers pseudonymized, plus `pii_entities`."""
    if len(df) != len(scan.per_record):
        raise ValueError(f"{len(df)} records but findings for {len(scan.per_record)}")
    out = df.copy()
    for field in config.text_fields:
        if field in out.columns:
            values = out[field].tolist()
            out[field] = [
                v if _is_missing(v) else redact_text(v, scan.per_record[i].get(field, ()), config, pseudonymizer)
                for i, v in enumerate(values)
            ]
    for field in config.list_fields:
        if field in out.columns:
            out[field] = [v if _as_list(v) is None else
                          [redact_text(t, scan.per_record[i].get(element_key(field, j), ()), config, pseudonymizer)
                           for j, t in enumerate(_as_list(v))]
                          for i, v in enumerate(out[field].tolist())]
    for field in config.identifier_fields:
        if field in out.columns:
            out[field] = [None if _is_missing(v) else pseudonymizer.identifier(field, str(v))
                          for v in out[field].tolist()]
    out["pii_entities"] = pd.Series(scan.record_totals(), index=out.index, dtype="int64")
    return out


def redact_record(record: Mapping, findings: RecordFindings, config: PiiConfig, pseudonymizer: Pseudonymizer) -> dict:
    """A copy of `record` with its text fields redacted and every other field as it was."""
    out = dict(record)
    for field, fs in findings.items():
        if field in record:
            out[field] = redact_text(record[field], fs, config, pseudonymizer)
    for field in config.list_fields:
        items = _as_list(record.get(field))
        if items is not None:
            out[field] = [redact_text(t, findings.get(element_key(field, j), ()), config, pseudonymizer)
                          for j, t in enumerate(items)]
    for field in config.identifier_fields:
        if field in out and not _is_missing(out[field]):
            out[field] = pseudonymizer.identifier(field, str(out[field]))
    return out


@dataclass(frozen=True)
class Residuals:
    """What a re-scan of redacted output still finds: counts only, never values."""

    by_entity: dict[str, int]
    records: list  # line numbers (else positions) of records with a residual finding, never their ids
    bad_identifiers: dict[str, int]  # identifier column -> values that are not pseudonym tokens

    @property
    def clean(self) -> bool:
        return not self.by_entity and not any(self.bad_identifiers.values())


def residuals(df: pd.DataFrame, config: PiiConfig, scanner: Scanner) -> Residuals:
    ids = df["_line"].tolist() if "_line" in df.columns else list(range(1, len(df) + 1))
    scan = scan_columns({f: df[f].tolist() for f in (*config.text_fields, *config.list_fields) if f in df.columns},
                        ids, config, scanner)
    bad = {}
    for field in config.identifier_fields:
        if field in df.columns:
            bad[field] = sum(1 for v in df[field].tolist()
                             if not _is_missing(v) and v != "" and not TOKEN_RE.match(str(v)))
    # The NER model reads "<PERSON_3f9a...>" as a name: a finding inside a placeholder the redaction
    # wrote is not residual PII. Anything reaching outside one is.
    kept: list[RecordFindings] = []
    for i, rec in enumerate(scan.per_record):
        out: RecordFindings = {}
        for field, findings in rec.items():
            base, _, j = field.partition("[")
            text = df[base].iloc[i] if not j else _as_list(df[base].iloc[i])[int(j.rstrip("]"))]
            spans = [m.span() for m in PLACEHOLDER_RE.finditer(text)]
            real = [f for f in findings if not any(a <= f.start and f.end <= b for a, b in spans)]
            if real:
                out[field] = real
        kept.append(out)
    scan = ScanResult(kept)
    flagged = [ids[i] for i, n in enumerate(scan.record_totals()) if n]
    return Residuals(by_entity=scan.entity_counts(), records=flagged, bad_identifiers=bad)
