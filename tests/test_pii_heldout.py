"""The held-out scoring (`aiplat pii evaluate`): label mapping, leak rate, the command on a small file.

The file here is written by hand in presidio-evaluator's output shape; the real set is generated
by scripts/generate_pii_eval_set.py in its own environment (docs/pii.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiplat.pii.config import dataset_config
from aiplat.pii.engine import Finding
from aiplat.pii.heldout import LabeledSetError, load_labeled, score_predictions
from aiplat.pii.redact import Pseudonymizer

KEY = "heldout-test-key-0123456789"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _row(text: str, *labels: tuple[str, str]) -> dict:
    return {"text": text, "template_id": 0, "spans": [
        {"entity": e, "start": text.index(v), "end": text.index(v) + len(v), "value": v} for e, v in labels]}


def test_labels_are_mapped_and_unredacted_types_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path / "set.jsonl", [_row("Lotte Visser works at Acme BV, Kerkstraat 12.",
                                                ("PERSON", "Lotte Visser"), ("ORGANIZATION", "Acme BV"),
                                                ("STREET_ADDRESS", "Kerkstraat 12"))])
    [example] = load_labeled(path)
    assert [s.entity for s in example.spans] == ["PERSON", "POSTAL_ADDRESS"]


def test_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(_row("ok")) + "\n" + '{"text": "x", "spans": [{"entity": "PERSON", "start": 0, "end": 9}]}\n')
    with pytest.raises(LabeledSetError, match=r"set.jsonl:2"):
        load_labeled(path)


def test_leak_rate_counts_verbatim_values_only(tmp_path: Path) -> None:
    text = "Call 436 2743 or write to Unit 42."
    path = _write(tmp_path / "set.jsonl", [_row(text, ("PHONE_NUMBER", "436 2743"), ("STREET_ADDRESS", "42"))])
    examples = load_labeled(path)
    config = dataset_config("tickets")
    pz = Pseudonymizer(KEY)
    missed = score_predictions(examples, [[]], config, pz)
    assert missed["PHONE_NUMBER"].leak_rate == 1.0 and missed["POSTAL_ADDRESS"].leak_rate == 1.0
    start = text.index("436")
    found = score_predictions(examples, [[Finding("PHONE_NUMBER", start, start + 8, 0.9, "t"),
                                          Finding("POSTAL_ADDRESS", text.index("Unit"), len(text) - 1, 0.9, "t")]],
                              config, pz)
    assert found["PHONE_NUMBER"].leak_rate == 0.0 and found["POSTAL_ADDRESS"].leak_rate == 0.0
    assert found["PHONE_NUMBER"].score.recall == 1.0


def test_evaluate_command_scores_a_labeled_file_and_writes_the_report(tmp_path: Path) -> None:
    from aiplat.cli import cli

    path = _write(tmp_path / "set.jsonl", [
        _row("Please call me on +41 44 512 37 90 tomorrow.", ("PHONE_NUMBER", "+41 44 512 37 90")),
        _row("My card 6759 6498 2643 8453 110 was charged twice.", ("CREDIT_CARD", "6759 6498 2643 8453 110")),
        _row("Send it to ingrid.solberg@example.no please.", ("EMAIL_ADDRESS", "ingrid.solberg@example.no")),
        _row("The restaurant is at Via Garibaldi 221", ("STREET_ADDRESS", "Via Garibaldi 221")),
    ])
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["pii", "evaluate", "--labeled", str(path), "--demo-records", "10",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| PHONE_NUMBER | 1 | 1.000 |" in report and "Demo corpus" in report
