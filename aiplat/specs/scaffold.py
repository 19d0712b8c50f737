"""`aiplat models new`: a valid spec skeleton a team then edits (every field present, defaults
that pass validation and the policy floor)."""

from __future__ import annotations

from pathlib import Path

import yaml

from aiplat.specs.load import SpecError, load_spec
from aiplat.specs.model import NAME_PATTERN

PROMPTS = {
    "classification": "You classify customer-support tickets. Answer with two lines: "
                      "'category: <one of billing, technical, account, shipping, returns, general>' and "
                      "'reply: <a short reply to the customer>'.",
    "generation": "You draft replies for customer-support agents. Use the knowledge-base passages when they apply. "
                  "Answer with the reply only.",
}


def skeleton(name: str, team: str, task: str, description: str | None = None) -> dict:
    team = team if team.startswith("team:") else f"team:{team}"
    training: dict = {"feature_service": "ticket_triage_v1", "prompt_template": PROMPTS[task]}
    if task == "classification":
        training["label_column"] = "label"
    else:
        training["target_column"] = "reply_target"
        training["retrieval"] = {"index": "kb_index", "top_k": 2, "max_passage_chars": 240}
    return {
        "name": name,
        "owner": team,
        "description": description or f"{name}: describe what the model does for its users.",
        "task": task,
        "training": training,
        "base_model": "smollm2-135m-instruct",
        "fine_tune": {"steps": 40, "learning_rate": 0.002, "lora_r": 8, "lora_alpha": 16, "batch_size": 4,
                      "max_length": 256, "max_train_examples": 160},
        "evaluation": {"suite": task, "thresholds": {}, "max_test_examples": 48},
        "endpoint": name,
        "budgets": {"daily_cost": 5.0},
    }


HEADER = """# Model spec of {name}, owned by {team}: the platform builds this model's whole chain from this
# file ({prefix}/training_set -> fine_tuned_model -> eval_report -> champion -> served_endpoint ->
# live_quality). Edit, then "Reload definitions" in the Dagster UI. Guide: docs/onboarding.md.
# evaluation.thresholds may only be stricter than aiplat/policy/gate_policy.yaml.
"""


def write_skeleton(folder: Path, name: str, team: str, task: str, description: str | None = None) -> Path:
    """Write <folder>/<name>.yaml (never over an existing spec) and load it back: SpecError if the
    name or team is not valid, leaving no file behind."""
    import re

    path = Path(folder) / f"{name}.yaml"
    if path.exists():
        raise SpecError(path, "(file)", "a spec with this name exists; edit it instead")
    if not re.match(NAME_PATTERN, name):
        raise SpecError(path, "name", f"{name!r} must be lower-case words joined by hyphens (e.g. refund-risk)")
    spec = skeleton(name, team, task, description)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER.format(name=name, team=spec["owner"], prefix=name.replace("-", "_"))
                    + yaml.safe_dump(spec, sort_keys=False))
    try:
        load_spec(path)
    except SpecError:
        path.unlink()
        raise
    return path
