"""A sha256 manifest of a model folder: what makes a prepared model the same model.

The manifest lists every file with its size and sha256; the folder hash is the sha256 of the
manifest's sorted lines, so two folders with the same bytes have the same hash wherever they lie.
Pickle-based weight files are refused: the platform only moves safetensors around.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "aiplat-manifest.json"
# The signature (aiplat.security.signing) is written into the folder after the manifest: the folder
# hash stays the hash of the model's own files, and the signature is checked by verify_model instead.
SIGNATURE_NAME = "model.sig"
# What an adapter's manifest records of the base model it was trained on (the base folder's hash):
# the manifest is one of the files the adapter's signature covers, so the binding is signed too.
BASE_FIELD = "base_model_sha256"
# Files a model folder must never hold: they deserialize with pickle.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class FolderManifest:
    files: dict[str, dict[str, int | str]]  # relative path -> {"sha256", "bytes"}
    folder_sha256: str
    extra: dict

    def to_json(self) -> str:
        return json.dumps(
            {"folder_sha256": self.folder_sha256, "files": self.files, **self.extra}, indent=2, sort_keys=True
        )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def pickle_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES)


def assert_no_pickles(folder: Path) -> None:
    found = pickle_files(folder)
    if found:
        raise ValueError(f"model folder {folder} holds pickle-based files {found}; only safetensors are allowed")


def compute_manifest(folder: Path, extra: dict | None = None) -> FolderManifest:
    files: dict[str, dict[str, int | str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST_NAME, SIGNATURE_NAME):
            continue
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    lines = "\n".join(f"{rel} {meta['sha256']}" for rel, meta in sorted(files.items()))
    return FolderManifest(files=files, folder_sha256=hashlib.sha256(lines.encode()).hexdigest(), extra=extra or {})


def write_manifest(folder: Path, extra: dict | None = None) -> FolderManifest:
    manifest = compute_manifest(folder, extra)
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def manifest_matches(folder: Path) -> bool:
    """True when the folder's files are exactly the ones its stored manifest lists."""
    stored = read_manifest(folder)
    if stored is None:
        return False
    return compute_manifest(folder).folder_sha256 == stored.get("folder_sha256")


def trained_on(folder: Path) -> str | None:
    """The base model hash an adapter's manifest records (None when it records none). Trust it
    only after the folder's signature was verified: the manifest is one of the signed files."""
    value = (read_manifest(Path(folder)) or {}).get(BASE_FIELD)
    return value if isinstance(value, str) and value else None
