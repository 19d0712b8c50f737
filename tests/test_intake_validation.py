"""Validation and quarantine of landed lines: one test per kind of bad line."""

import base64
import json

import pytest

import pandas as pd

from aiplat.intake.batches import batch_key, records_frame, split_batch_key
from aiplat.intake.schema import dataset
from aiplat.intake.validate import validate_lines
from tests.records import jsonl, kb_article, ticket

TICKETS = dataset("tickets")


def _quarantined_one(bad_line: bytes, spec=TICKETS):
    data = jsonl([ticket(1)]) + bad_line + b"\n" + jsonl([ticket(3)])
    result = validate_lines(data, spec)
    assert result.lines_read == 3
    assert result.accepted == 2
    assert len(result.quarantined) == 1
    q = result.quarantined[0]
    assert q.line == 2
    assert base64.b64decode(q.as_row("file:///x")["raw_b64"]) == bad_line, "quarantine must keep the exact bytes"
    return q


def test_valid_records_are_accepted_with_typed_fields():
    result = validate_lines(jsonl([ticket(i) for i in range(5)]), TICKETS)
    assert (result.lines_read, result.accepted, result.quarantined) == (5, 5, [])
    frame = records_frame(result, "tickets", "b-000000000000", "file:///t.jsonl", "0" * 64)
    assert str(frame["created_at"].dtype) == "datetime64[us, UTC]" or "UTC" in str(frame["created_at"].dtype)
    assert frame["created_at"].iloc[0] == pd.Timestamp("2026-09-01T10:00:00Z")
    assert frame["resolved_at"].isna().all()
    assert result.record_lines == [1, 2, 3, 4, 5]


def test_truncated_json():
    line = json.dumps(ticket(2)).encode()[:60]
    q = _quarantined_one(line)
    assert q.code == "malformed_json"
    assert "EOF" in q.reason


def test_invalid_utf8():
    line = json.dumps(ticket(2)).encode().replace(b"Dana", b"D\xe9na")
    q = _quarantined_one(line)
    assert q.code == "invalid_utf8"
    assert "byte" in q.reason


def test_missing_field():
    record = ticket(2)
    del record["product"]
    q = _quarantined_one(json.dumps(record).encode())
    assert (q.code, q.reason) == ("schema", "field 'product' is missing")


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("satisfaction", "4", "field 'satisfaction'"),
        ("ticket_id", 17, "field 'ticket_id'"),
        ("category", "complaint", "field 'category'"),
        ("created_at", "2026-09-01T10:00:00", "timezone"),
        ("created_at", "yesterday", "field 'created_at'"),
    ],
)
def test_wrongly_typed_field(field, value, expected):
    q = _quarantined_one(json.dumps(ticket(2, **{field: value})).encode())
    assert q.code == "schema"
    assert expected in q.reason


def test_unknown_field_is_a_schema_error_that_never_quotes_its_name():
    # A field name comes from the data and can itself be personal data.
    q = _quarantined_one(json.dumps(ticket(2, **{"ann.lee@example.org": "x"})).encode())
    assert q.reason == "1 field not in the schema (names not shown: they come from the data)"
    assert "ann.lee" not in q.reason


def test_reason_never_contains_the_value():
    secret = "4111 1111 1111 1111"
    q = _quarantined_one(json.dumps(ticket(2, satisfaction=secret)).encode())
    assert secret not in q.reason


def test_oversize_record():
    line = json.dumps(ticket(2, message="x" * (TICKETS.max_record_bytes + 1))).encode()
    q = _quarantined_one(line)
    assert q.code == "oversize"
    assert str(TICKETS.max_record_bytes) in q.reason


def test_not_an_object_and_empty_line():
    assert _quarantined_one(b'["a", 1]').code == "not_an_object"
    assert _quarantined_one(b"   ").code == "empty_line"


def test_duplicate_id_names_the_first_line():
    data = jsonl([ticket(1), ticket(2), ticket(1, subject="again")])
    result = validate_lines(data, TICKETS)
    assert result.accepted == 2
    assert result.quarantined[0].line == 3
    assert result.quarantined[0].reason == "duplicate ticket_id (first seen on line 1)"


def test_last_line_without_newline_counts_and_crlf_is_tolerated():
    data = jsonl([ticket(1)]).replace(b"\n", b"\r\n") + json.dumps(ticket(2)).encode()[:-5]
    result = validate_lines(data, TICKETS)
    assert (result.lines_read, result.accepted, len(result.quarantined)) == (2, 1, 1)
    assert result.quarantined[0].code == "malformed_json"


def test_accepted_plus_quarantined_equals_lines_read_on_a_mixed_file():
    good = [ticket(i) for i in range(50)]
    lines = [json.dumps(r).encode() for r in good]
    lines[3] = lines[3][:40]
    lines[10] = b"\xff"
    lines[20] = b""
    lines[30] = json.dumps(ticket(31, priority=3)).encode()
    result = validate_lines(b"\n".join(lines) + b"\n", TICKETS)
    assert result.lines_read == 50
    assert result.accepted + len(result.quarantined) == 50
    assert result.reason_counts() == {"malformed_json": 1, "invalid_utf8": 1, "empty_line": 1, "schema": 1}


def test_kb_articles_schema():
    result = validate_lines(jsonl([kb_article(1), kb_article(2, tags="password")]), dataset("kb_articles"))
    assert result.accepted == 1
    assert "field 'tags'" in result.quarantined[0].reason


def test_batch_keys_are_content_addressed():
    key = batch_key("tickets 2026/09", "ab" * 32)
    assert key == "tickets_2026_09-abababababab"
    assert split_batch_key(key) == ("tickets_2026_09", "abababababab")
    with pytest.raises(ValueError, match="not a batch key"):
        split_batch_key("nohash")
