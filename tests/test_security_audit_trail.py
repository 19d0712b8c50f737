"""`aiplat audit MODEL VERSION` over a real Dagster instance (DAGSTER_HOME), a real MLflow registry
(sqlite store, no server) and the real audit log. The assets here are stand-ins that record the
metadata the real ones record (their own tests cover how it is produced); what is tested is that
the trail picks the materializations of *this* version and what came before its training, the
MLflow tags, and only this model's audit lines, and that a broken audit log fails the command."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.security.access import Identity, authorize, record
from aiplat.security.audit_log import AuditLog

MODEL = "triage-audit"
P = "triage_audit"


def _asset(name: str):
    @dg.asset(key=dg.AssetKey.from_user_string(name), config_schema=dg.Permissive())
    def stand_in(context):
        return dg.MaterializeResult(metadata=dict(context.op_execution_context.op_config))

    return stand_in


def _materialize(instance, name: str, **metadata) -> None:
    asset = _asset(name)
    dg.materialize([asset], instance=instance, run_config={"ops": {name.replace("/", "__"): {"config": metadata}}})


@pytest.fixture
def world(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("")  # default local storage under home, without the warning
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    import yaml

    from aiplat.config import project_root

    # The model's spec: the audit walks its chain's real upstream in the platform's asset graph.
    spec = yaml.safe_load((project_root() / "models" / "ticket-triage.yaml").read_text())
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(spec | {"name": MODEL, "endpoint": MODEL}))
    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(models))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("audit", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment, tags={"aiplat.training_set_sha256": "ts" * 32, "dagster.run_id": "run-train"})
    client.set_terminated(run.info.run_id, "FINISHED")
    client.create_registered_model(MODEL, tags={"owner_team": "team:ml"})
    client.create_model_version(MODEL, source=str(tmp_path / "model"), run_id=run.info.run_id, tags={
        "aiplat.training_set_sha256": "ts" * 32, "aiplat.signature.model_digest": "d1" * 32,
        "aiplat.eval.report_sha256": "e1" * 32})

    with dg.DagsterInstance.get() as instance:
        _materialize(instance, "raw_tickets", sha256="raw-before-v1")
        _materialize(instance, "redacted_tickets", findings_after_redaction=0, content_hash="redacted-v1")
        _materialize(instance, "kb_index", collection="kb_v1")  # feeds other models, not this one
        _materialize(instance, f"{P}/training_set", content_hash="ts-v1", feature_service="triage_v1")
        _materialize(instance, f"{P}/fine_tuned_model", registered_model=MODEL, model_version="1", adapter_sha256="a1")
        _materialize(instance, "raw_tickets", sha256="raw-after-v1")  # landed later: not v1's lineage
        _materialize(instance, f"{P}/fine_tuned_model", registered_model=MODEL, model_version="2", adapter_sha256="a2")
        _materialize(instance, f"{P}/eval_report", registered_model=MODEL, model_version="1", report_sha256="e1" * 32)
        _materialize(instance, f"{P}/champion", registered_model=MODEL, champion_version="1", status="promoted")
        _materialize(instance, f"{P}/served_endpoint", registered_model=MODEL, model_version="1", deployed_by="alice")

    alice, eve = Identity("alice", "team:ml", "credential"), Identity("eve", "team:search", "credential")
    authorize("promote", MODEL, "1", alice, "team:ml")
    record("promote promoted", MODEL, "1", alice)
    with pytest.raises(PermissionError):
        authorize("deploy", MODEL, "1", eve, "team:ml")
    record("promote promoted", "other-model", "1", alice)
    return uri


def test_audit_prints_the_chain_of_one_version(world: str) -> None:
    out = CliRunner().invoke(cli, ["audit", MODEL, "1", "--tracking-uri", world, "--json"])
    assert out.exit_code == 0, out.output
    trail = json.loads(out.stdout)
    by_asset: dict[str, list[dict]] = {}
    for step in trail["steps"]:
        by_asset.setdefault(step["asset"], []).append(step["metadata"])
    assert by_asset["raw_tickets"] == [{"sha256": "raw-before-v1"}]
    assert by_asset[f"{P}/training_set"][0]["feature_service"] == "triage_v1"
    assert [m["adapter_sha256"] for m in by_asset[f"{P}/fine_tuned_model"]] == ["a1"]
    assert by_asset[f"{P}/eval_report"][0]["report_sha256"] == "e1" * 32
    assert by_asset[f"{P}/served_endpoint"][0]["deployed_by"] == "alice"
    # Its real upstream in the asset graph: no KB asset feeds the triage model (it did print them).
    assert not any(a.startswith("kb_") for a in by_asset) and not any(a.startswith("kb_") for a in trail["missing"])
    assert "base_model" in trail["missing"]  # upstream of the fine-tune, never materialized here: a finding
    assert trail["mlflow_version"]["aiplat.signature.model_digest"] == "d1" * 32
    assert trail["mlflow_version"]["registered_model.owner_team"] == "team:ml"
    assert trail["training_run"]["dagster.run_id"] == "run-train"
    events = [(e["event"], e.get("decision"), e["actor"]) for e in trail["events"]]
    assert events == [("access", "allowed", "alice"), ("promote promoted", None, "alice"), ("access", "refused", "eve")]
    assert "chain intact, 4 entries" in trail["audit_log"]

    text = CliRunner().invoke(cli, ["audit", MODEL, "1", "--tracking-uri", world])
    assert text.exit_code == 0 and "== audit log ==" in text.output and "eve (team:search)" in text.output


def test_audit_fails_on_unknown_version_and_broken_log(world: str) -> None:
    unknown = CliRunner().invoke(cli, ["audit", MODEL, "9", "--tracking-uri", world])
    assert unknown.exit_code != 0 and "has no version '9'" in unknown.output
    path = AuditLog().path
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"alice"', '"mallory"')
    path.write_text("\n".join(lines) + "\n")
    broken = CliRunner().invoke(cli, ["audit", MODEL, "1", "--tracking-uri", world])
    assert broken.exit_code != 0 and "TAMPERED" in broken.output and "line 2 was altered" in broken.output
