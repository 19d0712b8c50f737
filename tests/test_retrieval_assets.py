"""The retrieval assets, their blocking recall check and the reindex sensor, run by Dagster
against a real Milvus Lite server, with a Parquet IO manager (no pickles)."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from aiplat.retrieval.sample_kb import edit_articles, sample_kb_articles
from assets.retrieval import kb_index_recall, retrieval_assets
from resources.embeddings import EmbeddingResource
from resources.ray import RayResource
from resources.milvus import MilvusResource
from sensors.reindex import REDACTED_KB, kb_reindex_job, kb_reindex_sensor


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stand-in for the platform's lake IO manager: DataFrames as Parquet files, nothing else."""

    root: str

    def _path(self, context) -> Path:
        return Path(self.root, *context.asset_key.path).with_suffix(".parquet")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        assert isinstance(obj, pd.DataFrame), f"{context.asset_key} is not a DataFrame"
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        obj.to_parquet(path, index=False)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return pd.read_parquet(self._path(context.upstream_output))


def _source(snapshot: pd.DataFrame) -> dg.AssetsDefinition:
    """The PII stage's output, as a tiny stand-in asset under the real key."""

    @dg.asset(key=REDACTED_KB, group_name="pii")
    def redacted_kb_articles() -> pd.DataFrame:
        return snapshot

    return redacted_kb_articles


def _snapshot(articles: pd.DataFrame, batch: str) -> pd.DataFrame:
    return articles.assign(_batch=batch, _source_uri=f"file:///landing/{batch}.jsonl",
                           _source_sha256=f"sha-{batch}", _line=range(1, len(articles) + 1), pii_entities=0)


@pytest.fixture(scope="module")
def milvus_server(shared_milvus):
    return shared_milvus


def _resources(server, tmp_path: Path, tag: str | None = None, **milvus_overrides) -> dict:
    tag = tag or uuid.uuid4().hex[:6]
    return {
        "milvus": MilvusResource(uri=server.uri, alias=f"kb_{tag}", collection_prefix=f"kbc_{tag}",
                                 backup_uri=str(tmp_path / "backups"), retry_attempts=2, **milvus_overrides),
        "embeddings": EmbeddingResource(),
        "ray": RayResource(),
        "io_manager": ParquetIOManager(root=str(tmp_path / "lake")),
    }


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict:
    [mat] = [m for m in result.asset_materializations_for_node(key)]
    return {k: v.value for k, v in mat.metadata.items()}


@pytest.mark.slow
def test_assets_build_then_incrementally_update_the_index(milvus_server, tmp_path, state_dir):
    articles = sample_kb_articles(8)
    resources = _resources(milvus_server, tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize([_source(_snapshot(articles, "b1")), *retrieval_assets, kb_index_recall],
                           resources=resources, instance=instance)
    assert first.success
    chunks = _meta(first, "kb_chunks")["dagster/row_count"]
    index = _meta(first, "kb_index")
    assert (index["added"], index["updated"], index["deleted"], index["unchanged"]) == (chunks, 0, 0, 0)
    assert index["mode"] == "rebuild" and index["recall_at_k"] >= 0.95
    [check] = first.get_asset_check_evaluations()
    assert check.passed and check.metadata["recall_at_k"].value >= 0.95
    backup = _meta(first, "kb_index_backup")
    assert backup["dagster/row_count"] == chunks and backup["key_set_sha256"] == index["key_set_sha256"]
    assert (tmp_path / "backups" / backup["backup_id"] / "manifest.json").is_file()

    edited, _ = edit_articles(articles, 0.25, seed=3)
    edited = edited[edited.article_id != "kb-00007"]
    # Both batches arrive concatenated (landing order); only the latest snapshot counts.
    both = pd.concat([_snapshot(articles, "b1"), _snapshot(edited, "b2")], ignore_index=True)
    second = dg.materialize([_source(both), *retrieval_assets, kb_index_recall], resources=resources, instance=instance)
    assert second.success
    emb, index2 = _meta(second, "kb_embeddings"), _meta(second, "kb_index")
    assert index2["mode"] == "incremental" and index2["collection"] == index["collection"]
    assert index2["articles_updated"] == 2 and index2["articles_deleted"] == 1
    assert index2["updated"] + index2["added"] == emb["embedded"] > 0
    assert emb["reused"] == index2["unchanged"]
    assert _meta(second, "kb_chunks")["kb_batch"] == "b2"
    assert index2["dagster/row_count"] == _meta(second, "kb_chunks")["dagster/row_count"]


@pytest.mark.slow
def test_embedding_on_ray_gives_the_single_process_vectors_and_the_same_index(milvus_server, tmp_path, state_dir):
    """The same snapshot embedded in this process and as a Ray Data pipeline of 2 actors (threshold
    1 text): the same chunks, vectors equal to float32 rounding (a vector depends on which texts share
    its batch by ~1e-7, in one process too), the same nearest chunk for every evaluation query."""
    from aiplat.scale.ray_cluster import shutdown

    articles = sample_kb_articles(30)
    runs = {}
    try:
        for name, embeddings in {"single": EmbeddingResource(workers=1),
                                 "ray": EmbeddingResource(workers=2, ray_min_texts=1)}.items():
            resources = {**_resources(milvus_server, tmp_path / name), "embeddings": embeddings}
            result = dg.materialize([_source(_snapshot(articles, "b1")), *retrieval_assets], resources=resources,
                                    selection=dg.AssetSelection.assets("kb_embeddings", "kb_chunks", REDACTED_KB))
            assert result.success
            runs[name] = (_meta(result, "kb_embeddings"), pd.read_parquet(tmp_path / name / "lake" / "kb_embeddings.parquet"))
    finally:
        shutdown()  # the private Ray instance does not outlive the test
    (m1, e1), (m2, e2) = runs["single"], runs["ray"]
    assert m1["ran_on"].startswith("this process") and m2["ran_on"].startswith("a private local Ray instance")
    assert m2["embedded"] == m1["embedded"] == len(e1) > 30
    assert e1["chunk_id"].tolist() == e2["chunk_id"].tolist()
    v1, v2 = np.stack(e1["vector"].to_numpy()), np.stack(e2["vector"].to_numpy())
    assert v1.dtype == v2.dtype == np.float32 and np.abs(v1 - v2).max() < 1e-6
    from aiplat.retrieval.embedding import load_embedder
    from aiplat.retrieval.queries import QUERY_SET

    queries = load_embedder().encode(list(QUERY_SET))
    assert ((queries @ v1.T).argmax(axis=1) == (queries @ v2.T).argmax(axis=1)).all()


@pytest.mark.slow
def test_failing_recall_check_blocks_the_backup(milvus_server, tmp_path, state_dir):
    # Build once with a good index, then serve a coarse IVF through the same alias by asking for
    # a recall threshold the build itself does not enforce: the check must fail and block.
    coarse = {"index_type": "IVF_FLAT", "index_params": {"nlist": 32}, "search_params": {"nprobe": 1}}
    tag = uuid.uuid4().hex[:6]
    resources = _resources(milvus_server, tmp_path, tag=tag, recall_threshold=0.05, **coarse)
    source = _source(_snapshot(sample_kb_articles(30), "b1"))
    ok = dg.materialize([source, *retrieval_assets], resources=resources,
                        selection=["redacted_kb_articles", "kb_chunks", "kb_embeddings", "kb_index"])
    assert ok.success
    strict = _resources(milvus_server, tmp_path, tag=tag, recall_threshold=0.95, **coarse)
    result = dg.materialize([source, *retrieval_assets, kb_index_recall], resources=strict, raise_on_error=False,
                            selection=dg.AssetSelection.assets("kb_index_backup") | dg.AssetSelection.checks(kb_index_recall))
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["recall_at_k"].value < 0.95
    assert not result.asset_materializations_for_node("kb_index_backup")


def test_sensor_requests_one_run_per_new_redacted_kb_materialization():
    instance = dg.DagsterInstance.ephemeral()
    source = _source(_snapshot(sample_kb_articles(2), "b1"))
    defs = dg.Definitions(assets=[source, *retrieval_assets], jobs=[kb_reindex_job], sensors=[kb_reindex_sensor],
                          resources={"milvus": MilvusResource(), "embeddings": EmbeddingResource(), "ray": RayResource()})

    ctx = dg.build_sensor_context(instance=instance, definitions=defs)
    assert not kb_reindex_sensor.evaluate_tick(ctx).run_requests  # nothing landed yet

    dg.materialize([source], instance=instance)
    ctx = dg.build_sensor_context(instance=instance, definitions=defs)
    tick = kb_reindex_sensor.evaluate_tick(ctx)
    [request] = tick.run_requests
    assert request.run_key.startswith("kb-reindex:") and request.tags["aiplat/trigger"] == "redacted_kb_articles"
    assert tick.cursor

    again = kb_reindex_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs, cursor=tick.cursor))
    assert not again.run_requests  # same event, cursor moved past it

    same_key = kb_reindex_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    assert [r.run_key for r in same_key.run_requests] == [request.run_key]  # deterministic run key

    dg.materialize([source], instance=instance)
    newer = kb_reindex_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs, cursor=tick.cursor))
    [request2] = newer.run_requests
    assert request2.run_key != request.run_key
    assert set(kb_reindex_job.selection.resolve(defs.resolve_asset_graph())) == {
        dg.AssetKey(k) for k in ("kb_chunks", "kb_embeddings", "kb_index", "kb_index_backup")
    }
