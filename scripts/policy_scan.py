"""Policy scan with checkov over what the platform deploys; zero unexplained findings.

    python scripts/policy_scan.py [--work DIR] [--json REPORT]

Scanned (checkov 3.3.30 from its own environment, scripts/setup_checkov_env.sh):
  deploy/                       kubernetes, dockerfile and secrets checks, as committed
  environments/<env> rendered   kubernetes checks on what `kubectl kustomize` produces per environment
  infra/ per stack              terraform_plan checks on the resources the Pulumi program declares
                                (run under Pulumi's mock runtime, written as a Terraform plan: checkov
                                has no Pulumi framework; see infra/aiplat_infra/offline.py)
  .github/workflows/            github_actions checks
Every failed check must match an entry of policy/checkov-exceptions.yaml (check id + a glob on the
file or resource + the reason); an entry that matches nothing is reported too, so exceptions do
not outlive their cause. Exit 0 only when both lists are empty.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXCEPTIONS = ROOT / "policy" / "checkov-exceptions.yaml"
ENVIRONMENTS = ("dev", "prod")


@dataclass(frozen=True)
class Finding:
    target: str       # deploy | rendered | infra | workflows
    framework: str
    check_id: str
    check_name: str
    file: str         # relative to the target's root
    resource: str

    def key(self) -> str:
        return f"{self.target}:{self.file}:{self.resource}"


def checkov_binary() -> Path:
    sys.path.insert(0, str(ROOT))
    from aiplat.config import local_paths

    binary = local_paths().venvs / "checkov" / "bin" / "checkov"
    if not binary.exists():
        subprocess.run([str(ROOT / "scripts" / "setup_checkov_env.sh")], check=True)
    return binary


def run_checkov(binary: Path, target: str, args: list[str], cwd: Path) -> list[Finding]:
    # An explicit environment: no credentials or proxies of the caller reach checkov, and it does
    # not try to download guidelines (this runs offline).
    with tempfile.TemporaryDirectory(prefix="checkov-home-") as home:  # its caches stay out of the repo
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8",
               "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
        result = subprocess.run([str(binary), *args, "--compact", "--quiet", "--skip-download", "-o", "json"],
                                capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    if result.returncode not in (0, 1):
        raise SystemExit(f"checkov failed on {target} (exit {result.returncode}):\n{result.stderr[-3000:]}")
    reports = json.loads(result.stdout or "[]")
    if isinstance(reports, dict):
        reports = [reports] if reports.get("check_type") else []
    findings = []
    for report in reports:
        for failed in report["results"]["failed_checks"]:
            findings.append(Finding(target, report["check_type"], failed["check_id"], failed["check_name"],
                                    failed["file_path"].lstrip("/"), failed["resource"]))
    return findings


def render_overlays(work: Path) -> Path:
    kubectl = Path(sys.executable).parent / "kubectl"
    out = work / "rendered"
    out.mkdir(parents=True, exist_ok=True)
    for env in ENVIRONMENTS:
        rendered = subprocess.run([str(kubectl if kubectl.exists() else "kubectl"), "kustomize", str(ROOT / "environments" / env)],
                                  capture_output=True, text=True, check=True, timeout=120).stdout
        (out / f"{env}.yaml").write_text(rendered)
    return out


def write_plans(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "infra"))
    from aiplat_infra.offline import declared_resources, terraform_plan
    from aiplat_infra.settings import Settings

    out = work / "infra"
    out.mkdir(parents=True, exist_ok=True)
    for env in ENVIRONMENTS:
        settings = Settings(environment=env, multi_az=env == "prod")
        plan = terraform_plan(declared_resources(settings))
        (out / f"{env}.tfplan.json").write_text(json.dumps(plan, indent=1, default=str))
    return out


def scan(work: Path) -> list[Finding]:
    binary = checkov_binary()
    findings = run_checkov(binary, "deploy", ["-d", ".", "--framework", "kubernetes", "dockerfile", "secrets"],
                           cwd=ROOT / "deploy")
    findings += run_checkov(binary, "rendered", ["-d", ".", "--framework", "kubernetes"], cwd=render_overlays(work))
    plans = write_plans(work)
    for env in ENVIRONMENTS:
        findings += run_checkov(binary, "infra", ["-f", f"{env}.tfplan.json", "--framework", "terraform_plan"], cwd=plans)
    if (ROOT / ".github" / "workflows").is_dir():
        findings += run_checkov(binary, "workflows", ["-d", ".", "--framework", "github_actions"],
                                cwd=ROOT / ".github" / "workflows")
    return findings


def load_exceptions() -> list[dict]:
    entries = yaml.safe_load(EXCEPTIONS.read_text())["exceptions"]
    for entry in entries:
        if not str(entry.get("reason", "")).strip() or not entry.get("check") or not entry.get("where"):
            raise SystemExit(f"{EXCEPTIONS.name}: every exception needs check, where and a reason: {entry}")
    return entries


def judge(findings: list[Finding], exceptions: list[dict]) -> dict:
    unexplained, explained, used = [], [], set()
    for f in findings:
        match = next((i for i, e in enumerate(exceptions) if e["check"] == f.check_id
                      and any(fnmatch.fnmatch(f.key(), w) for w in e["where"])), None)
        if match is None:
            unexplained.append(f)
        else:
            used.add(match)
            explained.append((f, exceptions[match]["reason"]))
    unused = [e for i, e in enumerate(exceptions) if i not in used]
    return {"unexplained": [asdict(f) for f in unexplained],
            "explained": [{**asdict(f), "reason": r} for f, r in explained],
            "unused_exceptions": unused}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Where rendered manifests and plans go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="Also write the verdict as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiplat-policy-") as tmp:
        verdict = judge(scan(args.work or Path(tmp)), load_exceptions())
    if args.json:
        args.json.write_text(json.dumps(verdict, indent=2))
    for f in verdict["unexplained"]:
        print(f"FAILED {f['check_id']} {f['target']}:{f['file']} {f['resource']}: {f['check_name']}")
    for e in verdict["unused_exceptions"]:
        print(f"UNUSED exception {e['check']} {e['where']}: nothing fails it any more; remove it")
    print(f"checkov: {len(verdict['unexplained'])} unexplained, {len(verdict['explained'])} explained by "
          f"{EXCEPTIONS.relative_to(ROOT)}, {len(verdict['unused_exceptions'])} unused exceptions")
    return 1 if verdict["unexplained"] or verdict["unused_exceptions"] else 0


if __name__ == "__main__":
    sys.exit(main())
