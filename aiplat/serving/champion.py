"""Where the adapter an endpoint serves comes from: the MLflow registry's `champion` (or another alias
or version) of a model, served on its base model's shared server.

A fine-tuned version's `source` is its LoRA adapter; no merged copy exists. A version registered
without an adapter (a whole-model folder) has nothing the platform can serve: resolving it fails
naming the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiplat.config import local_paths

CHAMPION = "champion"
PREVIOUS = "previous"


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
    files downloaded once and verified against the version's adapter digest; ModelResolutionError
    when that version registered no adapter."""

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
            raise ModelResolutionError(
                f"{self.model_name} version {mv.version} registered no LoRA adapter (a whole-model folder); the "
                f"platform serves adapters over a base model: register a fine-tune of {self.base}")
        root = self.download_root or local_paths().models / "served"
        folder = verified_copy(self.tracking_uri, tags[TAG_ADAPTER_ARTIFACT], tags[TAG_ADAPTER_SHA],
                               root / self.model_name / f"v{mv.version}-adapter",
                               f"{self.model_name} version {mv.version} (adapter)", TAG_ADAPTER_SHA)
        source = (f"{self.store_prefix.rstrip('/')}/{self.model_name}/v{mv.version}/adapter/" if self.store_prefix
                  else str(folder))
        return AdapterVersion(self.model_name, str(mv.version), self.base, source, tags.get(APPROVAL_TAG, ""),
                              folder=str(folder))
