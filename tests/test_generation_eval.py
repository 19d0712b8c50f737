"""A generation model's evaluation (the reply drafter's suite) against a real MLflow server with
tiny models that really learn: drafts are scored against the held-out agent replies (ROUGE-L) and
against the KB passages in their prompt (groundedness), the leak probe runs, the report records
the gate policy; a model that learned the grounded task passes and is promoted, the untrained base
model is blocked like a triage regression is."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from aiplat.evaluation import promotion
from aiplat.evaluation.evaluate import groundedness
from aiplat.evaluation.pipeline import evaluate_version
from aiplat.evaluation.settings import GateThresholds
from aiplat.models.manifest import write_manifest
from aiplat.policy import load_policy
from aiplat.training import prompts
from aiplat.models.tiny import build_tiny_llama
from tests.evaluation_helpers import TEST_SETTINGS, mlflow_server, register, triage_data, write_test_policy
from tests.identity_helpers import act_as

pytestmark = pytest.mark.slow

FMT = prompts.PromptFormat(
    system_prompt="You draft replies for customer-support agents. Use the knowledge-base passages when they apply.",
    task="generation", grounded=True)
NAME = "drafter-tiny"
FLOOR = {"min_reply_rouge_l": 0.2, "min_groundedness": 0.2, "max_reply_rouge_l_drop": 0.05,
         "max_groundedness_drop": 0.1, "max_latency_ratio": None}


def drafter_data() -> pd.DataFrame:
    """Tickets whose KB passage states what the agent replied (as a grounded KB would)."""
    df = triage_data()
    df[prompts.PASSAGES_COLUMN] = [f"Policy for {c}: {prompts.short_reply(r)}" for c, r in zip(df["category"], df["agent_reply"])]
    return df


def test_groundedness_measures_reuse_of_the_passages():
    passage = "Reset the router by holding the button for ten seconds."
    assert groundedness("Please reset the router by holding the button for ten seconds.", [passage]) > 0.8
    assert groundedness("We refunded your order.", [passage]) < 0.2
    assert groundedness("anything", []) == 0.0


def _base(folder: Path, df: pd.DataFrame) -> Path:
    """A tiny Llama whose tokenizer knows the drafting prompts and replies (it learns nothing else)."""
    rows = df.to_dict("records")
    build_tiny_llama(folder, [FMT.system_prompt] + [prompts.user_prompt(r, [], FMT) + "\n" + prompts.target(r, FMT)
                                                    for r in rows], hidden_size=96)
    return folder


def _train(base: Path, df: pd.DataFrame, out: Path, steps: int = 200) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aiplat.training.lora import collate, encode_examples

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
        examples = encode_examples(tok, df[df["split"] == "train"], 400, FMT)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            idx = torch.randint(len(examples), (8,), generator=gen).tolist()
            ids, mask, labels = collate([examples[i] for i in idx], tok.pad_token_id)
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    write_manifest(out, extra={"source": str(base)})
    return out


def test_a_grounded_drafter_passes_and_the_untrained_base_is_blocked(tmp_path, state_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    act_as(monkeypatch, "team:platform")
    policy_file = write_test_policy(tmp_path / "policy.yaml")
    policy = yaml.safe_load(policy_file.read_text())
    policy["tasks"]["generation"] = FLOOR
    policy_file.write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("AIPLAT_GATE_POLICY", str(policy_file))

    data = drafter_data()
    base = _base(tmp_path / "base", data)
    good = _train(base, data, tmp_path / "good")
    settings = TEST_SETTINGS.model_copy(update={"max_new_tokens": 40})
    with mlflow_server(tmp_path / "mlflow") as uri:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        evaluate = lambda version: evaluate_version(  # noqa: E731
            client, uri, NAME, version, data, settings, GateThresholds.only(FLOOR), base_folder=base,
            dagster_run_id="gen-test", prompt_format=FMT, policy=load_policy(policy_file))

        v1 = register(client, NAME, good, training_set=data)
        first = evaluate(v1)
        report = first.report
        assert report["task"] == "generation" and report["policy"]["sha256"] == load_policy(policy_file).digest
        assert {"reply_rouge_l", "groundedness", "leak_findings"} <= set(report["comparison"])
        assert "accuracy" not in report["comparison"] and "golden" not in report["datasets"]
        rules = {r["rule"]: r for r in report["gate"]["rules"]}
        assert {"leak_probe", "min_reply_rouge_l", "min_groundedness"} <= set(rules)
        cand, base_row = report["comparison"]["reply_rouge_l"]["candidate"], report["comparison"]["reply_rouge_l"]["base"]
        assert cand > base_row, (cand, base_row)
        assert first.passed, first.reasons
        assert promotion.promote(client, NAME, v1, dagster_run_id="gen", actor="t").status == "promoted"

        v2 = register(client, NAME, base, training_set=data)  # a "fine-tune" that learned nothing
        second = evaluate(v2)
        assert not second.passed
        assert any("reply_rouge_l" in r for r in second.reasons)
        with pytest.raises(promotion.PromotionRefused, match="failed report"):
            promotion.promote(client, NAME, v2, dagster_run_id="gen", actor="t")
        assert promotion.alias_version(client, NAME, "champion").version == v1
