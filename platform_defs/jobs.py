"""Jobs: one ingest job per landed dataset, covering every asset partitioned by its batches."""

from __future__ import annotations

from typing import Iterable

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.intake import BATCHES


INGEST_GROUPS = ("intake", "pii")  # what a landed batch must go through before anything reads it


def _keys_partitioned_by(assets: Iterable[dg.AssetsDefinition], partitions: dg.PartitionsDefinition) -> list[dg.AssetKey]:
    """The intake and redaction assets of one dataset's batches; a model's per-batch predictions wait
    for its served endpoint and run from their own sensor, never as part of ingest."""
    keys = []
    for asset in assets:
        for key in asset.keys:
            spec = asset.specs_by_key[key]
            if spec.partitions_def == partitions and spec.group_name in INGEST_GROUPS:
                keys.append(key)
    return keys


def ingest_jobs(assets: list[dg.AssetsDefinition]) -> dict[str, UnresolvedAssetJobDefinition]:
    """Per dataset, a job that takes one landed batch from raw through redaction."""
    return {
        dataset: dg.define_asset_job(
            name=f"ingest_{dataset}_batch",
            selection=dg.AssetSelection.assets(*_keys_partitioned_by(assets, partitions)),
            partitions_def=partitions,
            description=f"Validate, quarantine and redact one landed {dataset} batch.",
            tags={"aiplat/stage": "intake"},
        )
        for dataset, partitions in BATCHES.items()
    }


def downstream_job(assets: list[dg.AssetsDefinition]) -> UnresolvedAssetJobDefinition | None:
    """Everything that is not per batch: features, training, evaluation, indexes, serving."""
    unpartitioned = [key for asset in assets for key in asset.keys if asset.specs_by_key[key].partitions_def is None]
    if not unpartitioned:
        return None
    return dg.define_asset_job(
        name="refresh_downstream",
        selection=dg.AssetSelection.assets(*unpartitioned),
        description="Rebuild every asset downstream of the per-batch stages.",
    )
