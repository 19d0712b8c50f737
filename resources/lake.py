"""The lake: where assets' DataFrames live between steps, as Parquet (never pickles).

One file per asset (and per partition) under a base URI: a local folder in the local runtime, an
S3 prefix in prod. Writes go to a temporary name first and are moved into place, so a failed
step never leaves a half-written file where the previous good one was.
"""

from __future__ import annotations

import uuid
from typing import Optional

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import PrivateAttr


def _aws_endpoint(region: str | None) -> str:
    """The S3 endpoint boto3 resolves (it honours AWS_ENDPOINT_URL; Arrow's S3 client does not)."""
    import boto3

    return boto3.session.Session().client("s3", region_name=region or "us-east-1").meta.endpoint_url


class LakeIOManager(dg.ConfigurableIOManager):
    """Parquet DataFrames under `base_uri` (a path, file:// or s3://bucket/prefix)."""

    base_uri: str
    s3_endpoint_url: Optional[str] = None
    s3_region: Optional[str] = None

    _fs = PrivateAttr(default=None)
    _root = PrivateAttr(default="")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._fs, self._root = self._filesystem()

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if self.base_uri.startswith("s3://"):
            bucket_and_prefix = self.base_uri.removeprefix("s3://").strip("/")
            # Credentials come from the standard AWS environment / instance profile, never config.
            endpoint = self.s3_endpoint_url or _aws_endpoint(self.s3_region)
            fs = pafs.S3FileSystem(
                endpoint_override=endpoint,
                region=self.s3_region or "us-east-1",
                scheme="http" if endpoint.startswith("http://") else "https",
            )
            return fs, bucket_and_prefix
        local = self.base_uri.removeprefix("file://")
        fs = pafs.LocalFileSystem()
        fs.create_dir(local, recursive=True)
        return fs, local.rstrip("/")

    def _ensure(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            self._fs, self._root = self._filesystem()
        return self._fs, self._root

    def path_for(self, asset_key: dg.AssetKey, partition_key: str | None = None) -> str:
        _, root = self._ensure()
        base = "/".join([root, *asset_key.path])
        return f"{base}/{partition_key}.parquet" if partition_key is not None else f"{base}.parquet"

    def uri_for(self, asset_key: dg.AssetKey, partition_key: str | None = None) -> str:
        path = self.path_for(asset_key, partition_key)
        return f"s3://{path}" if self.base_uri.startswith("s3://") else path

    def _write(self, df: pd.DataFrame, path: str) -> None:
        fs, _ = self._ensure()
        parent = path.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        table = pa.Table.from_pandas(df, preserve_index=False)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            try:
                pq.write_table(table, tmp, filesystem=fs)
                fs.move(tmp, path)
            except BaseException:
                # A full disk must not also keep the half-written temporary file.
                if fs.get_file_info(tmp).type == pafs.FileType.File:
                    fs.delete_file(tmp)
                raise
        else:
            # An S3 PUT replaces the object atomically.
            pq.write_table(table, path, filesystem=fs)

    def _read(self, path: str, filters: list | None = None) -> pd.DataFrame:
        fs, _ = self._ensure()
        return pq.read_table(path, filesystem=fs, filters=filters).to_pandas()

    def read_partitions(self, asset_key: dg.AssetKey, partitions: list[str], filters: list | None = None) -> pd.DataFrame:
        """Partitions of `asset_key` in the order given, concatenated, with only the rows that pass
        `filters` (pyarrow's DNF form): for assets that read some partitions themselves instead of
        taking every one as an input (the incremental feature tables)."""
        frames = [self._read(self.path_for(asset_key, p), filters) for p in partitions]
        if not frames:
            return pd.DataFrame()
        rows = [f for f in frames if len(f)] or frames[:1]  # no row passed: still the columns
        return pd.concat(rows, ignore_index=True) if len(rows) > 1 else rows[0]

    def _exists(self, path: str) -> bool:
        fs, _ = self._ensure()
        return fs.get_file_info(path).type == pafs.FileType.File

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"the lake stores pandas DataFrames; asset {context.asset_key.to_user_string()} returned {type(obj).__name__}"
            )
        partition = context.partition_key if context.has_partition_key else None
        path = self.path_for(context.asset_key, partition)
        try:
            self._write(obj, path)
        except OSError as e:
            what = context.asset_key.to_user_string() + (f" partition {partition}" if partition is not None else "")
            raise dg.Failure(
                f"the lake could not store {what} at {self.uri_for(context.asset_key, partition)}: {e}; "
                "the previous file there (if any) is unchanged"
            ) from e
        context.add_output_metadata({"lake_uri": dg.MetadataValue.path(self.uri_for(context.asset_key, partition))})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        key = context.asset_key
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            frames = []
            missing = []
            for partition in keys:
                path = self.path_for(key, partition)
                if self._exists(path):
                    frames.append(self._read(path))
                else:
                    missing.append(partition)
            if missing:
                # A batch that failed intake has no file; the rest must still flow downstream.
                context.log.warning(
                    f"{key.to_user_string()}: {len(missing)} of {len(keys)} partitions are not materialized "
                    f"and are left out: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
                )
            if not frames:
                raise dg.Failure(f"no materialized partition of {key.to_user_string()} to read")
            return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        path = self.path_for(key)
        if not self._exists(path):
            raise dg.Failure(f"{key.to_user_string()} has not been materialized yet (no {path})")
        return self._read(path)
