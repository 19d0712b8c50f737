"""The platform-owned gate policy (aiplat/policy), attacked as an insider with UI and CLI access
would: a looser threshold in an eval run's config is refused before anything is evaluated; a report
made under another (older) policy, with looser thresholds than the floor, or on a test split that
is not the version's own is refused by promotion, against a real MLflow server and real models."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from aiplat.policy import PolicyError, load_policy
from aiplat.specs import load_spec
from aiplat.training.prompts import SYSTEM_PROMPT
from assets.model_lifecycle import EvalReportConfig, effective_thresholds, model_chain
from resources.mlflow import MLflowResource
from tests.identity_helpers import act_as
from tests.evaluation_helpers import (
    TEST_SETTINGS,
    TEST_THRESHOLDS,
    mlflow_server,
    register,
    session_models,
    triage_data,
    write_test_policy,
)

SHIPPED = Path(__file__).resolve().parent.parent / "aiplat" / "policy" / "gate_policy.yaml"
NAME = "policy-attack"
P = "policy_attack"


def test_the_digest_ignores_layout_and_follows_every_rule(tmp_path):
    policy = load_policy(SHIPPED)
    relaid = tmp_path / "relaid.yaml"
    relaid.write_text("# a comment\n" + yaml.safe_dump(policy.canonical(), sort_keys=True, indent=4))
    assert load_policy(relaid).digest == policy.digest
    changed = policy.canonical()
    changed["tasks"]["classification"]["min_accuracy"] = 0.49
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert load_policy(tmp_path / "changed.yaml").digest != policy.digest


def test_a_malformed_policy_names_its_file_and_field(tmp_path):
    bad = load_policy(SHIPPED).canonical()
    bad["golden_version"] = "v9"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PolicyError, match=r"p.yaml: field golden_version: 'v9' has no digest"):
        load_policy(tmp_path / "p.yaml")
    bad = load_policy(SHIPPED).canonical()
    bad["tasks"]["generation"]["min_vibes"] = 1.0
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PolicyError, match=r"q.yaml: field tasks.generation: unknown rule\(s\) min_vibes"):
        load_policy(tmp_path / "q.yaml")


def test_prod_always_uses_the_shipped_policy(monkeypatch, tmp_path):
    from aiplat.config import gate_policy_file

    monkeypatch.setenv("AIPLAT_GATE_POLICY", str(tmp_path / "loose.yaml"))
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    assert gate_policy_file() == SHIPPED
    monkeypatch.setenv("AIPLAT_ENV", "local")
    assert gate_policy_file() == tmp_path / "loose.yaml"


def _spec(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump({
        "name": NAME, "owner": "team:ml", "description": "Tiny triage model for the gate policy attacks.",
        "task": "classification",
        "training": {"feature_service": "ticket_triage_v1", "label_column": "label", "prompt_template": SYSTEM_PROMPT},
        "evaluation": {"suite": "classification", "max_test_examples": TEST_SETTINGS.max_test_examples,
                       "max_new_tokens": TEST_SETTINGS.max_new_tokens, "batch_size": TEST_SETTINGS.batch_size,
                       "latency_samples": TEST_SETTINGS.latency_samples, "thresholds": {"min_accuracy": 0.7}},
        "endpoint": NAME, "budgets": {"daily_cost": 1.0},
    }))
    return path


@pytest.fixture
def policy_file(tmp_path, monkeypatch) -> Path:
    path = write_test_policy(tmp_path / "policy.yaml")
    monkeypatch.setenv("AIPLAT_GATE_POLICY", str(path))
    return path


def test_run_config_can_only_tighten(tmp_path, policy_file):
    spec = load_spec(_spec(tmp_path / "models"))
    policy = load_policy(policy_file)
    rules = effective_thresholds(spec, EvalReportConfig(tighten={"min_accuracy": 0.9}), policy)
    assert rules["min_accuracy"] == 0.9 and rules["min_macro_f1"] == TEST_THRESHOLDS.min_macro_f1
    # the spec's own tightening holds against a run config that tries to go back to the floor
    with pytest.raises(PolicyError, match=r"min_accuracy=0.6 is looser than .* 0.7"):
        effective_thresholds(spec, EvalReportConfig(min_accuracy=0.6), policy)
    with pytest.raises(PolicyError, match="max_latency_ratio=None|looser"):
        effective_thresholds(spec, EvalReportConfig(tighten={"max_accuracy_drop": 0.5}), policy)
    with pytest.raises(PolicyError, match="not a gate rule"):
        effective_thresholds(spec, EvalReportConfig(tighten={"leak_probe": 0}), policy)


def test_an_eval_launched_with_a_looser_threshold_is_refused_before_anything_runs(tmp_path, policy_file, state_dir):
    """The attack from issue 18: launch eval_report from the UI with the gate opened in run config."""
    chain = model_chain(load_spec(_spec(tmp_path / "models")))
    (eval_report,) = [a for a in chain.assets if a.key == dg.AssetKey([P, "eval_report"])]

    @dg.asset(key=[P, "training_set"])
    def training_set() -> pd.DataFrame:
        return triage_data()

    @dg.asset(key=[P, "fine_tuned_model"])
    def fine_tuned_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"registered_model": NAME, "model_version": "1"})

    with dg.instance_for_test() as instance:
        # Nothing listens on port 9: a run that got as far as MLflow would fail differently.
        result = dg.materialize(
            [training_set, fine_tuned_model, eval_report], instance=instance, raise_on_error=False,
            resources={"mlflow": MLflowResource(tracking_uri="http://127.0.0.1:9")},
            run_config=dg.RunConfig(ops={f"{P}__eval_report": EvalReportConfig(
                min_accuracy=0.0, min_macro_f1=0.0, min_golden_accuracy=0.0, max_latency_ratio=None)}),
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.step_failure_data.error.message
        assert "refused: run config may only tighten the gate" in message
        assert "min_accuracy=0.0 is looser than the platform policy floor 0.7" in message
        assert not result.asset_materializations_for_node(f"{P}__eval_report")


@pytest.mark.slow
def test_promotion_refuses_reports_that_do_not_hold_under_the_current_policy(tmp_path, tmp_path_factory, policy_file,
                                                                             state_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    from aiplat.evaluation import promotion
    from aiplat.evaluation.pipeline import evaluate_version
    from aiplat.evaluation.settings import GateThresholds

    act_as(monkeypatch, "team:platform")
    models = session_models(tmp_path_factory.getbasetemp())
    with mlflow_server(tmp_path / "mlflow") as uri:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        def evaluate(version, thresholds=None, data=None):
            # Default: exactly the floor of the policy in force at the call (the asset's way).
            floor = GateThresholds.only(load_policy(policy_file).floor("classification"))
            return evaluate_version(client, uri, NAME, version, triage_data() if data is None else data, TEST_SETTINGS,
                                    thresholds or floor, base_folder=models["base"], dagster_run_id="attack")


        # 1. A report evaluated with thresholds looser than the floor (a library caller, not the
        #    asset) passes its own gate, but promotion refuses it.
        v1 = register(client, NAME, models["good"])
        loose = evaluate(v1, GateThresholds(**{**TEST_THRESHOLDS.model_dump(), "min_accuracy": 0.0}))
        assert loose.passed
        with pytest.raises(promotion.PromotionRefused, match="policy: the report's thresholds are looser"):
            promotion.promote(client, NAME, v1, dagster_run_id="attack", actor="insider")

        # 2. A passing report under today's policy; then the platform tightens the policy: the old
        #    report is refused (stale policy digest) until the version is re-evaluated.
        v2 = register(client, NAME, models["good"])
        good = evaluate(v2)
        assert good.passed and good.report["policy"]["sha256"] == load_policy(policy_file).digest
        tightened = load_policy(policy_file).canonical()
        tightened["tasks"]["classification"]["max_macro_f1_drop"] = 0.04
        policy_file.write_text(yaml.safe_dump(tightened))
        with pytest.raises(promotion.PromotionRefused, match="policy: the report was made under gate policy"):
            promotion.promote(client, NAME, v2, dagster_run_id="attack", actor="insider")
        assert promotion.alias_version(client, NAME, "champion") is None

        # 3. A report on a hand-picked test split (not the held-out split of the training set the
        #    version was trained on) is refused too.
        v3 = register(client, NAME, models["good"])
        picked = triage_data()
        picked.loc[picked["split"] == "test", "agent_reply"] = "Thank you, we have fixed it."
        assert evaluate(v3, data=picked).passed
        with pytest.raises(promotion.PromotionRefused, match="policy: the test split came from training set"):
            promotion.promote(client, NAME, v3, dagster_run_id="attack", actor="insider")

        # The same version re-evaluated under the current policy on its own data is promoted.
        evaluate(v2)
        assert promotion.promote(client, NAME, v2, dagster_run_id="ok", actor="platform").status == "promoted"
