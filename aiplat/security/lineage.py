"""The audit trail of one registered model version, read back from where each step recorded it.

Dagster asset metadata (landed batches and their hashes, PII scans, features, training set, the
fine-tune with this version, its eval report, promotion, deploys), the MLflow version's tags and
its training run, and the audit log's lines for the model. Nothing here re-derives a value: a
step that recorded nothing shows as missing, which is itself a finding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from aiplat.security.audit_log import AuditLog, AuditLogTampered

# In a model's chain (assets/model_lifecycle.py): the assets whose materializations name the model
# version, with the metadata key that names it.
CHAIN_VERSIONED = (("fine_tuned_model", "model_version"), ("eval_report", "model_version"),
                   ("champion", "champion_version"), ("served_endpoint", "model_version"))


@dataclass(frozen=True)
class ModelLineage:
    """Where to look for one model: the asset keys upstream of its fine-tune (its real upstream in
    the asset graph, nothing else) and its versioned chain assets."""

    upstream: tuple[str, ...]
    versioned: tuple[tuple[str, str], ...]
    fine_tune: str


def model_lineage(graph, prefix: str) -> ModelLineage:
    """From a Dagster asset graph (Definitions.resolve_asset_graph()): every ancestor of
    `<prefix>/fine_tuned_model`, found by walking parent keys."""
    import dagster as dg

    fine_tune = dg.AssetKey([prefix, "fine_tuned_model"])
    seen: set = set()
    todo = list(graph.get(fine_tune).parent_keys)
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        todo += list(graph.get(key).parent_keys)
    return ModelLineage(tuple(sorted(k.to_user_string() for k in seen)),
                        tuple((f"{prefix}/{name}", vkey) for name, vkey in CHAIN_VERSIONED),
                        fine_tune.to_user_string())
MAX_PER_ASSET = 20  # partitioned raw/redacted assets: the newest batches before the training
SCAN_LIMIT = 200
VALUE_WIDTH = 160


@dataclass
class Step:
    asset: str
    timestamp: float | None = None
    run_id: str = ""
    partition: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class AuditTrail:
    model: str
    version: str
    steps: list[Step] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mlflow_version: dict[str, str] = field(default_factory=dict)
    training_run: dict[str, str] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    audit_log: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _text(value) -> str:
    raw = getattr(value, "value", value)
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str, sort_keys=True)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 3] + "..."


def _step(key: str, record) -> Step:
    mat = record.asset_materialization
    return Step(key, record.timestamp, record.run_id, mat.partition or "",
                {k: _text(v) for k, v in mat.metadata.items()})


def _records(instance, key: str):
    import dagster as dg

    return instance.fetch_materializations(dg.AssetKey.from_user_string(key), limit=SCAN_LIMIT).records  # newest first


def _versioned(instance, key: str, version_key: str, model: str, version: str) -> list[Step]:
    found = []
    for record in _records(instance, key):
        meta = record.asset_materialization.metadata
        named = meta.get("registered_model")
        if _text(meta.get(version_key, "")) == version and (named is None or _text(named) == model):
            found.append(_step(key, record))
    return sorted(found, key=lambda s: s.timestamp or 0)


def _upstream(instance, key: str, before: float | None) -> list[Step]:
    """The newest materializations (one per partition) made before the fine-tune, oldest first."""
    seen, steps = set(), []
    for record in _records(instance, key):
        if before is not None and record.timestamp > before:
            continue
        partition = record.asset_materialization.partition or ""
        if partition in seen:
            continue
        seen.add(partition)
        steps.append(_step(key, record))
        if len(steps) >= MAX_PER_ASSET:
            break
    return sorted(steps, key=lambda s: s.timestamp or 0)


def audit_trail(model: str, version: str, instance=None, client=None, log: AuditLog | None = None,
                lineage: ModelLineage | None = None) -> AuditTrail:
    """`lineage` (model_lineage) says which assets are this model's: without it only MLflow and the
    audit log are read."""
    version = str(version)
    trail = AuditTrail(model, version)
    if instance is not None and lineage is not None:
        versioned = {key: _versioned(instance, key, vkey, model, version) for key, vkey in lineage.versioned}
        trained = versioned[lineage.fine_tune]
        before = trained[-1].timestamp if trained else None
        for key in lineage.upstream:
            steps = _upstream(instance, key, before)
            trail.steps += steps
            if not steps:
                trail.missing.append(key)
        for key, steps in versioned.items():
            trail.steps += steps
            if not steps:
                trail.missing.append(key)
    if client is not None:
        mv = client.get_model_version(model, version)
        trail.mlflow_version = {"source": mv.source, "status": str(mv.status), "run_id": mv.run_id or "",
                                **{k: str(v) for k, v in sorted((mv.tags or {}).items())
                                   if k.startswith(("aiplat.", "dagster.", "owner"))}}
        from aiplat.security.approval import APPROVAL_TAG, describe

        if APPROVAL_TAG in trail.mlflow_version:  # a JSON envelope: summarized
            trail.mlflow_version[APPROVAL_TAG] = f"{describe(trail.mlflow_version[APPROVAL_TAG])} (unverified here; serving verifies)"
        owner = (client.get_registered_model(model).tags or {}).get("owner_team")
        trail.mlflow_version["registered_model.owner_team"] = owner or "(none)"
        if mv.run_id:
            run = client.get_run(mv.run_id)
            trail.training_run = {"run_id": mv.run_id, "status": run.info.status, "start_time_ms": str(run.info.start_time),
                                  **{k: v for k, v in sorted(run.data.tags.items()) if k.startswith(("aiplat.", "dagster."))}}
    log = log or AuditLog()
    try:
        checked = log.verify()
        trail.audit_log = f"{checked.path}: chain intact, {checked.entries} entries, head {checked.head[:16]}"
    except AuditLogTampered as e:
        trail.audit_log = f"TAMPERED: {e}"
    trail.events = [e for e in _entries(log) if e.get("model") == model and e.get("version") in (version, None)]
    return trail


def _entries(log: AuditLog) -> list[dict]:
    try:
        return list(log.entries())
    except AuditLogTampered:
        return []  # already reported by verify; unreadable lines cannot be attributed


def render(trail: AuditTrail) -> list[str]:
    from datetime import datetime, timezone

    def when(ts: float | None) -> str:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else "-"

    lines = [f"audit trail of {trail.model} version {trail.version}", "", "== Dagster asset metadata =="]
    for step in trail.steps:
        part = f" [{step.partition}]" if step.partition else ""
        lines.append(f"{step.asset}{part}  at {when(step.timestamp)}  run {step.run_id}")
        lines += [f"    {k}: {v}" for k, v in sorted(step.metadata.items())]
    if trail.missing:
        lines.append(f"no materialization recorded for: {', '.join(trail.missing)}")
    lines += ["", "== MLflow model version =="] + [f"    {k}: {v}" for k, v in trail.mlflow_version.items()]
    lines += ["", "== MLflow training run =="] + [f"    {k}: {v}" for k, v in trail.training_run.items()]
    lines += ["", "== audit log ==", f"    {trail.audit_log}"]
    for e in trail.events:
        extra = e.get("decision") or e.get("detail") or e.get("reason") or e.get("action") or ""
        lines.append(f"    {e.get('at')}  {e.get('event')} {e.get('action') or ''}  {e.get('actor')} ({e.get('team')})"
                     f"  version {e.get('version') or '-'}  {extra}")
    return lines
