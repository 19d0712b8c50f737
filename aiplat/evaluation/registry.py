"""The MLflow side of evaluation: which model version is evaluated, where its files come from,
where its report goes (a dedicated eval run), and how a report is read back and verified.

A version's report is found through tags on the version (`aiplat.eval.run_id`,
`aiplat.eval.report_sha256`); the report itself is the eval run's `eval_report/report.json`
artifact, and it only counts when its bytes hash to the tagged sha256.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiplat.config import local_paths
from aiplat.evaluation.report import REPORT_JSON, load_report_bytes
from aiplat.models.manifest import compute_manifest
from aiplat.provenance import sha256_bytes

EVAL_EXPERIMENT_SUFFIX = "-evaluation"  # each model's eval runs live in "<model>-evaluation"
REPORT_ARTIFACT_DIR = "eval_report"
CHAMPION = "champion"
PREVIOUS = "previous"

# The folder digest of a version registered as a whole-model folder (a base model, or a version from
# before fine-tunes registered adapters; the tag's name is from then).
TAG_MODEL_SHA = "aiplat.merged_sha256"
# A fine-tune's LoRA adapter and the base model it applies to (aiplat.training.tracking sets them).
TAG_ADAPTER_SHA = "aiplat.adapter_sha256"
TAG_ADAPTER_ARTIFACT = "aiplat.adapter_artifact"
TAG_BASE_SHA = "aiplat.base_model_sha256"
TAG_EVAL_RUN = "aiplat.eval.run_id"
TAG_EVAL_SHA = "aiplat.eval.report_sha256"
TAG_EVAL_PASSED = "aiplat.eval.passed"
TAG_EVAL_URL = "aiplat.eval.report_url"


class ReportMissing(LookupError):
    pass


class ModelVersionNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    source: str
    run_id: str | None
    sha256: str | None  # the version's content hash tag (set by the fine-tune), when present
    created_ms: int
    tags: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "source": self.source, "run_id": self.run_id}


def _ref(mv) -> ModelRef:
    tags = dict(mv.tags or {})
    return ModelRef(mv.name, str(mv.version), mv.source, mv.run_id, tags.get(TAG_MODEL_SHA),
                    int(mv.creation_timestamp or 0), tags)


def model_version(client, name: str, version: str) -> ModelRef:
    from mlflow.exceptions import MlflowException

    try:
        return _ref(client.get_model_version(name, str(version)))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ModelVersionNotFound(f"model {name!r} has no version {version!r}") from None
        raise


def alias_version(client, name: str, alias: str) -> ModelRef | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _ref(client.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def model_cache_dir() -> Path:
    return local_paths().models / "eval-cache"


def model_folder(tracking_uri: str, ref: ModelRef, local_hint: Path | None = None) -> Path:
    """A local folder holding exactly the files of a version registered as a whole-model folder
    (verified against its sha256 tag)."""
    return verified_copy(tracking_uri, ref.source, ref.sha256, model_cache_dir() / ref.name / ref.version,
                          f"{ref.name} version {ref.version}", TAG_MODEL_SHA, local_hint)


@dataclass(frozen=True)
class EvalTarget:
    """What evaluation loads: a model folder, or an adapter folder and the base it applies to."""

    folder: Path
    base: Path | None = None
    base_sha256: str | None = None  # checked against the version's tag: evaluation need not hash it again


def adapter_target(tracking_uri: str, ref: ModelRef, base: Path | None, local_hint: Path | None = None) -> EvalTarget | None:
    """The version's LoRA adapter (downloaded, verified against its sha256 tag) over `base`, when the
    version registered one; None for a version registered as a whole-model folder (a base model, or
    one registered from before adapters), which the caller evaluates as that folder. A fine-tune's
    version is only its adapter: without `base` holding exactly the base model it was trained on
    there is nothing to evaluate, and ValueError says so."""
    sha, uri, base_sha = (ref.tags.get(TAG_ADAPTER_SHA), ref.tags.get(TAG_ADAPTER_ARTIFACT), ref.tags.get(TAG_BASE_SHA))
    if not (sha and uri and base_sha):
        return None
    if base is None or not Path(base).is_dir():
        raise ValueError(f"{ref.name} version {ref.version} is a LoRA adapter over base model {base_sha[:12]}, and "
                         f"that base is not prepared here ({base or 'no base folder given'}); prepare it "
                         "(the spec's base_model: aiplat.models.base) and evaluate again")
    got = compute_manifest(Path(base)).folder_sha256
    if got != base_sha:
        raise ValueError(f"{ref.name} version {ref.version} was trained on base model {base_sha[:12]}, but {base} "
                         f"hashes to {got[:12]}; refusing to evaluate its adapter over another base")
    folder = verified_copy(tracking_uri, uri, sha, model_cache_dir() / ref.name / f"{ref.version}-adapter",
                            f"{ref.name} version {ref.version} (adapter)", TAG_ADAPTER_SHA, local_hint)
    return EvalTarget(folder, Path(base), got)


def verified_copy(tracking_uri: str | None, uri: str, sha256: str | None, dest: Path, label: str, tag: str,
                   local_hint: Path | None = None) -> Path:
    """`dest` holding the artifact at `uri`, whose folder digest must be `sha256` (the version's `tag`):
    downloaded into a staging folder and moved into place only once verified, so evaluation and
    serving never read bytes other than those registered. `local_hint`/`dest` are reused when
    their digest already matches."""
    import mlflow.artifacts

    if local_hint is not None and Path(local_hint).is_dir() and sha256:
        if compute_manifest(Path(local_hint)).folder_sha256 == sha256:
            return Path(local_hint)
    if dest.is_dir() and sha256 and compute_manifest(dest).folder_sha256 == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.download-{uuid.uuid4().hex[:8]}"
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging), tracking_uri=tracking_uri)
        # download_artifacts puts a directory artifact under its own name inside dst_path.
        inner = [p for p in staging.iterdir()]
        folder = inner[0] if len(inner) == 1 and inner[0].is_dir() and not (staging / "config.json").exists() else staging
        got = compute_manifest(folder).folder_sha256
        if sha256 and got != sha256:
            raise ValueError(
                f"{label}: downloaded files hash to {got[:12]}, but the version is "
                f"tagged {tag}={sha256[:12]}; refusing to use other bytes than were registered"
            )
        if dest.exists():
            shutil.rmtree(dest)
        folder.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    from aiplat.training.tracking import run_url as training_run_url

    return training_run_url(tracking_uri, experiment_id, run_id)


def artifact_url(tracking_uri: str, run_id: str, path: str) -> str:
    """A direct link the tracking server answers with the file (the HTML report renders as a page)."""
    from aiplat.training.tracking import redact_uri

    return f"{redact_uri(tracking_uri).rstrip('/')}/get-artifact?path={path}&run_uuid={run_id}"


@dataclass(frozen=True)
class LoggedReport:
    run_id: str
    run_url: str
    report_url: str
    html_url: str


def log_report(client, tracking_uri: str, report: dict, sha: str, folder: Path, tags: dict[str, str]) -> LoggedReport:
    """A finished eval run holding the report folder, its metrics, and the tags that find it.

    The version's pointer tags are set last, so a failure part-way leaves the previous report
    (if any) as the version's report.
    """
    from mlflow.entities import Metric

    m = report["model"]
    experiment_id = _experiment_id(client, f"{m['name']}{EVAL_EXPERIMENT_SUFFIX}")
    run = client.create_run(
        experiment_id,
        run_name=f"eval-{m['name']}-v{m['version']}",
        tags={
            **tags,
            "aiplat.model_name": m["name"],
            "aiplat.model_version": str(m["version"]),
            TAG_EVAL_SHA: sha,
            TAG_EVAL_PASSED: str(report["gate"]["passed"]).lower(),
            "aiplat.champion_version": str(report["champion_version"] or ""),
        },
    )
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = []
        for metric, row in report["comparison"].items():
            for role in ("candidate", "base", "champion"):
                if row.get(role) is not None:
                    metrics.append(Metric(f"{role}_{metric}", float(row[role]), now, 0))
        client.log_batch(run_id, metrics=metrics)
        client.log_artifacts(run_id, str(folder), REPORT_ARTIFACT_DIR)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    url = run_url(tracking_uri, experiment_id, run_id)
    # The link people click opens the run page's artifact viewer on the HTML report, which renders
    # it; the server's raw /get-artifact answers as a download (attachment) for safety.
    html_url = f"{url}/artifacts/{REPORT_ARTIFACT_DIR}/report.html"
    for key, value in {TAG_EVAL_RUN: run_id, TAG_EVAL_SHA: sha, TAG_EVAL_PASSED: str(report["gate"]["passed"]).lower(),
                       TAG_EVAL_URL: html_url}.items():
        client.set_model_version_tag(m["name"], str(m["version"]), key, value)
    return LoggedReport(run_id, url, f"{url}/artifacts/{REPORT_ARTIFACT_DIR}", html_url)


def read_report(client, run_id: str) -> tuple[dict, str]:
    """The report JSON of an eval run and the sha256 of its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"{REPORT_ARTIFACT_DIR}/{REPORT_JSON}", tmp)
        except Exception as e:  # noqa: BLE001 - absent artifact or run: both mean "no report"
            raise ReportMissing(f"eval run {run_id} holds no {REPORT_ARTIFACT_DIR}/{REPORT_JSON} ({e})") from e
        data = Path(path).read_bytes()
    return load_report_bytes(data), sha256_bytes(data)


def version_report(client, ref: ModelRef) -> tuple[dict, str, str]:
    """(report, sha256 of its bytes, eval run id) for the version's current report."""
    run_id = ref.tags.get(TAG_EVAL_RUN)
    if not run_id:
        raise ReportMissing(f"{ref.name} version {ref.version} has no eval report (tag {TAG_EVAL_RUN} is unset)")
    report, sha = read_report(client, run_id)
    return report, sha, run_id
