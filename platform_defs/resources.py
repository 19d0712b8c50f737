"""The two resource sets: `local` (defaults, no network) and `prod` (everything from dg.EnvVar).

Only aiplat.config.runtime() picks between them. Secrets are only ever referenced as dg.EnvVar,
so the UI and the run logs show the variable's name, never its value.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from aiplat import config
from resources.embeddings import EmbeddingResource
from resources.feast import feast_resource_for
from resources.lake import LakeIOManager
from resources.milvus import MilvusResource
from resources.mlflow import MLflowResource
from resources.operations import OperationsResource
from resources.presidio import local_presidio, prod_presidio
from resources.ray import RayResource
from resources.signing import ModelSigningResource
from resources.vllm import LocalVllmResource, ProdVllmResource
from resources.landing_zone import LocalLandingZone, S3LandingZone


def _lake(lake: LakeIOManager) -> dict[str, Any]:
    # The lake is the default IO manager; "lake" names it for assets that say so explicitly.
    return {"io_manager": lake, "lake": lake}


def local_resources() -> dict[str, Any]:
    paths = config.local_paths()
    return {
        "landing_zone": LocalLandingZone(base_dir=str(paths.landing)),
        "feast": feast_resource_for("local"),
        "presidio": local_presidio(),
        "ray": RayResource.local(),
        "milvus": MilvusResource.local(),
        "mlflow": MLflowResource.local(),
        "vllm": LocalVllmResource(),
        "operations": OperationsResource.local(),
        "model_signing": ModelSigningResource.local(),
        "embeddings": EmbeddingResource(),
    } | _lake(LakeIOManager(base_uri=str(paths.lake)))


def prod_resources() -> dict[str, Any]:
    # Credentials and the endpoint come from the standard AWS variables (AWS_ACCESS_KEY_ID,
    # AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or the pod's IAM role: never from config.
    s3 = S3Resource(region_name=dg.EnvVar("AWS_REGION"))
    return {
        "landing_zone": S3LandingZone(
            s3=s3, bucket=dg.EnvVar("AIPLAT_LANDING_BUCKET"), prefix=dg.EnvVar("AIPLAT_LANDING_PREFIX")
        ),
        "feast": feast_resource_for("prod"),
        "presidio": prod_presidio(),
        "ray": RayResource.prod(),
        "milvus": MilvusResource.prod(),
        "mlflow": MLflowResource.prod(),
        "vllm": ProdVllmResource.from_env(),
        "operations": OperationsResource.prod(),
        "model_signing": ModelSigningResource.prod(),
        # Large embedding sets on the KubeRay cluster: 8 one-CPU actors (two of its 4-CPU workers).
        "embeddings": EmbeddingResource(workers=8),
    } | _lake(LakeIOManager(base_uri=dg.EnvVar("AIPLAT_LAKE_URI"), s3_region=dg.EnvVar("AWS_REGION")))


def resources_for(runtime: config.Runtime) -> dict[str, Any]:
    return local_resources() if runtime == "local" else prod_resources()
