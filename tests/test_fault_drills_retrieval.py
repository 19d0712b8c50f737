"""Fault drills of the KB index: kill -9 of the run's process mid-rebuild, and the Milvus server
going down mid-write. A real Milvus Lite server of the drill's own (killed with SIGKILL and restarted
on the same port and data folder); the index assets run as the platform's in a child process.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from aiplat.retrieval.lite_server import _executable
from aiplat.retrieval.sample_kb import sample_kb_articles
from aiplat.net import free_port
from platform_defs.definitions import build_definitions
from resources.milvus import MilvusResource
from tests.fault_drills import PrivateServer, child_env, report, start_child, wait_for_text

pytestmark = pytest.mark.slow

ASSETS = ["kb_chunks", "kb_embeddings", "kb_index"]
UPSERT = "aiplat.retrieval.store:IndexStore.upsert"


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("milvus")
    port = free_port()
    argv = [_executable(), "server", "--data-dir", str(root / "data"), "--host", "127.0.0.1", "--port", str(port)]
    with PrivateServer("milvus-lite", argv, port, root / "milvus.log") as server:
        yield server


def _setup(state_dir: Path, server: PrivateServer, tmp_path: Path):
    home = state_dir / "dagster_home"
    home.mkdir()
    folder = state_dir / "lake" / "redacted_kb_articles"
    folder.mkdir(parents=True)
    articles = sample_kb_articles(6)
    articles.assign(_batch="k1", _source_uri="file:///landing/k1.jsonl", _source_sha256="sha-k1",
                    _line=range(1, len(articles) + 1), pii_entities=0).to_parquet(folder / "k1.parquet", index=False)
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("kb_batches", ["k1"])
    tag = uuid.uuid4().hex[:6]
    cfg = {"uri": f"http://127.0.0.1:{server.port}", "alias": f"kb_{tag}", "collection_prefix": f"kbc_{tag}",
           "backup_uri": str(tmp_path / "backups"), "retry_attempts": 2, "retry_base_delay_s": 0.2}
    return home, instance, cfg


def _run(instance: dg.DagsterInstance, cfg: dict) -> dg.ExecuteInProcessResult:
    job = build_definitions({"milvus": MilvusResource(**cfg)}).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(k) for k in ASSETS])


def _served(cfg: dict) -> tuple[str | None, int]:
    store = MilvusResource(**cfg).open_store()
    try:
        served = store.served_collection()
        return served, (store.count(served) if served else 0)
    finally:
        store.close()


def test_kill9_during_index_rebuild_leaves_the_alias_on_the_full_collection(milvus, state_dir, tmp_path):
    home, instance, cfg = _setup(state_dir, milvus, tmp_path)
    assert _run(instance, cfg).success
    before = _served(cfg)
    assert before[0] and before[1] > 0
    # New index parameters: a new collection is filled beside the served one. The kill lands after
    # its rows are written, before they are verified and before the alias moves.
    rebuild = {**cfg, "index_params": {"M": 8, "efConstruction": 100}}
    child = start_child(tmp_path / "drill", child_env(state_dir, home), assets=ASSETS,
                        resources={"milvus": {"kind": "milvus", **rebuild}}, pause=UPSERT, pause_when="after")
    child.wait_marker()
    assert child.kill9() == -9
    killed_at = time.monotonic()
    assert _served(cfg) == before  # the alias still names the complete, verified collection

    result = _run(instance, rebuild)
    recovery = time.monotonic() - killed_at
    assert result.success
    served, rows = _served(cfg)
    assert served != before[0] and rows == before[1]
    meta = result.asset_materializations_for_node("kb_index")[0].metadata
    assert meta["previous_collection"].value == before[0]  # kept for rollback
    report("kill -9 during index rebuild", "alias stays on the previous complete collection; the re-run "
           "finishes the new one, verifies it and moves the alias", recovery)


def test_milvus_down_mid_index_write_retry_policy_recovers(milvus, state_dir, tmp_path):
    home, instance, cfg = _setup(state_dir, milvus, tmp_path)
    child = start_child(tmp_path / "drill", child_env(state_dir, home), assets=ASSETS,
                        resources={"milvus": {"kind": "milvus", **cfg}}, pause=UPSERT, hold=False)
    child.wait_marker()
    milvus.kill()
    child.let_go()
    wait_for_text(child.log, "STEP_UP_FOR_RETRY", 120, child.proc)
    milvus.start()
    back = time.monotonic()
    summary = child.result()
    recovery = time.monotonic() - back
    assert summary["success"], summary
    assert summary["retries"] >= 1
    log = child.log.read_text(errors="replace")
    assert f"127.0.0.1:{milvus.port}" in log and "unreachable" in log
    served, rows = _served(cfg)
    assert served and rows > 0
    report("Milvus down mid index write", "the store's own retries give up naming the server; RetryPolicy "
           f"runs kb_index again once Milvus is back ({summary['retries']} retry); alias on a verified collection",
           recovery)
