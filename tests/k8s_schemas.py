"""Strict validation of every Kubernetes object the platform ships: core kinds with
kubernetes-validate, the custom resources (KubeRay's RayCluster) against their CRD's own schema,
vendored beside the manifest with its source, with unknown fields rejected (the API server would
prune a misspelt field silently)."""

from __future__ import annotations

import copy
import gzip
import json
from functools import lru_cache

import jsonschema
import kubernetes_validate

from aiplat.config import project_root

CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): project_root() / "deploy" / "ray" / "crds" / "ray.io_rayclusters.v1.schema.json.gz",
}


def strict(schema: dict) -> dict:
    """`schema` with additionalProperties false wherever it lists properties and does not say to
    keep unknown fields."""
    out = copy.deepcopy(schema)

    def walk(node) -> None:
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


@lru_cache(maxsize=None)
def crd_schema(api_version: str, kind: str) -> dict:
    vendored = json.loads(gzip.decompress(CRD_SCHEMAS[(api_version, kind)].read_bytes()))
    assert vendored["source"].startswith("github.com/"), "a vendored CRD schema names where it came from"
    return strict(vendored["openAPIV3Schema"])


def validate(doc: dict, version: str) -> None:
    """Raise unless `doc` is valid for Kubernetes `version` (its CRD's schema for a custom resource)."""
    if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS:
        jsonschema.validate(doc, crd_schema(doc["apiVersion"], doc["kind"]))
    else:
        kubernetes_validate.validate(doc, version, strict=True)
