"""Which landed files are new batches: the decision the landing sensor and `aiplat ingest` share,
and how the ingest step finds a batch's file again."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from aiplat.intake.batches import HASH_CHARS, batch_key, key_stem, raw_asset_key, split_batch_key
from aiplat.provenance import sha256_bytes

SOURCE_SHA_TAG = "aiplat/source_sha256"


class Intake(enum.Enum):
    """What became of some content the platform was offered before."""

    NEW = "new"  # no run and no batch for it
    IN_FLIGHT = "in flight"  # a run for it is queued or running
    TAKEN_IN = "taken in"  # a batch with this content is materialized
    FAILED = "failed"  # every run for it ended without taking it in
    # A snapshot dataset's older snapshot landed again under a new name: on purpose, it becomes
    # the current snapshot again (the KB index's deletion guard still stops a mass deletion).
    RELANDED = "re-landed"


IntakeStatus = Callable[[str, str, str], tuple[Intake, str]]


@dataclass(frozen=True)
class NewBatch:
    dataset: str
    key: str
    uri: str
    sha256: str
    # Set when earlier runs for this content failed: this file version is a new attempt.
    attempt: str = ""

    @property
    def run_key(self) -> str:
        # The content hash: the same bytes landed twice (even renamed) make one run. A new attempt
        # after failed runs needs its own key (Dagster drops a run request whose key was used).
        base = f"{self.dataset}:{self.sha256}"
        return f"{base}:{self.attempt}" if self.attempt else base


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


def intake_status(instance: dg.DagsterInstance, snapshot_partitions: dict[str, str] | None = None) -> IntakeStatus:
    """Asks the Dagster instance what became of a dataset's content (by its sha256), landed as `key`.

    Taken in = a partition of raw_<dataset> whose key carries the hash is materialized (however
    it was launched: sensor, CLI, UI backfill). Otherwise the runs tagged with the hash decide.
    `snapshot_partitions` names the dynamic partitions of snapshot datasets (dataset -> name):
    there, old content landed under a new name while a later snapshot is current is RELANDED.
    """
    snapshot_partitions = snapshot_partitions or {}

    def status(dataset: str, sha256: str, key: str) -> tuple[Intake, str]:
        suffix = f"-{sha256[:HASH_CHARS]}"
        materialized = instance.get_materialized_partitions(raw_asset_key(dataset))
        done = sorted(k for k in materialized if k.endswith(suffix))
        if done:
            if dataset in snapshot_partitions and key not in materialized:
                order = [k for k in instance.get_dynamic_partitions(snapshot_partitions[dataset]) if k in materialized]
                if order and not order[-1].endswith(suffix):
                    return Intake.RELANDED, f"snapshot {done[0]} re-landed while {order[-1]} is current"
            return Intake.TAKEN_IN, f"batch {done[0]}"
        runs = instance.get_runs(filters=dg.RunsFilter(tags={SOURCE_SHA_TAG: sha256}))
        open_runs = [r for r in runs if not r.is_finished]
        if open_runs:
            return Intake.IN_FLIGHT, f"run {open_runs[0].run_id} is {open_runs[0].status.value}"
        if runs:
            ended = ", ".join(f"{r.run_id} {r.status.value}" for r in runs[:3])
            return Intake.FAILED, f"earlier run(s) failed: {ended}"
        return Intake.NEW, ""

    return status


def find_new_batches(
    zone, datasets: list[str], cursor: LandingCursor, status: IntakeStatus | None = None
) -> tuple[list[NewBatch], list[str]]:
    """New batches since `cursor` (which is updated in place) and notes on what was skipped and why.

    A file whose version (mtime/ETag) is unchanged is not read again; a changed file is hashed.
    Content already taken in, or whose run is still in flight, makes no batch; content whose
    earlier runs all failed does (a renamed or re-landed copy is how a producer retries), and so
    does an older snapshot landed again under a new name (how an operator reverts the KB).
    Without `status` (no instance at hand), content seen before counts as taken in.
    """
    batches: list[NewBatch] = []
    notes: list[str] = []
    for dataset in datasets:
        seen = set(cursor.seen.get(dataset, []))
        this_pass: dict[str, str] = {}
        for landed in zone.list_files(dataset):
            known = cursor.files.get(landed.uri)
            if known and known[0] == landed.version:
                continue
            sha = sha256_bytes(zone.read_bytes(landed))
            if sha in this_pass:
                cursor.files[landed.uri] = [landed.version, sha]
                notes.append(f"{landed.uri}: same content as {this_pass[sha]} (sha256 {sha[:12]}...), one batch for both")
                continue
            key = batch_key(landed.stem, sha)
            state, detail = status(dataset, sha, key) if status else (Intake.TAKEN_IN if sha in seen else Intake.NEW, "")
            if state is Intake.NEW and sha in seen:
                # Requested by an earlier tick, but no run is recorded yet: look again next tick.
                notes.append(f"{landed.uri}: content requested earlier (sha256 {sha[:12]}...), no run recorded yet")
                continue
            if state is Intake.IN_FLIGHT:
                # Not remembered in the cursor: if that run fails, this copy is the retry.
                notes.append(f"{landed.uri}: content already being taken in ({detail}), no new batch yet")
                continue
            cursor.files[landed.uri] = [landed.version, sha]
            if state is Intake.TAKEN_IN:
                notes.append(f"{landed.uri}: content already taken in as {detail or 'an earlier batch'} (sha256 {sha[:12]}...), no new batch")
                seen.add(sha)
                continue
            attempt = ""
            if state in (Intake.FAILED, Intake.RELANDED):
                attempt = sha256_bytes(f"{landed.uri}@{landed.version}".encode())[:HASH_CHARS]
                notes.append(f"{landed.uri}: {detail}; taking its content (sha256 {sha[:12]}...) in again from this file")
            seen.add(sha)
            this_pass[sha] = landed.uri
            batches.append(NewBatch(dataset=dataset, key=key, uri=landed.uri, sha256=sha, attempt=attempt))
        for other in zone.list_ignored(dataset):
            known = cursor.files.get(other.uri)
            if known and known[0] == other.version:
                continue
            cursor.files[other.uri] = [other.version, ""]
            notes.append(
                f"IGNORED {other.uri}: not a JSON Lines file (.jsonl / .ndjson), so it is not taken in; "
                "rename it with one of those suffixes to land it"
            )
        cursor.seen[dataset] = sorted(seen)
    return batches, notes


class BatchNotFound(LookupError):
    """A batch key whose landed file is gone or changed: the message names the batch and why."""


def locate_batch(zone, dataset: str, key: str) -> tuple[object, bytes, str]:
    """The landed file behind batch `key`, its bytes and sha256.

    Matched by key stem AND content hash, since several files can share a key stem.
    """
    stem, digest = split_batch_key(key)
    candidates = [f for f in zone.list_files(dataset) if key_stem(f.stem) == stem]
    if not candidates:
        raise BatchNotFound(f"batch {key}: no landed {dataset} file named {stem}.* in {zone.describe()}")
    changed = []
    for landed in candidates:
        data = zone.read_bytes(landed)
        sha = sha256_bytes(data)
        if sha[:HASH_CHARS] == digest:
            return landed, data, sha
        changed.append(f"{landed.uri} (now sha256 {sha[:12]}..., batch {batch_key(landed.stem, sha)})")
    raise BatchNotFound(
        f"batch {key}: {'; '.join(changed)} changed after it was registered; no landed file holds its "
        "content any more. New content is a new batch, which the landing sensor registers on its own"
    )
