"""Milvus: the vector database that serves the KB index (Milvus Lite server locally, Milvus in prod)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from aiplat.config import local_paths, local_ports


class MilvusResource(dg.ConfigurableResource):
    """Connection, naming and index settings of the KB index, plus where its backups go.

    `uri` and `backup_uri` left empty mean the local runtime: the Milvus Lite server on
    AIPLAT_MILVUS_PORT and a folder in the state dir. The token is a secret: set it from an
    EnvVar; it is never logged or written to metadata.
    """

    uri: str | None = None
    token: str = ""
    alias: str = "kb_chunks"
    collection_prefix: str = "kb_chunks"
    index_type: str = "HNSW"
    metric_type: str = "COSINE"
    index_params: dict[str, int] = {"M": 16, "efConstruction": 200}
    search_params: dict[str, int] = {"ef": 64}
    recall_threshold: float = 0.95
    recall_k: int = 10
    # A KB snapshot deleting more than this share of the served rows waits for an operator's
    # confirmation (kb_index_deletion_guard); see aiplat/retrieval/guard.py.
    max_delete_share: float = 0.10
    retry_attempts: int = 5
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 8.0
    backup_uri: str | None = None
    s3_endpoint_url: str | None = None

    _store: Any = PrivateAttr(default=None)

    @classmethod
    def local(cls, **overrides: Any) -> MilvusResource:
        return cls(**overrides)

    @classmethod
    def prod(cls, **overrides: Any) -> MilvusResource:
        fields: dict[str, Any] = {
            "uri": dg.EnvVar("AIPLAT_MILVUS_URI"),
            "token": dg.EnvVar("AIPLAT_MILVUS_TOKEN"),
            "backup_uri": dg.EnvVar("AIPLAT_MILVUS_BACKUP_URI"),
        }
        return cls(**{**fields, **overrides})

    def resolved_uri(self) -> str:
        return self.uri or f"http://127.0.0.1:{local_ports().milvus}"

    def settings(self) -> Any:
        from aiplat.retrieval.settings import IndexSettings

        return IndexSettings(
            alias=self.alias,
            collection_prefix=self.collection_prefix,
            index_type=self.index_type,
            metric_type=self.metric_type,
            index_params=dict(self.index_params),
            search_params=dict(self.search_params),
            recall_threshold=self.recall_threshold,
            recall_k=self.recall_k,
        )

    def retry_policy(self) -> Any:
        from aiplat.retrieval.retry import RetryPolicy

        return RetryPolicy(self.retry_attempts, self.retry_base_delay_s, self.retry_max_delay_s)

    def open_store(self) -> Any:
        """A fresh connection (the CLI's and the tests' way in); retried, then a clear error."""
        from aiplat.retrieval.store import IndexStore

        return IndexStore.connect(self.resolved_uri(), self.token, self.settings(), self.retry_policy())

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = self.open_store()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> Any:
        if self._store is None:
            raise RuntimeError("MilvusResource used outside execution; call open_store() instead")
        return self._store

    def artifacts(self) -> Any:
        from aiplat.retrieval.artifacts import open_store

        return open_store(self.backup_uri or str(local_paths().milvus / "backups"), self.s3_endpoint_url)
