"""One run of the whole graph on the local runtime, as `aiplat materialize` does it: landed files
to a served, load-tested endpoint, with real MLflow, Milvus Lite and vLLM servers.

A ticket with unique canary PII is landed beside the demo corpus; nothing downstream of the raw
datasets may contain any of its values: not the lake, the feature store, the vector index, the
MLflow artifacts, nor any event or metadata Dagster recorded.
"""

import json
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from aiplat import demo_data
from aiplat.net import free_port
from tests.conftest import built_vllm_env
from tests.records import jsonl, ticket

# Two teams' models are trained, evaluated, served and read live: past the default 900 s on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

CANARIES = {
    "email": "zq.canary.e2e.4471@example.net",
    "card": "4539 1488 0343 6467",
    "ssn": "536-22-8144",
    "name": "Quintessa Vanderhoeven",
}

# Both demo models, from their spec files (models/). Run config may only make the gate stricter,
# so the quality floors are opened by the test's own gate policy instead (below): two training
# steps teach little; the evaluation tests cover blocking, and the leak probe stays mandatory.
PREFIXES = ("ticket_triage", "reply_drafter")
TINY = {"ops": {
    op: config for p in PREFIXES for op, config in {
        f"{p}__fine_tuned_model": {"config": {"steps": 2, "max_train_examples": 16, "max_eval_examples": 4, "batch_size": 2,
                                              "max_length": 128 if p == "ticket_triage" else 256}},
        f"{p}__eval_report": {"config": {"max_test_examples": 6, "max_new_tokens": 16, "batch_size": 6,
                                         "latency_samples": 1, "samples_in_report": 1}},
        f"{p}__endpoint_load_test": {"config": {"concurrencies": [1, 2], "num_prompts": 4, "output_len": 8}},
        # the eval's budget above: the same answers, served
        f"{p}__live_quality": {"config": {"max_tokens": 16, **({"rows": 6} if p == "reply_drafter" else {})}},
    }.items()
}}


def _open_gate_policy(path: Path) -> Path:
    """The shipped policy with its quality floors opened (what two training steps can meet); the
    mandatory leak probe, the pinned golden set and the digest checks stay as shipped."""
    import yaml

    from aiplat.config import project_root

    policy = yaml.safe_load((project_root() / "aiplat" / "policy" / "gate_policy.yaml").read_text())
    policy["min_test_examples"] = 6
    for rules in policy["tasks"].values():
        for rule in rules:
            rules[rule] = 0.0 if rule.startswith("min_") else None if rule == "max_latency_ratio" else 1.0
    path.write_text(yaml.safe_dump(policy))
    return path


def _demo_specs_without_stricter_thresholds(folder: Path) -> Path:
    """The demo specs as shipped, minus the teams' own tightening of the gate (which the test's
    two-step fine-tunes cannot meet)."""
    import yaml

    from aiplat.config import project_root

    folder.mkdir()
    for path in (project_root() / "models").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        spec["evaluation"]["thresholds"] = {}
        (folder / path.name).write_text(yaml.safe_dump(spec))
    return folder


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


@pytest.fixture
def local_runtime(tmp_path, monkeypatch):
    from aiplat.stack import down, up

    env = built_vllm_env()
    state = tmp_path / "state"
    (state / "venvs").mkdir(parents=True)
    (state / "venvs" / "vllm").symlink_to(env.path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    for name, value in {
        "AIPLAT_STATE_DIR": str(state), "AIPLAT_ENV": "local", "DAGSTER_HOME": str(home),
        "AIPLAT_MLFLOW_PORT": str(free_port()), "AIPLAT_MILVUS_PORT": str(free_port()),
        # Headless `make materialize` acts as the platform team for both teams' models; the audit
        # log records who did.
        "AIPLAT_TEAM": "team:platform", "AIPLAT_ACTOR": "e2e-test",
        "AIPLAT_GATE_POLICY": str(_open_gate_policy(tmp_path / "gate_policy.yaml")),
        "AIPLAT_MODELS_DIR": str(_demo_specs_without_stricter_thresholds(tmp_path / "models")),
    }.items():
        monkeypatch.setenv(name, value)
    up(["mlflow", "milvus"], timeout=600)
    try:
        yield state
    finally:
        from resources.vllm import LocalVllmResource

        LocalVllmResource().manager.stop_all()
        down(["mlflow", "milvus"])


def _text_of(path: Path) -> str:
    """What a person or a process could read in a file: Parquet decoded, other files as text."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_json(orient="records", date_format="iso")
    if path.suffix in (".safetensors", ".png", ".bin", ".pt", ".sig"):
        return ""
    return path.read_bytes().decode("utf-8", errors="replace")


def _all_text_under(folder: Path) -> str:
    return "\n".join(_text_of(p) for p in sorted(folder.rglob("*")) if p.is_file())


def test_the_whole_graph_from_landing_to_a_served_endpoint(local_runtime):
    from dagster._serdes import serialize_value

    from platform_defs.definitions import build_definitions
    from platform_defs.headless import materialize_all
    from resources.operations import OperationsResource
    from resources.vllm import LocalVllmResource

    state = local_runtime
    landing = state / "landing"
    demo_data.generate(landing, tickets=160, kb=16, bad_lines=2, start=_months_back(2), months=2)
    (landing / "tickets" / "tickets-canary.jsonl").write_bytes(jsonl([_canary_ticket()]))

    # Two training steps leave answers that can flip between the eval's fp32 decoding and vLLM's
    # bf16; the live-quality tests hold the default threshold, here the chain is what is tested.
    defs = build_definitions({"vllm": LocalVllmResource(enforce_eager=True, start_timeout_s=900, max_num_seqs=4),
                              "operations": OperationsResource(live_quality_max_golden_drop=0.25)})
    instance = dg.DagsterInstance.get()
    summaries = materialize_all(defs, instance, downstream_config=TINY)

    failed = [(s.job, s.partition, s.failed_checks) for s in summaries if not s.success]
    step_failures = [(e.step_key, e.dagster_event.event_specific_data.error.message[:800])
                     for run in instance.get_runs() for e in instance.all_logs(run.run_id)
                     if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
    assert failed == [], step_failures
    every_asset = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    made = {key for s in summaries for key in s.materialized}
    assert made == every_asset, f"not materialized: {sorted(every_asset - made)}"
    # The planted bad lines trip the quarantine-rate warning of their batches (severity WARN); every
    # other check, the blocking gates included, passed.
    failed_checks = {c for s in summaries for c in s.failed_checks}
    assert failed_checks == {"raw_tickets:quarantine_rate"}

    # Both teams' models passed their gates, are champions and answer through the official client.
    from openai import OpenAI

    def latest(prefix: str, name: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey([prefix, name]))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    for prefix, model, owner in (("ticket_triage", "ticket-triage", "team:ml"),
                                 ("reply_drafter", "reply-drafter", "team:support")):
        assert latest(prefix, "eval_report")["gate_passed"] is True
        assert latest(prefix, "champion")["status"] == "promoted" and latest(prefix, "champion")["owner"] == owner
        served = latest(prefix, "served_endpoint")
        assert served["registered_model"] == model and served["served_model_name"] == model
        client = OpenAI(base_url=served["endpoint_url"].rstrip("/") + "/v1", api_key="unused")
        reply = client.chat.completions.create(
            model=served["served_model_name"], messages=[{"role": "user", "content": "My invoice is wrong."}], max_tokens=8)
        assert reply.choices[0].message.content
        # The live reading of the served version is judged against its own eval report.
        quality = latest(prefix, "live_quality")
        assert quality["model_version"] == served["model_version"]
        assert quality["baseline_source"].startswith("eval report")
    # The grounded model's prompts carried KB passages retrieved from the index.
    drafter_set = latest("reply_drafter", "training_set")
    assert drafter_set["rows_with_passages"] == drafter_set["dagster/row_count"] > 0

    # Promotion and deploy went through the access check, and the audit log says who did them.
    audit = [json.loads(line) for line in (state / "audit" / "audit.jsonl").read_text().splitlines()]
    decisions = {(e["action"], e["model"], e["decision"], e["actor"], e["team"]) for e in audit if e["event"] == "access"}
    for model in ("ticket-triage", "reply-drafter"):
        assert {("promote", model, "allowed", "e2e-test", "team:platform"),
                ("deploy", model, "allowed", "e2e-test", "team:platform")} <= decisions
    assert {"promote promoted", "deployed"} <= {e["event"] for e in audit}

    # The canary's values are nowhere downstream of the raw datasets.
    raw = {"raw_tickets", "raw_tickets_quarantine", "raw_kb_articles", "raw_kb_articles_quarantine"}
    lake = state / "lake"
    raw_text = _all_text_under(lake / "raw_tickets")
    assert CANARIES["email"] in raw_text, "the canary must have entered the platform"
    downstream = [p for p in lake.iterdir() if p.name.removesuffix(".parquet") not in raw]
    texts = {str(p): _all_text_under(p) if p.is_dir() else _text_of(p) for p in downstream}
    texts["feast"] = _all_text_under(state / "feast")
    texts["mlflow"] = _all_text_under(state / "mlflow" / "artifacts")
    texts["dagster"] = "\n".join(
        serialize_value(instance.all_logs(run.run_id)) for run in instance.get_runs()
    )
    # kb_index_backup holds every row of the served collection: the index's content.
    texts["milvus"] = _all_text_under(state / "milvus" / "backups")
    assert len(texts["milvus"]) > 1000, "the backup must hold the rows of the index"

    for where, text in texts.items():
        for kind, value in CANARIES.items():
            assert value not in text, f"canary {kind} leaked into {where}"
