"""`aiplat index`: search the served KB index, back it up, restore it, roll the alias back.

Heavy imports (pymilvus, torch) stay inside the commands: `aiplat --help` imports this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

_CONNECTION = [
    click.option("--uri", envvar="AIPLAT_MILVUS_URI", default=None,
                 help="Milvus URI (default: the local Milvus Lite server on AIPLAT_MILVUS_PORT)."),
    click.option("--token", envvar="AIPLAT_MILVUS_TOKEN", default="", show_default=False, show_envvar=True,
                 help="Milvus token; read it from the environment rather than typing it."),
    click.option("--alias", default="kb_chunks", show_default=True, help="The serving alias."),
]


def _connection(fn: Callable) -> Callable:
    for option in reversed(_CONNECTION):
        fn = option(fn)
    return fn


def _resource(uri: str | None, token: str, alias: str, backup_uri: str | None = None) -> Any:
    """The runtime's Milvus resource (prod: AIPLAT_MILVUS_* through dg.EnvVar), with what the
    caller passed on the command line in place of its settings."""
    from aiplat.commands import _resources

    return _resources.with_overrides("milvus", uri=uri, token=token, alias=alias, backup_uri=backup_uri)


@contextmanager
def _failures() -> Iterator[None]:
    """Library errors become one clear line and a non-zero exit, not a traceback."""
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its RPC errors repeat ours, with tracebacks
    from aiplat.retrieval.backup import BackupError
    from aiplat.retrieval.index import IndexVerificationError
    from aiplat.retrieval.retry import MilvusUnavailableError

    try:
        yield
    except (MilvusUnavailableError, BackupError, IndexVerificationError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _progress(description: str) -> Iterator[None]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as p:
        p.add_task(description, total=None)
        yield


@click.group()
def cli() -> None:
    """The KB vector index in Milvus: search, reindex, backup, restore, rollback."""


@cli.command()
@click.argument("query")
@click.option("--k", "k", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@_connection
def search(query: str, k: int, as_json: bool, uri: str | None, token: str, alias: str) -> None:
    """Search the served alias for QUERY."""
    with _failures():
        from aiplat.retrieval.index import search_text
        from resources.embeddings import EmbeddingResource

        with _progress("loading the embedding model"):
            embedder = EmbeddingResource().load()
        store = _resource(uri, token, alias).open_store()
        try:
            hits = search_text(store, embedder, query, k)
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps(hits, indent=2))
        return
    if not hits:
        click.echo(f"no results (alias {alias} serves an empty collection?)")
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h["text"].split())[:120]
        click.echo(f"{rank:2d}. {h['score']:.3f}  {h['article_id']}#{h['chunk_index']}  {h['title']}\n      {snippet}")
    if hits:
        click.echo(f"(served by {hits[0]['index_version']})", err=True)


@cli.command()
@_connection
def status(uri: str | None, token: str, alias: str) -> None:
    """The alias and every kept collection with its row count."""
    with _failures():
        store = _resource(uri, token, alias).open_store()
        try:
            served = store.served_collection()
            click.echo(f"alias {alias} -> {served or '(none)'}")
            for name in store.collections():
                click.echo(f"  {'*' if name == served else ' '} {name}  {store.count(name)} rows")
        finally:
            store.close()


@cli.command()
@click.option("--collection", default=None, help="Collection to back up (default: the one the alias serves).")
@click.option("--to", "backup_uri", envvar="AIPLAT_MILVUS_BACKUP_URI", default=None,
              help="Folder, file:// or s3://bucket/prefix (default: <state dir>/milvus/backups).")
@click.option("--s3-endpoint-url", envvar="AIPLAT_S3_ENDPOINT_URL", default=None)
@_connection
def backup(collection: str | None, backup_uri: str | None, s3_endpoint_url: str | None,
           uri: str | None, token: str, alias: str) -> None:
    """Write a collection's rows, schema, query answers and manifest to the artifact store."""
    with _failures():
        from aiplat.retrieval.backup import backup_collection
        from aiplat.retrieval.queries import QUERY_SET
        from resources.embeddings import EmbeddingResource

        resource = _resource(uri, token, alias, backup_uri)
        with _progress("loading the embedding model"):
            queries = EmbeddingResource().load().encode(list(QUERY_SET))
        store = resource.open_store()
        try:
            from aiplat.retrieval.artifacts import open_store

            artifacts = open_store(resource.backup_uri or str(_default_backups()), s3_endpoint_url)
            with _progress("backing up"):
                result = backup_collection(store, artifacts, queries, collection=collection, queries=list(QUERY_SET))
        finally:
            store.close()
    m = result.manifest
    click.echo(f"backup {result.backup_id}: {m['row_count']} rows of {m['collection']}, "
               f"key set sha256 {m['key_set_sha256'][:16]}...\n  at {result.location}")


@cli.command()
@click.argument("backup_id")
@click.option("--from", "backup_uri", envvar="AIPLAT_MILVUS_BACKUP_URI", default=None,
              help="Where the backup lives (default: <state dir>/milvus/backups).")
@click.option("--s3-endpoint-url", envvar="AIPLAT_S3_ENDPOINT_URL", default=None)
@click.option("--target", default=None, help="Name of the restored collection (default: the backed-up name).")
@click.option("--serve", is_flag=True, help="Move the alias to the restored collection once verified.")
@_connection
def restore(backup_id: str, backup_uri: str | None, s3_endpoint_url: str | None, target: str | None, serve: bool,
            uri: str | None, token: str, alias: str) -> None:
    """Recreate BACKUP_ID and verify count, key-set hash and top-10 answers before anything is served."""
    with _failures():
        from aiplat.retrieval.artifacts import open_store
        from aiplat.retrieval.backup import restore_backup

        store = _resource(uri, token, alias).open_store()
        try:
            artifacts = open_store(backup_uri or str(_default_backups()), s3_endpoint_url)
            with _progress(f"restoring {backup_id}"):
                info = restore_backup(store, artifacts, backup_id, target=target, serve=serve)
        finally:
            store.close()
    click.echo(f"restored {info['collection']}: {info['row_count']} rows, key set verified, "
               f"top-10 agreement {info['top_k_agreement']:.3f}")
    if serve:
        click.echo(f"alias {alias} -> {info['collection']} (was {info['previous_collection'] or 'unset'})")


@cli.command()
@click.option("--confirm-deletions", type=click.IntRange(min=0), default=None,
              help="Confirm that the KB snapshot may delete exactly this many served rows (the count "
                   "kb_index_deletion_guard named when it blocked). Audited.")
def reindex(confirm_deletions: int | None) -> None:
    """Run kb_reindex now (chunks, embeddings, index, backup) with the runtime's resources.

    A snapshot that would delete more than max_delete_share of the served index is blocked by
    kb_index_deletion_guard, which names the count; rerun with --confirm-deletions COUNT to apply it.
    """
    from aiplat.commands._dagster import instance_and_defs
    from aiplat.security.identity import caller_identity
    from platform_defs.headless import reindex_kb

    instance, defs = instance_and_defs()
    # The run acts as the platform's service account; the verified caller is recorded as the one
    # who asked (and confirmed), attribution only.
    with _progress("reindexing the KB"):
        summary, guard = reindex_kb(defs, instance, confirm_deletions, requested_by=caller_identity().actor)
    for line in guard:
        click.echo(f"kb_index_deletion_guard: {line}")
    click.echo(f"run {summary.run_id}: {'succeeded' if summary.success else 'FAILED'}")
    for key in summary.materialized:
        click.echo(f"  materialized {key}")
    for check in summary.failed_checks:
        click.echo(f"  check failed: {check}")
    if not summary.success:
        raise click.ClickException(f"kb_reindex failed; see run {summary.run_id} in the Dagster UI")


@cli.command()
@click.argument("collection")
@_connection
def rollback(collection: str, uri: str | None, token: str, alias: str) -> None:
    """Point the alias back at a kept COLLECTION (see `aiplat index status`)."""
    with _failures():
        from aiplat.retrieval.index import rollback as do_rollback

        store = _resource(uri, token, alias).open_store()
        try:
            previous = do_rollback(store, collection)
        finally:
            store.close()
    click.echo(f"alias {alias} -> {collection} (was {previous or 'unset'})")


def _default_backups() -> Any:
    from aiplat.config import local_paths

    return local_paths().milvus / "backups"
