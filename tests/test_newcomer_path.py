"""The newcomer's path, end to end, the way a person takes it: `dagster dev` (what `make dev`
runs after starting the local services) picks the landed demo files up with its sensors, then
"Materialize all" in the UI launches one backfill of every asset over every partition, over the
same GraphQL API the browser uses. It must end green: both teams' models trained, gated,
promoted and served, every check passed (but the planted bad lines' quarantine warning). Then
every command of the README's "Try it" block runs exactly as written there.

A ticket with unique canary PII is landed beside the demo corpus; nothing downstream of the raw
datasets may contain any of its values: not the lake, the feature store, the vector index, the
MLflow artifacts, nor any event or metadata Dagster recorded.

The UI launches with no run config, so what makes this run small is what a platform operator
controls: the model spec files (two fine-tune steps, a few eval rows) in AIPLAT_MODELS_DIR and a
gate policy whose quality floors two steps can meet (AIPLAT_GATE_POLICY; the mandatory leak probe
and the pinned golden set stay as shipped).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from aiplat import demo_data
from aiplat.config import child_env, project_root
from aiplat.net import free_port
from tests.conftest import built_vllm_env
from tests.dagster_ui import DagsterDev, backfill_status, failure_messages, materialize_all, runs, wait_for_backfill, wait_until_idle
from tests.records import jsonl, ticket

pytestmark = pytest.mark.slow

CANARIES = {
    "email": "zq.canary.e2e.4471@example.net",
    "card": "4539 1488 0343 6467",
    "ssn": "536-22-8144",
    "name": "Quintessa Vanderhoeven",
}
README_MARKER = "<!-- tested: tests/test_newcomer_path.py runs every line of the next block as written -->"
SUCCESS_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS"}


def _canary_ticket() -> dict:
    return ticket(
        424242,
        customer_name=CANARIES["name"],
        customer_email=CANARIES["email"],
        message=(
            f"Hi, this is {CANARIES['name']}. Please refund card {CANARIES['card']} and write to "
            f"{CANARIES['email']}. My SSN is {CANARIES['ssn']} if you need it."
        ),
        created_at="2026-10-20T09:30:00+00:00",
    )


def _months_back(months: int) -> date:
    today = date.today()
    index = today.year * 12 + today.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def _smoke_gate_policy(path: Path) -> Path:
    """The shipped policy with its quality floors opened (what two training steps can meet); the
    mandatory leak probe, the pinned golden set and the digest checks stay as shipped."""
    policy = yaml.safe_load((project_root() / "aiplat" / "policy" / "gate_policy.yaml").read_text())
    policy["min_test_examples"] = 6
    for rules in policy["tasks"].values():
        for rule in rules:
            rules[rule] = 0.0 if rule.startswith("min_") else None if rule == "max_latency_ratio" else 1.0
    path.write_text(yaml.safe_dump(policy))
    return path


def _smoke_specs(folder: Path) -> Path:
    """The demo specs as shipped, with a two-step fine-tune and a few eval rows, and without the
    teams' own tightening of the gate (which two steps cannot meet)."""
    folder.mkdir()
    for path in sorted((project_root() / "models").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        spec["fine_tune"].update({"steps": 2, "max_train_examples": 16, "max_eval_examples": 4, "batch_size": 2})
        spec["fine_tune"]["max_length"] = min(spec["fine_tune"].get("max_length", 256), 256)
        spec["evaluation"].update({"thresholds": {}, "max_test_examples": 6, "max_new_tokens": 16, "batch_size": 6,
                                   "latency_samples": 1})
        # One small load level: the shipped three (1, 4, 8) took ~9 min per endpoint on 2 cores.
        spec["load_test"] = {"concurrencies": [2], "num_prompts": 4, "output_len": 8}
        if spec["task"] == "classification":
            # Off here for the suite's time: scoring the corpus through a LoRA adapter on the CPU runs
            # at about 1 ticket/s (benchmarks/batch_inference.py), minutes for 160 tickets. The same
            # asset runs against a real vLLM in tests/test_predictions_live.py.
            spec["batch_predictions"] = False
        (folder / path.name).write_text(yaml.safe_dump(spec))
    return folder


def readme_commands() -> list[str]:
    """The lines of the README block after README_MARKER (comments and blank lines skipped)."""
    text = (project_root() / "README.md").read_text()
    after = text[text.index(README_MARKER) + len(README_MARKER):]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", after, re.S)
    assert block, "README: no code block after the tested-commands marker"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture
def newcomer(tmp_path, monkeypatch, smollm_base: Path):
    """The local runtime as `make dev` leaves it, on private ports and a private state folder: the
    vLLM venv and the base model the bootstrap prepared are there (a copy of the session's
    converted SmolLM2, its manifest included, so the base_model asset finds it up to date instead
    of converting the GGUF package again: tests/test_training.py converts it for real)."""
    import shutil

    from aiplat.stack import down, up

    env = built_vllm_env()
    state = tmp_path / "state"
    (state / "venvs").mkdir(parents=True)
    (state / "venvs" / "vllm").symlink_to(env.path)
    shutil.copytree(smollm_base, state / "models" / "base" / smollm_base.name)
    home = tmp_path / "dagster_home"
    settings = {
        "AIPLAT_STATE_DIR": str(state), "AIPLAT_ENV": "local", "DAGSTER_HOME": str(home),
        "AIPLAT_MLFLOW_PORT": str(free_port()), "AIPLAT_MILVUS_PORT": str(free_port()),
        "AIPLAT_GATEWAY_PORT": str(free_port()),
        "AIPLAT_GATE_POLICY": str(_smoke_gate_policy(tmp_path / "gate_policy.yaml")),
        "AIPLAT_MODELS_DIR": str(_smoke_specs(tmp_path / "models")),
        # The team `aiplat chat` labels its requests with (attribution only: runs act as the
        # service account, made on first use in this state folder, and grant nothing to tags).
        "AIPLAT_TEAM": "team:platform",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    landing = state / "landing"
    demo_data.generate(landing, tickets=160, kb=16, bad_lines=2, start=_months_back(2), months=2)
    (landing / "tickets" / "tickets-canary.jsonl").write_bytes(jsonl([_canary_ticket()]))
    up(["mlflow", "milvus", "gateway"], timeout=600)
    ui = DagsterDev(home, env={k: v for k, v in settings.items() if k != "DAGSTER_HOME"})
    try:
        ui.start()
        yield {"state": state, "home": home, "ui": ui, "settings": settings}
    finally:
        ui.stop()
        from resources.vllm import LocalVllmResource

        backend = LocalVllmResource().serving_backend(None)
        for base, _ in backend.servers():
            backend.stop_server(base)
        down(["gateway", "mlflow", "milvus"])


def _text_of(path: Path) -> str:
    """What a person or a process could read in a file: Parquet decoded, other files as text."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_json(orient="records", date_format="iso")
    if path.suffix in (".safetensors", ".png", ".bin", ".pt", ".sig"):
        return ""
    return path.read_bytes().decode("utf-8", errors="replace")


def _all_text_under(folder: Path) -> str:
    return "\n".join(_text_of(p) for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.timeout(5400)  # the whole graph through the UI's run launcher: ~15 min on a quiet 2-core machine
def test_materialize_all_from_the_ui_ends_green_and_the_readme_commands_work(newcomer) -> None:
    from dagster._serdes import serialize_value

    state, ui = newcomer["state"], newcomer["ui"]
    progress_file = os.environ.get("AIPLAT_TEST_TIMINGS")

    def say(message: str) -> None:
        # Progress in the CI log (shown with -s, or when the test fails); under pytest-xdist a worker's
        # output is not shown, so with AIPLAT_TEST_TIMINGS=FILE it also goes to FILE.newcomer.log.
        print(f"[newcomer] {message}", flush=True)
        if progress_file:
            with open(f"{progress_file}.newcomer.log", "a", encoding="utf-8") as out:
                out.write(f"{message}\n")

    # 1. The landing sensor (running by default) ingests each landed file in its own run.
    wait_until_idle(ui.url, timeout=1200, settle=45, progress=say)
    ingests = [r for r in runs(ui.url) if r["jobName"].startswith("ingest_")]
    assert len(ingests) >= 3, f"the landing sensor launched {len(ingests)} ingest runs:\n{ui.log_tail()}"

    # 2. "Materialize all": one backfill, every asset, every partition, no run config.
    backfill = materialize_all(ui.url)
    status = wait_for_backfill(ui.url, backfill, timeout=3600, progress=say)
    wait_until_idle(ui.url, timeout=900, settle=45, progress=say)  # sensors react to what it made

    every_run = runs(ui.url)
    failed = {r["runId"]: (r["jobName"], failure_messages(ui.url, r["runId"])) for r in every_run if r["status"] != "SUCCESS"}
    assert failed == {} and status in SUCCESS_BACKFILL, f"backfill {backfill} {backfill_status(ui.url, backfill)}: {failed}"

    instance = dg.DagsterInstance.from_config(str(newcomer["home"]))
    with instance:
        from platform_defs.definitions import build_definitions

        defs = build_definitions()
        every_asset = {key for key in defs.resolve_asset_graph().get_all_asset_keys()}
        missing = sorted(k.to_user_string() for k in every_asset if instance.get_latest_materialization_event(k) is None)
        assert missing == [], f"never materialized: {missing}"
        # Every check ran and passed, but the planted bad lines' quarantine-rate warning (severity WARN).
        graph = defs.resolve_asset_graph()
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(graph.asset_check_keys))
        assert set(checks) == set(graph.asset_check_keys), f"checks never run: {set(graph.asset_check_keys) - set(checks)}"
        failed_checks = {f"{k.asset_key.to_user_string()}:{k.name}": r.status.value for k, r in checks.items()
                         if r.status.value != "SUCCEEDED"}
        assert set(failed_checks) <= {"raw_tickets:quarantine_rate"}, failed_checks

        def latest(prefix: str, name: str) -> dict:
            event = instance.get_latest_materialization_event(dg.AssetKey([prefix, name]))
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}

        from openai import OpenAI

        for prefix, model, owner in (("ticket_triage", "ticket-triage", "team:ml"),
                                     ("reply_drafter", "reply-drafter", "team:support")):
            assert latest(prefix, "eval_report")["gate_passed"] is True
            assert latest(prefix, "champion")["owner"] == owner
            served = latest(prefix, "served_endpoint")
            # Served as its LoRA adapter on the base model's shared server (one server for both models).
            assert served["served_model_name"] == f"{model}@{served['model_version']}" == served["adapter"]
            assert served["base_model"] == "smollm2-135m-instruct"
            client = OpenAI(base_url=served["endpoint_url"].rstrip("/") + "/v1", api_key="unused")
            reply = client.chat.completions.create(
                model=served["served_model_name"], messages=[{"role": "user", "content": "My invoice is wrong."}],
                max_tokens=8)
            assert reply.choices[0].message.content
            quality = latest(prefix, "live_quality")
            assert quality["model_version"] == served["model_version"]
            # No run config: the reading used the token budget the eval report's baseline was made with.
            assert quality["max_tokens"] == 16
            # No run config: the load test ran the spec's own shape (one level, concurrency 2).
            levels = {k.split("_", 1)[0] for k in latest(prefix, "endpoint_load_test") if re.fullmatch(r"c\d+_.*", k)}
            assert levels == {"c2"}, levels
        # The grounded model's prompts carried KB passages retrieved from the index.
        drafter_set = latest("reply_drafter", "training_set")
        assert drafter_set["rows_with_passages"] == drafter_set["dagster/row_count"] > 0
        dagster_text = "\n".join(serialize_value(instance.all_logs(run.run_id)) for run in instance.get_runs())
        # Where the run's time went (shown with -s, and in the CI log when the test fails).
        steps = [(s.end_time - s.start_time, s.step_key) for run in instance.get_runs()
                 for s in instance.get_run_step_stats(run.run_id) if s.end_time and s.start_time]
        say(f"{len(instance.get_runs())} runs, {len(steps)} steps, {sum(d for d, _ in steps):.0f} s in all; slowest: "
            + ", ".join(f"{k} {d:.0f} s" for d, k in sorted(steps, reverse=True)[:15]))

    # 3. The served endpoints' /metrics answer: servers started from a Dagster step process (where
    #    Feast's import set PROMETHEUS_MULTIPROC_DIR) got an explicit environment.
    import httpx

    for prefix in ("ticket_triage", "reply_drafter"):
        with dg.DagsterInstance.from_config(str(newcomer["home"])) as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey([prefix, "served_endpoint"]))
            url = event.asset_materialization.metadata["endpoint_url"].value
        assert httpx.get(f"{url.rstrip('/')}/metrics", timeout=60).status_code == 200

    # 4. Every command of the README's "Try it" block, exactly as written.
    bin_dir = Path(sys.executable).parent
    env = child_env({**newcomer["settings"], "PATH": f"{bin_dir}:/usr/bin:/bin"})
    outputs, exports = {}, []
    for line in readme_commands():
        # One shell per line, as a reader pastes them; what an earlier line exports stays set.
        done = subprocess.run(["bash", "-c", "\n".join([*exports, line])], cwd=project_root(), env=env,
                              capture_output=True, text=True, timeout=600)
        if line.startswith("export "):
            exports.append(line)
        assert done.returncode == 0, f"README command failed: {line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        outputs[line] = done.stdout
        say(f"ok: {shlex.split(line)[:3]}")
    # The CLI reads the registry as the README's account: MLflow authenticates its token.
    assert "ml (team:ml)" in outputs["aiplat accounts whoami"]
    assert "ticket-triage" in outputs["aiplat models list"] and "reply-drafter" in outputs["aiplat models list"]
    chats = [line for line in outputs if line.startswith("aiplat chat")]
    reports = [line for line in outputs if line.startswith("aiplat cost report")]
    assert chats and reports, "the README shows a chat and the cost report it lands in"
    # The README promises the user sees their own chat request in today's cost report.
    assert "newcomer-demo" in outputs[reports[0]], outputs[reports[0]]

    # 5. The canary's values are nowhere downstream of the raw datasets.
    raw = {"raw_tickets", "raw_tickets_quarantine", "raw_kb_articles", "raw_kb_articles_quarantine"}
    lake = state / "lake"
    assert CANARIES["email"] in _all_text_under(lake / "raw_tickets"), "the canary must have entered the platform"
    downstream = [p for p in lake.iterdir() if p.name.removesuffix(".parquet") not in raw]
    texts = {str(p): _all_text_under(p) if p.is_dir() else _text_of(p) for p in downstream}
    texts["feast"] = _all_text_under(state / "feast")
    texts["mlflow"] = _all_text_under(state / "mlflow" / "artifacts")
    texts["dagster"] = dagster_text
    texts["milvus"] = _all_text_under(state / "milvus" / "backups")
    assert len(texts["milvus"]) > 1000, "the backup must hold the rows of the index"
    for where, text in texts.items():
        for kind, value in CANARIES.items():
            assert value not in text, f"canary {kind} leaked into {where}"
    # The audit log says who promoted and deployed.
    audit = [json.loads(line) for line in (state / "audit" / "audit.jsonl").read_text().splitlines()]
    assert {"promote promoted", "deployed"} <= {e["event"] for e in audit}

    # 6. The stack's MLflow authenticates accounts, and each registration granted the model's owner
    #    team (from its spec) its registered model, nobody else: the registry refuses the others.
    import requests

    uri = f"http://127.0.0.1:{newcomer['settings']['AIPLAT_MLFLOW_PORT']}/api/2.0/mlflow"
    tokens = {name: (state / "credentials" / f"{name}.token").read_text().strip() for name in ("ml", "support")}

    def set_tag(model: str, account: str) -> int:
        return requests.post(f"{uri}/registered-models/set-tag", json={"name": model, "key": "checked_by", "value": account},
                             auth=(account, tokens[account]), timeout=10).status_code

    assert requests.get(f"{uri}/registered-models/search", timeout=10).status_code == 401
    assert (set_tag("ticket-triage", "ml"), set_tag("ticket-triage", "support")) == (200, 403)
    assert (set_tag("reply-drafter", "support"), set_tag("reply-drafter", "ml")) == (200, 403)
