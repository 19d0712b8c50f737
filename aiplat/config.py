"""Where the platform runs and where its local state lives.

This is the one place that reads the process environment for platform-wide choices. Everything
else asks these functions, at call time, never at import time.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Runtime = Literal["local", "prod"]
RUNTIMES: tuple[Runtime, ...] = ("local", "prod")

RUNTIME_ENV_VAR = "AIPLAT_ENV"
STATE_DIR_ENV_VAR = "AIPLAT_STATE_DIR"


def runtime() -> Runtime:
    """`local` (the default, no configuration, no network) or `prod` (settings from the env)."""
    value = os.environ.get(RUNTIME_ENV_VAR, "local").strip().lower() or "local"
    if value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV_VAR}={value!r} is not a runtime; choose one of {', '.join(RUNTIMES)}")
    return value  # type: ignore[return-value]


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """The one git-ignored folder that holds all local state (services, data, models, logs)."""
    configured = os.environ.get(STATE_DIR_ENV_VAR)
    return Path(configured).resolve() if configured else project_root() / ".aiplat"


@dataclass(frozen=True)
class LocalPaths:
    root: Path

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def milvus(self) -> Path:
        return self.root / "milvus"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def venvs(self) -> Path:
        return self.root / "venvs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def local_paths() -> LocalPaths:
    return LocalPaths(state_dir())


@dataclass(frozen=True)
class LocalPorts:
    dagster: int = 3000
    mlflow: int = 5000
    milvus: int = 19530
    gateway: int = 4000
    ray: int = 6390  # the Ray head's GCS (not 6379: Redis's)
    ray_dashboard: int = 8265


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{name}={port} is outside 1..65535")
    return port


def local_ports() -> LocalPorts:
    """Ports of the local runtime's services; each can be moved with an AIPLAT_*_PORT variable."""
    defaults = LocalPorts()
    return LocalPorts(
        dagster=_port("AIPLAT_DAGSTER_PORT", defaults.dagster),
        mlflow=_port("AIPLAT_MLFLOW_PORT", defaults.mlflow),
        milvus=_port("AIPLAT_MILVUS_PORT", defaults.milvus),
        gateway=_port("AIPLAT_GATEWAY_PORT", defaults.gateway),
        ray=_port("AIPLAT_RAY_PORT", defaults.ray),
        ray_dashboard=_port("AIPLAT_RAY_DASHBOARD_PORT", defaults.ray_dashboard),
    )


MODELS_DIR_ENV_VAR = "AIPLAT_MODELS_DIR"
GATE_POLICY_ENV_VAR = "AIPLAT_GATE_POLICY"


def models_dir() -> Path:
    """Where the model spec files live (one `<name>.yaml` per model). Specs name each model's owner
    team, which the access checks trust, so only the local runtime (laptops, tests) may point
    elsewhere with AIPLAT_MODELS_DIR; in prod they are the reviewed files shipped in the image."""
    configured = os.environ.get(MODELS_DIR_ENV_VAR)
    if configured and runtime() == "local":
        return Path(configured).resolve()
    return project_root() / "models"


def gate_policy_file() -> Path:
    """The platform's gate policy. Only the local runtime (laptops, tests) may point elsewhere with
    AIPLAT_GATE_POLICY; in prod it is always the reviewed file shipped in the image, so nothing a
    run launcher or a pod template sets can swap in a looser policy."""
    shipped = project_root() / "aiplat" / "policy" / "gate_policy.yaml"
    configured = os.environ.get(GATE_POLICY_ENV_VAR)
    if configured and runtime() == "local":
        return Path(configured).resolve()
    return shipped


def git_commit_override() -> str | None:
    """Production images carry no .git: their build sets AIPLAT_GIT_COMMIT instead."""
    return os.environ.get("AIPLAT_GIT_COMMIT") or None


def dagster_home() -> Path:
    """DAGSTER_HOME when set (prod, tests), else the local runtime's instance folder."""
    configured = os.environ.get("DAGSTER_HOME")
    return Path(configured) if configured else local_paths().dagster_home


def pod_attestation() -> str:
    """The promotion attestation a serving pod's manifest carries for its verify-model init container
    (AIPLAT_ATTESTATION; signed, so whoever sets the variable still cannot forge an approval)."""
    return os.environ.get("AIPLAT_ATTESTATION", "")


def team_from_env() -> str | None:
    """The team `aiplat chat` bills by default (AIPLAT_TEAM): attribution through the local gateway's
    header, never a right (rights come from a verified credential: aiplat.security.identity)."""
    return (os.environ.get("AIPLAT_TEAM") or "").strip() or None


# Variables a child server may inherit. Everything else in the parent's environment stays behind:
# a Dagster step process carries whatever its imports set (Feast's `feast.metrics` points
# PROMETHEUS_MULTIPROC_DIR at a temp folder that is gone by the time a long-lived vLLM server
# answers /metrics), plus credentials the child has no business seeing.
CHILD_ENV_PASSTHROUGH = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL",
    # Machine-specific BLAS safety settings (older OpenBLAS builds miscompute without them).
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
    # Passive OpenMP waiting (set in aiplat/__init__.py): spinning threads starve a shared machine.
    "OMP_WAIT_POLICY",
    # The runtime choice and the local state/ports, so a child finds the same platform.
    RUNTIME_ENV_VAR, STATE_DIR_ENV_VAR, "AIPLAT_DAGSTER_PORT", "AIPLAT_MLFLOW_PORT", "AIPLAT_MILVUS_PORT",
    "AIPLAT_GATEWAY_PORT", "AIPLAT_MODELS_DIR", GATE_POLICY_ENV_VAR, "PYTHONPATH",
)


def prefer_passive_openmp() -> None:
    """OpenMP threads (torch's intra-op pool, vLLM's CPU kernels) spin while they wait for work by
    default. Where another busy process shares the cores (a vLLM server, a second run, Ray workers)
    the spinning threads take the cores from the ones with work. Measured on this 2-core machine
    beside a busy test run: SmolLM2 generation through transformers (3 x 6 prompts x 16 tokens, 2
    threads) 224.8 s, with passive waiting 24.6 s (1 thread: 20.6 s); a vLLM CPU server 2.8 tok/s
    spinning, 8.7 tok/s passive. OpenMP reads the variable once, when torch loads it: so it is set
    when the platform's package is imported, and children get it through `child_env`. An
    operator's own setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def child_env(extra: dict[str, str] | None = None, passthrough: tuple[str, ...] = ()) -> dict[str, str]:
    """An explicit environment for a process the platform starts: the allow-listed variables of
    this process (CHILD_ENV_PASSTHROUGH plus `passthrough`), then `extra`. Never a copy of
    os.environ."""
    env = {name: os.environ[name] for name in (*CHILD_ENV_PASSTHROUGH, *passthrough) if name in os.environ}
    env.update(extra or {})
    return env


# A launcher may start the platform with these signals ignored (nohup, some CI runners), and an
# ignored disposition survives exec: a child without its own handler would then sit out every
# SIGTERM the platform sends and only go at the SIGKILL after the grace period.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def default_signals() -> None:
    """`preexec_fn` for the processes the platform starts: the stop signals back to their default."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


class MissingSecret(RuntimeError):
    """A prod setting without which the platform must not start (no silent dev fallback)."""

    def __init__(self, name: str, why: str = "") -> None:
        super().__init__(f"{RUNTIME_ENV_VAR}=prod: {name} is not set (or empty){': ' + why if why else ''}; "
                         "prod never falls back to a development key")
        self.name = name


def prod_secret(name: str, why: str = "") -> str:
    """The value of secret `name` from the environment; MissingSecret naming it when unset or blank."""
    value = os.environ.get(name, "")
    if not value.strip():
        raise MissingSecret(name, why)
    return value


# MLflow's clients (tracking, registry, artifacts, system metrics) take their credential from these
# variables of the process and nowhere else (aiplat.security.mlflow_auth.present sets them).
MLFLOW_CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def set_mlflow_credential(username: str | None, password: str | None) -> None:
    """This process's MLflow credential; None clears it (a server with authentication then says 401)."""
    for name, value in zip(MLFLOW_CREDENTIAL_ENV, (username, password)):
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)


def mlflow_server_env(extra: dict[str, str]) -> dict[str, str]:
    """The prod tracking server's environment: all of its container's (its settings come from a
    Secret through it), plus `extra`. For `exec` in the server's own container only."""
    return {**os.environ, **extra}


def mlflow_auth_config_path() -> Path:
    """Where the prod tracking server writes its auth app's ini (a memory-backed volume)."""
    return Path(os.environ.get("AIPLAT_MLFLOW_AUTH_CONFIG", "/run/mlflow-auth/auth.ini"))
