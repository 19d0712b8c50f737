"""The Feast feature store: one resource, a local (SQLite online store) and a Redis backend.

Both backends share the offline store (Parquet files under `data_dir`, where the feature repo's
relative `data/...` sources resolve) and a file registry; they differ in the online store. The
FeatureStore is built in setup_for_execution; serving code reads features through
`get_online_features`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import dagster as dg
from pydantic import PrivateAttr

from aiplat import config
from aiplat.features import store as feast_store

if TYPE_CHECKING:
    from feast import FeatureStore


class FeastResource(dg.ConfigurableResource, ABC):
    """Shared configuration: project, data folder, registry and where the definitions live."""

    project: str = feast_store.DEFAULT_PROJECT
    # Folder of the offline store (feature tables) and of the local registry. Unset: the
    # platform's state folder (<state>/feast), decided when the resource is set up.
    data_dir: Optional[str] = None
    # Registry location; unset: <data_dir>/data/registry.db.
    registry_path: Optional[str] = None
    # The declarative feature repo; unset: the checkout's feature_repo/.
    repo_dir: Optional[str] = None

    _store: Any = PrivateAttr(default=None)

    @abstractmethod
    def online_store_config(self) -> dict[str, Any]:
        """Feast's `online_store` section for this backend."""

    @abstractmethod
    def describe(self) -> str:
        """Where the online store is, for logs and metadata; never contains a secret."""

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else config.local_paths().root / "feast"

    def build_store(self) -> "FeatureStore":
        cfg = feast_store.repo_config(
            data_dir=self.resolved_data_dir(),
            online_store=self.online_store_config(),
            project=self.project,
            registry_path=self.registry_path,
        )
        return feast_store.feature_store(cfg)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = self.build_store()

    @property
    def store(self) -> "FeatureStore":
        if self._store is None:
            # Used outside a Dagster run (e.g. directly in a script): build on first use.
            self._store = self.build_store()
        return self._store

    def definitions(self) -> feast_store.RepoDefinitions:
        return feast_store.load_definitions(self.repo_dir)

    def table_path(self, view_name: str) -> Path:
        """The Parquet file the feature view reads from (what the feature assets write)."""
        return feast_store.source_path(self.store, self.definitions().view(view_name))

    def get_online_features(self, service: str, entity_rows: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
        """Serving-time features of a feature service for the given entities (join keys only)."""
        return feast_store.online_features(self.store, service, entity_rows)


class LocalFeastResource(FeastResource):
    """Local runtime: SQLite online store next to the offline files."""

    sqlite_path: Optional[str] = None

    def online_store_config(self) -> dict[str, Any]:
        path = Path(self.sqlite_path) if self.sqlite_path else self.resolved_data_dir() / "data" / "online_store.db"
        return feast_store.sqlite_online_store(path)

    def describe(self) -> str:
        return f"sqlite online store under {self.resolved_data_dir()}"


class RedisFeastResource(FeastResource):
    """Production: Redis online store. `redis_url` is a secret: pass it as dg.EnvVar."""

    redis_url: str
    key_ttl_seconds: Optional[int] = None

    def online_store_config(self) -> dict[str, Any]:
        return feast_store.redis_online_store(self.redis_url, self.key_ttl_seconds)

    def describe(self) -> str:
        conn = feast_store.redis_connection_string(self.redis_url).split(",")[0]
        return f"redis online store at {conn}, project {self.project}"


def feast_resource_for(runtime: config.Runtime) -> FeastResource:
    """The platform's Feast resource for a runtime (what platform_defs wires as `feast`)."""
    if runtime == "local":
        return LocalFeastResource(data_dir=str(config.local_paths().root / "feast"))
    return RedisFeastResource(
        data_dir=dg.EnvVar("AIPLAT_FEAST_DATA_DIR"),
        registry_path=dg.EnvVar("AIPLAT_FEAST_REGISTRY"),
        redis_url=dg.EnvVar("AIPLAT_FEAST_REDIS"),
    )
