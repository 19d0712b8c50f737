"""The demo corpus: deterministic, schema-valid, PII where and as often as declared."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from aiplat import demo_data
from aiplat.intake.schema import KbArticle, Ticket
from aiplat.synth import CREDIT_CARD, IBAN_CODE, PiiFaker, iban_valid, luhn_valid

SMALL = dict(tickets=400, kb=40)


@pytest.fixture(scope="module")
def corpus() -> demo_data.Corpus:
    return demo_data.generate_corpus(seed=11, **SMALL)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = demo_data.generate(tmp_path / "a", seed=3, **SMALL)
    b = demo_data.generate(tmp_path / "b", seed=3, **SMALL)
    c = demo_data.generate(tmp_path / "c", seed=4, **SMALL)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert _tree_bytes(tmp_path / "a") != _tree_bytes(tmp_path / "c")
    assert a.records == b.records


def test_landing_layout_and_every_good_line_validates(tmp_path: Path) -> None:
    summary = demo_data.generate(tmp_path, seed=5, bad_lines=5, **SMALL)
    ticket_files = sorted((tmp_path / "tickets").glob("*.jsonl"))
    kb_files = sorted((tmp_path / "kb_articles").glob("*.jsonl"))
    assert [f.name for f in ticket_files] == [f"tickets-2025-{m:02d}.jsonl" for m in range(1, 7)]
    assert len(kb_files) == 1 and re.fullmatch(r"kb-\d{4}-\d{2}-\d{2}\.jsonl", kb_files[0].name)
    good = bad = 0
    for path in ticket_files + kb_files:
        model = Ticket if path.parent.name == "tickets" else KbArticle
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = model.model_validate_json(line)
            except ValidationError:
                bad += 1
                continue
            good += 1
            assert record.model_dump()  # round-trips
            if model is Ticket:
                # every ticket lands in the file of a month it was opened or resolved in
                month = path.stem.removeprefix("tickets-")
                seen = {record.created_at.strftime("%Y-%m")} | (
                    {record.resolved_at.strftime("%Y-%m")} if record.resolved_at else set())
                assert month in seen, (path.name, record.ticket_id)
                assert record.created_at.tzinfo is not None
    assert bad == summary.bad_lines == 5
    assert good == sum(summary.records.values())
    assert summary.records["kb_articles"] == 40


def test_tickets_re_land_when_they_are_resolved_in_a_later_batch(corpus: demo_data.Corpus) -> None:
    by_id: dict[str, list[demo_data.LabeledRecord]] = {}
    for rec in corpus.of("tickets"):
        by_id.setdefault(rec.record["ticket_id"], []).append(rec)
    assert len(by_id) == SMALL["tickets"]
    twice = [recs for recs in by_id.values() if len(recs) == 2]
    assert twice, "some tickets stay open across a month boundary"
    for first, second in twice:
        assert first.batch < second.batch
        assert first.record["resolved_at"] is None and second.record["resolved_at"] is not None


def test_customers_recur_with_the_same_identity(corpus: demo_data.Corpus) -> None:
    identity: dict[str, set[tuple[str, str]]] = {}
    for rec in corpus.of("tickets"):
        identity.setdefault(rec.record["customer_id"], set()).add(
            (rec.record["customer_name"], rec.record["customer_email"]))
    assert all(len(v) == 1 for v in identity.values())
    assert len(identity) < SMALL["tickets"] / 2  # customers come back
    assert len({r.record["product"] for r in corpus.of("tickets")}) >= 10


def test_spans_are_exact_and_values_are_valid(corpus: demo_data.Corpus) -> None:
    checked = 0
    for rec in corpus.records:
        for field_name, spans in rec.spans.items():
            text = rec.record[field_name]
            for span in spans:
                value = text[span.start : span.end]
                assert value and value == value.strip(), (rec.record, span)
                # a span starts and ends at a word boundary, never inside a longer token
                assert span.start == 0 or not text[span.start - 1].isalnum()
                assert span.end == len(text) or not text[span.end].isalnum()
                if span.entity == CREDIT_CARD:
                    assert luhn_valid(value), value
                if span.entity == IBAN_CODE:
                    assert iban_valid(value), value
                checked += 1
    assert checked > 500


def test_pii_appears_with_the_declared_frequencies() -> None:
    corpus = demo_data.generate_corpus(seed=2, tickets=2000, kb=200)
    tickets = [r for r in corpus.of("tickets") if r.record["resolved_at"] is not None]
    n = len(tickets)
    signed = sum(r.record["customer_name"] in r.record["message"] for r in tickets) / n
    greeted = sum(r.record["agent_reply"].startswith("Hi ") for r in tickets) / n
    # spans beyond greeting/signature: a detail the customer added
    detail = sum(
        any(s.entity != "PERSON" or r.record["message"][s.start:s.end] != r.record["customer_name"]
            for s in r.spans["message"]) for r in tickets) / n
    kb_pii = sum(bool(r.spans["body"]) for r in corpus.of("kb_articles")) / 200
    assert abs(signed - demo_data.P_MESSAGE_SIGNED) < 0.06
    assert abs(greeted - demo_data.P_REPLY_GREETS_BY_NAME) < 0.05
    assert abs(detail - demo_data.P_MESSAGE_DETAIL_PII) < 0.06
    assert abs(kb_pii - demo_data.P_KB_PII) < 0.08
    clean = sum(not any(r.spans.values()) for r in tickets)
    assert clean > 0, "not every record has PII"
    entities = {s.entity for r in corpus.records for spans in r.spans.values() for s in spans}
    assert entities == {"PERSON", "LOCATION", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN",
                        "IBAN_CODE", "IP_ADDRESS", "DATE_OF_BIRTH", "POSTAL_ADDRESS"}


def test_value_generators_make_checksum_valid_identifiers() -> None:
    gen = PiiFaker(1)
    for _ in range(200):
        assert luhn_valid(gen.credit_card())
        assert iban_valid(gen.iban())
        area, group, serial = gen.ssn().split("-")
        assert area not in ("000", "666") and int(area) < 900 and group != "00" and serial != "0000"


def test_bad_lines_cover_each_failure_kind(tmp_path: Path) -> None:
    demo_data.generate(tmp_path, seed=1, tickets=60, kb=5, bad_lines=5)
    reasons = set()
    for path in sorted(tmp_path.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                Ticket.model_validate_json(line) if "tickets" in path.name else KbArticle.model_validate_json(line)
            except ValidationError as e:
                reasons.add(e.errors()[0]["type"])
    assert {"json_invalid", "missing", "string_type", "literal_error"} <= reasons


def test_cli_generates_into_the_state_dir_landing(state_dir: Path) -> None:
    from aiplat.cli import cli

    result = CliRunner().invoke(cli, ["demo-data", "generate", "--tickets", "50", "--kb", "5", "--seed", "9",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["records"]["kb_articles"] == 5
    assert all(Path(f).is_relative_to(state_dir / "landing") for f in summary["files"])
    assert (state_dir / "landing" / "kb_articles").is_dir()
