"""MLflow: experiment tracking and the model registry.

A thin resource over mlflow's MlflowClient rather than dagster-mlflow's `mlflow_tracking`: that
one configures mlflow's process-global fluent state from environment variables and starts runs
on resource init, while the platform wants one explicit client per step, its tracking URI from
typed config, and a run that exists only around the training it records.

Local: the stack's server on http://127.0.0.1:<AIPLAT_MLFLOW_PORT> (tracking_uri left unset).
Prod: `MLflowResource.prod()` reads MLFLOW_TRACKING_URI through dg.EnvVar (a URI with credentials
stays out of the UI; metadata and tags only ever carry the redacted form).

The server authenticates platform tokens (aiplat.security.mlflow_auth): a Dagster step presents the
code location's service token (prod AIPLAT_SERVICE_TOKEN, locally its token file); the CLI builds
this resource with the caller's own token, so MLflow grants the caller exactly their rights.
"""


from typing import Optional

import dagster as dg
from pydantic import Field, PrivateAttr

from aiplat import config



def local_tracking_uri() -> str:
    return f"http://127.0.0.1:{config.local_ports().mlflow}"


class MLflowResource(dg.ConfigurableResource):
    """The tracking server and registry one step talks to; which model and experiment is the
    model spec's (every model's chain shares this one resource)."""

    tracking_uri: Optional[str] = Field(
        default=None, description="MLflow tracking URI; unset = the local stack's server."
    )
    registry_uri: Optional[str] = Field(default=None, description="Registry URI when it differs from tracking.")
    system_metrics_interval_s: float = Field(
        default=5.0, ge=0, description="Sampling interval of system/* metrics; 0 turns them off."
    )
    token: Optional[str] = Field(
        default=None,
        description="The platform token MLflow authenticates; unset = the code location's service account, "
                    "empty = none (a server with authentication then answers 401).",
    )

    _client = PrivateAttr(default=None)
    _uri = PrivateAttr(default="")

    @classmethod
    def local(cls) -> "MLflowResource":
        """The local stack's server; the port is read when a step starts (AIPLAT_MLFLOW_PORT)."""
        return cls()

    @classmethod
    def prod(cls) -> "MLflowResource":
        return cls(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), token=dg.EnvVar("AIPLAT_SERVICE_TOKEN"))

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._connect()

    def _connect(self) -> None:
        from mlflow.tracking import MlflowClient

        from aiplat.security import mlflow_auth
        from aiplat.security.identity import service_token

        # MLflow's clients (tracking, registry, artifact downloads, system metrics) read the
        # credential from the process environment only.
        mlflow_auth.present(service_token() if self.token is None else self.token)
        self._uri = self.tracking_uri or local_tracking_uri()
        self._client = MlflowClient(tracking_uri=self._uri, registry_uri=self.registry_uri or self._uri)

    @property
    def client(self):
        if self._client is None:  # used outside a Dagster step (CLI, tests)
            self._connect()
        return self._client

    @property
    def uri(self) -> str:
        return self._uri or self.tracking_uri or local_tracking_uri()

    def check_available(self) -> None:
        """Raises aiplat.training.tracking.MlflowUnavailableError with a clear message."""
        from aiplat.training.tracking import preflight

        preflight(self.client, self.uri, consequence="")
