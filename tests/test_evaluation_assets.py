"""The evaluation assets a model spec generates (assets/model_lifecycle.py), in Dagster, against a
real MLflow server and a real instance: a passing report promotes in the same run; a failing one
fails the blocking check, skips promotion and logs an AIPLAT_ALERT line; the model's promotion
sensor requests one run per new passing report (deterministic run key, cursor) and the promotion it
requests is a no-op the second time."""


import logging
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from aiplat.evaluation.gate import ALERT_PATTERN
from aiplat.evaluation.registry import CHAMPION, PREVIOUS, alias_version
from aiplat.specs import load_spec
from aiplat.training.prompts import SYSTEM_PROMPT
from assets.model_lifecycle import EvalReportConfig, model_chain, promotion_run_key
from resources.mlflow import MLflowResource
from resources.operations import OperationsResource
from resources.signing import ModelSigningResource
from tests.evaluation_helpers import (
    TEST_SETTINGS,
    register,
    session_models,
    triage_data,
    write_test_policy,
)

pytestmark = pytest.mark.slow
NAME = "triage-assets"
P = "triage_assets"


def spec_file(folder: Path) -> Path:
    """The model as its team would declare it (the gate is the policy floor, no stricter)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump({
        "name": NAME, "owner": "team:ml", "description": "Tiny triage model for the evaluation asset tests.",
        "task": "classification",
        "training": {"feature_service": "ticket_triage_v1", "label_column": "label", "prompt_template": SYSTEM_PROMPT},
        "evaluation": {"suite": "classification", "max_test_examples": TEST_SETTINGS.max_test_examples,
                       "max_new_tokens": TEST_SETTINGS.max_new_tokens, "batch_size": TEST_SETTINGS.batch_size,
                       "latency_samples": TEST_SETTINGS.latency_samples},
        "endpoint": NAME, "budgets": {"daily_cost": 1.0},
    }))
    return path


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIPLAT_GATE_POLICY", str(write_test_policy(tmp_path / "policy.yaml")))
    return model_chain(load_spec(spec_file(tmp_path / "models")))


def chain_asset(chain, name: str):
    (asset,) = [a for a in chain.assets if a.key == dg.AssetKey([P, name])]
    return asset


@pytest.fixture(scope="module")
def tracking_uri(shared_mlflow: str) -> str:
    return shared_mlflow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return session_models(tmp_path_factory.getbasetemp())


class CandidateConfig(dg.Config):
    which: str  # good | shuffled


def upstream_assets(models: dict[str, Path]) -> list:
    """Stand-ins for the training and feature stages: the same asset keys and metadata contract."""

    @dg.asset(name="base_model")
    def base_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(models["base"]))})

    @dg.asset(key=[P, "fine_tuned_model"], deps=[base_model])
    def fine_tuned_model(config: CandidateConfig, mlflow: MLflowResource) -> dg.MaterializeResult:
        version = register(mlflow.client, NAME, models[config.which])
        return dg.MaterializeResult(metadata={"registered_model": NAME, "model_version": version})

    @dg.asset(key=[P, "training_set"])
    def training_set() -> pd.DataFrame:
        return triage_data()

    return [base_model, fine_tuned_model, training_set]


def eval_config() -> EvalReportConfig:
    return EvalReportConfig(threads=TEST_SETTINGS.threads, samples_in_report=TEST_SETTINGS.samples_in_report)


# What a launcher may tag a run with: attribution only; the run acts as the service account.
RUN_TAGS = {"aiplat/team": "team:ml", "aiplat/actor": "ml-bot"}


def run(instance, models, tracking_uri: str, chain, which: str, with_promotion: bool = True):
    upstream = upstream_assets(models)
    selection = [*upstream, chain_asset(chain, "eval_report"), *chain.checks] + (
        [chain_asset(chain, "champion")] if with_promotion else [])
    return dg.materialize(
        selection,
        instance=instance,
        resources={"mlflow": MLflowResource(tracking_uri=tracking_uri, system_metrics_interval_s=0),
                   "operations": OperationsResource(), "model_signing": ModelSigningResource()},
        run_config=dg.RunConfig(ops={f"{P}__fine_tuned_model": CandidateConfig(which=which),
                                     f"{P}__eval_report": eval_config()}),
        tags=RUN_TAGS,
        raise_on_error=False,
    )


def check_passed(result) -> bool:
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 1 and evaluations[0].check_name == "eval_gate"
    return evaluations[0].passed


def test_gate_promotion_and_sensor(models, tracking_uri: str, tmp_path: Path, state_dir: Path, caplog,
                                   monkeypatch: pytest.MonkeyPatch, chain) -> None:
    from mlflow.tracking import MlflowClient

    from aiplat.security.audit_log import AuditLog

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with dg.instance_for_test() as instance:
        # a good candidate passes the gate and is promoted in the same run
        first = run(instance, models, tracking_uri, chain, "good")
        assert first.success and check_passed(first)
        promoted = first.asset_materializations_for_node(f"{P}__champion")[0].metadata
        assert promoted["status"].value == "promoted" and promoted["champion_version"].value == "1"
        assert len(promoted["promotion_attestation_sha256"].value) == 64  # approved, not only built
        report_meta = first.asset_materializations_for_node(f"{P}__eval_report")[0].metadata
        assert report_meta["gate_passed"].value is True
        assert report_meta["report_page"].value.startswith(tracking_uri)
        assert client.get_model_version(NAME, "1").tags["aiplat.promotion.dagster_run_id"] == first.run_id
        (allowed,) = [e for e in AuditLog().entries() if e["event"] == "access"]
        assert (allowed["actor"], allowed["team"], allowed["identity_source"], allowed["decision"]) == \
            ("svc:dagster", "team:platform", "service", "allowed")
        assert allowed["requested_by"] == "ml-bot"

        # a degraded candidate: report materialized, check fails, promotion skipped, alert line logged
        with caplog.at_level(logging.ERROR, logger="aiplat.alerts"):
            second = run(instance, models, tracking_uri, chain, "shuffled")
        assert not check_passed(second)
        assert second.asset_materializations_for_node(f"{P}__eval_report")
        assert not second.asset_materializations_for_node(f"{P}__champion")
        assert alias_version(client, NAME, CHAMPION).version == "1"
        alerts = [r.getMessage() for r in caplog.records if r.name == "aiplat.alerts"]
        assert len(alerts) == 1
        match = ALERT_PATTERN.match(alerts[0])
        assert match and match["gate"] == "eval" and match["model"] == NAME and match["version"] == "2"
        assert "accuracy" in match["reason"]

        # sensor: the first report was promoted in its own run, the second failed: nothing to do
        context = dg.build_sensor_context(instance=instance)
        (promotion_sensor,) = [s for s in chain.sensors if s.name.endswith("promotion_sensor")]
        tick = promotion_sensor(context)
        assert tick.run_requests == [] and tick.cursor is not None

        # a new passing report without promotion in its run: the sensor asks for exactly one run
        third = run(instance, models, tracking_uri, chain, "good", with_promotion=False)
        assert third.success and check_passed(third)
        sha = third.asset_materializations_for_node(f"{P}__eval_report")[0].metadata["report_sha256"].value
        new_tick = promotion_sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
        assert [r.run_key for r in new_tick.run_requests] == [promotion_run_key(NAME, "3", sha)]
        again = promotion_sensor(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in new_tick.run_requests]
        assert promotion_sensor(dg.build_sensor_context(instance=instance, cursor=new_tick.cursor)).run_requests == []

        # the requested promotion run moves the alias; running it again is a recorded no-op
        defs = dg.Definitions(
            assets=[*upstream_assets(models), chain_asset(chain, "eval_report"), chain_asset(chain, "champion")],
            jobs=chain.jobs[1:2],
            resources={"mlflow": MLflowResource(tracking_uri=tracking_uri, system_metrics_interval_s=0),
                       "operations": OperationsResource(), "model_signing": ModelSigningResource()},
        )
        job = defs.resolve_job_def(f"{P}__promotion_job")
        request = new_tick.run_requests[0]
        done = job.execute_in_process(run_config=request.run_config, instance=instance)
        meta = done.asset_materializations_for_node(f"{P}__champion")[0].metadata
        assert meta["status"].value == "promoted" and meta["report_sha256"].value == sha
        assert alias_version(client, NAME, CHAMPION).version == "3"
        assert alias_version(client, NAME, PREVIOUS).version == "1"
        rerun = job.execute_in_process(run_config=request.run_config, instance=instance)
        assert rerun.asset_materializations_for_node(f"{P}__champion")[0].metadata["status"].value == "noop"
        assert alias_version(client, NAME, PREVIOUS).version == "1"
