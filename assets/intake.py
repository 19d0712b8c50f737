"""Intake: landed files become validated raw datasets, one partition per landed batch."""


import dagster as dg
import pandas as pd

from aiplat.intake.batches import quarantine_frame, raw_asset_key, records_frame
from aiplat.intake.landing import BatchNotFound, locate_batch
from aiplat.intake.schema import SCHEMA_VERSION, dataset
from aiplat.intake.validate import REASON_CODES, validate_lines
from aiplat.provenance import code_version
from resources.landing_zone import LandingZone

OWNER = "team:platform"
QUARANTINE_WARN_RATIO = 0.01

TICKET_BATCHES = dg.DynamicPartitionsDefinition(name="ticket_batches")
KB_BATCHES = dg.DynamicPartitionsDefinition(name="kb_batches")
BATCHES = {"tickets": TICKET_BATCHES, "kb_articles": KB_BATCHES}


def quarantine_asset_key(dataset_name: str) -> dg.AssetKey:
    return dg.AssetKey(f"raw_{dataset_name}_quarantine")


def _build_raw_dataset(dataset_name: str, description: str) -> dg.AssetsDefinition:
    spec = dataset(dataset_name)
    partitions = BATCHES[dataset_name]
    raw_key, quarantine_key = raw_asset_key(dataset_name), quarantine_asset_key(dataset_name)

    @dg.multi_asset(
        name=f"ingest_{dataset_name}",
        outs={
            raw_key.to_python_identifier(): dg.AssetOut(
                key=raw_key,
                description=description,
                group_name="intake",
                owners=[OWNER],
                kinds={"pandas", "parquet"},
                metadata={"schema_version": SCHEMA_VERSION},
            ),
            quarantine_key.to_python_identifier(): dg.AssetOut(
                key=quarantine_key,
                description=(
                    f"Lines of landed {dataset_name} files that failed validation, with file, line "
                    "number, reason and the exact bytes (base64): accepted + quarantined = lines read."
                ),
                group_name="intake",
                owners=[OWNER],
                kinds={"pandas", "parquet"},
            ),
        },
        partitions_def=partitions,
        check_specs=[
            dg.AssetCheckSpec(
                "quarantine_rate",
                asset=raw_key,
                description=f"Warns when more than {QUARANTINE_WARN_RATIO:.0%} of a batch's lines are quarantined.",
            )
        ],
        op_tags={"aiplat/stage": "intake"},
    )
    def ingest(context: dg.AssetExecutionContext, landing_zone: LandingZone):
        batch = context.partition_key
        try:
            landed, data, sha = locate_batch(landing_zone, dataset_name, batch)
        except BatchNotFound as e:
            raise dg.Failure(str(e)) from None
        context.log.info(f"validating {landed.uri} ({landed.size} bytes) against {dataset_name} schema v{SCHEMA_VERSION}")
        result = validate_lines(data, spec)
        records = records_frame(result, dataset_name, batch, landed.uri, sha)
        quarantine = quarantine_frame(result, landed.uri)
        reasons = result.reason_counts()
        for q in result.quarantined[:20]:
            context.log.warning(f"quarantined {landed.uri} line {q.line}: {q.reason}")
        context.log.info(
            f"{landed.uri}: {result.lines_read} lines read, {result.accepted} accepted, {len(result.quarantined)} quarantined"
        )
        common = {
            "source_uri": dg.MetadataValue.url(landed.uri) if landed.uri.startswith("s3://") else dg.MetadataValue.path(landed.uri),
            "source_sha256": sha,
            "lines_read": result.lines_read,
            "schema_version": SCHEMA_VERSION,
            "code_version": code_version(),
            "owner": OWNER,
        }
        yield dg.Output(
            records,
            output_name=raw_key.to_python_identifier(),
            metadata={
                **common,
                "dagster/row_count": result.accepted,
                "accepted": result.accepted,
                "quarantined": len(result.quarantined),
                "columns": dg.MetadataValue.json(list(records.columns)),
            },
        )
        yield dg.Output(
            quarantine,
            output_name=quarantine_key.to_python_identifier(),
            metadata={
                **common,
                "dagster/row_count": len(quarantine),
                **{f"reason_{code}": reasons.get(code, 0) for code in REASON_CODES},
                "preview": dg.MetadataValue.md(_quarantine_preview(quarantine)),
            },
        )
        ratio = len(result.quarantined) / result.lines_read if result.lines_read else 0.0
        yield dg.AssetCheckResult(
            check_name="quarantine_rate",
            asset_key=raw_key,
            passed=ratio <= QUARANTINE_WARN_RATIO,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"quarantine_ratio": ratio, "quarantined": len(result.quarantined), "lines_read": result.lines_read},
        )

    return ingest


def _quarantine_preview(df: pd.DataFrame, limit: int = 20) -> str:
    """File, line and reason only: the raw bytes may hold PII and stay out of the UI."""
    if df.empty:
        return "No quarantined lines."
    rows = ["| line | reason |", "|---:|---|"]
    rows += [f"| {r.line} | {r.reason.replace('|', '/')} |" for r in df.head(limit).itertuples()]
    if len(df) > limit:
        rows.append(f"| ... | {len(df) - limit} more |")
    return "\n".join(rows)


ingest_tickets = _build_raw_dataset(
    "tickets",
    "Customer-support tickets as landed, validated against the Ticket schema. Raw: holds PII; only "
    "the pii stage reads it.",
)
ingest_kb_articles = _build_raw_dataset(
    "kb_articles",
    "Knowledge-base articles as landed (each batch is a full snapshot), validated against the "
    "KbArticle schema. Raw: holds PII; only the pii stage reads it.",
)
