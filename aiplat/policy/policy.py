"""The gate policy: per task kind, the minimum thresholds; the mandatory probes; the golden set
pinned by digest; the smallest test split. Only the platform team changes it (it is a reviewed file
in the image, see aiplat.config.gate_policy_file); specs and run config can only tighten it.

The digest is the sha256 of the policy's canonical JSON, so comments and layout do not change it
while any rule does. Reports record it; promotion compares it with the current one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TaskKind = Literal["classification", "generation"]
PROBES = ("leak_probe",)


class PolicyError(ValueError):
    """The policy file is missing or malformed; the message names the file and the field."""


class GatePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    owner: str
    min_test_examples: int = Field(ge=1)
    mandatory_probes: tuple[Literal["leak_probe"], ...] = Field(min_length=1)
    golden_version: str
    golden_sets: dict[str, str]
    tasks: dict[TaskKind, dict[str, Optional[float]]]
    path: Optional[str] = Field(default=None, exclude=True)

    def floor(self, task: TaskKind) -> dict[str, Optional[float]]:
        """The thresholds every model of this task kind is gated on, at least."""
        return dict(self.tasks.get(task, {}))

    @property
    def golden_sha256(self) -> str:
        return self.golden_sets[self.golden_version]

    def canonical(self) -> dict:
        return self.model_dump(mode="json", exclude={"path"})

    @property
    def digest(self) -> str:
        data = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode("utf-8")
        return hashlib.sha256(data).hexdigest()

    def tighten(self, task: TaskKind, overrides: Mapping[str, Optional[float]], where: str) -> dict[str, Optional[float]]:
        """The floor with `overrides` applied; PolicyError naming `where` and the field when an
        override names no rule of this task or is looser than the floor."""
        floor = self.floor(task)
        unknown = sorted(set(overrides) - set(floor))
        if unknown:
            raise PolicyError(f"{where}: {', '.join(unknown)} is not a gate rule for {task} models "
                              f"(rules: {', '.join(sorted(floor))})")
        loose = looser_fields(floor, overrides)
        if loose:
            raise PolicyError(f"{where}: " + "; ".join(loose))
        return {**floor, **dict(overrides)}


def is_stricter(field: str, value: Optional[float], floor: Optional[float]) -> bool:
    """True when `value` is at least as strict as `floor` for rule `field`."""
    if floor is None:
        return True  # the policy does not gate this: any value only adds a rule
    if value is None:
        return False  # turning a policy rule off is the loosest change there is
    return value >= floor if not field.startswith("max_") else value <= floor


def looser_fields(floor: Mapping[str, Optional[float]], values: Mapping[str, Optional[float]]) -> list[str]:
    """One line per value that is looser than the floor (empty when all only tighten)."""
    out = []
    for field, value in values.items():
        if field in floor and not is_stricter(field, value, floor[field]):
            direction = "at most" if field.startswith("max_") else "at least"
            out.append(f"{field}={value} is looser than the platform policy floor {floor[field]} "
                       f"(must be {direction} {floor[field]})")
    return out


def load_policy(path: Path | None = None) -> GatePolicy:
    from aiplat.config import gate_policy_file

    file = Path(path) if path else gate_policy_file()
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as e:
        raise PolicyError(f"gate policy {file}: cannot be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise PolicyError(f"gate policy {file}: not YAML ({e})") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"gate policy {file}: must be a mapping")
    try:
        policy = GatePolicy(**raw, path=str(file))
    except ValidationError as e:
        err = e.errors()[0]
        raise PolicyError(f"gate policy {file}: field {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    if policy.golden_version not in policy.golden_sets:
        raise PolicyError(f"gate policy {file}: field golden_version: {policy.golden_version!r} has no digest in golden_sets")
    for task, rules in policy.tasks.items():
        from aiplat.evaluation.settings import GateThresholds

        unknown = sorted(set(rules) - set(GateThresholds.model_fields))
        if unknown:
            raise PolicyError(f"gate policy {file}: field tasks.{task}: unknown rule(s) {', '.join(unknown)}")
    return policy


def current_policy() -> GatePolicy:
    """The policy in force now (read at call time, so a reviewed change applies to the next run)."""
    return load_policy()
