"""Delivery, alerting as code: the Prometheus rules in deploy/observability are what
aiplat.operations.alert_rules renders from the deployment's operations settings, pass
`promtool check rules`, and behave as their unit tests say (`promtool test rules`). promtool comes
from Debian's prometheus package (scripts/bootstrap.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aiplat.config import project_root
from aiplat.operations.alert_rules import AlertSettings, render_rules, settings_from, to_yaml
from aiplat.operations.textfile import write_live_quality
from aiplat.serving.k8s_adapters import AdapterServerSpec
from resources.operations import OperationsResource

OBS = project_root() / "deploy" / "observability"
RULES = OBS / "alert-rules.yaml"
RULE_TESTS = OBS / "alert-rules.test.yaml"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/bootstrap.sh installs Debian's prometheus package"
    return found


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_committed_rules_are_the_rendered_deployment_settings() -> None:
    assert RULES.read_text() == to_yaml(render_rules(settings_from(OperationsResource.prod())))


def test_rules_pass_promtool_check() -> None:
    result = _run("check", "rules", str(RULES), cwd=OBS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 19 rules found" in result.stdout


def test_promtool_check_rejects_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum by (team (rate(x[5m]))"}]}]}))
    result = _run("check", "rules", str(bad), cwd=tmp_path)
    assert result.returncode != 0


def test_rules_behave_as_their_unit_tests_say() -> None:
    result = _run("test", "rules", RULE_TESTS.name, cwd=OBS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"] for t in case.get("alert_rule_test", [])}
    assert alerts == tested, alerts ^ tested


def _rules() -> dict[str, dict]:
    return {r.get("alert") or r["record"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def test_vllm_rules_group_by_base_server_and_endpoint_figures_come_from_the_gateway() -> None:
    """Every model version is an adapter on its base model's shared server, and vLLM counts adapter
    traffic under the base model: vLLM's series are grouped by the scrape config's `base_model`
    label; what is per endpoint reads the gateway's series."""
    for rule in _rules().values():
        if "vllm:" in rule["expr"]:
            assert "base_model" in rule["expr"] and "endpoint" not in rule["expr"], rule
        if "by (endpoint)" in rule["expr"]:
            assert "aiplat_gateway_" in rule["expr"], rule
    config = yaml.safe_load((OBS / "prometheus.yml").read_text())
    vllm = next(job for job in config["scrape_configs"] if job["job_name"] == "vllm")
    assert {r.get("target_label") for r in vllm["relabel_configs"]} >= {"base_model"}


def test_gpu_saturation_watches_the_adapter_servers_pods() -> None:
    """Pods of a Deployment are named <Deployment>-<ReplicaSet hash>-<suffix>; the Deployment is
    AdapterServerSpec.name. A fine-tune's pod saturating its GPU is not an inference problem."""
    import re

    (regex,) = re.findall(r'pod=~"([^"]+)"', _rules()["GpuSaturated"]["expr"])
    spec = AdapterServerSpec(base_name="smollm2-135m-instruct", base_uri="s3://m/base/smollm2-135m-instruct/")
    assert re.fullmatch(regex, f"{spec.name}-7d9f8c6b5-x2k4p")
    assert not re.fullmatch(regex, "dagster-run-3f2a1b-fine-tune-x7k2p")


def test_a_bigger_budget_silences_the_burn_alert(tmp_path: Path) -> None:
    """The unit tests read the budgets in the rules: with team:ml's budget at 100 a day, the same
    spend (9 an hour) burns at 2.16, under the fast threshold, and the promtool case fails."""
    ops = OperationsResource.prod()
    settings = settings_from(ops)
    bigger = AlertSettings({**settings.team_daily_budgets, "team:ml": 100.0}, settings.prompt_per_1k_tokens,
                           settings.completion_per_1k_tokens)
    (tmp_path / "alert-rules.yaml").write_text(to_yaml(render_rules(bigger)))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _run("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "TeamBudgetBurnFast" in result.stdout + result.stderr


def _series_from_textfile(path: Path) -> list[dict]:
    """The textfile the live_quality asset writes, as promtool input series (constant for 10 minutes)."""
    out = []
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out.append({"series": f"{sample.name}{{{labels}}}", "values": f"{sample.value!r}x10"})
    return out


@pytest.mark.parametrize("baseline, fires", [(0.9, True), (0.78, False), (None, False)])
def test_live_quality_gauges_drive_the_regression_alert(tmp_path: Path, baseline: float | None, fires: bool) -> None:
    path = write_live_quality(tmp_path / "reports", endpoint="ticket-triage", model="ticket-triage", model_version="7",
                              accuracy=0.7, baseline_accuracy=baseline, max_drop=0.1, measured_at=time.time())
    (tmp_path / "alert-rules.yaml").write_text(RULES.read_text())
    expected = [{"exp_labels": {"severity": "page", "endpoint": "ticket-triage", "model": "ticket-triage", "model_version": "7"},
                 "exp_annotations": {"summary": f"ticket-triage v7 on ticket-triage lost {round((baseline or 0) * 100 - 70)}% golden accuracy",
                                     "description": "The live golden-set check (live_quality asset) is below its baseline by "
                                                    "more than the allowed drop; its asset check failed too."}}] if fires else []
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "rule_files": ["alert-rules.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": _series_from_textfile(path),
                   "alert_rule_test": [{"alertname": "LiveQualityRegressed", "eval_time": "5m", "exp_alerts": expected}]}]}))
    result = _run("test", "rules", "t.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
