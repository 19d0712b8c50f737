"""`aiplat k8s`: housekeeping of the Kubernetes objects Dagster runs leave behind (prod)."""

from __future__ import annotations

from typing import Any

import click


def _clients(kubeconfig: str | None) -> tuple[Any, Any]:
    """BatchV1Api and CoreV1Api: in-cluster credentials (the CronJob's service account) unless a
    kubeconfig is given."""
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()
    return client.BatchV1Api(), client.CoreV1Api()


@click.group()
def cli() -> None:
    """Kubernetes housekeeping for the prod runtime."""


@cli.command()
@click.option("--namespace", envvar="AIPLAT_K8S_NAMESPACE", required=True, show_envvar=True,
              help="Namespace the K8sRunLauncher creates run Jobs in.")
@click.option("--grace-seconds", type=click.IntRange(min=0), default=300, show_default=True,
              help="Leave a run's objects alone for this long after the run ended.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this kubeconfig instead of the in-cluster service account.")
def sweep(namespace: str, grace_seconds: int, dry_run: bool, kubeconfig: str | None) -> None:
    """Delete Jobs/Pods still active although their Dagster run ended (label dagster/run-id)."""
    import dagster as dg

    from aiplat.operations.k8s_orphans import sweep_orphans

    from dagster._core.errors import DagsterHomeNotSetError

    try:
        instance = dg.DagsterInstance.get()  # the deployment's instance: the sweep asks it for run status
    except DagsterHomeNotSetError as exc:
        raise click.ClickException(f"DAGSTER_HOME is not set; the sweep needs the Dagster instance ({exc})") from exc
    batch_api, core_api = _clients(kubeconfig)
    with instance:
        actions = sweep_orphans(instance, batch_api, core_api, namespace, grace_seconds=grace_seconds, dry_run=dry_run)
    for action in actions:
        click.echo(action.line())
    removed = sum(a.action != "kept" for a in actions)
    click.echo(f"{removed} of {len(actions)} run objects in {namespace} {'would be ' if dry_run else ''}deleted")
