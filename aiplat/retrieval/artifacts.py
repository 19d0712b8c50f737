"""Where backups live: a local folder or an S3 bucket, behind the same four calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse


class ArtifactStore(Protocol):
    uri: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...


class ArtifactMissingError(FileNotFoundError):
    pass


@dataclass
class LocalFolderStore:
    root: Path

    @property
    def uri(self) -> str:
        return self.root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"artifact key {key!r} escapes {self.root}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)  # a crash never leaves a half-written file under the real name

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactMissingError(f"{path} does not exist")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]
        return sorted(k for k in keys if k.startswith(prefix) and not k.endswith(".partial"))


@dataclass
class S3Store:
    bucket: str
    prefix: str
    client: Any

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ArtifactMissingError(f"s3://{self.bucket}/{self._key(key)} does not exist") from exc
            raise

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
            return True
        except ArtifactMissingError:
            return False

    def list(self, prefix: str = "") -> list[str]:
        base = self._key("")
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
            keys.extend(obj["Key"][len(base) :] for obj in page.get("Contents", []))
        return sorted(keys)


def open_store(uri: str, s3_endpoint_url: str | None = None, s3_client: Any = None) -> ArtifactStore:
    """`file:///abs/dir`, a plain path, or `s3://bucket/prefix` (endpoint for S3-compatible stores)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{uri!r} names no bucket")
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3", endpoint_url=s3_endpoint_url or None)
        return S3Store(bucket=parsed.netloc, prefix=parsed.path.strip("/"), client=s3_client)
    if parsed.scheme == "file":
        return LocalFolderStore(Path(parsed.path))
    if parsed.scheme == "":
        return LocalFolderStore(Path(uri))
    raise ValueError(f"unsupported backup location {uri!r}: use a folder, file:// or s3://")
