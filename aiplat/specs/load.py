"""Reading and validating the spec files; every error names the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from aiplat.specs.model import ModelSpec


class SpecError(ValueError):
    """A spec file is invalid: `file`, `field` and `reason` say where and why."""

    def __init__(self, file: Path | str, field: str, reason: str):
        super().__init__(f"{file}: field {field}: {reason}")
        self.file, self.field, self.reason = str(file), field, reason


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    return ".".join(parts) or "(spec)"


def load_spec(path: Path, policy=None) -> ModelSpec:
    """One spec file, validated against its schema and against the gate policy's floor."""
    from aiplat.policy import PolicyError, current_policy

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(path, "(file)", f"cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(path, "(file)", f"not YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(path, "(file)", "a spec is a mapping of fields (name, owner, task, ...)")
    try:
        spec = ModelSpec(**raw, source_file=str(path))
    except ValidationError as e:
        err = e.errors()[0]
        reason = err["msg"].removeprefix("Value error, ")
        field = _field(err["loc"])
        if "|" in reason and field == "(spec)":  # a cross-field rule of ModelSpec
            field, reason = reason.split("|", 1)
        if err["type"] == "extra_forbidden":
            reason = "unknown field (a typo? see docs/onboarding.md for the fields a spec has)"
        raise SpecError(path, field, reason) from None
    if spec.name != path.stem:
        raise SpecError(path, "name", f"{spec.name!r} must match the file name ({path.stem}.yaml)")
    policy = policy or current_policy()
    try:
        policy.tighten(spec.task, spec.evaluation.thresholds, where="")
    except PolicyError as e:
        raise SpecError(path, "evaluation.thresholds", str(e).removeprefix(": ")) from None
    if spec.evaluation.max_test_examples < policy.min_test_examples:
        raise SpecError(path, "evaluation.max_test_examples", f"{spec.evaluation.max_test_examples} is below the "
                        f"platform policy's minimum test split of {policy.min_test_examples}")
    return spec


def load_specs(directory: Path | None = None, policy=None) -> list[ModelSpec]:
    """Every `*.yaml` spec in `directory` (default: aiplat.config.models_dir()), sorted by name.
    Two specs claiming one endpoint (or one asset prefix) are an error naming both files."""
    from aiplat.config import models_dir

    folder = Path(directory) if directory else models_dir()
    if not folder.is_dir():
        return []
    specs = [load_spec(p, policy) for p in sorted(folder.glob("*.yaml"))]
    seen: dict[tuple[str, str], ModelSpec] = {}
    for spec in specs:
        for kind, value in (("endpoint", spec.endpoint), ("name", spec.key_prefix)):
            other = seen.get((kind, value))
            if other is not None:
                raise SpecError(spec.source_file or "?", kind, f"{value!r} is already claimed by {other.source_file}")
            seen[(kind, value)] = spec
    return sorted(specs, key=lambda s: s.name)


def find_spec(name: str, directory: Path | None = None) -> ModelSpec:
    for spec in load_specs(directory):
        if spec.name == name:
            return spec
    raise KeyError(f"no model spec named {name!r} (specs are models/<name>.yaml)")


def spec_owners(directory: Path | None = None) -> dict[str, str]:
    """Registered model name -> owner team, from the specs (the access checks' fallback when the
    registry has no owner tag)."""
    return {s.name: s.owner for s in load_specs(directory)}
