"""A model's generated chain (assets/model_lifecycle.py) for tests: the demo triage spec under the
test's own model name, written to a private folder, loaded and validated like any spec."""

from __future__ import annotations

import tempfile
from pathlib import Path

import dagster as dg
import yaml

from aiplat.config import project_root


def chain_for(name: str, folder: Path | None = None, **fields):
    from aiplat.specs import load_spec
    from assets.model_lifecycle import model_chain

    spec = yaml.safe_load((project_root() / "models" / "ticket-triage.yaml").read_text())
    spec |= {"name": name, "endpoint": name, **fields}
    folder = Path(folder or tempfile.mkdtemp(prefix="aiplat-spec-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return model_chain(load_spec(folder / f"{name}.yaml"))


def chain_asset(chain, name: str) -> dg.AssetsDefinition:
    (asset,) = [a for a in chain.assets if a.key.path[-1] == name]
    return asset


def op_name(chain, name: str) -> str:
    return f"{chain.spec.key_prefix}__{name}"
