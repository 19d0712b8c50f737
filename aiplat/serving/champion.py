"""Where the model an endpoint serves comes from: a folder, or the MLflow registry's `champion`.

Deploys take a `ModelSource` so that tests and the CLI can pass a folder directly, and the
serving asset resolves the registry alias. A fine-tuned version's `source` is its LoRA adapter
(`MlflowAdapterSource`: served on its base model's shared server); no merged copy exists. A
whole-model server loads a version registered as a whole-model folder (a base model).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiplat.config import local_paths

CHAMPION = "champion"
PREVIOUS = "previous"


@dataclass(frozen=True)
class ModelRef:
    """One model version, as a local folder vLLM can load."""

    version: str
    path: Path
    registered_name: str = ""
    uri: str = ""  # where it came from (models:/name/version, a folder path)
    attestation: str = ""  # the promotion attestation approving these bytes (aiplat.security.approval)


class ModelSource(Protocol):
    def resolve(self) -> ModelRef: ...


class ModelResolutionError(LookupError):
    pass


def aliased_version(client, model_name: str, alias: str):
    """The MLflow version behind `alias`, or ModelResolutionError saying to promote one first."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        raise ModelResolutionError(
            f"registered model {model_name!r} has no alias {alias!r} (promote a version first): {e.message}"
        ) from None


def check_model_folder(path: Path) -> None:
    """A loadable safetensors folder; never pickled weights from shared storage."""
    from aiplat.models.manifest import assert_no_pickles

    if not (path / "config.json").is_file():
        raise ModelResolutionError(f"{path} is not a model folder: config.json is missing")
    if not list(path.glob("*.safetensors")):
        raise ModelResolutionError(f"{path} has no *.safetensors weights; the platform does not serve pickled weights")
    assert_no_pickles(path)


@dataclass(frozen=True)
class FolderSource:
    path: Path
    version: str
    registered_name: str = ""
    attestation: str = ""

    def resolve(self) -> ModelRef:
        path = Path(self.path).resolve()
        if not path.is_dir():
            raise ModelResolutionError(f"model folder {path} does not exist")
        return ModelRef(self.version, path, self.registered_name, uri=str(path), attestation=self.attestation)


@dataclass(frozen=True)
class MlflowAliasSource:
    """The version behind `alias` of a registered model, downloaded once per version."""

    client: object  # mlflow.tracking.MlflowClient
    model_name: str
    alias: str = CHAMPION
    download_root: Path | None = None
    tracking_uri: str | None = None  # for the artifact download; None = mlflow's configured one

    def resolve(self) -> ModelRef:
        mv = aliased_version(self.client, self.model_name, self.alias)
        root = self.download_root or local_paths().models / "served"
        dest = root / self.model_name / f"v{mv.version}"
        if not (dest / "config.json").is_file():
            from aiplat.evaluation.registry import TAG_ADAPTER_ARTIFACT, TAG_BASE_SHA

            tags = dict(mv.tags or {})
            if tags.get(TAG_ADAPTER_ARTIFACT):
                # No merged copy exists: a fine-tune is served as its adapter, on its base's server.
                raise ModelResolutionError(
                    f"{self.model_name} version {mv.version} is a LoRA adapter over base model "
                    f"{tags.get(TAG_BASE_SHA, '?')[:12]}, not a whole model: it is served on its base model's "
                    f"server (served_endpoint with the spec's base_model, or `aiplat adapters deploy`)")
            self._download(mv.source, dest)
        check_model_folder(dest)
        from aiplat.security.approval import APPROVAL_TAG

        return ModelRef(str(mv.version), dest, self.model_name, uri=f"models:/{self.model_name}/{mv.version}",
                        attestation=(mv.tags or {}).get(APPROVAL_TAG, ""))

    def _download(self, artifact_uri: str, dest: Path) -> None:
        import mlflow.artifacts

        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
        try:
            got = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=str(staging),
                tracking_uri=self.tracking_uri,
            ))
            check_model_folder(got)
            # A half-downloaded folder never takes the version's place.
            if dest.exists():
                shutil.rmtree(dest)
            got.replace(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def restore_previous_alias(client, model_name: str) -> str:
    """Point `champion` back at the version behind `previous`; returns what it did.

    The default rollback of a failed canary. Promotion (aiplat.evaluation) moves `previous` to
    the old champion when it promotes, so this undoes exactly one promotion.
    """
    from mlflow.exceptions import MlflowException

    try:
        previous = client.get_model_version_by_alias(model_name, PREVIOUS)
    except MlflowException:
        return f"{model_name} has no {PREVIOUS!r} alias; {CHAMPION!r} left where it is"
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    return f"{model_name}: alias {CHAMPION!r} moved back to version {previous.version} ({PREVIOUS!r})"


@dataclass(frozen=True)
class MlflowAdapterSource:
    """The LoRA adapter of the version behind `alias` (aiplat.serving.backend.AdapterVersion), its
    files downloaded once and verified against the version's adapter digest; None from `resolve` when
    that version registered no adapter (it is served as a whole model)."""

    client: object
    model_name: str
    base: str  # the base model's served name (the spec's base_model)
    alias: str = CHAMPION
    download_root: Path | None = None
    tracking_uri: str | None = None
    store_prefix: str = ""  # prod: s3://bucket/prefix of <model>/v<version>/adapter/ (what the pod's sidecar pulls)
    version: str | None = None  # this registered version instead of the one behind `alias`

    def resolve(self):
        from aiplat.evaluation.registry import TAG_ADAPTER_ARTIFACT, TAG_ADAPTER_SHA, verified_copy
        from aiplat.security.approval import APPROVAL_TAG
        from aiplat.serving.backend import AdapterVersion

        mv = (self.client.get_model_version(self.model_name, self.version) if self.version
              else aliased_version(self.client, self.model_name, self.alias))
        tags = dict(mv.tags or {})
        if not tags.get(TAG_ADAPTER_SHA) or not tags.get(TAG_ADAPTER_ARTIFACT):
            return None
        root = self.download_root or local_paths().models / "served"
        folder = verified_copy(self.tracking_uri, tags[TAG_ADAPTER_ARTIFACT], tags[TAG_ADAPTER_SHA],
                               root / self.model_name / f"v{mv.version}-adapter",
                               f"{self.model_name} version {mv.version} (adapter)", TAG_ADAPTER_SHA)
        source = (f"{self.store_prefix.rstrip('/')}/{self.model_name}/v{mv.version}/adapter/" if self.store_prefix
                  else str(folder))
        return AdapterVersion(self.model_name, str(mv.version), self.base, source, tags.get(APPROVAL_TAG, ""),
                              folder=str(folder))
