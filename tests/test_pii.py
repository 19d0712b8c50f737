"""PII scanning and redaction: recognizers, policies, fail-closed, the gate, the CLI, canary leaks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from aiplat.pii import quality
from aiplat.pii.config import dataset_config
from aiplat.pii.dataset import redact_frame, residuals, scan_columns
from aiplat.pii.engine import Finding, PiiScanError, Scanner, scan_naive
from aiplat.pii.redact import Pseudonymizer, merge_spans, redact_text
from aiplat.synth import Span
from tests.records import ticket

# Canary values: unique strings that must never leave the raw datasets.
CANARIES = {
    "PERSON": "Zebulon Quackenbush",
    "EMAIL_ADDRESS": "zebulon.quackenbush@canary-mail.com",
    "PHONE_NUMBER": "(617) 862-4417",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "US_SSN": "219-09-9999",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "IP_ADDRESS": "203.0.113.77",
    "DATE_OF_BIRTH": "07/14/1961",
    "POSTAL_ADDRESS": "4821 Quillfeather Lane, Brambleton, OR 97035",
}
# The last 4 digits of masked numbers stay visible by policy; the canary test looks for the rest.
CANARY_MESSAGE = (
    f"My name is {CANARIES['PERSON']} and my date of birth is {CANARIES['DATE_OF_BIRTH']}. "
    f"Reach me at {CANARIES['PHONE_NUMBER']} or {CANARIES['EMAIL_ADDRESS']}. "
    f"Card {CANARIES['CREDIT_CARD']}, SSN {CANARIES['US_SSN']}, IBAN {CANARIES['IBAN_CODE']}. "
    f"Ship to {CANARIES['POSTAL_ADDRESS']}. Login came from {CANARIES['IP_ADDRESS']}.\nThanks, {CANARIES['PERSON']}"
)
KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def config():
    return dataset_config("tickets")


@pytest.fixture(scope="module")
def scanner(config):
    with Scanner(config, workers=1) as s:
        yield s


def _canary_fragments() -> list[str]:
    out = []
    for entity, value in CANARIES.items():
        out.append(value)
        if entity in ("CREDIT_CARD", "IBAN_CODE"):
            out.append(value[:-4].strip())
    out += ["Quackenbush", "Zebulon", "862-4417", "219-09", "Quillfeather", "203.0.113"]
    return out


def test_every_entity_is_found_in_one_text(scanner: Scanner) -> None:
    [findings] = scanner.scan([CANARY_MESSAGE])
    found = {(f.entity_type, CANARY_MESSAGE[f.start : f.end]) for f in findings}
    for entity, value in CANARIES.items():
        assert (entity, value) in found, (entity, value, found)
    assert all(f.score >= 0.5 and f.recognizer for f in findings)


def test_allow_list_and_support_vocabulary_are_not_pii(scanner: Scanner) -> None:
    texts = ["Hi there, my Atlas Doorbell Cam shows error E474 after firmware 3.13.5, order A503151.\nCheers, Ann Lee"]
    [findings] = scanner.scan(texts)
    assert [(f.entity_type, texts[0][f.start : f.end]) for f in findings] == [("PERSON", "Ann Lee")]


def test_deny_list_and_per_entity_threshold(config) -> None:
    custom = config.model_copy(update={"deny_list": {"PERSON": ("Project Nightjar",)}})
    [findings] = Scanner(custom).scan(["The migration is tracked as Project Nightjar internally."])
    assert [f.recognizer for f in findings] == ["DenyList_PERSON"]
    strict = config.model_copy(update={"policies": {**config.policies,
                                                    "PERSON": config.policies["PERSON"].model_copy(update={"threshold": 0.95})}})
    assert Scanner(strict).scan(["Cheers, Ann Lee"]) == [[]]


def test_policies_replace_mask_and_hmac(config) -> None:
    text = "Card 4111 1111 1111 1111, SSN 219-09-9999, from Ann Lee"
    findings = [Finding("CREDIT_CARD", 5, 24, 1.0, "t"), Finding("US_SSN", 30, 41, 0.5, "t"),
                Finding("PERSON", 48, 55, 0.85, "t")]
    out = redact_text(text, findings, config, Pseudonymizer(KEY))
    digest = Pseudonymizer(KEY).digest("person", "ann  LEE")
    assert out == f"Card **** **** **** 1111, SSN <US_SSN>, from <PERSON_{digest}>"
    assert Pseudonymizer("another-key-0123456789").digest("person", "Ann Lee") != digest
    with pytest.raises(ValueError):
        Pseudonymizer("short")
    assert "test-key" not in repr(Pseudonymizer(KEY))


def test_overlapping_findings_merge_into_one_redaction() -> None:
    spans = merge_spans([Finding("POSTAL_ADDRESS", 0, 30, 0.7, "a"), Finding("LOCATION", 10, 20, 0.85, "b"),
                         Finding("PERSON", 40, 45, 0.85, "c")])
    assert spans == [(0, 30, "LOCATION"), (40, 45, "PERSON")]


def test_identifiers_join_across_datasets(config, scanner) -> None:
    pz = Pseudonymizer(KEY)
    tickets = pd.DataFrame([ticket(1, customer_name="Ann Lee", customer_email="Ann.Lee@Example.org",
                                   message="Hello,\nThanks, Ann Lee")])
    scan = scan_columns({f: tickets[f].tolist() for f in config.text_fields}, tickets.ticket_id.tolist(), config,
                        scanner)
    redacted = redact_frame(tickets, scan, config, pz)
    kb_config = dataset_config("kb_articles")
    assert redacted.customer_name[0] == pz.identifier("author_name", "Ann Lee")  # same person in the KB
    assert redacted.customer_email[0] == pz.identifier("author_email", "ann.lee@example.org")
    assert redacted.customer_name[0].removeprefix("person_") in redacted.message[0]
    assert redacted.customer_id[0].startswith("cust_") and redacted.pii_entities[0] == 1
    assert list(redacted.columns) == list(tickets.columns) + ["pii_entities"]
    assert kb_config.identifier_fields == ("author_name", "author_email")


def test_residual_scan_flags_unredacted_text(config, scanner) -> None:
    raw = pd.DataFrame([ticket(1, message=CANARY_MESSAGE)])
    dirty = residuals(raw, config, scanner)
    assert not dirty.clean and dirty.records == [1] and dirty.bad_identifiers["customer_id"] == 1  # a position, not the id
    scan = scan_columns({f: raw[f].tolist() for f in config.text_fields}, raw.ticket_id.tolist(), config, scanner)
    assert residuals(redact_frame(raw, scan, config, Pseudonymizer(KEY)), config, scanner).clean


def test_non_text_field_is_an_error_naming_the_record(config, scanner) -> None:
    with pytest.raises(PiiScanError, match=r"record on line 9: field 'message' is int") as caught:
        scan_columns({"message": [42]}, [9], config, scanner)
    assert "42" not in str(caught.value)


def test_missing_model_fails_closed_without_download(config) -> None:
    broken = config.with_nlp(model_name="en_core_web_definitely_not_installed")
    with pytest.raises(PiiScanError, match="never downloads"):
        Scanner(broken).scan(["Ann Lee"])


@pytest.mark.slow
def test_findings_on_ray_equal_the_naive_loop(config) -> None:
    texts = [e.text for e in quality.build_eval_set(seed=5, size=60)]
    seen: list[tuple[int, int]] = []
    with Scanner(config, workers=2, batch_size=8, min_parallel=1, progress=lambda d, t: seen.append((d, t))) as ray:
        assert ray.scan(texts) == scan_naive(texts, config)
    from aiplat.scale.ray_cluster import current

    assert current() is not None and current().private  # a private local instance, started for the scan
    assert seen[0] == (0, len(texts)) and seen[-1] == (len(texts), len(texts))  # progress, batch by batch
    assert len(seen) > 2 and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_an_unreachable_ray_cluster_fails_the_scan_at_once_and_names_the_address(config) -> None:
    from aiplat.scale.ray_cluster import RayCluster

    texts = ["Call Ann Lee about the invoice"] * 3
    with pytest.raises(PiiScanError, match=r"cannot reach the Ray cluster at ray://127.0.0.1:9: .*nothing answers"):
        Scanner(config, workers=2, min_parallel=1, cluster=RayCluster(address="ray://127.0.0.1:9")).scan(texts)


@pytest.mark.slow
def test_a_failing_ray_batch_fails_the_whole_scan_without_echoing_text(config) -> None:
    texts = [f"Call Ann Lee on 0{i}7700 900 123 about the invoice" for i in range(30)]
    texts[17] = "Ann Lee " * 130_000  # past spaCy's max_length: that batch's actor fails (for real, in spaCy)
    with pytest.raises(PiiScanError, match="the PII scan on Ray failed, nothing was redacted") as caught:
        Scanner(config, workers=2, batch_size=8, min_parallel=1).scan(texts)
    assert "Ann Lee" not in str(caught.value) and "7700" not in str(caught.value)


def test_the_batched_path_runs_without_the_parser_and_the_naive_path_with_it(config) -> None:
    from aiplat.pii.engine import analyzer

    full = analyzer(config).nlp_engine.nlp[config.nlp.language]
    pruned = analyzer(config, pruned=True).nlp_engine.nlp[config.nlp.language]
    assert "parser" in full.pipe_names
    assert "parser" not in pruned.pipe_names
    assert {"ner", "lemmatizer"} <= set(pruned.pipe_names)


def test_quality_scoring_counts_coverage_and_redundancy() -> None:
    examples = [quality.EvalExample("Ann Lee, 1 Main St, Springfield, IL 62704", (Span(0, 7, "PERSON"),
                                                                                 Span(9, 42, "POSTAL_ADDRESS")))]
    preds = [[Finding("PERSON", 0, 3, 0.85, "x"), Finding("LOCATION", 20, 31, 0.85, "x"),
              Finding("POSTAL_ADDRESS", 9, 42, 0.7, "x"), Finding("IP_ADDRESS", 7, 9, 0.9, "x")]]
    scores = quality.score(examples, preds)
    assert scores["PERSON"].recall == 0.0  # "Ann" of "Ann Lee": a half-redacted name is a miss
    assert scores["POSTAL_ADDRESS"].recall == 1.0 and scores["POSTAL_ADDRESS"].precision == 1.0
    assert scores["LOCATION"].false_positive == 0  # inside the labeled address: redundant
    assert scores["IP_ADDRESS"].false_positive == 1


def test_quality_report_files(tmp_path: Path) -> None:
    report = quality.evaluate_scanner(tmp_path, size=60, seed=3)
    assert report.markdown_path.read_text().count("\n|") >= 5
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entity = next(iter(report.scores))
    assert report.metadata()[f"{entity}/recall"] == round(report.scores[entity].recall, 4)


def test_cli_scan_redacts_fields_and_keeps_the_rest(tmp_path: Path, state_dir: Path) -> None:
    from aiplat.cli import cli

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 7, "text": CANARY_MESSAGE, "note": "Ann Lee", "score": 1.5}) + "\n"
                   + json.dumps({"id": 8, "text": "nothing personal here"}) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["pii", "scan", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert (first["id"], first["note"], first["score"]) == (7, "Ann Lee", 1.5)  # untouched fields
    assert second == {"id": 8, "text": "nothing personal here"}
    findings = [json.loads(line) for line in (tmp_path / "out.findings.jsonl").read_text().splitlines()]
    assert {f["entity_type"] for f in findings} >= set(CANARIES)
    assert all(set(f) == {"line", "field", "entity_type", "start", "end", "score", "recognizer"} for f in findings)
    for fragment in _canary_fragments():
        assert fragment not in out.read_text() and fragment not in result.output


@pytest.mark.slow
def test_cli_scan_on_ray_writes_what_one_process_writes(tmp_path: Path, state_dir: Path) -> None:
    from aiplat.cli import cli
    from aiplat.demo_data import generate_corpus

    rows = [r.record for r in generate_corpus(seed=11, tickets=40, kb=0).of("tickets")][:40]
    src = tmp_path / "tickets.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out-{workers}.jsonl"
        result = CliRunner().invoke(cli, ["pii", "scan", str(src), "--output", str(out), "--dataset", "tickets",
                                          "--workers", workers])
        assert result.exit_code == 0, result.output
        assert ("with 2 Ray actors on a private local Ray instance" in result.output) == (workers == "2")
        outputs[workers] = (out.read_text(), out.with_name(f"out-{workers}.findings.jsonl").read_text())
    assert outputs["1"] == outputs["2"] and outputs["1"][1].count("\n") > 40


def test_cli_scan_bad_line_names_it_and_writes_nothing(tmp_path: Path, state_dir: Path) -> None:
    from aiplat.cli import cli

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "ok"}\n{"text": \n')
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["pii", "scan", str(src), "--output", str(out)])
    assert result.exit_code != 0 and f"{src}:2" in result.output and not out.exists()


@pytest.fixture(scope="module", autouse=True)
def _ray_stops_with_the_module():
    """The private Ray instance a Ray scan starts lives as long as this process: stopped here, so
    that its processes do not sit beside the rest of the suite."""
    yield
    from aiplat.scale.ray_cluster import shutdown

    shutdown()


# -- the assets, materialized on a tiny batch -----------------------------------------------------

def _materialize(tmp_path: Path, rows: list[dict], presidio, raise_on_error: bool = True):
    from assets.intake import ingest_tickets
    from assets.pii import redact_tickets
    from resources.lake import LakeIOManager
    from resources.ray import RayResource
    from resources.landing_zone import LocalLandingZone

    lake = LakeIOManager(base_uri=str(tmp_path / "lake"))
    key = "tickets-2026-09-0123456789ab"
    raw = pd.DataFrame(rows)
    raw["_batch"], raw["_source_uri"], raw["_source_sha256"] = key, "landing/tickets-2026-09.jsonl", "0" * 64
    raw["_line"] = range(1, len(raw) + 1)
    lake._write(raw, lake.path_for(dg.AssetKey("raw_tickets"), key))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("ticket_batches", [key])
    result = dg.materialize(
        [ingest_tickets, redact_tickets], selection=[redact_tickets], partition_key=key, instance=instance,
        resources={"io_manager": lake, "presidio": presidio, "ray": RayResource(),
                   "landing_zone": LocalLandingZone(base_dir=str(tmp_path / "landing"))}, raise_on_error=raise_on_error)
    return result, lake, key


def test_canaries_never_leave_raw(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:
    from resources.presidio import PresidioResource

    caplog.set_level(logging.DEBUG)
    rows = [ticket(1, customer_name=CANARIES["PERSON"], customer_email=CANARIES["EMAIL_ADDRESS"],
                   message=CANARY_MESSAGE, agent_reply=f"Hi Zebulon, we called {CANARIES['PHONE_NUMBER']}."),
            ticket(2)]
    result, lake, key = _materialize(tmp_path, rows, PresidioResource(workers=1, hmac_key=KEY))
    assert result.success
    redacted = lake._read(lake.path_for(dg.AssetKey("redacted_tickets"), key))
    findings = lake._read(lake.path_for(dg.AssetKey("ticket_pii_findings"), key))
    assert len(redacted) == 2 and redacted.pii_entities.tolist()[1] == 0
    assert set(findings.columns) == {"record_id", "field", "entity_type", "start", "end", "score", "recognizer",
                                     "_batch", "_line"}
    metadata = [str(m.metadata) for m in result.asset_materializations_for_node("redact_tickets")]
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]
    haystacks = {
        "redacted": redacted.to_json(), "findings": findings.to_json(), "metadata": " ".join(metadata),
        "checks": str([c.metadata for c in checks]), "logs": caplog.text, "captured": str(capsys.readouterr()),
        "events": " ".join(str(e) for e in result.all_events),
    }
    for fragment in _canary_fragments():
        for name, text in haystacks.items():
            assert fragment not in text, f"canary {fragment!r} leaked into {name}"
    assert "entities/PERSON" in metadata[0] or "entities/PERSON" in metadata[1]


def test_unavailable_scanner_writes_nothing(tmp_path: Path) -> None:
    from resources.presidio import PresidioResource

    result, lake, key = _materialize(tmp_path, [ticket(1, message=CANARY_MESSAGE)],
                                     PresidioResource(workers=1, model_name="en_core_web_not_installed", hmac_key=KEY),
                                     raise_on_error=False)
    assert not result.success
    assert not Path(lake.path_for(dg.AssetKey("redacted_tickets"), key)).exists()
    assert not Path(lake.path_for(dg.AssetKey("ticket_pii_findings"), key)).exists()


def test_residual_pii_fails_the_gate_and_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    import assets.pii
    from resources.presidio import PresidioResource

    # A redaction bug cannot be caused with the real code: stand in a redaction that forgets free text.
    def forgetful(df, scan, config, pseudonymizer):
        out = df.copy()
        out["pii_entities"] = 0
        for f in config.identifier_fields:
            out[f] = [pseudonymizer.identifier(f, v) for v in out[f]]
        return out

    monkeypatch.setattr(assets.pii, "redact_frame", forgetful)
    result, lake, key = _materialize(tmp_path, [ticket(1, message=CANARY_MESSAGE)],
                                     PresidioResource(workers=1, hmac_key=KEY), raise_on_error=False)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed is False and check.metadata["residual_findings"].value > 0
    assert not Path(lake.path_for(dg.AssetKey("redacted_tickets"), key)).exists()


@pytest.mark.slow
def test_the_redact_asset_on_ray_writes_what_the_single_process_path_writes(tmp_path: Path, capsys) -> None:
    """The demo corpus's tickets through the real asset twice: in this process (workers=1) and as a
    Ray Data pipeline of 2 actors (threshold 1 text): the same findings and the same redacted batch,
    and the Ray run says where it ran and logs its progress."""
    from aiplat.demo_data import generate_corpus
    from resources.presidio import PresidioResource

    rows = [r.record for r in generate_corpus(seed=7, tickets=120, kb=0).of("tickets")][:120]
    written = {}
    for name, presidio in {"single": PresidioResource(workers=1, hmac_key=KEY),
                           "ray": PresidioResource(workers=2, ray_min_texts=1, hmac_key=KEY)}.items():
        capsys.readouterr()
        result, lake, key = _materialize(tmp_path / name, rows, presidio)
        meta = {k: v.value for m in result.asset_materializations_for_node("redact_tickets") for k, v in m.metadata.items()}
        written[name] = (lake._read(lake.path_for(dg.AssetKey("ticket_pii_findings"), key)),
                         lake._read(lake.path_for(dg.AssetKey("redacted_tickets"), key)), meta,
                         capsys.readouterr().err)  # the run's log lines (Dagster's console logger)
    (f1, r1, m1, log1), (f2, r2, m2, log2) = written["single"], written["ray"]
    assert len(f1) > 100  # a real corpus: names, emails, phones, cards
    pd.testing.assert_frame_equal(f1, f2)
    pd.testing.assert_frame_equal(r1, r2)
    assert m1["content_hash"] == m2["content_hash"]
    assert m1["ran_on"].startswith("this process") and m2["ran_on"].startswith("a private local Ray instance")
    texts = sum(1 for r in rows for f in ("subject", "message", "agent_reply", "product") if r.get(f) is not None)
    assert f"PII scan: {texts} items on a private local Ray instance" in log2, log2[-3000:]
    assert f"PII scan: {texts}/{texts} done" in log2
    assert "on a private local Ray instance" not in log1
