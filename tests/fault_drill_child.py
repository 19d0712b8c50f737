"""One Dagster run of the platform's real Definitions in a process of its own, for the fault drills.

`python -m tests.fault_drill_child SPEC.json` runs the job or asset selection the spec names against
the instance in DAGSTER_HOME and the state in AIPLAT_STATE_DIR (or an `aiplat` command, "cli"), so the drill (tests/fault_drills.py)
can kill this process, or a dependency, at a known point of the run.

The known point is a *pause hook*: the spec names a function ("module:Attr.path"); its first call
writes a marker file and then either waits to be killed (kill drills) or waits for a release file
(dependency drills: the dependency is stopped while the run stands there, then the run goes on and
meets the fault for real). The hook moves no data and fakes no error; it only fixes the moment.

The last stdout line is a JSON summary: success, and each failed step's error message.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

PAUSE_DEADLINE_S = 300  # a drill that never kills or releases us must not leave a process behind


def _install_pause(pause: dict[str, Any]) -> None:
    module_name, _, attr_path = pause["target"].partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    marker, release = Path(pause["marker"]), pause.get("release")
    when = pause.get("when", "before")
    state = {"fired": False}

    def hold() -> None:
        if state["fired"]:
            return
        state["fired"] = True
        marker.write_text(str(time.time()))
        deadline = time.monotonic() + PAUSE_DEADLINE_S
        while time.monotonic() < deadline:
            if release and Path(release).exists():
                return
            time.sleep(0.05)
        raise SystemExit(f"drill pause at {pause['target']}: nobody killed or released this run")

    @functools.wraps(original)
    def paused(*args, **kwargs):
        if when == "before":
            hold()
        result = original(*args, **kwargs)
        if when == "after":
            hold()
        return result

    if isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod):
        paused = staticmethod(paused)  # type: ignore[assignment]
    setattr(owner, name, paused)


def _resources(spec: dict[str, Any]) -> dict[str, Any]:
    """Resource replacements by key: the same resource classes pointed at the drill's own servers."""
    out: dict[str, Any] = {}
    for key, cfg in (spec.get("resources") or {}).items():
        kind = cfg.pop("kind")
        if kind == "redis_feast":
            from resources.feast import RedisFeastResource

            out[key] = RedisFeastResource(**cfg)
        elif kind == "mlflow":
            from resources.mlflow import MLflowResource

            out[key] = MLflowResource(**cfg)
        elif kind == "milvus":
            from resources.milvus import MilvusResource

            out[key] = MilvusResource(**cfg)
        elif kind == "vllm_local":
            from resources.vllm import LocalVllmResource

            out[key] = LocalVllmResource(**cfg)
        else:
            raise ValueError(f"unknown resource kind {kind!r}")
    return out


def _messages(error) -> str:
    """The error and its causes, one after the other (Dagster wraps user errors)."""
    parts = []
    while error is not None:
        parts.append(error.message.strip())
        error = error.cause
    return " <- ".join(parts)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import dagster as dg

    from platform_defs.definitions import build_definitions

    if spec.get("pause"):
        _install_pause(spec["pause"])
    if spec.get("cli"):
        # A long-running platform command (the gateway) rather than a Dagster run.
        from aiplat.cli import cli

        return cli.main(spec["cli"], standalone_mode=False) or 0
    defs = build_definitions(_resources(spec))
    instance = dg.DagsterInstance.get()
    partition = spec.get("partition")
    if spec.get("job"):
        job = defs.resolve_job_def(spec["job"])
        result = job.execute_in_process(instance=instance, partition_key=partition, run_config=spec.get("run_config"),
                                        raise_on_error=False, tags=spec.get("tags"))
    else:
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, run_config=spec.get("run_config"), raise_on_error=False,
                                        asset_selection=[dg.AssetKey.from_user_string(k) for k in spec["assets"]],
                                        partition_key=partition, tags=spec.get("tags"))
    errors = [f"{e.step_key}: {_messages(e.step_failure_data.error)}" for e in result.all_events if e.is_step_failure]
    retries = sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")
    print(json.dumps({"success": result.success, "run_id": result.run_id, "errors": errors, "retries": retries}))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
