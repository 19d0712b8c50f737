"""`aiplat features`: read features the way serving code does (through the Feast resource)."""

from __future__ import annotations

import json

import click


def _parse_entities(values: tuple[str, ...]) -> list[dict[str, str]]:
    """Entity rows from `--entity` options.

    `--entity customer_id=a --entity customer_id=b` -> two rows; `--entity ticket_id=t --entity
    customer_id=c` -> one row with both join keys (a service over two entities); `KEY=V,KEY2=V2`
    in one option is one row. Repeated keys pair up in order, so every key needs the same count.
    """
    rows: list[dict[str, str]] = []
    by_key: dict[str, list[str]] = {}
    for raw in values:
        pairs = [p for p in raw.split(",")] if "," in raw else [raw]
        parsed: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise click.BadParameter(f"{raw!r} is not KEY=VALUE (e.g. customer_id=cust_3f9a...)", param_hint="--entity")
            parsed[key.strip()] = value.strip()
        if len(parsed) > 1:
            rows.append(parsed)
        else:
            [(key, value)] = parsed.items()
            by_key.setdefault(key, []).append(value)
    if by_key:
        counts = {k: len(v) for k, v in by_key.items()}
        if len(set(counts.values())) != 1:
            raise click.BadParameter(
                f"each join key needs the same number of values to pair them into rows; got {counts}", param_hint="--entity")
        n = next(iter(counts.values()))
        rows.extend({k: v[i] for k, v in by_key.items()} for i in range(n))
    keys = {tuple(sorted(r)) for r in rows}
    if len(keys) > 1:
        raise click.BadParameter(f"every entity row needs the same join keys; got {sorted(keys)}", param_hint="--entity")
    return rows


def _join_keys(store, service: str) -> set[str]:
    """The join keys a feature service needs: those of every feature view it reads."""
    keys: set[str] = set()
    for projection in store.get_feature_service(service).feature_view_projections:
        view = store.get_feature_view(projection.name)
        keys.update(c.name for c in view.entity_columns)
    return keys


@click.group()
def cli() -> None:
    """The feature store (Feast): online features by entity."""


@cli.command("get")
@click.option("--service", "service", required=True, help="Feature service, e.g. customer_profile_v1.")
@click.option(
    "--entity", "entities", multiple=True, required=True, help="KEY=VALUE join key; repeat for several entities."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def get(service: str, entities: tuple[str, ...], as_json: bool) -> None:
    """Online features of a feature service for one or more entities."""
    rows = _parse_entities(entities)
    import dagster as dg

    from aiplat import config
    from resources.feast import feast_resource_for

    try:
        with dg.build_resources({"feast": feast_resource_for(config.runtime())}) as resources:
            feast = resources.feast
            try:
                feast.store.get_feature_service(service)
            except Exception as e:  # Feast raises its own FeatureServiceNotFoundException
                known = ", ".join(sorted(s.name for s in feast.store.list_feature_services())) or "none applied"
                raise click.ClickException(f"unknown feature service {service!r} (known: {known})") from e
            needed = _join_keys(feast.store, service)
            given = set(rows[0])
            if needed and given != needed:
                example = " ".join(f"--entity {k}=..." for k in sorted(needed))
                raise click.ClickException(
                    f"{service} joins on {', '.join(sorted(needed))}; got {', '.join(sorted(given))} (use {example})")
            result = feast.get_online_features(service, rows)
    except (click.ClickException, click.exceptions.Exit):
        raise
    except Exception as e:
        raise click.ClickException(f"online lookup failed: {e}") from e

    if as_json:
        click.echo(json.dumps(result, default=str, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    join_keys = list(rows[0])
    table = Table(title=f"{service} (online)")
    table.add_column("feature")
    for i in range(len(rows)):
        table.add_column(str(result.get(join_keys[0], [None] * len(rows))[i]))
    for name in sorted(k for k in result if k not in join_keys):
        table.add_row(name, *["-" if v is None else str(v) for v in result[name]])
    Console().print(table)
    features = [k for k in result if k not in join_keys]
    missing = [i for i in range(len(rows)) if all(result[k][i] is None for k in features)]
    if len(missing) == len(rows):
        raise click.ClickException("no online features for any of the entities (unknown ids, or not materialized yet)")
    if missing:
        click.echo(f"no online features for {len(missing)} of {len(rows)} entities", err=True)
