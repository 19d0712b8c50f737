"""Read-only views of the MLflow model registry for the CLI and the audit trail."""

from __future__ import annotations

LINEAGE_TAGS = (
    "dagster.run_id",
    "dagster.asset_key",
    "aiplat.code_version",
    "aiplat.git_commit",
    "aiplat.training_set_sha256",
    "aiplat.base_model_sha256",
    "aiplat.base_model_source",
    "aiplat.adapter_sha256",
    "aiplat.run_url",
)


class ModelNotFoundError(LookupError):
    pass


def list_models(client) -> list[dict]:
    out = []
    for rm in client.search_registered_models(max_results=1000):
        versions = [int(v.version) for v in (rm.latest_versions or [])]
        all_versions = client.search_model_versions(f"name='{rm.name}'")
        out.append(
            {
                "name": rm.name,
                "versions": len(all_versions),
                "latest_version": max((int(v.version) for v in all_versions), default=max(versions, default=0)),
                "aliases": dict(sorted((rm.aliases or {}).items())),
                "description": rm.description or "",
            }
        )
    return sorted(out, key=lambda m: m["name"])


def model_overview(specs, client) -> list[dict]:
    """Every model the platform knows: each spec (owner, task, endpoint) with what the registry holds
    for it (versions, champion), and registered models no spec declares (owner from their tag)."""
    registered = {m["name"]: m for m in list_models(client)}
    out = []
    for spec in specs:
        m = registered.pop(spec.name, None)
        out.append({"name": spec.name, "owner": spec.owner, "task": spec.task, "endpoint": spec.endpoint,
                    "spec": spec.source_file, "versions": m["versions"] if m else 0,
                    "champion": _alias(m, "champion"), "aliases": m["aliases"] if m else {}})
    for name, m in registered.items():
        owner = (client.get_registered_model(name).tags or {}).get("owner_team")
        out.append({"name": name, "owner": owner, "task": None, "endpoint": None, "spec": None,
                    "versions": m["versions"], "champion": _alias(m, "champion"), "aliases": m["aliases"]})
    return sorted(out, key=lambda m: m["name"])


def _alias(model: dict | None, alias: str) -> str | None:
    value = (model or {}).get("aliases", {}).get(alias)
    return str(value) if value is not None else None


def describe_model(client, name: str) -> dict:
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFoundError(f"no registered model named {name!r}") from None
        raise
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in (rm.aliases or {}).items():
        aliases_by_version.setdefault(str(version), []).append(alias)
    versions = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), reverse=True):
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = {k: v for k, v in client.get_run(mv.run_id).data.metrics.items() if not k.startswith("system/")}
            except MlflowException:
                metrics = {}
        versions.append(
            {
                "version": int(mv.version),
                "status": mv.status,
                "aliases": sorted(aliases_by_version.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "source": mv.source,
                "created": mv.creation_timestamp,
                "metrics": dict(sorted(metrics.items())),
                "lineage": {k: mv.tags[k] for k in LINEAGE_TAGS if k in (mv.tags or {})},
            }
        )
    return {"name": rm.name, "description": rm.description or "", "aliases": dict(rm.aliases or {}), "versions": versions}
