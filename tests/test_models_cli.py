"""Self-service: `aiplat models new` writes a spec skeleton that validates and becomes a chain;
`aiplat models list` shows every model with its owner, task, endpoint, versions and champion from
the runtime's MLflow; `aiplat cost report` breaks cost down by team, model (version) and feature."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.config import project_root
from aiplat.operations.cost import CostRates, attribute
from aiplat.specs import load_spec
from tests.operations_helpers import record


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_models_new_writes_a_valid_skeleton_that_becomes_a_chain(tmp_path, monkeypatch, state_dir, task):
    from platform_defs.definitions import build_definitions

    models = tmp_path / "models"
    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(models))
    out = CliRunner().invoke(cli, ["models", "new", "refund-risk", "--team", "payments", "--task", task])
    assert out.exit_code == 0, out.output
    spec = load_spec(models / "refund-risk.yaml")
    assert (spec.owner, spec.task, spec.endpoint) == ("team:payments", task, "refund-risk")
    assert spec.grounded == (task == "generation")
    graph = build_definitions().resolve_asset_graph()
    node = graph.get(__import__("dagster").AssetKey(["refund_risk", "served_endpoint"]))
    assert node.owners == ["team:payments"] and node.group_name == "refund_risk"

    again = CliRunner().invoke(cli, ["models", "new", "refund-risk", "--team", "payments", "--task", task])
    assert again.exit_code != 0 and "a spec with this name exists" in again.output
    bad = CliRunner().invoke(cli, ["models", "new", "Refund Risk", "--team", "payments", "--task", task])
    assert bad.exit_code != 0 and "field name" in bad.output and not (models / "Refund Risk.yaml").exists()
    bad_team = CliRunner().invoke(cli, ["models", "new", "other", "--team", "Pay Ments", "--task", task])
    assert bad_team.exit_code != 0 and "field owner" in bad_team.output and not (models / "other.yaml").exists()


def test_models_list_shows_owner_champion_versions_and_endpoint(tmp_path, monkeypatch, state_dir):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(project_root() / "models"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a real registry without a server
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("list", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.create_registered_model("ticket-triage", tags={"owner_team": "team:ml"})
    for _ in range(2):
        client.create_model_version("ticket-triage", source=str(tmp_path / "m"), run_id=run.info.run_id)
    client.set_registered_model_alias("ticket-triage", "champion", "2")
    client.create_registered_model("legacy-model", tags={"owner_team": "team:old"})  # no spec declares it

    listed = CliRunner().invoke(cli, ["models", "list", "--tracking-uri", uri, "--json"])
    assert listed.exit_code == 0, listed.output
    models = {m["name"]: m for m in yaml.safe_load(listed.output)}
    assert {k: models["ticket-triage"][k] for k in ("owner", "task", "endpoint", "versions", "champion")} == \
        {"owner": "team:ml", "task": "classification", "endpoint": "ticket-triage", "versions": 2, "champion": "2"}
    assert {k: models["reply-drafter"][k] for k in ("owner", "task", "endpoint", "versions", "champion")} == \
        {"owner": "team:support", "task": "generation", "endpoint": "reply-drafter", "versions": 0, "champion": None}
    assert models["legacy-model"]["owner"] == "team:old" and models["legacy-model"]["spec"] is None

    table = CliRunner().invoke(cli, ["models", "list", "--tracking-uri", uri])
    assert table.exit_code == 0
    line = next(row for row in table.output.splitlines() if row.startswith("ticket-triage"))
    assert line.split() == ["ticket-triage", "team:ml", "classification", "ticket-triage", "2", "v2"]


RATES = CostRates(prompt_per_1k_tokens=0.5, completion_per_1k_tokens=1.0, gpu_hour=3600.0, gpus_per_endpoint=1)


def test_cost_breaks_down_by_team_model_and_feature():
    records = [
        record(10, "team:ml", "triage-ui", 2000, endpoint="ticket-triage"),
        record(11, "team:support", "agent-desk", 4000, endpoint="reply-drafter"),
        record(12, "team:support", "agent-desk", 1000, endpoint="reply-drafter"),
        record(13, "team:support", "triage-ui", 1000, endpoint="ticket-triage"),  # support uses ml's model too
        record(14, "team:x", "demo", 1000, endpoint="unknown-endpoint"),
    ]
    report = attribute(records, RATES, endpoint_models={"ticket-triage": "ticket-triage", "reply-drafter": "reply-drafter"})
    per_model = report.by_model()
    cost = {(r.team, r.model): r.total_cost for r in per_model.itertuples()}
    assert set(cost) == {("team:ml", "ticket-triage"), ("team:support", "reply-drafter"),
                         ("team:support", "ticket-triage"), ("team:x", "unknown-endpoint")}
    # Per model, per team and per feature: each adds up to the whole.
    for frame in (report.model_rows, report.rows):
        assert frame["total_cost"].sum() == pytest.approx(report.totals["total_cost"], rel=1e-12)
    assert set(report.model_rows["model_version"]) == {"ticket-triage", "reply-drafter", "unknown-endpoint"}


def test_cost_report_cli_by_model(state_dir: Path, monkeypatch):
    from aiplat.operations.requests import RequestLog

    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(project_root() / "models"))
    log = RequestLog(state_dir / "requests.jsonl")
    for r in [record(10, "team:ml", "triage-ui", 2000, endpoint="ticket-triage"),
              record(11, "team:support", "agent-desk", 4000, endpoint="reply-drafter")]:
        log.append(r)
    day = r.timestamp.date().isoformat()
    out = CliRunner().invoke(cli, ["cost", "report", "--since", day, "--until", day, "--request-log", str(log.path),
                                   "--model", "reply-drafter"])
    assert out.exit_code == 0, out.output
    assert "by team, model (version) and feature:" in out.output
    rows = [line for line in out.output.splitlines() if line.startswith(f"| {day} | team:")]
    assert any("| team:support | reply-drafter |" in line for line in rows)
    assert not any("| ticket-triage | ticket-triage |" in line for line in rows)  # filtered to the model
    assert "model total:" in out.output
