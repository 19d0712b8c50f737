"""Evaluation building blocks without models: metrics, golden set, leak scanner, gate rules,
report hashing and rendering, and the alert line format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aiplat.evaluation import gate, leak, metrics
from aiplat.evaluation.golden import GoldenSetError, load_golden
from aiplat.evaluation.report import build_report, report_hash, write_report
from aiplat.evaluation.settings import GateThresholds


def test_accuracy_and_macro_f1_count_unparseable_answers_as_wrong() -> None:
    y_true = ["billing", "billing", "technical", "returns"]
    raw = ["billing", None, "technical", "refunds"]  # no category line; a label outside the set
    y_pred = [metrics.normalize_prediction(p) for p in raw]
    assert y_pred == ["billing", metrics.UNPARSED, "technical", metrics.UNPARSED]
    assert metrics.accuracy(y_true, y_pred) == 0.5
    # billing: tp1 fn1 -> 2/3; technical: 1.0; returns: 0.0 -> mean 5/9
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(5 / 9)
    conf = metrics.confusion_matrix(y_true, y_pred)
    assert conf["columns"][-1] == metrics.UNPARSED
    assert conf["matrix"][conf["labels"].index("billing")][-1] == 1
    assert sum(map(sum, conf["matrix"])) == 4


def test_rouge_l() -> None:
    assert metrics.rouge_l("We refunded the duplicate payment.", "We have refunded the duplicate payment.") == pytest.approx(
        2 * (5 / 5) * (5 / 6) / (5 / 5 + 5 / 6)
    )
    assert metrics.rouge_l(None, "anything") == 0.0
    assert metrics.rouge_l("a b c", "a b c") == 1.0
    assert metrics.percentile([5, 1, 3, 2, 4], 50) == 3 and metrics.percentile([5, 1, 3, 2, 4], 95) == 5


def test_golden_set_is_valid_versioned_and_covers_every_category() -> None:
    golden = load_golden("v1")
    assert len(golden.rows) >= 20
    assert {r["category"] for r in golden.rows} == set(metrics.LABELS)
    assert len(golden.sha256) == 64
    assert leak.scan_text("\n".join(r["message"] for r in golden.rows), "golden") == []


def test_golden_set_errors_name_the_record(tmp_path: Path) -> None:
    bad = tmp_path / "golden_v9.jsonl"
    bad.write_text('{"id": "G1", "category": "billing", "subject": "s", "message": "m"}\n'
                   '{"id": "G2", "category": "weather", "subject": "s", "message": "m"}\n')
    with pytest.raises(GoldenSetError, match=r"golden_v9.jsonl:2: record 'G2' has unknown category 'weather'"):
        load_golden("v9", path=bad)
    with pytest.raises(GoldenSetError, match="not found"):
        load_golden("v999")


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("write to jane.roe@example.org please", ["email"]),
        ("card 4111-1111-1111-1111 ok", ["card"]),
        ("card 4111 1111 1111 1112 is not a valid number", []),  # fails the Luhn check
        ("ssn 219-09-9999", ["ssn"]),
        ("iban GB82 WEST 1234 5698 7654 32", ["iban"]),
        ("call +44 20 7946 0958 today", ["phone"]),
        ("the ref AIPLAT-CANARY-7Q4X-93KD-LM2P again", ["canary"]),
        ("only the secret part 7Q4X-93KD-LM2P leaked", ["canary"]),
        ("category: billing\nreply: We refunded <CREDIT_CARD> on order 12345 within 3 days (v1.2.3).", []),
        # Seen from the served demo model: pseudonym tokens imitated with digit-only hashes (this one
        # passes the Luhn check) and an odd amount; neither is PII, both were flagged before.
        ("reply: Hi <PERSON_611222212221122>, I have issued a refund", []),
        ("reply: Hi <PERSON_121222222000002>, I have refunded £1.137.637.137.", []),
        ("call 555.123.4567 and mail x@example.com <PERSON_1f3a>", ["email", "phone"]),
    ],
)
def test_leak_scanner(text: str, kinds: list[str]) -> None:
    findings = leak.scan_text(text, "P01")
    assert [f.kind for f in findings] == kinds
    for f in findings:  # a finding never repeats the value: two characters and a length
        assert re.fullmatch(r".{0,2}\*\*\*\(\d+ chars\)", f.masked)
    if kinds:
        assert leak.redact_findings(text) != text


def test_probe_prompts_carry_only_the_canary_prefix() -> None:
    rows = leak.probe_rows(["AIPLAT-CANARY-SECRET-PART"])
    canary_rows = [r for r in rows if r["id"].startswith("C")]
    assert len(canary_rows) == 1 and "AIPLAT-CANARY-" in canary_rows[0]["message"]
    assert "SECRET-PART" not in canary_rows[0]["message"]
    assert len(rows) == len(leak.PROBES) + 1


HEAD = dict(accuracy=0.8, macro_f1=0.75, parse_rate=1.0, reply_rouge_l=0.4, golden_accuracy=0.7,
            leak_findings=0.0, latency_p50_ms=100.0, tokens_per_second=50.0)


def test_gate_passes_a_good_first_candidate_and_names_each_failed_rule() -> None:
    t = GateThresholds()
    assert gate.decide(t, HEAD)["passed"]
    bad = {**HEAD, "accuracy": 0.3, "leak_findings": 2.0}
    decision = gate.decide(t, bad)
    assert not decision["passed"]
    assert any("accuracy 0.300 < minimum 0.500" in r for r in decision["reasons"])
    assert any("2 canary/PII finding(s)" in r for r in decision["reasons"])


def test_gate_regression_vs_champion_and_base_bar() -> None:
    t = GateThresholds(max_accuracy_drop=0.02, max_latency_ratio=1.5)
    champion = {**HEAD, "accuracy": 0.85, "latency_p50_ms": 50.0}
    decision = gate.decide(t, HEAD, champion=champion)
    assert not decision["passed"]
    assert {r["rule"] for r in decision["rules"] if not r["passed"]} == {"max_accuracy_drop", "max_latency_ratio"}
    # within the allowed regression passes
    assert gate.decide(t, HEAD, champion={**HEAD, "accuracy": 0.81})["passed"]
    # the base model sets a bar too
    assert not gate.decide(t, HEAD, base={**HEAD, "accuracy": 0.9})["passed"]
    assert gate.decide(GateThresholds(min_accuracy_gain_over_base=None), HEAD, base={**HEAD, "accuracy": 0.9})["passed"]


def test_alert_line_is_one_matchable_line() -> None:
    line = gate.alert_line("eval", "ticket triage", "7", 'accuracy 0.2 < "min"\nmore', report="abc123")
    assert "\n" not in line
    m = gate.ALERT_PATTERN.match(line)
    assert m is not None
    assert m["gate"] == "eval" and m["model"] == "ticket_triage" and m["version"] == "7"
    assert m["fields"] == " report=abc123" and m["reason"] == "accuracy 0.2 < 'min' more"


def _fake_eval(acc: float) -> dict:
    return {
        "model_sha256": "0" * 64,
        "test": {"rows": 2, "accuracy": acc, "macro_f1": acc, "per_class_f1": {}, "parse_rate": 1.0, "reply_rouge_l": 0.5,
                 "confusion": metrics.confusion_matrix(["billing", "general"], ["billing", "billing"])},
        "golden": {"rows": 1, "accuracy": acc, "macro_f1": acc, "misses": []},
        "leak": {"passed": True, "prompts": 7, "findings": []},
        "speed": {"latency_p50_ms": 10.0, "latency_p95_ms": 12.0, "tokens_per_second": 99.0, "generated_tokens": 5,
                  "generation_seconds": 0.1},
        "samples": [{"ticket_id": "T1", "expected": "billing", "predicted": "billing", "output": "category: billing"}],
    }


def test_report_hash_is_over_canonical_bytes_and_pages_render(tmp_path: Path) -> None:
    cand, champ = _fake_eval(0.5), _fake_eval(1.0)
    from aiplat.evaluation.evaluate import headline

    decision = gate.decide(GateThresholds(), headline(cand), champion=headline(champ))
    report = build_report(
        model={"name": "m", "version": "2", "source": "s", "run_id": "r", "model_sha256": "0" * 64},
        candidate=cand, base=None, champion=champ, champion_version="1", gate=decision, settings={}, thresholds={},
        datasets={"test": {"rows": 2, "sha256": "a" * 64}, "golden": {"version": "v1", "rows": 1, "sha256": "b" * 64}},
        dagster_run_id="run-1", code_version="0.1.0+gabc", created_at_ms=1_700_000_000_000,
    )
    written = write_report(report, tmp_path / "r")
    assert written.sha256 == report_hash(report) == report_hash(json.loads(written.json_path.read_text()))
    assert report["comparison"]["accuracy"]["delta_vs_champion"] == pytest.approx(-0.5)
    for name in ("report.md", "report.html", "confusion_matrix.png", "metrics.png"):
        assert (tmp_path / "r" / name).stat().st_size > 200
    assert (tmp_path / "r" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "Gate: FAILED" in written.markdown and "below the champion" in written.markdown
    assert "data:image/png;base64," in (tmp_path / "r" / "report.html").read_text()
    changed = {**report, "dagster_run_id": "run-2"}
    assert report_hash(changed) != written.sha256


def test_the_shipped_policy_floor_is_the_library_default_gate() -> None:
    """GateThresholds() (what library callers and tests get) is the shipped policy's classification floor."""
    from aiplat.config import project_root
    from aiplat.policy import load_policy

    floor = load_policy(project_root() / "aiplat" / "policy" / "gate_policy.yaml").floor("classification")
    assert GateThresholds.only(floor) == GateThresholds()
