"""The runtime's resources for CLI commands, resolved as a Dagster step would get them.

They are the set the Definitions use (platform_defs.resources, picked by aiplat.config.runtime()),
so `AIPLAT_ENV=prod aiplat ...` writes the audit log and reads the request log the prod pods use,
not local defaults. A resource holding dg.EnvVar settings is only usable once its config has been
processed; outside a run that happens here, and a variable that is not set becomes a click error
naming it. Imports stay inside the functions: `aiplat --help` imports every command module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

_UNSET_VAR = re.compile(r'environment variable "([^"]+)" which is not set')


def runtime() -> str:
    from aiplat import config

    try:
        return config.runtime()
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def declared(key: str) -> Any:
    """Resource `key` of the runtime's set as declared (dg.EnvVar settings not yet read)."""
    from platform_defs.resources import resources_for

    return resources_for(runtime())[key]  # type: ignore[arg-type]


def resolve(resource: Any, key: str) -> Any:
    """`resource` with its config processed (env vars read) and setup_for_execution run."""
    with config_errors(f"resource {key!r}"):
        return resource.process_config_and_initialize()


@contextmanager
def config_errors(what: str = "the runtime's resources") -> Iterator[None]:
    """Dagster config errors raised inside (a dg.EnvVar that is not set) become a click error naming
    the variables, as `resolve` does for one resource."""
    import dagster as dg

    from aiplat.config import MissingSecret

    try:
        yield
    except MissingSecret as e:  # set but empty, or a dev key where prod needs its own
        raise click.ClickException(f"{what}: {e}") from None
    except dg.DagsterInvalidConfigError as e:
        missing = sorted(set(_UNSET_VAR.findall(str(e))))
        if not missing:
            raise click.ClickException(f"{what}: {str(e).splitlines()[0]}") from None
        raise click.ClickException(
            f"AIPLAT_ENV={runtime()}: {what} needs {', '.join(missing)} set in the environment "
            f"(see platform_defs/resources.py)"
        ) from None


def with_overrides(key: str, **given: Any) -> Any:
    """Resource `key` of the runtime's set with the settings a caller passed explicitly (options
    left empty keep the runtime's, dg.EnvVar ones read now: an unset one is a click error naming
    it). Not initialized: for resources whose methods build their own clients (e.g. Milvus's
    open_store), which Dagster will not initialize outside a context manager."""
    import dagster as dg

    declared_resource = declared(key)
    overrides = {k: v for k, v in given.items() if v not in (None, "")}
    fields = {name: getattr(declared_resource, name) for name in declared_resource.model_fields_set}
    merged = {**fields, **overrides}
    missing = sorted(v.env_var_name for v in merged.values() if isinstance(v, dg.EnvVar) and v.get_value() is None)
    if missing:
        raise click.ClickException(
            f"AIPLAT_ENV={runtime()}: resource {key!r} needs {', '.join(missing)} set in the environment "
            f"(see platform_defs/resources.py)"
        )
    return type(declared_resource)(**{k: v.get_value() if isinstance(v, dg.EnvVar) else v for k, v in merged.items()})


@contextmanager
def runtime_resource_cm(key: str) -> Iterator[Any]:
    """Like runtime_resource, for a resource with setup and teardown (e.g. presidio's key check)."""
    with config_errors(f"resource {key!r}"), declared(key).process_config_and_initialize_cm() as ready:
        yield ready


def runtime_resource(key: str) -> Any:
    """Resource `key` of the runtime's set, resolved and ready to use outside Dagster."""
    return resolve(declared(key), key)


def operations() -> Any:
    """resources.operations.OperationsResource: audit log, request log, owners, rates."""
    return runtime_resource("operations")


def mlflow(tracking_uri: str | None = None) -> Any:
    """resources.mlflow.MLflowResource: the runtime's, or the one at an explicit `tracking_uri`,
    signed in with the caller's own token (never the service account's): the registry then refuses
    whatever the caller's account may not do."""
    from aiplat.security.identity import CredentialError, presented_token

    try:
        token = presented_token() or ""
    except CredentialError:
        token = ""  # an unreadable token file: no credential (the access check says why)
    mlflow_ = declared("mlflow")
    kept = {name: getattr(mlflow_, name) for name in ("tracking_uri", "registry_uri", "system_metrics_interval_s")}
    if tracking_uri:
        kept.update(tracking_uri=tracking_uri, registry_uri=None)
    return resolve(type(mlflow_)(**kept, token=token), "mlflow")


def _signing(*fields: str) -> Any:
    """The runtime's `model_signing` with only `fields` (and the public keys) of its settings, resolved:
    a host that deploys or promotes must not need the other private keys or their passwords set."""
    signing = declared("model_signing")
    kept = ("key_label", "public_key_path", "approval_public_key_path", *fields)
    return resolve(type(signing)(**{name: getattr(signing, name) for name in kept}), "model_signing")


def serving_keys() -> Any:
    """The public keys serving verifies with (aiplat.security.approval.ServingKeys): the runtime's
    `model_signing` build-signature key and promotion-approval key."""
    return _signing().serving_keys()


def approver() -> Any:
    """The key pair promotion approvals are signed with (the runtime's `model_signing` approval pair:
    prod AIPLAT_APPROVAL_PRIVATE_KEY / _PUBLIC_KEY); promoting needs neither the build-signing
    private key nor its password."""
    with config_errors("resource 'model_signing'"):
        return _signing("approval_private_key_path").approver()
