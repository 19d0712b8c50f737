"""Attacks on the audit trail (issue 18, item 4): each one detected, and `aiplat audit --verify`
says which entry and how. The attacker can write the log file (and its anchor) but does not hold
the platform key; in prod the trail is a real PostgreSQL table the writers may only INSERT into."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import psycopg2
import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.config import MissingSecret
from aiplat.security.audit_log import AuditLog, AuditLogTampered, FileAuditLog, PostgresAuditLog, local_key_path
from tests.audit_helpers import private_audit_database


def _canonical(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _filled(n: int = 5) -> AuditLog:
    log = AuditLog()
    for i in range(n):
        log.append("access", action="deploy", model="ticket-triage", version=str(i), actor="alice", team="team:ml",
                   decision="allowed")
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def _verify_cli(*extra: str):
    return CliRunner().invoke(cli, ["audit", "--verify", *extra])


def test_an_intact_log_verifies_and_the_cli_says_so(state_dir: Path) -> None:
    log = _filled()
    result = _verify_cli()
    assert result.exit_code == 0, result.output
    assert f"chain intact, 5 entries, head {log.head()}" in result.output
    assert (local_key_path().stat().st_mode & 0o777) == 0o600


def test_cutting_the_tail_is_detected(state_dir: Path) -> None:
    log = _filled()
    log.path.write_text("\n".join(_lines(log)[:3]) + "\n")
    with pytest.raises(AuditLogTampered, match="truncated: the anchor records 5 lines, the log has 3") as e:
        log.verify()
    assert (e.value.kind, e.value.entry) == ("truncated", 4)
    result = _verify_cli()
    assert result.exit_code == 1 and "TAMPERED (truncated at entry 4)" in result.output


def test_cutting_the_tail_and_deleting_the_anchor_is_detected(state_dir: Path) -> None:
    log = _filled()
    log.path.write_text("\n".join(_lines(log)[:3]) + "\n")
    Path(str(log.path) + ".anchor").unlink()
    with pytest.raises(AuditLogTampered, match="anchor .* is missing") as e:
        log.verify()
    assert e.value.kind == "anchor_missing"


def test_cutting_the_tail_and_forging_the_anchor_is_detected(state_dir: Path) -> None:
    log = _filled()
    kept = _lines(log)[:3]
    log.path.write_text("\n".join(kept) + "\n")
    anchor = Path(str(log.path) + ".anchor")
    forged = json.loads(anchor.read_text()) | {"entries": 3, "head": json.loads(kept[-1])["hash"]}
    anchor.write_text(json.dumps(forged))  # the old mac: the attacker cannot compute a new one
    with pytest.raises(AuditLogTampered, match="anchor .* does not verify") as e:
        log.verify()
    assert e.value.kind == "anchor_forged"


def test_editing_an_entry_and_rechaining_without_the_key_is_detected(state_dir: Path) -> None:
    """The attack that worked on the unkeyed chain: change entry 2, recompute every hash after it."""
    log = _filled()
    entries = [json.loads(line) for line in _lines(log)]
    entries[1]["actor"] = "mallory"
    prev = entries[0]["hash"]
    for entry in entries[1:]:
        entry["prev"] = prev
        fields = {k: v for k, v in entry.items() if k != "hash"}
        entry["hash"] = prev = hashlib.sha256((prev + _canonical(fields)).encode()).hexdigest()
    log.path.write_text("".join(_canonical(e) + "\n" for e in entries))
    with pytest.raises(AuditLogTampered, match="line 2 was altered") as e:
        log.verify()
    assert (e.value.kind, e.value.entry) == ("forged", 2)
    result = _verify_cli()
    assert result.exit_code == 1 and "TAMPERED (forged at entry 2)" in result.output


def test_a_line_appended_by_hand_is_detected(state_dir: Path) -> None:
    log = _filled(2)
    last = json.loads(_lines(log)[-1])
    fake = {"at": last["at"], "event": "promote promoted", "actor": "mallory", "prev": last["hash"]}
    fake["hash"] = hashlib.sha256((last["hash"] + _canonical(fake)).encode()).hexdigest()
    with log.path.open("a") as f:
        f.write(_canonical(fake) + "\n")
    with pytest.raises(AuditLogTampered, match="line 3 carries no key id") as e:
        log.verify()
    assert e.value.kind == "unkeyed"


def test_verifying_with_another_key_says_bad_key(state_dir: Path) -> None:
    _filled(2)
    other = FileAuditLog(key="a-different-key-than-the-one-that-wrote-it")
    with pytest.raises(AuditLogTampered, match="line 1 was keyed with key") as e:
        other.verify()
    assert e.value.kind == "bad_key"


def test_a_key_file_readable_by_others_is_refused(state_dir: Path) -> None:
    _filled(1)
    os.chmod(local_key_path(), 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        AuditLog().append("access", actor="alice")


def test_prod_without_the_audit_key_names_the_variable(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    monkeypatch.setenv("AIPLAT_AUDIT_HMAC_KEY", "  ")
    with pytest.raises(MissingSecret, match="AIPLAT_AUDIT_HMAC_KEY is not set"):
        FileAuditLog(state_dir / "audit.jsonl").append("access", actor="alice")
    assert not local_key_path().exists(), "prod must never make a development key"


# --- PostgreSQL: the prod trail ---------------------------------------------------------------------


def test_postgres_writers_can_insert_but_not_rewrite_or_cut_the_trail(postgres_url: str) -> None:
    key = "prod-audit-key-for-this-test"
    with private_audit_database(postgres_url) as db:
        writer = PostgresAuditLog(db.writer_dsn, key=key)
        for version in ("1", "2", "3"):
            writer.append("promote promoted", model="ticket-triage", version=version, actor="sensor")
        assert writer.verify().entries == 3
        for statement in ("UPDATE aiplat_audit_log SET line = line WHERE seq = 2",
                          "DELETE FROM aiplat_audit_log WHERE seq = 3",
                          "TRUNCATE aiplat_audit_log"):
            conn = psycopg2.connect(db.writer_dsn)
            try:
                with pytest.raises(psycopg2.errors.InsufficientPrivilege), conn.cursor() as cur:
                    cur.execute(statement)
            finally:
                conn.close()
        assert writer.verify().entries == 3

        # Someone with more rights (the table's owner) rewrites an entry: the key still catches it.
        admin = psycopg2.connect(db.admin_dsn)
        with admin, admin.cursor() as cur:
            cur.execute("SELECT line FROM aiplat_audit_log WHERE seq = 2")
            entry = json.loads(cur.fetchone()[0]) | {"actor": "mallory"}
            cur.execute("UPDATE aiplat_audit_log SET line = %s WHERE seq = 2", (_canonical(entry),))
        admin.close()
        with pytest.raises(AuditLogTampered, match="entry 2 was altered") as e:
            writer.verify()
        assert e.value.kind == "forged"
        assert "postgres table" in str(e.value) and db.writer not in str(e.value)


def test_the_prod_cli_verifies_the_postgres_trail(postgres_url: str, state_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with private_audit_database(postgres_url) as db:
        for name, value in {"AIPLAT_ENV": "prod", "AIPLAT_AUDIT_DATABASE_URL": db.writer_dsn,
                            "AIPLAT_AUDIT_HMAC_KEY": "prod-key", "AIPLAT_REQUEST_LOG": str(state_dir / "r.jsonl"),
                            "AIPLAT_REPORTS_DIR": str(state_dir), "AIPLAT_PROMETHEUS_URL": "http://127.0.0.1:9"}.items():
            monkeypatch.setenv(name, value)
        PostgresAuditLog(db.writer_dsn, key="prod-key").append("access", actor="alice")
        ok = _verify_cli()
        monkeypatch.setenv("AIPLAT_AUDIT_HMAC_KEY", "not-the-prod-key")
        wrong = _verify_cli()
    assert ok.exit_code == 0 and "postgres table aiplat_audit_log: chain intact, 1 entries" in ok.output
    assert wrong.exit_code == 1 and "TAMPERED (bad_key at entry 1)" in wrong.output
