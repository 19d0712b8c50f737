"""PII: every raw batch is scanned, its findings recorded, and a redacted copy made.

The redacted datasets are the only inputs downstream stages may read. A blocking check re-scans
each redacted batch before it is written; a residual finding fails the check and the step, and
the redacted batch is not written. A scanner that fails or cannot load fails the step the same
way (fail closed): no unscanned record reaches a redacted dataset.
"""

import dagster as dg
import pandas as pd

from aiplat.pii.dataset import findings_frame, redact_frame, residuals, scan_columns
from aiplat.pii.engine import PiiScanError
from aiplat.provenance import code_version, frame_hash
from aiplat.scale.ray_cluster import LoggedProgress
from assets.intake import BATCHES, raw_asset_key
from resources.presidio import PresidioResource
from resources.ray import RayResource

OWNER = "team:platform"
CHECK_NAME = "no_residual_pii"

FINDINGS_KEYS = {"tickets": dg.AssetKey("ticket_pii_findings"), "kb_articles": dg.AssetKey("kb_pii_findings")}
REDACTED_KEYS = {"tickets": dg.AssetKey("redacted_tickets"), "kb_articles": dg.AssetKey("redacted_kb_articles")}


def _counts_metadata(prefix: str, counts: dict[str, int]) -> dict[str, int]:
    return {f"{prefix}{entity}": n for entity, n in sorted(counts.items())}


def _build_pii_stage(dataset_name: str) -> dg.AssetsDefinition:
    raw_key = raw_asset_key(dataset_name)
    findings_key, redacted_key = FINDINGS_KEYS[dataset_name], REDACTED_KEYS[dataset_name]
    partitions = BATCHES[dataset_name]

    @dg.multi_asset(
        name=f"redact_{dataset_name}",
        ins={"raw": dg.AssetIn(key=raw_key)},
        outs={
            findings_key.to_python_identifier(): dg.AssetOut(
                key=findings_key,
                description=(f"PII findings in raw {dataset_name}: record id, field, entity type, span, score, "
                             "recognizer. Never the value itself."),
                group_name="pii", owners=[OWNER], kinds={"presidio", "pandas", "parquet"},
            ),
            redacted_key.to_python_identifier(): dg.AssetOut(
                key=redacted_key,
                description=(f"{dataset_name} with free text redacted and identifiers pseudonymized (keyed HMAC, "
                             "stable across datasets). The only form of this data downstream stages may read."),
                group_name="pii", owners=[OWNER], kinds={"presidio", "pandas", "parquet"},
            ),
        },
        partitions_def=partitions,
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_NAME, asset=redacted_key, blocking=True,
                description="Re-scans the redacted batch; any finding above threshold fails it, and nothing is "
                            "written or run downstream.",
            )
        ],
        op_tags={"aiplat/stage": "pii"},
    )
    def redact(context: dg.AssetExecutionContext, raw: pd.DataFrame, presidio: PresidioResource, ray: RayResource):
        config = presidio.config_for(dataset_name)
        progress = LoggedProgress(context.log.info, f"{dataset_name} batch {context.partition_key}: PII scan")
        scanner = presidio.scanner(dataset_name, ray.cluster(), progress)
        ids = raw[config.id_field].tolist() if len(raw) else []
        lines = raw["_line"].tolist() if len(raw) else []  # errors name lines: an id may itself hold PII
        try:
            scan = scan_columns({f: raw[f].tolist() for f in (*config.text_fields, *config.list_fields)
                                 if f in raw.columns}, lines, config, scanner)
            redacted = redact_frame(raw, scan, config, presidio.pseudonymizer)
            residual = residuals(redacted, config, scanner)
        except PiiScanError as e:
            raise dg.Failure(f"{dataset_name} batch {context.partition_key}: {e}; nothing was written") from None
        counts = scan.entity_counts()
        context.log.info(f"{dataset_name} batch {context.partition_key}: {len(raw)} records, {scan.total} findings "
                         f"({', '.join(f'{k}={v}' for k, v in counts.items()) or 'none'})")
        common = {
            "code_version": code_version(),
            "owner": OWNER,
            "upstream_raw_hash": frame_hash(raw),
            "scanner_config": config.fingerprint(),
            "ner_model": f"{config.nlp.engine}:{config.nlp.model_name}",
            **progress.metadata(url=dg.MetadataValue.url),
        }
        findings = findings_frame(ids, scan, extra={"_batch": raw["_batch"].tolist() if len(raw) else [],
                                                    "_line": raw["_line"].tolist() if len(raw) else []})
        yield dg.Output(
            findings, output_name=findings_key.to_python_identifier(),
            metadata={**common, "dagster/row_count": len(findings), "records_scanned": len(raw),
                      "records_with_pii": sum(1 for n in scan.record_totals() if n),
                      **_counts_metadata("entities/", counts)},
        )
        yield dg.AssetCheckResult(
            check_name=CHECK_NAME, asset_key=redacted_key, passed=residual.clean,
            metadata={"residual_findings": sum(residual.by_entity.values()),
                      "records_with_residuals": len(residual.records),
                      **_counts_metadata("residual/", residual.by_entity),
                      **{f"non_token_{k}": v for k, v in residual.bad_identifiers.items()}},
        )
        if not residual.clean:
            raise dg.Failure(
                f"{dataset_name} batch {context.partition_key}: re-scan of the redacted batch found "
                f"{sum(residual.by_entity.values())} residual findings in {len(residual.records)} records "
                f"(first lines: {residual.records[:5]}) and {sum(residual.bad_identifiers.values())} identifiers "
                "that are not pseudonyms; the redacted batch was not written"
            )
        yield dg.Output(
            redacted, output_name=redacted_key.to_python_identifier(),
            metadata={**common, "dagster/row_count": len(redacted), "content_hash": frame_hash(redacted),
                      "pseudonym_key": "local development key (not a secret)" if presidio.uses_dev_key
                      else "AIPLAT_PII_HMAC_KEY",
                      **_counts_metadata("redacted/", counts)},
        )

    return redact


redact_tickets = _build_pii_stage("tickets")
redact_kb_articles = _build_pii_stage("kb_articles")


@dg.asset(
    key="pii_quality_report",
    group_name="pii",
    owners=[OWNER],
    kinds={"presidio", "pandas"},
    description="Precision, recall and F2 per entity type of the tickets scanner on a generated labeled set "
                "(templates + Faker, exact spans). Recall targets: 0.99 pattern entities, 0.90 PERSON.",
)
def pii_quality_report(context: dg.AssetExecutionContext, presidio: PresidioResource) -> dg.Output[pd.DataFrame]:
    from aiplat.config import local_paths
    from aiplat.pii.quality import evaluate_scanner

    try:
        report = evaluate_scanner(local_paths().root / "reports" / "pii", config=presidio.config_for("tickets"),
                                  workers=presidio.workers)
    except PiiScanError as e:
        raise dg.Failure(str(e)) from None
    frame = pd.DataFrame([
        {"entity_type": e, "support": s.support, "recall": s.recall, "precision": s.precision, "f2": s.f2}
        for e, s in report.scores.items()
    ])
    return dg.Output(frame, metadata={
        **report.metadata(),
        "report": dg.MetadataValue.md(report.markdown),
        "plot": dg.MetadataValue.path(str(report.plot_path)),
        "targets_met": all(report.targets_met.values()),
        "ner_model": report.model,
        "code_version": code_version(),
        "owner": OWNER,
    })
