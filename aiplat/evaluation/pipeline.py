"""One evaluation of a registered model version, end to end: the function the eval_report asset
calls. Candidate, base model and current champion are evaluated the same way on the same data,
the gate decides, and the report is written, hashed and logged to MLflow."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from aiplat.config import local_paths
from aiplat.evaluation import gate as gate_rules
from aiplat.evaluation.evaluate import EvalInputs, evaluate_model, headline, prepare_inputs
from aiplat.evaluation.registry import (
    CHAMPION,
    EvalTarget,
    LoggedReport,
    ModelRef,
    adapter_target,
    alias_version,
    log_report,
    model_folder,
    model_version,
)
from aiplat.evaluation.report import build_report, write_report
from aiplat.evaluation.settings import EvalSettings, GateThresholds
from aiplat.models.manifest import compute_manifest
from aiplat.provenance import code_version, sha256_bytes

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvalOutcome:
    report: dict
    sha256: str
    logged: LoggedReport
    candidate: ModelRef
    champion: ModelRef | None
    markdown: str

    @property
    def passed(self) -> bool:
        return bool(self.report["gate"]["passed"])

    @property
    def reasons(self) -> list[str]:
        return list(self.report["gate"]["reasons"])


def evaluate_version(
    client,
    tracking_uri: str,
    name: str,
    version: str,
    training_set: pd.DataFrame,
    settings: EvalSettings | None = None,
    thresholds: GateThresholds | None = None,
    *,
    base_folder: Path | None = None,
    adapter_base: Path | None = None,
    candidate_hint: Path | None = None,
    adapter_hint: Path | None = None,
    dagster_run_id: str | None = None,
    progress: Progress | None = None,
    prompt_format=None,
    policy=None,
) -> EvalOutcome:
    """`policy` (aiplat.policy.GatePolicy, default: the current one): the report records its digest,
    and promotion refuses a report made under any other; `prompt_format` is the model's task and prompt.
    With `adapter_base` (the prepared base model), a version that registered a LoRA adapter is
    evaluated as that adapter over the base (what an adapter server serves); `base_folder` is the base
    model evaluated on its own for comparison."""
    from aiplat.policy import current_policy

    policy = policy or current_policy()
    settings = settings or EvalSettings()
    thresholds = thresholds or GateThresholds()
    say = progress or (lambda _m: None)
    candidate = model_version(client, name, str(version))
    inputs = prepare_inputs(training_set, settings, prompt_format)
    champion = alias_version(client, name, CHAMPION)

    say(f"evaluating candidate {name} version {candidate.version}")
    target = _target(tracking_uri, candidate, adapter_base, candidate_hint, adapter_hint)
    cand_eval = evaluate_model(target.folder, inputs, settings, say, target.base, target.base_sha256)
    champ_eval = None
    if champion is not None and champion.version != candidate.version:
        say(f"evaluating champion {name} version {champion.version}")
        target = _target(tracking_uri, champion, adapter_base)
        champ_eval = cached_evaluation(target.folder, inputs, settings, say, target.base, target.base_sha256)
    base_eval = None
    if base_folder is not None:
        say(f"evaluating base model {base_folder}")
        base_eval = cached_evaluation(Path(base_folder), inputs, settings, say)

    decision = gate_rules.decide(thresholds, headline(cand_eval), headline(base_eval), headline(champ_eval))
    report = build_report(
        model={**candidate.to_dict(), "model_sha256": cand_eval["model_sha256"],
               **({"evaluated": "adapter", "base_model_sha256": cand_eval["base_model_sha256"]}
                  if cand_eval.get("evaluated") == "adapter" else {})},
        candidate=cand_eval,
        base=base_eval,
        champion=champ_eval,
        champion_version=champion.version if champion else None,
        gate=decision,
        settings=_recorded_settings(settings),
        thresholds=thresholds.model_dump(mode="json"),
        datasets=inputs.describe(),
        dagster_run_id=dagster_run_id,
        code_version=code_version(),
        policy={"sha256": policy.digest, "version": policy.version},
        task=inputs.fmt.task,
    )
    with tempfile.TemporaryDirectory(prefix="aiplat-eval-") as tmp:
        written = write_report(report, Path(tmp) / "eval_report")
        tags = {"dagster.run_id": dagster_run_id or "", "aiplat.candidate_run_id": candidate.run_id or ""}
        logged = log_report(client, tracking_uri, report, written.sha256, written.folder, tags)
    say(f"report {written.sha256[:12]}: gate {'passed' if decision['passed'] else 'FAILED'}")
    return EvalOutcome(report, written.sha256, logged, candidate, champion, written.markdown)


def _target(tracking_uri: str, ref, adapter_base: Path | None, hint: Path | None = None,
            adapter_hint: Path | None = None) -> EvalTarget:
    """The version's adapter over `adapter_base` when it has one, else its whole-model folder (`base` None)."""
    adapter = adapter_target(tracking_uri, ref, adapter_base, adapter_hint)
    return adapter or EvalTarget(model_folder(tracking_uri, ref, hint))


def _recorded_settings(settings: EvalSettings) -> dict:
    """The settings as the report records them: canaries only as hashes, never the planted strings."""
    recorded = settings.model_dump(mode="json")
    recorded["canaries"] = [f"sha256:{sha256_bytes(c.encode())[:16]}" for c in settings.canaries]
    return recorded


def cached_evaluation(folder: Path, inputs: EvalInputs, settings: EvalSettings, progress: Progress,
                      base: Path | None = None, base_sha256: str | None = None) -> dict:
    """The base model and the champion are the same bytes for many candidates: their results are
    kept under <state>/evaluation/cache, keyed by model bytes, data, settings and code version.
    A cached result says so (`cached_from`), since its latency was measured at another time."""
    key_material = json.dumps(
        {"model": compute_manifest(folder).folder_sha256, "data": inputs.describe(),
         **({"base": base_sha256 or compute_manifest(Path(base)).folder_sha256} if base is not None else {}),
         "probes": [p["message"] for p in inputs.probes], "settings": settings.model_dump(mode="json"),
         "prompt": inputs.fmt.key(),
         "code": code_version()},
        sort_keys=True,
    )
    path = local_paths().root / "evaluation" / "cache" / f"{sha256_bytes(key_material.encode())}.json"
    if path.is_file():
        try:
            result = json.loads(path.read_text())
            progress(f"reusing the evaluation of {folder} ({path.name[:12]})")
            return {**result, "cached_from": path.name[:16]}
        except (OSError, json.JSONDecodeError):
            pass  # unreadable cache entry: evaluate again and overwrite it
    result = evaluate_model(folder, inputs, settings, progress, base, base_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    staging.write_text(json.dumps(result, sort_keys=True))
    os.replace(staging, path)
    return result
