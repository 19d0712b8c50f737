"""Group `retrieval`: chunks of the redacted KB, their embeddings, the served Milvus index and its
backups. Thin: the work is done by aiplat.retrieval, which the CLI and the tests also call."""

import dagster as dg
import numpy as np
import pandas as pd

from aiplat.retrieval.backup import backup_collection
from aiplat.retrieval.chunking import ChunkingConfig, chunk_articles, latest_kb_snapshot
from aiplat.retrieval.diff import key_set_sha256
from aiplat.retrieval.guard import GUARD_CHECK, evaluate_guard, guard_passed_in_run, plan_deletions
from aiplat.retrieval.index import build_index, embed_chunks
from aiplat.retrieval.queries import QUERY_SET
from aiplat.scale.ray_cluster import LoggedProgress
from aiplat.retrieval.recall import collection_recall
from aiplat.security.access import PLATFORM_TEAM
from resources.embeddings import EmbeddingResource
from resources.milvus import MilvusResource
from resources.operations import OperationsResource
from resources.ray import RayResource

GROUP = "retrieval"
OWNERS = [PLATFORM_TEAM]


class KbChunkingConfig(dg.Config):
    max_words: int = 160
    overlap_words: int = 32


@dg.asset(
    # A KB batch is a whole snapshot: only the latest landed one is read (not every snapshot ever
    # landed, which would make each reindex cost grow with the KB's history).
    ins={"redacted_kb_articles": dg.AssetIn(key=["redacted_kb_articles"], partition_mapping=dg.LastPartitionMapping())},
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pandas"},
    description="Overlapping, paragraph-aligned chunks of the latest redacted KB snapshot (only that "
    "partition is read); chunk_id = hash(article_id, chunk index, text).",
)
def kb_chunks(
    context: dg.AssetExecutionContext, config: KbChunkingConfig, redacted_kb_articles: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    snapshot = latest_kb_snapshot(redacted_kb_articles)
    chunks = chunk_articles(snapshot, ChunkingConfig(config.max_words, config.overlap_words))
    batch = str(snapshot["_batch"].iloc[0]) if "_batch" in snapshot.columns and len(snapshot) else ""
    sources = sorted(snapshot["_source_sha256"].unique().tolist()) if "_source_sha256" in snapshot.columns else []
    return dg.Output(
        chunks,
        metadata={
            "dagster/row_count": len(chunks),
            "articles": int(snapshot["article_id"].nunique()) if len(snapshot) else 0,
            "kb_batch": batch,
            "source_sha256": ",".join(sources),
            "chunk_set_sha256": key_set_sha256(chunks["chunk_id"]),
            "max_words": config.max_words,
            "overlap_words": config.overlap_words,
        },
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pandas", "pytorch"},
    description="One vector per chunk. Chunks whose id already sits in a collection made by the "
    "same model reuse that vector; only new or changed chunks are embedded.",
)
def kb_embeddings(
    context: dg.AssetExecutionContext, kb_chunks: pd.DataFrame, embeddings: EmbeddingResource, milvus: MilvusResource,
    ray: RayResource,
) -> dg.Output[pd.DataFrame]:
    embedder = embeddings.embedder
    progress = LoggedProgress(context.log.info, "embedding new or changed chunks")
    embedded, stats = embed_chunks(kb_chunks, embedder, milvus.store, encode=embeddings.encoder(ray.cluster(), progress))
    context.log.info(f"embedded {stats['embedded']} new/changed chunks, reused {stats['reused']}")
    return dg.Output(
        embedded,
        metadata={
            "dagster/row_count": len(embedded),
            "embedded": stats["embedded"],
            "reused": stats["reused"],
            "dim": stats["dim"],
            "model_id": embedder.model_id,
            "model_fingerprint": embedder.fingerprint,
            "chunk_set_sha256": key_set_sha256(embedded["chunk_id"]),
            **progress.metadata(url=dg.MetadataValue.url),
        },
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"milvus"},
    # Milvus gone for longer than the store's own per-call retries: try the step again later;
    # upserts are idempotent and the alias moves only after verification.
    retry_policy=dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description="The Milvus collection behind the serving alias. Incremental upserts in place; a new "
    "model or index parameters build a new versioned collection that is verified (row count, key "
    "set, recall@10) before the alias moves to it atomically. The previous one is kept for rollback.",
)
def kb_index(
    context: dg.AssetExecutionContext, kb_embeddings: pd.DataFrame, embeddings: EmbeddingResource, milvus: MilvusResource
) -> dg.MaterializeResult:
    embedder = embeddings.embedder
    plan = plan_deletions(milvus.store, kb_embeddings[["chunk_id", "article_id", "chunk_index"]], milvus.max_delete_share)
    if plan.needs_confirmation and not guard_passed_in_run(context.instance, context.run_id, plan):
        raise dg.Failure(
            f"{plan.describe()}; kb_index applies that only after {GUARD_CHECK} passed for this chunk set in "
            "the same run (materialize kb_chunks with its checks, or `aiplat index reindex`). Served index unchanged.",
            metadata=plan.metadata(),
            allow_retries=False,  # a refusal, not a fault: retrying cannot change it
        )
    from aiplat.retrieval.index import IndexVerificationError

    queries = embedder.encode(list(QUERY_SET))
    try:
        report = build_index(milvus.store, kb_embeddings, embedder.model_id, queries)
    except IndexVerificationError as e:
        # Row count, key set or recall did not verify: the alias stayed where it was; a retry
        # would build and fail the same way (the RetryPolicy is for Milvus going away).
        raise dg.Failure(str(e), allow_retries=False) from e
    context.log.info(
        f"{report.mode}: alias {report.alias} -> {report.collection} "
        f"(added {report.diff.added}, updated {report.diff.updated}, deleted {report.diff.deleted}, "
        f"unchanged {report.diff.unchanged})"
    )
    return dg.MaterializeResult(
        metadata={
            **report.metadata(),
            "dagster/row_count": report.row_count,
            "model_id": embedder.model_id,
            "index_type": milvus.index_type,
            "index_params": dg.MetadataValue.json(dict(milvus.index_params)),
        }
    )


@dg.asset_check(asset=kb_index, blocking=True, description="recall@10 of the served alias against exact "
                "brute-force search over the collection's own vectors, on the fixed query set.")
def kb_index_recall(embeddings: EmbeddingResource, milvus: MilvusResource) -> dg.AssetCheckResult:
    store = milvus.store
    queries = embeddings.embedder.encode(list(QUERY_SET))
    recall, rows = collection_recall(store, store.settings.alias, queries)
    return dg.AssetCheckResult(
        passed=bool(rows > 0 and recall >= milvus.recall_threshold),
        metadata={
            "recall_at_k": round(recall, 4),
            "k": milvus.recall_k,
            "threshold": milvus.recall_threshold,
            "queries": len(QUERY_SET),
            "rows": rows,
            "collection": store.served_collection() or "",
        },
    )


@dg.asset(
    deps=[kb_index],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"milvus", "s3"},
    description="A backup of the served collection: rows, schema, query-set answers and a manifest "
    "with counts and the sha256 of the primary-key set.",
)
def kb_index_backup(
    context: dg.AssetExecutionContext, embeddings: EmbeddingResource, milvus: MilvusResource
) -> dg.MaterializeResult:
    queries = embeddings.embedder.encode(list(QUERY_SET))
    result = backup_collection(milvus.store, milvus.artifacts(), np.asarray(queries), queries=list(QUERY_SET))
    m = result.manifest
    return dg.MaterializeResult(
        metadata={
            "backup_id": result.backup_id,
            "location": dg.MetadataValue.url(result.location) if result.location.startswith("s3://")
            else dg.MetadataValue.path(result.location),
            "collection": m["collection"],
            "dagster/row_count": m["row_count"],
            "articles": m["article_count"],
            "key_set_sha256": m["key_set_sha256"],
            "files": len(m["files"]),
        }
    )


class DeletionGuardConfig(dg.Config):
    confirm_deletions: int = -1
    """The exact number of served rows the operator agrees to delete (the count the blocked check
    named); -1 = no confirmation."""


@dg.asset_check(
    asset=kb_chunks,
    name=GUARD_CHECK,
    blocking=True,
    description="Blocks a KB snapshot that would delete more than the milvus resource's max_delete_share "
    "(default 10%) of the served index, naming the count, until an operator confirms that exact count "
    "(config confirm_deletions, or `aiplat index reindex --confirm-deletions N`); confirmations are audited.",
)
def kb_index_deletion_guard(
    context: dg.AssetCheckExecutionContext,
    config: DeletionGuardConfig,
    kb_chunks: pd.DataFrame,
    milvus: MilvusResource,
    operations: OperationsResource,
) -> dg.AssetCheckResult:
    from aiplat.security.access import current_identity

    plan = plan_deletions(milvus.store, kb_chunks, milvus.max_delete_share)
    identity = current_identity(context.run.tags)
    decision, entry = evaluate_guard(plan, config.confirm_deletions, identity, operations.audit_log(), context.run.run_id)
    metadata = {**plan.metadata(), "confirm_deletions": config.confirm_deletions}
    if entry is not None:
        metadata.update({"confirmed_by": identity.requested_by or identity.actor, "audit_entry_sha256": entry["hash"]})
    (context.log.info if decision.passed else context.log.error)(decision.description)
    return dg.AssetCheckResult(
        passed=decision.passed, severity=dg.AssetCheckSeverity.ERROR, description=decision.description, metadata=metadata
    )


retrieval_assets = [kb_chunks, kb_embeddings, kb_index, kb_index_backup]
retrieval_asset_checks = [kb_index_recall, kb_index_deletion_guard]
