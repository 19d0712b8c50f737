"""A Milvus collection of KB chunks: declared schema, index, upserts, alias, every call retried."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from aiplat.retrieval.retry import RetryPolicy, call_with_retries
from aiplat.retrieval.settings import IndexSettings

T = TypeVar("T")
PRIMARY_KEY = "chunk_id"
VECTOR_FIELD = "vector"
SCALAR_FIELDS = ("article_id", "chunk_index", "title", "product", "category", "text", "model_id", "index_version")
KEY_FIELDS = ["chunk_id", "article_id", "chunk_index"]


@dataclass
class IndexStore:
    """One Milvus endpoint plus the index settings; collections are named by the settings."""

    client: Any
    uri: str
    settings: IndexSettings = field(default_factory=IndexSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    write_batch: int = 512

    @classmethod
    def connect(
        cls, uri: str, token: str = "", settings: IndexSettings | None = None, retry: RetryPolicy | None = None
    ) -> IndexStore:
        from pymilvus import MilvusClient

        policy = retry or RetryPolicy()
        def open_client() -> Any:
            client = MilvusClient(uri=uri, token=token, timeout=10)
            client.list_collections()  # the constructor connects lazily; prove the server answers
            return client

        client = call_with_retries(open_client, what="connecting", uri=uri, policy=policy)
        return cls(client=client, uri=uri, settings=settings or IndexSettings(), retry=policy)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retries(fn, what=what, uri=self.uri, policy=self.retry)

    def read(self, name: str, what: str, fn: Callable[[], T]) -> T:
        """A query or search of `name`. A collection comes back released after a Milvus restart
        (or a release by another client); then it is loaded and the read asked once more, instead
        of every later run failing until someone loads it by hand."""
        from pymilvus.exceptions import MilvusException

        try:
            return self.call(what, fn)
        except MilvusException as exc:
            if not _not_loaded(exc):
                raise
        self.call(f"loading {name}", lambda: self.client.load_collection(name))
        return self.call(what, fn)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a client to a dead server is not worth a failure
            pass

    # --- collections ------------------------------------------------------------------------
    def schema(self, dim: int) -> Any:
        from pymilvus import DataType, MilvusClient

        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description="KB chunks")
        s.add_field(PRIMARY_KEY, DataType.VARCHAR, is_primary=True, max_length=64)
        s.add_field("article_id", DataType.VARCHAR, max_length=64)
        s.add_field("chunk_index", DataType.INT64)
        s.add_field("title", DataType.VARCHAR, max_length=1024)
        s.add_field("product", DataType.VARCHAR, max_length=256)
        s.add_field("category", DataType.VARCHAR, max_length=64)
        s.add_field("text", DataType.VARCHAR, max_length=self.settings.max_text_length)
        s.add_field("model_id", DataType.VARCHAR, max_length=128)
        s.add_field("index_version", DataType.VARCHAR, max_length=128)
        s.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        return s

    def index_params(self) -> Any:
        params = self.client.prepare_index_params()
        params.add_index(
            field_name=VECTOR_FIELD,
            index_type=self.settings.index_type,
            metric_type=self.settings.metric_type,
            params=dict(self.settings.index_params),
        )
        return params

    def exists(self, name: str) -> bool:
        return bool(self.call(f"checking collection {name}", lambda: self.client.has_collection(name)))

    def ensure_collection(self, name: str, dim: int) -> bool:
        """Create the collection if absent; True when it was created."""
        if self.exists(name):
            return False
        self.call(
            f"creating collection {name}",
            lambda: self.client.create_collection(name, schema=self.schema(dim), index_params=self.index_params()),
        )
        return True

    def collections(self) -> list[str]:
        prefix = self.settings.collection_prefix + "_"
        names = self.call("listing collections", self.client.list_collections)
        return sorted(n for n in names if n.startswith(prefix))

    def drop(self, name: str) -> None:
        if name == self.served_collection():
            raise ValueError(f"refusing to drop {name}: the alias {self.settings.alias!r} serves it")
        self.call(f"dropping {name}", lambda: self.client.drop_collection(name))

    # --- alias --------------------------------------------------------------------------------
    def served_collection(self) -> str | None:
        from pymilvus.exceptions import MilvusException

        alias = self.settings.alias

        def describe() -> str | None:
            # Asking first avoids pymilvus logging an ERROR for the expected "no such alias".
            if alias not in self.client.list_aliases().get("aliases", []):
                return None
            try:
                return self.client.describe_alias(alias)["collection_name"]
            except MilvusException as exc:
                if "does not exist" in str(exc) or "not found" in str(exc).lower():
                    return None
                raise

        return self.call(f"reading alias {alias}", describe)

    def point_alias(self, name: str) -> str | None:
        """Move the alias to `name` in one server-side operation; returns the previous target."""
        previous = self.served_collection()
        alias = self.settings.alias
        if previous == name:
            return previous
        if previous is None:
            self.call(f"creating alias {alias} -> {name}", lambda: self.client.create_alias(name, alias))
        else:
            self.call(f"moving alias {alias} -> {name}", lambda: self.client.alter_alias(name, alias))
        return previous

    # --- rows -----------------------------------------------------------------------------------
    def count(self, name: str) -> int:
        self.call(f"flushing {name}", lambda: self.client.flush(name))
        res = self.read(name, f"counting {name}", lambda: self.client.query(name, filter="", output_fields=["count(*)"]))
        return int(res[0]["count(*)"])

    def scan(self, name: str, fields: list[str], batch_size: int = 1000) -> pd.DataFrame:
        """Every row of a collection (only the given fields), via a query iterator."""

        def run() -> list[dict]:
            it = self.client.query_iterator(name, batch_size=batch_size, output_fields=fields)
            rows: list[dict] = []
            try:
                while batch := it.next():
                    rows.extend(batch)
            finally:
                it.close()
            return rows

        rows = self.read(name, f"reading rows of {name}", run)
        df = pd.DataFrame(rows, columns=fields) if rows else pd.DataFrame({f: [] for f in fields})
        return df[fields]

    def keys(self, name: str) -> pd.DataFrame:
        return self.scan(name, KEY_FIELDS).astype({"chunk_index": "int64"})

    def fetch(self, name: str, ids: list[str], fields: Iterable[str]) -> pd.DataFrame:
        fields = list(fields)
        out = []
        for start in range(0, len(ids), self.write_batch):
            part = ids[start : start + self.write_batch]
            out.extend(self.read(name, f"reading {len(part)} rows of {name}",
                                 lambda part=part: self.client.query(name, ids=part, output_fields=fields)))
        return pd.DataFrame(out, columns=fields) if out else pd.DataFrame({f: [] for f in fields})

    def upsert(self, name: str, rows: pd.DataFrame, progress: Callable[[int], None] | None = None) -> int:
        too_long = rows[rows["text"].str.encode("utf-8").str.len() > self.settings.max_text_length]
        if not too_long.empty:
            first = too_long.iloc[0]
            raise ValueError(
                f"chunk {first.chunk_id} of article {first.article_id!r} has {len(first.text.encode())} bytes of text; "
                f"the collection allows {self.settings.max_text_length}: lower the chunk size"
            )
        records = rows[[PRIMARY_KEY, *SCALAR_FIELDS, VECTOR_FIELD]].to_dict("records")
        for r in records:
            r[VECTOR_FIELD] = np.asarray(r[VECTOR_FIELD], dtype=np.float32).tolist()
            r["chunk_index"] = int(r["chunk_index"])
        written = 0
        for start in range(0, len(records), self.write_batch):
            part = records[start : start + self.write_batch]
            self.call(f"upserting {len(part)} rows into {name}", lambda part=part: self.client.upsert(name, part))
            written += len(part)
            if progress:
                progress(len(part))
        return written

    def delete(self, name: str, ids: list[str]) -> int:
        for start in range(0, len(ids), self.write_batch):
            part = ids[start : start + self.write_batch]
            self.call(f"deleting {len(part)} rows from {name}", lambda part=part: self.client.delete(name, ids=part))
        return len(ids)

    def flush(self, name: str) -> None:
        self.call(f"flushing {name}", lambda: self.client.flush(name))

    def search(
        self, name: str, vectors: np.ndarray, k: int, output_fields: list[str] | None = None
    ) -> list[list[dict]]:
        data = np.asarray(vectors, dtype=np.float32)
        fields = output_fields if output_fields is not None else ["article_id", "index_version"]
        res = self.read(
            name,
            f"searching {name}",
            lambda: self.client.search(
                name,
                data=data.tolist(),
                limit=k,
                output_fields=fields,
                search_params={"metric_type": self.settings.metric_type, "params": dict(self.settings.search_params)},
            ),
        )
        return [[{"chunk_id": h["id"] if "id" in h else h[PRIMARY_KEY], "score": float(h["distance"]),
                  **h.get("entity", {})} for h in hits] for hits in res]


def _not_loaded(exc: Exception) -> bool:
    text = str(exc).lower()
    return "released" in text or "not loaded" in text or "collection not loaded" in text

