"""The KB index against a real Milvus Lite server process (gRPC over TCP on a free port)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace

import pytest

from aiplat.retrieval.chunking import ChunkingConfig, chunk_articles, chunk_id, latest_kb_snapshot, split_text
from aiplat.retrieval.diff import diff_chunks, key_set_sha256
from aiplat.retrieval.index import IndexVerificationError, build_index, embed_chunks, rollback, search_text
from aiplat.retrieval.lite_server import MilvusLiteServer
from aiplat.retrieval.queries import QUERY_SET
from aiplat.retrieval.retry import MilvusUnavailableError, RetryPolicy
from aiplat.retrieval.sample_kb import edit_articles, sample_kb_articles
from aiplat.retrieval.settings import IndexSettings
from aiplat.retrieval.store import IndexStore


@pytest.fixture(scope="module")
def milvus(shared_milvus):
    return shared_milvus


@pytest.fixture(scope="module")
def embedder(shared_embedder):
    return shared_embedder


@pytest.fixture(scope="module")
def query_vectors(embedder):
    return embedder.encode(list(QUERY_SET))


@pytest.fixture
def store(milvus):
    """A private alias and collection prefix per test, so tests share one server safely."""
    tag = uuid.uuid4().hex[:8]
    settings = IndexSettings(alias=f"kb_{tag}", collection_prefix=f"kbc_{tag}")
    s = IndexStore.connect(milvus.uri, settings=settings, retry=RetryPolicy(attempts=3, base_delay_s=0.1))
    yield s
    s.close()


def _build(store, embedder, query_vectors, articles):
    chunks = chunk_articles(articles)
    embedded, stats = embed_chunks(chunks, embedder, store)
    report = build_index(store, embedded, embedder.model_id, query_vectors)
    return report, stats, chunks


# --- chunking and diffing (no server) ---------------------------------------------------------------


def test_chunking_is_deterministic_and_overlaps_long_paragraphs():
    words = [f"w{i}" for i in range(50)]
    cfg = ChunkingConfig(max_words=20, overlap_words=5)
    pieces = split_text(" ".join(words), cfg)
    assert [len(p.split()) for p in pieces] == [20, 20, 20]
    assert pieces[0].split()[-5:] == pieces[1].split()[:5]  # the overlap carries context across the cut
    assert " ".join(pieces).split()[-1] == "w49"
    arts = sample_kb_articles(5)
    a, b = chunk_articles(arts), chunk_articles(arts.sample(frac=1, random_state=3))
    assert a.equals(b)
    first = a.iloc[0]
    assert first.chunk_id == chunk_id(first.article_id, 0, first.text)
    assert a["chunk_id"].is_unique


def test_chunking_names_the_bad_record():
    arts = sample_kb_articles(3)
    arts.loc[1, "body"] = "   "
    with pytest.raises(ValueError, match="kb-00001"):
        chunk_articles(arts)
    dup = sample_kb_articles(2)
    dup.loc[1, "article_id"] = "kb-00000"
    with pytest.raises(ValueError, match="duplicate article_id.*kb-00000"):
        chunk_articles(dup)


def test_latest_snapshot_keeps_only_the_newest_batch():
    old = sample_kb_articles(4).assign(_batch="b1")
    new = sample_kb_articles(3).assign(_batch="b2")
    snap = latest_kb_snapshot(__import__("pandas").concat([old, new], ignore_index=True))
    assert snap["_batch"].unique().tolist() == ["b2"] and len(snap) == 3


def test_diff_counts_added_updated_deleted_unchanged():
    v1 = chunk_articles(sample_kb_articles(6))
    v2_articles, edited = edit_articles(sample_kb_articles(6), 0.34, seed=7)
    v2_articles = v2_articles[v2_articles.article_id != "kb-00005"]  # one article deleted
    v2 = chunk_articles(v2_articles)
    d = diff_chunks(v1, v2)
    assert d.articles_deleted == 1 and d.articles_updated == len(set(edited) - {"kb-00005"})
    assert d.added + d.updated == len(d.to_upsert)
    assert d.unchanged + d.added + d.updated == len(v2)
    assert set(d.to_delete) == set(v1.chunk_id) - set(v2.chunk_id)
    same = diff_chunks(v2, v2)
    assert (same.added, same.updated, same.deleted, same.unchanged) == (0, 0, 0, len(v2))
    assert key_set_sha256(["b", "a"]) == key_set_sha256(["a", "b", "a"]) != key_set_sha256(["a"])


# --- against Milvus -------------------------------------------------------------------------------------


def test_incremental_reindex_embeds_only_changes_and_rerun_adds_no_duplicates(store, embedder, query_vectors):
    articles = sample_kb_articles(12)
    r1, s1, chunks1 = _build(store, embedder, query_vectors, articles)
    assert r1.mode == "rebuild" and r1.previous_collection is None
    assert (r1.diff.added, r1.diff.unchanged) == (len(chunks1), 0)
    assert s1["embedded"] == len(chunks1) and r1.row_count == len(chunks1)
    assert store.served_collection() == r1.collection
    assert r1.recall >= store.settings.recall_threshold

    r2, s2, _ = _build(store, embedder, query_vectors, articles)  # the same snapshot again
    assert s2 == {"embedded": 0, "reused": len(chunks1), "dim": 384}
    assert r2.mode == "incremental" and r2.diff.unchanged == len(chunks1) and not r2.diff.to_upsert
    assert store.count(r2.collection) == len(chunks1)  # count(*): no duplicate rows

    edited, edited_ids = edit_articles(articles, 0.2, seed=5)
    edited = edited[edited.article_id != "kb-00011"]
    new_article = sample_kb_articles(13).iloc[[12]]
    snapshot = __import__("pandas").concat([edited, new_article], ignore_index=True)
    r3, s3, chunks3 = _build(store, embedder, query_vectors, snapshot)
    expected = diff_chunks(chunks1, chunks3)
    assert s3["embedded"] == len(expected.to_upsert) < len(chunks3)  # only changed/new chunks embedded
    assert r3.diff.counts() == expected.counts()
    assert r3.diff.articles_added == 1 and r3.diff.articles_deleted == 1
    assert r3.diff.articles_updated == len(set(edited_ids) - {"kb-00011"})
    assert store.count(r3.collection) == len(chunks3)
    assert store.keys(r3.collection)["article_id"].isin(["kb-00011"]).sum() == 0
    hits = search_text(store, embedder, "print a return label", k=5)
    assert len(hits) == 5 and all(h["index_version"] == r3.collection for h in hits)


def test_param_change_builds_new_collection_then_swaps_and_rolls_back(store, embedder, query_vectors):
    articles = sample_kb_articles(10)
    r1, _, _ = _build(store, embedder, query_vectors, articles)
    store.settings = replace(store.settings, index_params={"M": 8, "efConstruction": 100})
    r2, s2, chunks = _build(store, embedder, query_vectors, articles)
    assert r2.collection != r1.collection and r2.mode == "rebuild"
    assert s2["embedded"] == 0  # same model: vectors reused from the served collection
    assert r2.previous_collection == r1.collection
    assert store.served_collection() == r2.collection
    assert store.count(r1.collection) == len(chunks)  # kept for rollback
    assert rollback(store, r1.collection) == r2.collection
    assert store.served_collection() == r1.collection
    with pytest.raises(ValueError, match="serves it"):
        store.drop(r1.collection)


@pytest.mark.slow
def test_recall_below_threshold_keeps_the_alias(store, embedder, query_vectors):
    articles = sample_kb_articles(30)
    r1, _, _ = _build(store, embedder, query_vectors, articles)
    # Coarse IVF with a single probe misses most true neighbours: the gate must catch it.
    store.settings = replace(
        store.settings, index_type="IVF_FLAT", index_params={"nlist": 32}, search_params={"nprobe": 1}
    )
    with pytest.raises(IndexVerificationError, match=r"recall@10=.*below the threshold"):
        _build(store, embedder, query_vectors, articles)
    assert store.served_collection() == r1.collection


def _wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    """Poll `condition` with a deadline: a searcher that stalls or dies fails the test, never hangs it."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.01)


@pytest.mark.slow
def test_searches_during_a_rebuild_only_see_complete_collections(milvus, store, embedder, query_vectors):
    articles = sample_kb_articles(40)
    r1, _, chunks = _build(store, embedder, query_vectors, articles)
    store.write_batch = 4  # many small writes stretch the rebuild over many searches
    k = 10
    reader = IndexStore.connect(milvus.uri, settings=store.settings)
    answers: list[tuple[float, list[str], set[str]]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def search_loop():
        try:
            while not stop.is_set():
                hits = reader.search(store.settings.alias, query_vectors[:4], k, output_fields=["index_version"])
                for h in hits:
                    answers.append((time.monotonic(), [x["chunk_id"] for x in h], {x["index_version"] for x in h}))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    thread = threading.Thread(target=search_loop, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: len(answers) >= 8 or not thread.is_alive(), "the searcher's first 8 answers")
        started = time.monotonic()
        store.settings = replace(store.settings, index_params={"M": 12, "efConstruction": 80})
        r2 = build_index(store, embed_chunks(chunks, embedder, store)[0], embedder.model_id, query_vectors)
        finished = time.monotonic()
        n_after = len(answers)
        _wait_for(lambda: len(answers) >= n_after + 8 or not thread.is_alive(), "8 answers after the swap")
    finally:
        stop.set()
        thread.join(timeout=60)
        reader.close()
    assert not errors, errors
    assert not thread.is_alive(), "the search thread did not stop within 60 s"

    expected = {
        name: [[h["chunk_id"] for h in hits] for hits in store.search(name, query_vectors[:4], k, output_fields=[])]
        for name in (r1.collection, r2.collection)
    }
    during = [a for a in answers if started <= a[0] <= finished]
    assert len(during) >= 8, "the searcher must have run throughout the rebuild"
    seen = set()
    for i, (_, ids, versions) in enumerate(answers):
        assert len(versions) == 1, f"answer mixes collections {versions}"
        version = versions.pop()
        seen.add(version)
        assert len(ids) == k
        want = expected[version][i % 4]
        assert len(set(ids) & set(want)) >= 9, f"answer from {version} differs from that complete collection's"
    assert seen == {r1.collection, r2.collection}


@pytest.mark.slow
def test_milvus_down_retries_then_fails_clearly_and_alias_stays(tmp_path, embedder, query_vectors):
    server = MilvusLiteServer(tmp_path / "data").start()
    try:
        settings = IndexSettings(alias="kb_down", collection_prefix="kbc_down")
        store = IndexStore.connect(server.uri, settings=settings, retry=RetryPolicy(attempts=3, base_delay_s=0.2))
        r1, _, chunks = _build(store, embedder, query_vectors, sample_kb_articles(6))
        embedded = embed_chunks(chunks, embedder, store)[0]
        server.stop()
        store.settings = replace(settings, index_params={"M": 8, "efConstruction": 64})
        t0 = time.monotonic()
        with pytest.raises(MilvusUnavailableError, match=r"gave up after 3 attempts.*alias is unchanged"):
            build_index(store, embedded, embedder.model_id, query_vectors)
        assert time.monotonic() - t0 >= 0.6  # backoff 0.2 + 0.4 s was actually waited
        store.close()
        with pytest.raises(MilvusUnavailableError, match="connecting"):
            IndexStore.connect(server.uri, settings=settings, retry=RetryPolicy(attempts=2, base_delay_s=0.05))
        server.start()
        again = IndexStore.connect(server.uri, settings=settings)
        assert again.served_collection() == r1.collection
        assert again.count(r1.collection) == len(chunks)
        again.close()
    finally:
        server.stop()


def test_a_restarted_milvus_serves_the_index_again_without_a_manual_load(tmp_path, embedder, query_vectors):
    """After a restart, Milvus Lite brings collections back released: reads fail with "call load()
    before search/get/query" until something loads them. The next incremental run and searches must
    load what they read (seen on the demo after `aiplat stack down && aiplat stack up`)."""
    articles = sample_kb_articles(8)
    settings = IndexSettings(alias="kb_restart", collection_prefix="kbc_restart")
    data = tmp_path / "data"
    with MilvusLiteServer(data) as first:
        store = IndexStore.connect(first.uri, settings=settings, retry=RetryPolicy(attempts=2, base_delay_s=0.1))
        r1, _, chunks = _build(store, embedder, query_vectors, articles)
        store.close()
    with MilvusLiteServer(data) as second:
        store = IndexStore.connect(second.uri, settings=settings, retry=RetryPolicy(attempts=2, base_delay_s=0.1))
        try:
            from pymilvus.client.types import LoadState

            assert store.client.get_load_state(r1.collection)["state"] != LoadState.Loaded  # the state that broke runs
            r2, s2, _ = _build(store, embedder, query_vectors, articles)
            assert r2.mode == "incremental" and r2.collection == r1.collection and s2["embedded"] == 0
            assert store.count(r2.collection) == len(chunks)
            assert len(search_text(store, embedder, "print a return label", k=3)) == 3
        finally:
            store.close()
