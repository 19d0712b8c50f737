"""What an index is made of. Its fingerprint names the collection: a change of embedding model,
vector index type or index parameters gives a new collection, built beside the serving one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = "1"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX")
METRICS = ("COSINE", "IP", "L2")


@dataclass(frozen=True)
class IndexSettings:
    alias: str = "kb_chunks"
    collection_prefix: str = "kb_chunks"
    index_type: str = "HNSW"
    metric_type: str = "COSINE"
    index_params: dict[str, Any] = field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    search_params: dict[str, Any] = field(default_factory=lambda: {"ef": 64})
    recall_threshold: float = 0.95
    recall_k: int = 10
    max_text_length: int = 8192

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type {self.index_type!r} is not one of {INDEX_TYPES}")
        if self.metric_type not in METRICS:
            raise ValueError(f"metric_type {self.metric_type!r} is not one of {METRICS}")
        if not 0.0 < self.recall_threshold <= 1.0:
            raise ValueError(f"recall_threshold={self.recall_threshold} must be in (0, 1]")
        if self.alias == self.collection_prefix + "_":
            raise ValueError("alias must differ from collection names")

    def fingerprint(self, model_id: str, dim: int) -> str:
        """Hash of everything that changes the vectors or the index built on them."""
        spec = {
            "schema": SCHEMA_VERSION,
            "model": model_id,
            "dim": dim,
            "index_type": self.index_type,
            "metric": self.metric_type,
            "params": self.index_params,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def collection_name(self, model_id: str, dim: int) -> str:
        return f"{self.collection_prefix}_{self.fingerprint(model_id, dim)[:12]}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
