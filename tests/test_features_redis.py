"""The prod online store backend (Redis) against the Redis on 127.0.0.1:6379."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
import redis

from aiplat.features import sample, tables
from aiplat.features import store as S
from resources.feast import LocalFeastResource, RedisFeastResource

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_redis_and_sqlite_serve_the_same_features(redis_url: str, tmp_path) -> None:
    # A project name of its own: Feast's Redis keys carry it, so parallel runs never collide.
    project = f"t_redis_{uuid.uuid4().hex[:10]}"
    data_dir = tmp_path / "feast"
    tickets = sample.redacted_tickets(600, 80, seed=21, span_days=60)
    redis_res = RedisFeastResource(project=project, data_dir=str(data_dir), redis_url=redis_url)
    # Same offline tables, own registry: a registry records how far its online store is loaded.
    sqlite_res = LocalFeastResource(
        project=project, data_dir=str(data_dir), registry_path=str(tmp_path / "sqlite_registry.db")
    )
    assert "password" not in redis_res.describe()
    client = redis.Redis.from_url(redis_url)
    with dg.build_resources({"redis": redis_res, "sqlite": sqlite_res}) as res:
        defs = res.redis.definitions()
        S.write_offline_table(res.redis.table_path("customer_features"), tables.customer_features(tickets))
        S.write_offline_table(res.redis.table_path("ticket_features"), tables.ticket_features(tickets))
        try:
            for backend in (res.redis, res.sqlite):
                S.apply_definitions(backend.store, defs)
                S.materialize(backend.store, ["customer_features", "ticket_features"])
            assert any(project.encode() in key for key in client.scan_iter(count=1000))

            customers = sorted(tickets["customer_id"].unique())[:50]
            rows = [{"customer_id": c} for c in customers] + [{"customer_id": "cust_00000000deadbeef"}]
            from_redis = res.redis.get_online_features("customer_profile_v1", rows)
            from_sqlite = res.sqlite.get_online_features("customer_profile_v1", rows)
            assert from_redis == from_sqlite
            assert from_redis["tickets_prior_total"][-1] is None  # unknown customer: no values
            assert all(v is not None for v in from_redis["tickets_prior_total"][:-1])

            ids = sorted(tickets["ticket_id"])[:20]
            triage = res.redis.get_online_features(
                "ticket_triage_v1", [{"ticket_id": t, "customer_id": c} for t, c in zip(ids, customers)]
            )
            expected = tickets.set_index("ticket_id").loc[ids]
            assert triage["product"] == list(expected["product"])
        finally:
            res.redis.store.teardown()
    assert not any(project.encode() in key for key in client.scan_iter(count=1000))


def test_redis_urls_become_feast_connection_strings() -> None:
    assert S.redis_connection_string("redis://127.0.0.1:6379/0") == "127.0.0.1:6379,db=0"
    assert (
        S.redis_connection_string("rediss://default:s%40cret@cache.internal:6380/2")
        == "cache.internal:6380,db=2,password=s@cret,ssl=true"
    )
    assert S.redis_connection_string("cache:6379,password=x") == "cache:6379,password=x"
    with pytest.raises(ValueError, match="not a number"):
        S.redis_connection_string("redis://h:1/abc")
    described = RedisFeastResource(redis_url="redis://:topsecret@h:1/0", data_dir="/tmp/x").describe()
    assert "topsecret" not in described and "h:1" in described
