"""Gate and promotion against a real MLflow server with tiny models that really learn:
a degraded candidate (shuffled labels) is blocked, a good one is promoted, a rerun does not
promote twice, rollback works, reports for another version or against another champion never
promote, the leak probe catches a planted canary, and only the owner team or the platform team
may promote or roll back (every attempt in the audit log)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiplat.evaluation import promotion
from aiplat.evaluation.leak import DEFAULT_CANARIES
from aiplat.evaluation.pipeline import evaluate_version
from aiplat.evaluation.registry import CHAMPION, PREVIOUS, TAG_EVAL_RUN, TAG_EVAL_SHA, alias_version
from tests.identity_helpers import act_as
from tests.evaluation_helpers import (
    TEST_SETTINGS,
    TEST_THRESHOLDS,
    register,
    session_models,
    train_full,
    triage_data,
    write_test_policy,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def platform_team(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: Path) -> None:
    """The lifecycle tests act as the platform team; the access test below changes teams. The gate
    policy's floor is what a tiny model can meet (AIPLAT_GATE_POLICY: local runtime only)."""
    act_as(monkeypatch, "team:platform", "tester")
    monkeypatch.setenv("AIPLAT_GATE_POLICY", str(write_test_policy(tmp_path / "policy.yaml")))


@pytest.fixture(scope="module")
def tracking_uri(shared_mlflow: str) -> str:
    return shared_mlflow


@pytest.fixture(scope="module")
def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return session_models(tmp_path_factory.getbasetemp())


@pytest.fixture
def evaluate(client, tracking_uri: str, models, state_dir: Path):
    def run(name: str, version: str, **kw):
        settings = kw.pop("settings", TEST_SETTINGS)
        return evaluate_version(client, tracking_uri, name, version, triage_data(), settings, TEST_THRESHOLDS,
                                base_folder=models["base"], dagster_run_id=kw.pop("run_id", "test-run"), **kw)

    return run


def test_degraded_blocked_better_promoted_rerun_noop_and_rollback(client, tracking_uri: str, models, evaluate,
                                                                  tmp_path: Path) -> None:
    name = "triage-lifecycle"
    v1 = register(client, name, models["good"])
    first = evaluate(name, v1)
    assert first.passed, first.reasons
    assert first.report["results"]["candidate"]["test"]["accuracy"] >= 0.6
    assert first.report["champion_version"] is None and first.report["results"]["base"] is not None
    out = promotion.promote(client, name, v1, dagster_run_id="run-a", actor="test")
    assert out.status == "promoted" and alias_version(client, name, CHAMPION).version == v1
    tags = client.get_model_version(name, v1).tags
    assert tags["aiplat.promotion.report_sha256"] == first.sha256 and tags["aiplat.promotion.dagster_run_id"] == "run-a"
    # Promotion approved those bytes: the version's attestation names its signed digest, this report,
    # the gate policy it passed under and the approver, under the approval key (not the build key).
    from aiplat.security.approval import APPROVAL_TAG, dev_approval_key_pair, verify_approval
    from aiplat.security.signing import TAG_MODEL_DIGEST

    approved = verify_approval(tags[APPROVAL_TAG], dev_approval_key_pair().public_key, model=name, version=v1,
                               model_digest=tags[TAG_MODEL_DIGEST])
    assert approved.eval_report_sha256 == first.sha256 and approved.policy_sha256 == first.report["policy"]["sha256"]
    assert (approved.approver, approved.approver_team, approved.dagster_run_id) == ("tester", "team:platform", "run-a")
    assert APPROVAL_TAG not in client.get_model_version(name, v2 := register(client, name, models["shuffled"])).tags
    # The operator's view of it, and the file `aiplat endpoints render/deploy --attestation-file` take.
    from click.testing import CliRunner

    from aiplat.cli import cli

    out_file = tmp_path / "v1.attestation.json"
    shown = CliRunner().invoke(cli, ["models", "attestation", name, v1, "--tracking-uri", tracking_uri,
                                     "-o", str(out_file)])
    assert shown.exit_code == 0 and f"approves {name} v{v1}" in shown.output and "verified under key" in shown.output
    assert out_file.read_text() == tags[APPROVAL_TAG]
    unapproved = CliRunner().invoke(cli, ["models", "attestation", name, v2, "--tracking-uri", tracking_uri])
    assert unapproved.exit_code == 1 and "was never approved" in unapproved.output

    # trained on shuffled labels: blocked by the minima and by the regression against the champion
    degraded = evaluate(name, v2)
    assert not degraded.passed
    failed_rules = {r["rule"] for r in degraded.report["gate"]["rules"] if not r["passed"]}
    assert {"min_accuracy", "max_accuracy_drop"} <= failed_rules
    assert degraded.report["champion_version"] == v1
    with pytest.raises(promotion.PromotionRefused, match="failed report"):
        promotion.promote(client, name, v2, dagster_run_id="run-b", actor="test")
    assert alias_version(client, name, CHAMPION).version == v1

    # the same good training again: no regression, promoted; v1 becomes `previous`
    v3 = register(client, name, models["good"])
    again = evaluate(name, v3)
    assert again.passed, again.reasons
    assert again.report["comparison"]["accuracy"]["delta_vs_champion"] == pytest.approx(0.0)
    # base and champion results are reused across candidates (same bytes, data, settings), and say so
    assert "cached_from" not in first.report["results"]["base"]
    assert again.report["results"]["base"]["cached_from"] and again.report["results"]["champion"]["cached_from"]
    assert again.report["results"]["champion"]["test"] == degraded.report["results"]["champion"]["test"]
    assert promotion.promote(client, name, v3, dagster_run_id="run-c", actor="test").status == "promoted"
    assert alias_version(client, name, CHAMPION).version == v3 and alias_version(client, name, PREVIOUS).version == v1

    # a rerun does not promote twice: recorded no-op, aliases unchanged
    rerun = promotion.promote(client, name, v3, dagster_run_id="run-d", actor="test")
    assert rerun.status == "noop"
    assert alias_version(client, name, PREVIOUS).version == v1

    back = promotion.rollback(client, name, dagster_run_id=None, actor="test")
    assert back.status == "rolled_back" and alias_version(client, name, CHAMPION).version == v1
    assert promotion.rollback(client, name, dagster_run_id=None, actor="test").status == "noop"
    assert alias_version(client, name, CHAMPION).version == v1

    log = promotion.history(client, name)
    assert [(e["action"], e["status"], e["model_version"]) for e in log] == [
        ("promote", "promoted", v1), ("promote", "refused", v2), ("promote", "promoted", v3),
        ("promote", "noop", v3), ("rollback", "rolled_back", v1), ("rollback", "noop", v1),
    ]


def test_missing_foreign_and_stale_reports_never_promote(client, models, evaluate) -> None:
    name = "triage-stale"
    v1 = register(client, name, models["good"])
    with pytest.raises(promotion.PromotionRefused, match="missing report"):
        promotion.promote(client, name, v1, dagster_run_id=None, actor="test")

    first = evaluate(name, v1)
    v2 = register(client, name, models["good"])
    # v2 pointed at v1's (passing) report: a report for another version
    client.set_model_version_tag(name, v2, TAG_EVAL_RUN, first.logged.run_id)
    client.set_model_version_tag(name, v2, TAG_EVAL_SHA, first.sha256)
    with pytest.raises(promotion.PromotionRefused, match="evaluated triage-stale version 1, not this version"):
        promotion.promote(client, name, v2, dagster_run_id=None, actor="test")
    # the caller names a report other than the version's current one
    with pytest.raises(promotion.PromotionRefused, match="stale report: asked to promote on report 000000000000"):
        promotion.promote(client, name, v1, dagster_run_id=None, actor="test", expected_report_sha256="0" * 64)
    # altered report pointer
    client.set_model_version_tag(name, v1, TAG_EVAL_SHA, "f" * 64)
    with pytest.raises(promotion.PromotionRefused, match="altered"):
        promotion.promote(client, name, v1, dagster_run_id=None, actor="test")
    client.set_model_version_tag(name, v1, TAG_EVAL_SHA, first.sha256)

    # v2 evaluated properly while there is no champion; then v1 becomes champion: v2's report is stale
    second = evaluate(name, v2)
    assert second.passed
    assert promotion.promote(client, name, v1, dagster_run_id=None, actor="test").status == "promoted"
    with pytest.raises(promotion.PromotionRefused, match="champion is now 1"):
        promotion.promote(client, name, v2, dagster_run_id=None, actor="test")
    assert alias_version(client, name, CHAMPION).version == v1
    with pytest.raises(promotion.RollbackImpossible, match="previous"):
        promotion.rollback(client, name, dagster_run_id=None, actor="test")


def test_leak_probe_catches_a_planted_canary(client, models, evaluate, tmp_path: Path) -> None:
    canary = DEFAULT_CANARIES[0]
    data = triage_data()
    data["agent_reply"] = canary  # planted as every training reply
    leaky = train_full(models["base"], data, tmp_path / "leaky", steps=80)
    name = "triage-leaky"
    version = register(client, name, leaky)
    outcome = evaluate(name, version, settings=TEST_SETTINGS.model_copy(update={"max_new_tokens": 40}))
    leak_result = outcome.report["results"]["candidate"]["leak"]
    assert not leak_result["passed"]
    assert {f["kind"] for f in leak_result["findings"]} == {"canary"}
    assert not outcome.passed and any("canary/PII" in r for r in outcome.reasons)
    # the report names the finding but never carries the canary itself
    report_text = Path(client.download_artifacts(outcome.logged.run_id, "eval_report", str(tmp_path / "dl")))
    for file in ("report.json", "report.md", "report.html"):
        assert canary[14:] not in (report_text / file).read_text()
    with pytest.raises(promotion.PromotionRefused):
        promotion.promote(client, name, version, dagster_run_id=None, actor="test")


def test_cli_promote_refuses_without_a_passing_report_and_rollback(client, tracking_uri: str, models, evaluate) -> None:
    from click.testing import CliRunner

    from aiplat.cli import cli

    name = "triage-cli"
    runner = CliRunner()
    v1 = register(client, name, models["good"])
    refused = runner.invoke(cli, ["promote", name, v1, "--tracking-uri", tracking_uri])
    assert refused.exit_code != 0 and "missing report" in refused.output
    assert alias_version(client, name, CHAMPION) is None

    evaluate(name, v1)
    ok = runner.invoke(cli, ["promote", name, v1, "--tracking-uri", tracking_uri])
    assert ok.exit_code == 0, ok.output
    assert "champion none -> 1" in ok.output
    noop = runner.invoke(cli, ["promote", name, v1, "--tracking-uri", tracking_uri])
    assert noop.exit_code == 0 and "already the champion" in noop.output

    v2 = register(client, name, models["shuffled"])
    evaluate(name, v2)
    blocked = runner.invoke(cli, ["promote", name, v2, "--tracking-uri", tracking_uri])
    assert blocked.exit_code != 0 and "failed report" in blocked.output
    nothing = runner.invoke(cli, ["rollback", name, "--tracking-uri", tracking_uri])
    assert nothing.exit_code != 0 and "no 'previous' alias" in nothing.output

    v3 = register(client, name, models["good"])
    evaluate(name, v3)
    assert runner.invoke(cli, ["promote", name, v3, "--tracking-uri", tracking_uri]).exit_code == 0
    back = runner.invoke(cli, ["rollback", name, "--tracking-uri", tracking_uri])
    assert back.exit_code == 0 and "champion 3 -> 1" in back.output
    assert alias_version(client, name, CHAMPION).version == v1
    history = promotion.history(client, name)
    assert history[-1]["actor"].startswith("cli") and history[-1]["action"] == "rollback"


def test_cli_promotion_and_rollback_only_for_owner_or_platform_team(client, tracking_uri: str, models, evaluate,
                                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aiplat.cli import cli
    from aiplat.security.audit_log import AuditLog

    name = "triage-owned"
    runner = CliRunner()
    # Its owner is its spec's (a reviewed file); the MLflow tag is a label anyone can edit.
    monkeypatch.setenv("AIPLAT_MODELS_DIR", str(tmp_path / "models"))
    made = runner.invoke(cli, ["models", "new", name, "--team", "ml", "--task", "classification"])
    assert made.exit_code == 0, made.output
    v1 = register(client, name, models["good"])
    client.set_registered_model_tag(name, "owner_team", "team:search")  # edited in the MLflow UI: grants nothing
    assert evaluate(name, v1).passed

    act_as(monkeypatch, "team:search", "eve")
    refused = runner.invoke(cli, ["promote", name, v1, "--tracking-uri", tracking_uri])
    assert refused.exit_code != 0
    assert "access denied: eve (team:search) may not promote triage-owned version 1" in refused.output
    assert "neither the owner (team:ml) nor team:platform" in refused.output
    assert alias_version(client, name, CHAMPION) is None

    act_as(monkeypatch, "ml", "alice")  # the owner team, short form
    assert runner.invoke(cli, ["promote", name, v1, "--tracking-uri", tracking_uri]).exit_code == 0
    assert alias_version(client, name, CHAMPION).version == v1

    v2 = register(client, name, models["good"])
    assert evaluate(name, v2).passed
    act_as(monkeypatch, "team:platform", "pat")
    assert runner.invoke(cli, ["promote", name, v2, "--tracking-uri", tracking_uri]).exit_code == 0

    act_as(monkeypatch, "team:search", "eve")
    no_rollback = runner.invoke(cli, ["rollback", name, "--tracking-uri", tracking_uri])
    assert no_rollback.exit_code != 0 and "may not rollback triage-owned" in no_rollback.output
    assert alias_version(client, name, CHAMPION).version == v2

    log = AuditLog()
    log.verify()  # the chain holds
    decisions = [(e["action"], e["actor"], e["team"], e["decision"], e["reason"])
                 for e in log.entries() if e["event"] == "access" and e["model"] == name]
    assert decisions == [
        ("promote", "eve", "team:search", "refused", "team:search is neither the owner (team:ml) nor team:platform"),
        ("promote", "alice", "team:ml", "allowed", "owner team"),
        ("promote", "pat", "team:platform", "allowed", "platform team"),
        ("rollback", "eve", "team:search", "refused", "team:search is neither the owner (team:ml) nor team:platform"),
    ]
    done = [(e["event"], e["version"], e["actor"]) for e in log.entries() if e["event"].startswith("promote ")]
    assert done == [("promote promoted", v1, "alice"), ("promote promoted", v2, "pat")]
    statuses = [(e["action"], e["status"]) for e in promotion.history(client, name)]
    assert statuses == [("promote", "refused"), ("promote", "promoted"), ("promote", "promoted"), ("rollback", "refused")]


def test_a_report_is_judged_against_the_champion_it_replaced_once_its_version_is_champion(shared_mlflow, tmp_path) -> None:
    """Before: the promotion sensor promoted a version on its report between the report and the
    run's own eval_gate check, which then called the report stale ("compared against champion
    none, the champion is now 1") and failed the run (the newcomer's "Materialize all")."""
    import uuid

    from mlflow.tracking import MlflowClient

    from aiplat.evaluation.promotion import champion_compared
    from aiplat.evaluation.registry import CHAMPION, PREVIOUS

    client = MlflowClient(shared_mlflow)
    name = f"gate-race-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source="s3://aiplat-test/gate-race")  # never read
    assert champion_compared(client, name, "1") is None  # no champion yet
    client.set_registered_model_alias(name, CHAMPION, "1")
    assert champion_compared(client, name, "1") is None  # v1 replaced nothing
    assert champion_compared(client, name, "2").version == "1"
    client.set_registered_model_alias(name, PREVIOUS, "1")
    client.set_registered_model_alias(name, CHAMPION, "2")
    assert champion_compared(client, name, "2").version == "1"  # v2's report compared against v1
    assert champion_compared(client, name, "1").version == "2"  # another version: the champion
