"""Who made an artifact, from what, with which code: the audit trail every asset carries."""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from typing import Iterable

from aiplat import __version__, config


@lru_cache(maxsize=1)
def git_commit() -> str:
    override = config.git_commit_override()
    if override:
        return override
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=config.project_root(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=config.project_root(),
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    """`<package version>+g<commit>`: what made an artifact, precise enough to rebuild it."""
    commit = git_commit()
    return f"{__version__}+g{commit[:12]}" + ("-dirty" if commit.endswith("-dirty") else "")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_lines(lines: Iterable[str]) -> str:
    """Order-sensitive hash of a sequence of canonical lines."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def frame_hash(df) -> str:
    """Content hash of a DataFrame, independent of the row index."""
    import pandas as pd

    if df.empty:
        return sha256_lines(list(df.columns))
    row_hashes = pd.util.hash_pandas_object(df.reset_index(drop=True).astype(str), index=False)
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(row_hashes.to_numpy().tobytes())
    return h.hexdigest()
