"""The Feast store: configuration, the feature repo's definitions, apply, materialize, joins.

Every path is decided by the caller (the Feast resource passes the platform's data folder), so the
same functions serve the local runtime, prod and tests. Feast is imported here, never at the
package's import time, because it takes seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence
from urllib.parse import unquote, urlparse

import pandas as pd

from aiplat import config

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

DEFAULT_PROJECT = "aiplat"
TRAINING_SERVICE = "ticket_triage_v1"


def feature_repo_dir() -> Path:
    return config.project_root() / "feature_repo"


# ---------------------------------------------------------------------------------------------
# configuration


def redis_connection_string(url: str) -> str:
    """Feast's Redis form (`host:port,db=0,password=...,ssl=true`) from a redis:// URL.

    A string that is not a URL is taken to be in Feast's form already.
    """
    if not url.startswith(("redis://", "rediss://")):
        return url
    parsed = urlparse(url)
    parts = [f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"]
    db = parsed.path.lstrip("/")
    if db:
        if not db.isdigit():
            raise ValueError(f"the Redis URL's database {db!r} is not a number")
        parts.append(f"db={db}")
    if parsed.username and parsed.username != "default":
        parts.append(f"username={unquote(parsed.username)}")
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def sqlite_online_store(path: Path | str) -> dict[str, Any]:
    return {"type": "sqlite", "path": str(path)}


def redis_online_store(url: str, key_ttl_seconds: int | None = None) -> dict[str, Any]:
    store: dict[str, Any] = {"type": "redis", "connection_string": redis_connection_string(url)}
    if key_ttl_seconds:
        store["key_ttl_seconds"] = key_ttl_seconds
    return store


def repo_config(
    data_dir: Path | str,
    online_store: dict[str, Any],
    project: str = DEFAULT_PROJECT,
    registry_path: Path | str | None = None,
) -> "RepoConfig":
    """A RepoConfig whose relative source paths (`data/...` in feature_repo/) resolve under data_dir."""
    from feast.repo_config import RegistryConfig, RepoConfig

    data_dir = Path(data_dir)
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    registry = RegistryConfig(
        path=str(registry_path or data_dir / "data" / "registry.db"),
        # The registry is re-read at most this often; apply and materialize in the same process
        # update the cache directly.
        cache_ttl_seconds=10,
    )
    return RepoConfig(
        project=project,
        provider="local",
        registry=registry,
        offline_store={"type": "file"},
        online_store=online_store,
        entity_key_serialization_version=3,
        repo_path=data_dir,
    )


def feature_store(cfg: "RepoConfig") -> "FeatureStore":
    from feast import FeatureStore

    return FeatureStore(config=cfg)


# ---------------------------------------------------------------------------------------------
# definitions


@dataclass
class RepoDefinitions:
    """The Feast objects declared in feature_repo/, found the way `feast apply` finds them."""

    entities: list[Any] = field(default_factory=list)
    data_sources: list[Any] = field(default_factory=list)
    feature_views: list[Any] = field(default_factory=list)
    feature_services: list[Any] = field(default_factory=list)

    def all(self) -> list[Any]:
        return [*self.data_sources, *self.entities, *self.feature_views, *self.feature_services]

    def view(self, name: str) -> "FeatureView":
        for fv in self.feature_views:
            if fv.name == name:
                return fv
        raise KeyError(f"feature view {name!r} is not defined in the feature repo")

    def service(self, name: str) -> "FeatureService":
        for fs in self.feature_services:
            if fs.name == name:
                return fs
        known = ", ".join(sorted(s.name for s in self.feature_services))
        raise KeyError(f"feature service {name!r} is not defined in the feature repo (known: {known})")

    def fingerprint(self) -> str:
        """sha256 over the objects' specs: changes with any definition, not with comments."""
        h = hashlib.sha256()
        for kind, objects in (
            ("data_source", self.data_sources),
            ("entity", self.entities),
            ("feature_view", self.feature_views),
            ("feature_service", self.feature_services),
        ):
            for obj in sorted(objects, key=lambda o: o.name):
                proto = obj.to_proto()
                spec = getattr(proto, "spec", proto)
                _strip_volatile(spec)
                h.update(f"{kind}:{obj.name}\n".encode())
                h.update(spec.SerializeToString(deterministic=True))
        return h.hexdigest()


# Set by Feast when an object is built or applied, not by the definition: left out of the hash.
_VOLATILE_FIELDS = frozenset({"meta", "project", "created_timestamp", "last_updated_timestamp"})


def _strip_volatile(message: Any) -> None:
    for fd, value in list(message.ListFields()):
        if fd.name in _VOLATILE_FIELDS:
            message.ClearField(fd.name)
        elif fd.type == fd.TYPE_MESSAGE:
            repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
            if repeated:
                if fd.message_type.GetOptions().map_entry:
                    if fd.message_type.fields_by_name["value"].type == fd.TYPE_MESSAGE:
                        for item in value.values():
                            _strip_volatile(item)
                else:
                    for item in value:
                        _strip_volatile(item)
            else:
                _strip_volatile(value)


def load_definitions(repo_dir: Path | str | None = None) -> RepoDefinitions:
    """Import every *.py of the feature repo under a private module name and collect its objects."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    repo = Path(repo_dir) if repo_dir else feature_repo_dir()
    files = sorted(p for p in repo.glob("*.py") if p.name != "__init__.py")
    if not files:
        raise FileNotFoundError(f"no Feast definitions (*.py) in {repo}")
    defs = RepoDefinitions()
    for path in files:
        name = f"_aiplat_feature_repo_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        for value in vars(module).values():
            for cls, bucket in (
                (Entity, defs.entities),
                (DataSource, defs.data_sources),
                (FeatureView, defs.feature_views),
                (FeatureService, defs.feature_services),
            ):
                if isinstance(value, cls) and not any(value is o for o in bucket):
                    bucket.append(value)
    names = [fv.name for fv in defs.feature_views] + [fs.name for fs in defs.feature_services]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"the feature repo defines {', '.join(duplicates)} more than once")
    return defs


@dataclass(frozen=True)
class ApplyResult:
    project: str
    feature_views: list[str]
    feature_services: list[str]
    entities: list[str]
    deleted: list[str]
    fingerprint: str


def apply_definitions(store: "FeatureStore", defs: RepoDefinitions) -> ApplyResult:
    """`feast apply`: register the repo's objects and remove the ones the repo no longer declares."""
    project = store.project
    fingerprint = defs.fingerprint()  # before apply, which fills in inferred fields
    declared = {(type(o).__name__, o.name) for o in defs.all()}
    stale: list[Any] = []
    for existing in (
        *store.list_feature_services(),
        *store.list_feature_views(),
        *store.list_entities(),
    ):
        if (type(existing).__name__, existing.name) not in declared and existing.name != "__dummy":
            stale.append(existing)
    store.apply(defs.all(), objects_to_delete=stale, partial=False)
    return ApplyResult(
        project=project,
        feature_views=sorted(fv.name for fv in defs.feature_views),
        feature_services=sorted(fs.name for fs in defs.feature_services),
        entities=sorted(e.name for e in defs.entities),
        deleted=sorted(f"{type(o).__name__}:{o.name}" for o in stale),
        fingerprint=fingerprint,
    )


def source_path(store: "FeatureStore", view: "FeatureView") -> Path:
    """Where the view's FileSource lives for this store (relative paths resolve under repo_path)."""
    from feast.infra.offline_stores.file_source import FileSource

    return Path(FileSource.get_uri_for_file_path(store.config.repo_path, view.batch_source.path))


def write_offline_table(path: Path, df: pd.DataFrame, metadata: dict[bytes, bytes] | None = None) -> None:
    """Write a feature table so that a failed write leaves the previous good file in place;
    `metadata` goes into the file's schema (what it was built from travels with the table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_offline_table_with_metadata(path: Path) -> tuple[pd.DataFrame, dict[bytes, bytes]] | None:
    """The feature table and its schema metadata, or None when it was never written."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    table = pq.read_table(path)
    return table.to_pandas(), dict(table.schema.metadata or {})


def read_offline_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"the feature table {path} has not been written yet")
    return pd.read_parquet(path)


# ---------------------------------------------------------------------------------------------
# materialization and retrieval


@dataclass(frozen=True)
class MaterializedView:
    view: str
    start: datetime
    end: datetime
    source_rows: int  # offline rows inside the window (the online store keeps the latest per entity)
    mode: str  # "backfill" (first run) or "incremental"


def materialize(
    store: "FeatureStore", views: Sequence[str], end: datetime | None = None
) -> list[MaterializedView]:
    """Load new feature rows into the online store, incrementally after the first run.

    A view that was never materialized is backfilled from its oldest row (Feast's own first
    window, now - ttl, would silently skip older history); afterwards Feast's
    `materialize_incremental` continues from where the previous run ended.
    """
    end = (end or datetime.now(timezone.utc)).astimezone(timezone.utc)
    results: list[MaterializedView] = []
    for name in views:
        view = store.get_feature_view(name)
        table = pd.read_parquet(source_path(store, view), columns=[view.batch_source.timestamp_field])
        ts = pd.to_datetime(table[view.batch_source.timestamp_field], utc=True)
        previous_end = view.most_recent_end_time
        if previous_end is None:
            start = min(ts.min().to_pydatetime(), end) if len(ts) else end
            store.materialize(start_date=start, end_date=end, feature_views=[name])
            mode = "backfill"
        else:
            start = previous_end.astimezone(timezone.utc) if previous_end.tzinfo else previous_end.replace(tzinfo=timezone.utc)
            store.materialize_incremental(end_date=end, feature_views=[name])
            mode = "incremental"
        rows = int(((ts >= start) & (ts <= end)).sum())
        results.append(MaterializedView(view=name, start=start, end=end, source_rows=rows, mode=mode))
    return results


def feature_columns(store: "FeatureStore", service: str) -> list[str]:
    fs = store.get_feature_service(service)
    return [f.name for projection in fs.feature_view_projections for f in projection.features]


def historical_features(store: "FeatureStore", entities: pd.DataFrame, service: str) -> pd.DataFrame:
    """Feast's point-in-time join of `entities` (with `event_timestamp`) against a feature service.

    One row per entity row, in the entity frame's order, with every column of it kept. Feast's file
    (Dask) offline store has two defects this wrapper steps around, so that the result is exactly
    the as-of join: it drops an entity row entirely when one view has rows for its key but none
    inside [ts - ttl, ts], and it collapses entity rows sharing a join key and timestamp
    (feast-dev/feast#6787). So each view is joined on its own over the distinct (key, timestamp)
    pairs, and a pair Feast returns nothing for gets missing values, which is the correct answer.
    """
    if "event_timestamp" not in entities.columns:
        raise ValueError("the entity frame needs an event_timestamp column")
    fs = store.get_feature_service(service)
    out = entities.reset_index(drop=True).copy()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    for projection in fs.feature_view_projections:
        view = store.get_feature_view(projection.name)
        keys = [view.projection.join_key_map.get(k, k) for k in view.join_keys]
        missing = [k for k in keys if k not in out.columns]
        if missing:
            raise ValueError(f"the entity frame lacks {', '.join(missing)}, the join key(s) of {view.name}")
        names = [f.name for f in projection.features]
        clash = [n for n in names if n in out.columns]
        if clash:
            raise ValueError(f"entity column(s) {', '.join(clash)} clash with features of {view.name}")
        pairs = out[[*keys, "event_timestamp"]].drop_duplicates().reset_index(drop=True)
        refs = [f"{projection.name_to_use()}:{n}" for n in names]
        joined = store.get_historical_features(entity_df=pairs, features=refs).to_df()
        joined["event_timestamp"] = pd.to_datetime(joined["event_timestamp"], utc=True)
        joined = joined[[*keys, "event_timestamp", *names]].drop_duplicates([*keys, "event_timestamp"])
        out = out.merge(joined, on=[*keys, "event_timestamp"], how="left", validate="many_to_one")
    return out


def online_features(
    store: "FeatureStore", service: str, entity_rows: Iterable[dict[str, Any]]
) -> dict[str, list[Any]]:
    """Serving-time lookup: `{column: [value per entity row]}`, join keys included."""
    rows = list(entity_rows)
    if not rows:
        raise ValueError("no entity rows to look up")
    fs = store.get_feature_service(service)
    return store.get_online_features(features=fs, entity_rows=rows).to_dict()
