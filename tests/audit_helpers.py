"""A private PostgreSQL database for audit-trail tests: the table installed by the admin, and a
writer role that may only INSERT and SELECT (what prod's Dagster pods and CLI connect as)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2

from aiplat.security.audit_log import PostgresAuditLog


@dataclass(frozen=True)
class AuditDatabase:
    admin_dsn: str
    writer_dsn: str
    writer: str


@contextmanager
def private_audit_database(postgres_url: str) -> Iterator[AuditDatabase]:
    suffix = uuid.uuid4().hex[:10]
    db, writer = f"aiplat_audit_{suffix}", f"aiplat_audit_writer_{suffix}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
        cur.execute(f'CREATE ROLE "{writer}" LOGIN')
    base = postgres_url.rsplit("/", 1)[0].replace("postgres@", "", 1)
    audit_db = AuditDatabase(admin_dsn=f"{postgres_url.rsplit('/', 1)[0]}/{db}",
                             writer_dsn=base.replace("://", f"://{writer}@", 1) + f"/{db}", writer=writer)
    PostgresAuditLog.install(audit_db.admin_dsn, [writer])
    try:
        yield audit_db
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{writer}"')
        admin.close()
