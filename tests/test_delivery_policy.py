"""Delivery, policy scan: checkov (its own environment, scripts/setup_checkov_env.sh) over deploy/,
the rendered overlays, the Pulumi program's resources and the workflows finds nothing that
policy/checkov-exceptions.yaml does not explain, and that file carries no stale entry."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aiplat.config import project_root

ROOT = project_root()
pytestmark = pytest.mark.slow


def _scan_module():
    spec = importlib.util.spec_from_file_location("policy_scan", ROOT / "scripts" / "policy_scan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_scan"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_exception_has_a_reason_and_a_scope() -> None:
    entries = _scan_module().load_exceptions()
    assert entries
    for entry in entries:
        assert len(entry["reason"].split()) >= 8, entry  # a sentence, not a token
        assert all(w.split(":", 1)[0] in {"deploy", "rendered", "infra", "workflows"} for w in entry["where"]), entry


def test_policy_scan_is_clean(tmp_path: Path) -> None:
    report = tmp_path / "verdict.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "policy_scan.py"), "--work", str(tmp_path / "work"),
                             "--json", str(report)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    verdict = yaml.safe_load(report.read_text())
    assert verdict["unexplained"] == [] and verdict["unused_exceptions"] == []
    # The scan saw every target (an empty scan would also be "clean").
    rendered = list((tmp_path / "work" / "rendered").glob("*.yaml"))
    plans = list((tmp_path / "work" / "infra").glob("*.tfplan.json"))
    assert len(rendered) == 2 and len(plans) == 2
    assert {f["target"] for f in verdict["explained"]} >= {"deploy", "rendered", "infra"}


def test_the_scan_catches_a_privileged_pod(tmp_path: Path) -> None:
    scan = _scan_module()
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "team-ml"},
        "spec": {"containers": [{"name": "c", "image": "r/x:1", "securityContext": {"privileged": True}}]}}))
    findings = scan.run_checkov(scan.checkov_binary(), "rendered", ["-d", ".", "--framework", "kubernetes"], cwd=tmp_path)
    verdict = scan.judge(findings, scan.load_exceptions())
    assert "CKV_K8S_16" in {f["check_id"] for f in verdict["unexplained"]}  # privileged container


def test_the_plan_carries_what_the_program_declares() -> None:
    """The Terraform-plan view checkov reads keeps the settings the infra tests assert."""
    sys.path.insert(0, str(ROOT / "infra"))
    from aiplat_infra.offline import declared_resources, terraform_plan
    from aiplat_infra.settings import Settings

    plan = terraform_plan(declared_resources(Settings(environment="prod")))
    by_type = {}
    for r in plan["planned_values"]["root_module"]["resources"]:
        by_type.setdefault(r["type"], []).append(r)
    [db] = by_type["aws_db_instance"]
    assert db["values"]["storage_encrypted"] is True and db["values"]["multi_az"] is True
    [training] = [g for g in by_type["aws_eks_node_group"] if g["name"].endswith("training")]
    assert training["values"]["capacity_type"] == "SPOT"
    assert {t["key"] for t in training["values"]["taint"]} == {"nvidia.com/gpu", "aiplat.io/capacity"}
    [config] = [c for c in plan["configuration"]["root_module"]["resources"] if c["address"] == db["address"]]
    assert any(ref.startswith("aws_db_parameter_group.") for ref in config["expressions"]["parameter_group_name"]["references"])
