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

pytestmark = pytest.mark.slow

CANARIES = {
    "email": "zq.canary.e2e.4471@example.net",
    "card": "4539 1488 0343 6467",
    "ssn": "536-22-8144",
    "name": "Quintessa Vanderhoeven",
}

TINY = {
    "ops": {
        "fine_tuned_model": {"config": {"steps": 2, "max_train_examples": 16, "max_eval_examples": 4, "batch_size": 2, "max_length": 128}},
        "eval_report": {
            "config": {
                "max_test_examples": 6, "max_new_tokens": 16, "batch_size": 6, "latency_samples": 1, "samples_in_report": 1,
                # Two training steps teach little: the gate's quality minima are opened here (the
                # evaluation tests cover blocking), but the leak probe stays on.
                "min_accuracy": 0.0, "min_macro_f1": 0.0, "min_golden_accuracy": 0.0, "min_reply_rouge_l": 0.0,
                "min_parse_rate": 0.0, "max_latency_ratio": None, "min_accuracy_gain_over_base": None,
            }
        },
        "endpoint_load_test": {"config": {"concurrencies": [1, 2], "num_prompts": 4, "output_len": 8}},
        "live_quality": {"config": {"max_tokens": 16}},  # the eval's budget above: the same answers, served
    }
}


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
        # The model's owner team promotes and deploys it; the audit log records who did.
        "AIPLAT_TEAM": "team:ml", "AIPLAT_ACTOR": "e2e-test",
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
    assert failed == []
    every_asset = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    made = {key for s in summaries for key in s.materialized}
    assert made == every_asset, f"not materialized: {sorted(every_asset - made)}"
    # The planted bad lines trip the quarantine-rate warning of their batches (severity WARN); every
    # other check, the blocking gates included, passed.
    failed_checks = {c for s in summaries for c in s.failed_checks}
    assert failed_checks == {"raw_tickets:quarantine_rate"}

    # The endpoint answers through the official client.
    from openai import OpenAI

    served = instance.get_latest_materialization_event(dg.AssetKey("served_endpoint")).asset_materialization.metadata
    client = OpenAI(base_url=served["endpoint_url"].value.rstrip("/") + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=served["served_model_name"].value, messages=[{"role": "user", "content": "My invoice is wrong."}], max_tokens=8
    )
    assert reply.choices[0].message.content

    # The live golden-set reading of the served version is judged against its own eval report.
    quality = instance.get_latest_materialization_event(dg.AssetKey("live_quality")).asset_materialization.metadata
    assert quality["model_version"].value == served["model_version"].value
    assert quality["baseline_source"].value.startswith("eval report")

    # Promotion and deploy went through the access check, and the audit log says who did them.
    audit = [json.loads(line) for line in (state / "audit" / "audit.jsonl").read_text().splitlines()]
    decisions = {(e["action"], e["decision"], e["actor"], e["team"]) for e in audit if e["event"] == "access"}
    assert {("promote", "allowed", "e2e-test", "team:ml"), ("deploy", "allowed", "e2e-test", "team:ml")} <= decisions
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
