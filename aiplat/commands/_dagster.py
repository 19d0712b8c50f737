"""Shared by the CLI commands that run Dagster jobs: the instance and the definitions."""

from __future__ import annotations

import os


def instance_and_defs():
    """The same instance `dagster dev` uses (DAGSTER_HOME, else the local runtime's) and the defs,
    built for the environment as it is now (not the module-level `defs`, which keeps the state
    folder and spec files of whenever it was first imported)."""
    import dagster as dg

    from aiplat.config import dagster_home
    from platform_defs.definitions import build_definitions

    defs = build_definitions()

    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.get(), defs
