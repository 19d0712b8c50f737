"""Model specs: each bad field is refused with an error naming the file, the field and the reason;
thresholds only tighten the platform's policy floor; a spec file added to the models folder adds
that model's whole chain to the Definitions (its group, its owner team, its jobs, sensor and
schedule) and removing the file removes it; nothing outside the specs names a model."""

import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from aiplat.config import project_root
from aiplat.specs import SpecError, load_spec, load_specs

ROOT = project_root()
DEMO = ROOT / "models"


def demo(name: str) -> dict:
    return yaml.safe_load((DEMO / f"{name}.yaml").read_text())


def write(folder: Path, name: str, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_demo_specs_load():
    specs = {s.name: s for s in load_specs(DEMO)}
    assert set(specs) == {"ticket-triage", "reply-drafter"}
    triage, drafter = specs["ticket-triage"], specs["reply-drafter"]
    assert (triage.owner, triage.task, triage.grounded) == ("team:ml", "classification", False)
    assert (drafter.owner, drafter.task, drafter.grounded) == ("team:support", "generation", True)
    assert drafter.training.retrieval.index == "kb_index"


def _set(spec: dict, dotted: str, value) -> dict:
    node = spec
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return spec


_DELETE = object()

# (field to break, bad value, the field the error must name, words the reason must contain)
BAD_FIELDS = [
    ("name", "Ticket Triage", "name", "pattern"),
    ("owner", "ml", "owner", "pattern"),
    ("owner", _DELETE, "owner", "required"),
    ("description", "short", "description", "at least 10"),
    ("task", "regression", "task", "classification"),
    ("training.feature_service", "", "training.feature_service", "at least 1"),
    ("training.label_column", "category", "training.label_column", "label"),
    ("training.label_column", _DELETE, "training.label_column", "required for a classification"),
    ("training.prompt_template", "hi", "training.prompt_template", "at least 20"),
    ("training.retrieval", {"index": "other_index"}, "training.retrieval.index", "kb_index"),
    ("training.colour", "blue", "training.colour", "unknown field"),
    ("base_model", "gpt-4", "base_model", "not a platform base model"),
    ("fine_tune.steps", 0, "fine_tune.steps", "greater than or equal to 1"),
    ("fine_tune.learning_rate", -1, "fine_tune.learning_rate", "greater than 0"),
    ("fine_tune.epochs", 3, "fine_tune.epochs", "unknown field"),
    ("evaluation.suite", "generation", "evaluation.suite", "does not evaluate a classification model"),
    ("evaluation.thresholds", {"min_accuracy": 0.1}, "evaluation.thresholds", "looser than the platform policy floor"),
    ("evaluation.thresholds", {"max_accuracy_drop": 0.5}, "evaluation.thresholds", "looser than the platform policy floor"),
    ("evaluation.thresholds", {"max_latency_ratio": None}, "evaluation.thresholds", "looser"),
    ("evaluation.thresholds", {"min_groundedness": 0.5}, "evaluation.thresholds", "not a gate rule for classification"),
    ("evaluation.max_test_examples", 4, "evaluation.max_test_examples", "below the platform policy's minimum"),
    ("endpoint", "Bad Endpoint!", "endpoint", "pattern"),
    ("budgets.daily_cost", 0, "budgets.daily_cost", "greater than 0"),
    ("load_test.concurrencies", [1, 0], "load_test.concurrencies", "each must be >= 1"),
    ("load_test.concurrencies", [], "load_test.concurrencies", "at least 1"),
    ("load_test.output_len", 0, "load_test.output_len", "greater than or equal to 1"),
    ("load_test.rate", 5, "load_test.rate", "unknown field"),
    ("budgets", _DELETE, "budgets", "required"),
]


@pytest.mark.parametrize(("field", "value", "named", "reason"), BAD_FIELDS,
                         ids=[f"{f}={'<deleted>' if v is _DELETE else v}" for f, v, _, _ in BAD_FIELDS])
def test_each_bad_field_is_refused_naming_file_field_and_reason(tmp_path, field, value, named, reason):
    path = write(tmp_path, "ticket-triage", _set(demo("ticket-triage"), field, value))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert error.value.file == str(path)
    assert error.value.field == named, str(error.value)
    assert reason.lower() in error.value.reason.lower(), str(error.value)
    assert str(error.value).startswith(f"{path}: field {named}: ")


def test_a_generation_spec_needs_a_target_and_no_label(tmp_path):
    spec = demo("reply-drafter")
    del spec["training"]["target_column"]
    with pytest.raises(SpecError, match="training.target_column: required for a generation model"):
        load_spec(write(tmp_path, "reply-drafter", spec))
    spec = demo("reply-drafter")
    spec["training"]["label_column"] = "label"
    with pytest.raises(SpecError, match="field training.label_column: is for classification models"):
        load_spec(write(tmp_path, "reply-drafter", spec))


def test_file_name_must_match_and_endpoints_are_not_shared(tmp_path):
    with pytest.raises(SpecError, match=r"field name: 'ticket-triage' must match the file name \(other.yaml\)"):
        load_spec(write(tmp_path / "a", "other", demo("ticket-triage")))
    twin = demo("reply-drafter")
    twin["endpoint"] = "ticket-triage"
    write(tmp_path / "b", "ticket-triage", demo("ticket-triage"))
    write(tmp_path / "b", "reply-drafter", twin)
    with pytest.raises(SpecError, match="ticket-triage.yaml: field endpoint: 'ticket-triage' is already claimed by .*reply-drafter.yaml"):
        load_specs(tmp_path / "b")


def test_not_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "x.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match=r"x.yaml: field \(file\): not YAML"):
        load_spec(tmp_path / "x.yaml")
    (tmp_path / "y.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match=r"y.yaml: field \(file\): a spec is a mapping"):
        load_spec(tmp_path / "y.yaml")


def test_stricter_thresholds_are_accepted(tmp_path):
    spec = demo("ticket-triage")
    spec["evaluation"]["thresholds"] = {"min_accuracy": 0.9, "max_accuracy_drop": 0.0, "max_latency_ratio": 1.5}
    loaded = load_spec(write(tmp_path, "ticket-triage", spec))
    assert loaded.evaluation.thresholds["min_accuracy"] == 0.9


def _chain_keys(defs: dg.Definitions, prefix: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == prefix}


CHAIN = {"training_set", "fine_tuned_model", "eval_report", "champion", "served_endpoint", "endpoint_load_test",
         "live_quality", "predictions"}  # predictions: classification models (these are)


def test_a_spec_file_adds_the_whole_chain_and_removing_it_removes_it(tmp_path, monkeypatch, state_dir):
    from platform_defs.definitions import build_definitions

    models = tmp_path / "models"
    shutil.copytree(DEMO, models)
    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(models))
    third = demo("ticket-triage") | {"name": "refund-risk", "owner": "team:payments", "endpoint": "refund-risk",
                                     "description": "Flags refund requests that need a second look."}
    write(models, "refund-risk", third)

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assert _chain_keys(defs, "refund_risk") == {f"refund_risk/{n}" for n in CHAIN}
    for name in CHAIN:
        node = graph.get(dg.AssetKey(["refund_risk", name]))
        assert node.group_name == "refund_risk" and node.owners == ["team:payments"]
    assert dg.AssetKey(["refund_risk", "eval_report"]) in {
        c.asset_key for c in graph.asset_check_keys if c.name == "eval_gate"}
    assert defs.resolve_job_def("refund_risk__fine_tuning_job")
    assert defs.resolve_job_def("refund_risk__promotion_job")
    assert "refund_risk__promotion_sensor" in {s.name for s in defs.sensors}
    assert "refund_risk__hourly_live_quality" in {s.name for s in defs.schedules}
    assert "refund_risk__predictions_sensor" in {s.name for s in defs.sensors}
    # the shared operations assets sit downstream of every model's endpoint
    assert dg.AssetKey(["refund_risk", "served_endpoint"]) in graph.get(dg.AssetKey("cost_report")).parent_keys
    # the other teams' chains are there, untouched
    assert _chain_keys(defs, "ticket_triage") == {f"ticket_triage/{n}" for n in CHAIN}

    (models / "refund-risk.yaml").unlink()
    after = build_definitions()
    assert _chain_keys(after, "refund_risk") == set()
    assert "refund_risk__promotion_sensor" not in {s.name for s in after.sensors}
    # a generation model's chain has no batch predictions
    assert _chain_keys(after, "reply_drafter") == {f"reply_drafter/{n}" for n in CHAIN - {"predictions"}}


def test_a_bad_spec_stops_the_definitions_with_its_file_and_field(tmp_path, monkeypatch, state_dir):
    from platform_defs.definitions import build_definitions

    models = tmp_path / "models"
    shutil.copytree(DEMO, models)
    write(models, "reply-drafter", _set(demo("reply-drafter"), "evaluation.thresholds", {"min_reply_rouge_l": 0.0}))
    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(models))
    with pytest.raises(SpecError, match=r"reply-drafter.yaml: field evaluation.thresholds: min_reply_rouge_l=0.0 is looser"):
        build_definitions()


def test_the_grounded_model_reads_the_kb_index_at_training_and_serving_time(state_dir):
    """kb_index is a direct upstream of the grounded chain's training set and served endpoint (the
    gateway retrieves passages for its prompts, aiplat.serving.gateway_grounding); not the triage chain's."""
    from platform_defs.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    kb = dg.AssetKey("kb_index")
    assert kb in graph.get(dg.AssetKey(["reply_drafter", "training_set"])).parent_keys
    assert kb in graph.get(dg.AssetKey(["reply_drafter", "served_endpoint"])).parent_keys
    assert kb not in graph.get(dg.AssetKey(["ticket_triage", "training_set"])).parent_keys
    assert kb not in graph.get(dg.AssetKey(["ticket_triage", "served_endpoint"])).parent_keys
    # Nor anywhere upstream of the triage endpoint (its chain reads no KB), unlike the drafter's.
    assert kb not in graph.get_ancestor_asset_keys(dg.AssetKey(["ticket_triage", "served_endpoint"]))
    assert kb in graph.get_ancestor_asset_keys(dg.AssetKey(["reply_drafter", "served_endpoint"]))


NAMES = re.compile(r"ticket-triage|ticket_triage|reply-drafter|reply_drafter|team:(ml|support|search)\b")


@pytest.mark.parametrize("package", ["assets", "resources", "sensors"])
def test_no_model_or_team_is_named_outside_the_specs(package):
    offenders = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
                 for p in (ROOT / package).rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if NAMES.search(line)]
    assert offenders == []


def test_every_spec_is_owned_by_its_team_and_the_policy_by_the_platform():
    """CODEOWNERS: a spec's reviewers include its `owner` team; only the platform owns the policy."""
    lines = [line.split() for line in (ROOT / ".github" / "CODEOWNERS").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    owners = {pattern: set(teams) for pattern, *teams in lines}
    assert owners["/aiplat/policy/"] == {"@aiplat/team-platform"}
    for spec in load_specs(DEMO):
        team = "@aiplat/team-" + spec.owner.removeprefix("team:")
        assert team in owners.get(f"/models/{spec.name}.yaml", set()), f"{spec.name}: no CODEOWNERS line for {team}"


def test_the_promotion_sensor_leaves_a_report_to_the_run_that_promotes_it() -> None:
    """A backfill's run materializes the eval report and then, in its next step, the champion. A
    sensor tick between the two used to request a second promotion run of the same report; it now
    waits (cursor before the report) while that run is going, and after it sees the promotion."""
    from tests.chain_helpers import chain_for

    chain = chain_for("race-model")
    (sensor,) = [s for s in chain.sensors if s.name.endswith("promotion_sensor")]
    prefix = chain.spec.key_prefix
    ticks: list[dg.SensorResult] = []

    @dg.asset(key=[prefix, "eval_report"])
    def eval_report() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"model_version": "1", "report_sha256": "a" * 64, "gate_passed": True})

    @dg.asset(key=[prefix, "champion"], deps=[eval_report])
    def champion(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        ticks.append(sensor(dg.build_sensor_context(instance=context.instance)))  # the tick that raced it
        return dg.MaterializeResult(metadata={"report_sha256": "a" * 64, "status": "promoted"})

    with dg.instance_for_test() as instance:
        assert dg.materialize([eval_report, champion], instance=instance).success
        [during] = ticks
        assert during.run_requests == [] and during.cursor is None
        after = sensor(dg.build_sensor_context(instance=instance, cursor=during.cursor))
        assert after.run_requests == [] and after.cursor is not None  # promoted on by its own run
        # A passing report made without its champion step still gets its promotion run.
        assert dg.materialize([eval_report], instance=instance).success
        later = sensor(dg.build_sensor_context(instance=instance, cursor=after.cursor))
        assert later.run_requests == []  # the same report sha was already promoted on
