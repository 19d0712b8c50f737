"""Local working copies of model versions, pruned to the newest few.

Every fine-tune leaves its adapter folder (a few MB for SmolLM2-135M; older runs also a 540 MB merged copy) under
<state>/models/fine_tuned/<model>/<run id>, and evaluation keeps downloaded versions under
<state>/models/eval-cache/<model>/<version>. MLflow holds every registered version's artifacts, so
these are caches: a pruned folder is downloaded again (and verified against its hash) when needed.
Without pruning, repeated `make materialize` runs fill the disk.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pruned:
    path: Path
    bytes: int


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def prune_folders(parent: Path, keep: int, protect: tuple[Path, ...] = ()) -> list[Pruned]:
    """Delete the subfolders of `parent` beyond the `keep` most recently modified; `protect`ed ones
    (the run in progress, a folder being served) are never deleted and count towards `keep`."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if not parent.is_dir():
        return []
    protected = {p.resolve() for p in protect}
    folders = sorted((p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    kept = [p for p in folders if p.resolve() in protected]
    pruned: list[Pruned] = []
    for folder in folders:
        if folder.resolve() in protected:
            continue
        if len(kept) < keep:
            kept.append(folder)
            continue
        size = folder_bytes(folder)
        shutil.rmtree(folder)
        pruned.append(Pruned(folder, size))
    return pruned
