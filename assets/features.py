"""Features: redacted tickets become Feast feature tables, an applied registry and an online store.
Each model's point-in-time training set is generated from its spec (assets/model_lifecycle.py)."""


from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from aiplat.features import gates, incremental, tables
from aiplat.features import store as feast_store
from aiplat.provenance import code_version, frame_hash
from aiplat.security.access import PLATFORM_TEAM
from assets.intake import TICKET_BATCHES
from resources.feast import FeastResource
from resources.lake import LakeIOManager

OWNER = PLATFORM_TEAM
GROUP = "features"
REDACTED_TICKETS = dg.AssetKey(["redacted_tickets"])
# Columns that hold pseudonymous tokens: a value that is not one means redaction was bypassed.
PSEUDONYMOUS_COLUMNS: dict[str, tuple[str, ...]] = {
    "customer_features": ("customer_id",),
    "ticket_features": (),
}
# The row key findings are reported by: never a column that could itself be raw PII.
FINDING_KEYS: dict[str, str | None] = {"customer_features": None, "ticket_features": "ticket_id"}


class FeatureTableConfig(dg.Config):
    full_rebuild: bool = False  # recompute from every landed batch instead of folding in the new ones


def _landed_batches(context: dg.AssetExecutionContext) -> list[tuple[str, int]]:
    """Every materialized batch of redacted_tickets with its latest materialization's storage id,
    in landing order (the order the landing sensor added the partitions)."""
    instance = context.instance
    storage_ids = instance.get_latest_storage_id_by_partition(REDACTED_TICKETS, dg.DagsterEventType.ASSET_MATERIALIZATION)
    return [(b, storage_ids[b]) for b in instance.get_dynamic_partitions(TICKET_BATCHES.name) if b in storage_ids]


def _build_table(context: dg.AssetExecutionContext, config: FeatureTableConfig, feast: FeastResource,
                 lake: LakeIOManager, view: str) -> dg.MaterializeResult:
    path = feast.table_path(view)
    stored = feast_store.read_offline_table_with_metadata(path)
    previous, state = (stored[0], incremental.FoldState.from_metadata(stored[1])) if stored else (None, None)
    fold = incremental.plan_fold(state, _landed_batches(context), incremental.table_code(view), config.full_rebuild)
    context.log.info(f"{view}: {'full rebuild' if fold.full else 'incremental'} ({fold.reason}); "
                     f"reading {len(fold.new)} batch(es)")
    unchanged = not fold.full and not fold.new and previous is not None
    if unchanged:
        table, computed = previous, pd.DataFrame()
    else:
        base = None if fold.full else previous
        new_rows = lake.read_partitions(REDACTED_TICKETS, list(fold.new)) if fold.new else pd.DataFrame()
        folded = [] if fold.full else [b for b in fold.state.batches if b not in fold.new]

        def history(customers: set[str] | None, tickets: set[str] | None) -> pd.DataFrame:
            # Only the already folded batches' rows of these customers (or tickets) are read.
            if not folded or (customers is not None and not customers) or (tickets is not None and not tickets):
                return pd.DataFrame(columns=new_rows.columns)
            column, values = ("customer_id", customers) if customers is not None else ("ticket_id", tickets)
            return lake.read_partitions(REDACTED_TICKETS, folded, filters=[(column, "in", sorted(values))])

        if new_rows.empty:
            new_rows = pd.DataFrame(columns=list(tables.REQUIRED_TICKET_COLUMNS))
        if view == "customer_features":
            table, computed = incremental.fold_customer_features(base, new_rows, history)
        else:
            table, computed = incremental.fold_ticket_features(base, new_rows)
    return _write_table(path, view, table, computed, fold, rewrite=not unchanged)


def _write_table(path: Path, view: str, table: pd.DataFrame, computed: pd.DataFrame, fold: incremental.FoldPlan,
                 rewrite: bool = True) -> dg.MaterializeResult:
    # The rows computed in this run are checked; the rest were checked when they were written.
    findings = gates.find_raw_pii(computed, FINDING_KEYS[view], PSEUDONYMOUS_COLUMNS[view])
    if findings:
        # Refuse before writing: the offline store keeps its previous good table.
        sample = ", ".join(f"{f.column} in {f.row_key}: {f.kind}" for f in findings[:5])
        raise dg.Failure(
            f"{view}: {len(findings)} raw PII value(s) would reach the feature table ({sample}); "
            "nothing was written",
            metadata={"findings": dg.MetadataValue.int(len(findings))},
        )
    if rewrite:  # no new batch: the stored table and its fold state are already what this run would write
        feast_store.write_offline_table(path, table, fold.state.to_metadata())
    newest = pd.to_datetime(table["event_timestamp"], utc=True).max() if len(table) else None
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(len(table)),
            "dagster/uri": dg.MetadataValue.path(str(path)),
            "columns": dg.MetadataValue.json(gates.column_types(table)),
            "content_hash": dg.MetadataValue.text(frame_hash(table)),
            "newest_event": dg.MetadataValue.text(newest.isoformat() if newest is not None else "none"),
            "feast_view": dg.MetadataValue.text(view),
            "mode": dg.MetadataValue.text("full rebuild" if fold.full else "incremental"),
            "mode_reason": dg.MetadataValue.text(fold.reason),
            "batches_read": dg.MetadataValue.json(list(fold.new)),
            "batches_folded": dg.MetadataValue.int(len(fold.state.batches)),
            "rows_computed": dg.MetadataValue.int(len(computed)),
            "owner": dg.MetadataValue.text(OWNER),
            "code_version": dg.MetadataValue.text(code_version()),
        }
    )


_INCREMENTAL = (" Incremental: each run reads only the batches landed since the previous one (and, "
                "for customers, the earlier tickets of the customers they touch); run config "
                "`full_rebuild: true` recomputes from every batch.")


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"pandas", "parquet", "feast"},
    deps=[REDACTED_TICKETS],
    description=(
        "Per customer, as of each of their tickets: ticket counts over 7/30/90 days, rate, "
        "high-priority rate, category mix, tenure and most frequent product, over the tickets "
        "before that moment. Feast offline store (feature view `customer_features`)." + _INCREMENTAL
    ),
)
def customer_features(
    context: dg.AssetExecutionContext,
    config: FeatureTableConfig,
    feast: FeastResource,
    lake: dg.ResourceParam[LakeIOManager],
) -> dg.MaterializeResult:
    return _build_table(context, config, feast, lake, "customer_features")


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"pandas", "parquet", "feast"},
    deps=[REDACTED_TICKETS],
    description=(
        "Per ticket: subject/message length, words, language (offline heuristic), PII findings "
        "and their density per 1,000 characters, channel, priority, product. Feast offline store "
        "(feature view `ticket_features`)." + _INCREMENTAL
    ),
)
def ticket_features(
    context: dg.AssetExecutionContext,
    config: FeatureTableConfig,
    feast: FeastResource,
    lake: dg.ResourceParam[LakeIOManager],
) -> dg.MaterializeResult:
    return _build_table(context, config, feast, lake, "ticket_features")


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"feast"},
    description=(
        "The Feast registry applied from feature_repo/ (`feast apply`). Its data version is the "
        "hash of the definitions, so a changed definition marks everything downstream stale."
    ),
)
def feature_registry(context: dg.AssetExecutionContext, feast: FeastResource) -> dg.MaterializeResult:
    defs = feast.definitions()
    result = feast_store.apply_definitions(feast.store, defs)
    if result.deleted:
        context.log.warning(f"removed from the registry (no longer declared): {', '.join(result.deleted)}")
    ttl = {fv.name: str(fv.ttl) for fv in defs.feature_views}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.fingerprint),
        metadata={
            "project": dg.MetadataValue.text(result.project),
            "definitions_hash": dg.MetadataValue.text(result.fingerprint),
            "feature_views": dg.MetadataValue.json(result.feature_views),
            "feature_services": dg.MetadataValue.json(result.feature_services),
            "entities": dg.MetadataValue.json(result.entities),
            "ttl": dg.MetadataValue.json(ttl),
            "deleted": dg.MetadataValue.json(result.deleted),
            "online_store": dg.MetadataValue.text(feast.describe()),
            "owner": dg.MetadataValue.text(OWNER),
            "code_version": dg.MetadataValue.text(code_version()),
        },
    )


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"feast"},
    deps=[customer_features, ticket_features, feature_registry],
    # The online store (Redis in prod) can drop out for seconds; Feast advances the registry's
    # window only after a successful write, so a retry loads the same window again.
    retry_policy=dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description=(
        "The online store, loaded from the offline tables: a backfill the first time, then "
        "incremental (`materialize_incremental`) from where the previous run ended."
    ),
)
def online_features(context: dg.AssetExecutionContext, feast: FeastResource) -> dg.MaterializeResult:
    views = [fv.name for fv in feast.definitions().feature_views if fv.online]
    done = feast_store.materialize(feast.store, views, end=datetime.now(timezone.utc))
    windows = {
        m.view: {"mode": m.mode, "start": m.start.isoformat(), "end": m.end.isoformat(), "rows": m.source_rows}
        for m in done
    }
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(sum(m.source_rows for m in done)),
            "windows": dg.MetadataValue.json(windows),
            "online_store": dg.MetadataValue.text(feast.describe()),
            "owner": dg.MetadataValue.text(OWNER),
            "code_version": dg.MetadataValue.text(code_version()),
        }
    )


# ---------------------------------------------------------------------------------------------
# gates


def _no_raw_pii_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    view = asset.key.path[-1]

    @dg.asset_check(
        asset=asset,
        name="no_raw_pii",
        blocking=True,
        description=(
            "No e-mail, phone, card (Luhn), SSN, IBAN or IP value in any text column, and every id "
            "column holds a pseudonymous token. Findings name column, row and kind, never the value."
        ),
    )
    def _check(feast: FeastResource) -> dg.AssetCheckResult:
        table = feast_store.read_offline_table(feast.table_path(view))
        findings = gates.find_raw_pii(table, FINDING_KEYS[view], PSEUDONYMOUS_COLUMNS[view])
        by_kind: dict[str, int] = {}
        for f in findings:
            by_kind[f"{f.column}:{f.kind}"] = by_kind.get(f"{f.column}:{f.kind}", 0) + 1
        return dg.AssetCheckResult(
            passed=not findings,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "rows_scanned": dg.MetadataValue.int(len(table)),
                "findings": dg.MetadataValue.int(len(findings)),
                "findings_by_column_and_kind": dg.MetadataValue.json(by_kind),
                "first_rows": dg.MetadataValue.json([f.row_key for f in findings[:20]]),
            },
        )

    return _check


def _freshness_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    view = asset.key.path[-1]

    @dg.asset_check(
        asset=asset,
        name="within_ttl",
        description="The newest feature row is younger than the feature view's TTL (older rows stop serving).",
    )
    def _check(feast: FeastResource) -> dg.AssetCheckResult:
        ttl = feast.definitions().view(view).ttl
        table = feast_store.read_offline_table(feast.table_path(view))
        result = gates.freshness(table["event_timestamp"], ttl)
        return dg.AssetCheckResult(
            passed=result.fresh,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "newest_event": dg.MetadataValue.text(result.newest.isoformat() if result.newest else "none"),
                "age_hours": dg.MetadataValue.float(result.age.total_seconds() / 3600 if result.age else -1.0),
                "ttl_hours": dg.MetadataValue.float(ttl.total_seconds() / 3600),
            },
        )

    return _check


def _schema_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    view = asset.key.path[-1]

    @dg.asset_check(
        asset=asset,
        name="schema_changes",
        blocking=True,
        description=(
            "Fails (blocking) when a column the Feast view declares is missing; warns and lists "
            "columns added, removed or retyped since the previous materialization."
        ),
    )
    def _check(context: dg.AssetCheckExecutionContext, feast: FeastResource) -> dg.AssetCheckResult:
        records = context.instance.fetch_materializations(asset.key, limit=2).records
        if not records:
            raise dg.Failure(f"{view} has no materialization to check")
        metadata = [r.asset_materialization.metadata for r in records if r.asset_materialization]
        current = metadata[0]["columns"].value
        previous = metadata[1]["columns"].value if len(metadata) > 1 and "columns" in metadata[1] else None
        change = gates.schema_change(previous, current)
        declared = [f.name for f in feast.definitions().view(view).schema] + ["event_timestamp"]
        missing = [c for c in declared if c not in current]
        return dg.AssetCheckResult(
            passed=not missing and not change.changed,
            severity=dg.AssetCheckSeverity.ERROR if missing else dg.AssetCheckSeverity.WARN,
            metadata={
                "missing_declared": dg.MetadataValue.json(missing),
                "added": dg.MetadataValue.json(change.added),
                "removed": dg.MetadataValue.json(change.removed),
                "retyped": dg.MetadataValue.json(change.retyped),
                "previous_known": dg.MetadataValue.bool(change.previous_known),
                "columns": dg.MetadataValue.int(len(current)),
            },
        )

    return _check


feature_checks = [
    factory(asset)
    for asset in (customer_features, ticket_features)
    for factory in (_no_raw_pii_check, _freshness_check, _schema_check)
]

feature_assets = [customer_features, ticket_features, feature_registry, online_features]
