"""The landing zone: where producers drop JSON Lines exports for the platform to take in.

Layout, in both backends: `<root>/<dataset>/<file>.jsonl`, e.g. `tickets/tickets-2026-09.jsonl`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

LANDED_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class LandedFile:
    dataset: str
    name: str
    uri: str
    size: int
    # Changes whenever the content may have changed (mtime for files, ETag for S3 objects).
    version: str

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]


def is_landed_name(name: str) -> bool:
    return name.lower().endswith(LANDED_SUFFIXES)


class LandingZone(dg.ConfigurableResource, ABC):
    """Lists and reads landed files. Read-only: the platform never edits what producers landed."""

    @abstractmethod
    def list_all(self, dataset: str) -> list[LandedFile]:
        """Every file in the dataset's folder, by name, except hidden ones (`.x.partial` uploads)."""

    def list_files(self, dataset: str) -> list[LandedFile]:
        """The files the platform takes in: JSON Lines (.jsonl / .ndjson, any case)."""
        return [f for f in self.list_all(dataset) if is_landed_name(f.name)]

    def list_ignored(self, dataset: str) -> list[LandedFile]:
        """Files in the folder the platform does not take in; the sensor names them once."""
        return [f for f in self.list_all(dataset) if not is_landed_name(f.name)]

    @abstractmethod
    def read_bytes(self, landed: LandedFile) -> bytes: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def land(self, dataset: str, name: str, data: bytes) -> LandedFile:
        """Drop a file as a producer would (used by `aiplat ingest` and the demo)."""

    def find(self, dataset: str, stem: str) -> LandedFile | None:
        return next((f for f in self.list_files(dataset) if f.stem == stem), None)


class LocalLandingZone(LandingZone):
    """A folder on this machine (the local runtime)."""

    base_dir: str

    def _dataset_dir(self, dataset: str) -> Path:
        return Path(self.base_dir) / dataset

    def list_all(self, dataset: str) -> list[LandedFile]:
        folder = self._dataset_dir(dataset)
        if not folder.is_dir():
            return []
        files = []
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                stat = path.stat()
                files.append(
                    LandedFile(
                        dataset=dataset,
                        name=path.name,
                        uri=path.resolve().as_uri(),
                        size=stat.st_size,
                        version=f"{stat.st_mtime_ns}:{stat.st_size}",
                    )
                )
        return files

    def read_bytes(self, landed: LandedFile) -> bytes:
        return (self._dataset_dir(landed.dataset) / landed.name).read_bytes()

    def describe(self) -> str:
        return str(Path(self.base_dir).resolve())

    def land(self, dataset: str, name: str, data: bytes) -> LandedFile:
        folder = self._dataset_dir(dataset)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.partial"
        tmp.write_bytes(data)
        # The rename makes the file appear whole: the sensor never reads half a file.
        tmp.replace(folder / name)
        return next(f for f in self.list_all(dataset) if f.name == name)


class S3LandingZone(LandingZone):
    """An S3 prefix (prod), read through dagster-aws's S3 resource."""

    s3: S3Resource
    bucket: str
    prefix: str = "landing"

    _client = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client = self.s3.get_client()

    @property
    def client(self):
        # Sensors evaluate resources without an execution context; build the client lazily there.
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    def _key_prefix(self, dataset: str) -> str:
        return f"{self.prefix.strip('/')}/{dataset}/" if self.prefix.strip("/") else f"{dataset}/"

    def list_all(self, dataset: str) -> list[LandedFile]:
        files = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix(dataset)):
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                # Sub-"folders" are not this dataset's files; hidden names are uploads in flight.
                if not name or name.startswith(".") or obj["Key"] != self._key_prefix(dataset) + name:
                    continue
                files.append(
                    LandedFile(
                        dataset=dataset,
                        name=name,
                        uri=f"s3://{self.bucket}/{obj['Key']}",
                        size=obj["Size"],
                        version=obj["ETag"].strip('"'),
                    )
                )
        return sorted(files, key=lambda f: f.name)

    def read_bytes(self, landed: LandedFile) -> bytes:
        key = self._key_prefix(landed.dataset) + landed.name
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"

    def land(self, dataset: str, name: str, data: bytes) -> LandedFile:
        self.client.put_object(Bucket=self.bucket, Key=self._key_prefix(dataset) + name, Body=data)
        return next(f for f in self.list_all(dataset) if f.name == name)
