"""Shared fixtures.

Tests that need a service on 127.0.0.1 (PostgreSQL, Redis) use `require_service`: on a laptop
without it they skip with the reason; under CI (CI=true) a missing service is a failure.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from aiplat.config import STOP_SIGNALS
from aiplat.net import port_open

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The longest module goes first (after pytest-randomly has shuffled the rest): with two workers
# (`make test` runs pytest-xdist with --dist loadfile --no-loadscope-reorder) a run then takes
# about as long as this module or the rest of the suite, whichever is longer, not both in a row.
LONGEST_FIRST = ("tests/test_newcomer_path.py",)


def pytest_configure(config: pytest.Config) -> None:
    # Processes the tests start themselves (not through the platform, which resets these in its
    # children) must not inherit a launcher's ignored SIGTERM either: they would outlive their test.
    # (SIGINT stays as Python set it.)
    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    # Feast instruments its modules with typeguard at import, which calls ast.parse; CPython 3.11.7
    # raises "SystemError: AST constructor recursion depth mismatch" when another thread parses at
    # the same moment (a CI run failed so in tests/test_features_redis.py, a server thread of an
    # earlier test beside it). Importing it here, before any test starts a thread, parses it once.
    # Its import also points PROMETHEUS_MULTIPROC_DIR at a temp folder, and prometheus_client picks
    # multiprocess values for every metric when that variable is set at its own import: so
    # prometheus_client comes first, and the variable goes back to what it was.
    import prometheus_client  # noqa: F401

    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    import feast  # noqa: F401

    if before is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = before


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    first = [item for item in session.items if item.nodeid.split("::")[0] in LONGEST_FIRST]
    if first:
        session.items[:] = first + [item for item in session.items if item.nodeid.split("::")[0] not in LONGEST_FIRST]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # AIPLAT_TEST_TIMINGS=FILE appends each phase's seconds as it ends, so a long run's profile
    # can be read while it runs (--durations prints only at the end).
    path = os.environ.get("AIPLAT_TEST_TIMINGS")
    # Under pytest-xdist the controller gets each worker's reports again (marked with the worker's `node`).
    if path and getattr(report, "node", None) is None:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{report.duration:.2f}\t{report.when}\t{report.outcome}\t{report.nodeid}\n")


def require_service(name: str, host: str, port: int) -> None:
    if port_open(host, port, timeout=2.0):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message}; CI must provide it (a missing service is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private AIPLAT_STATE_DIR, so tests never touch the developer's .aiplat/."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(path))
    monkeypatch.setenv("AIPLAT_ENV", "local")
    return path


def built_vllm_env():
    """The developer's / CI's built vLLM venv (aiplat.stack.VllmEnv), looked up before a test sets a
    private state dir: skipped on a laptop without it, a failure in CI (which must build it)."""
    from aiplat.stack import VLLM_SETUP, vllm_env

    env = vllm_env()
    if not env.ready:
        message = f"no vLLM environment at {env.path}; build it with {VLLM_SETUP}"
        if IN_CI:
            pytest.fail(f"{message} (CI must build it)")
        pytest.skip(message)
    return env



# --- servers and models shared by the whole session ----------------------------------------------
# Each is started once per test session (per xdist worker) and handed to every module that needs
# it; modules keep their data apart by name (registered model, alias/collection prefix), so no
# test depends on another having run, or not run, before it.

# The developer's / CI's own state folder, read at import: before any test points
# AIPLAT_STATE_DIR at a private folder. Only read-only things are taken from it (the vLLM venv,
# the prepared base model).
DEVELOPER_STATE = None


def _developer_state():
    global DEVELOPER_STATE
    if DEVELOPER_STATE is None:
        from aiplat.config import state_dir as _state_dir

        DEVELOPER_STATE = _state_dir()
    return DEVELOPER_STATE


_developer_state()


@pytest.fixture(scope="session")
def shared_mlflow(tmp_path_factory: pytest.TempPathFactory):
    """One real `mlflow server` (SQLite, artifacts proxied) for every module that tracks or registers."""
    from tests.evaluation_helpers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-shared")) as uri:
        yield uri


@pytest.fixture(scope="session")
def shared_milvus(tmp_path_factory: pytest.TempPathFactory):
    """One Milvus Lite server (TCP); tests use private aliases and collection prefixes."""
    from aiplat.retrieval.lite_server import MilvusLiteServer

    with MilvusLiteServer(tmp_path_factory.mktemp("milvus-shared") / "data") as server:
        yield server


@pytest.fixture(scope="session")
def shared_embedder():
    from aiplat.retrieval.embedding import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def smollm_base() -> Path:
    """The real SmolLM2-135M-Instruct folder, converted once: the one `make test` prepared under the
    developer's state folder (bootstrap), else prepared there now. Read-only for tests: a test that
    signs, tampers with or serves a modified copy copies it first (`copy_model`)."""
    from aiplat.models.base import prepare_base_model

    return prepare_base_model(dest_root=_developer_state() / "models" / "base").path


def copy_model(source: Path, dest: Path) -> Path:
    """A private, real copy of a model folder (not hard links: some tests flip bytes in place)."""
    import shutil

    shutil.copytree(source, dest)
    return dest
