"""Ray for the heavy data stages: where the platform's Ray cluster is, and ordered batch maps on it.

One code path for both runtimes. A `RayCluster` with an `address` joins that cluster (prod: the
KubeRay head's client address, `ray://<head-svc>:10001`, from AIPLAT_RAY_ADDRESS); without one, it
joins the head `aiplat stack up ray` runs (its token from the state folder, its dashboard linked),
else a private local Ray instance starts in this process on the first heavy call (127.0.0.1 only,
no configuration, no network; Ray's own token authentication on) and stops when the process ends.
A Dagster step that never reaches a parallel path never starts Ray.

`ordered_map` runs a stateful transform over a list with Ray Data (`map_batches` on a pool of
actors, each loading its model once) and gives the results back in input order, with progress
reported as batches finish. An error in any batch fails the whole map: no partial result.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (items done, items in all)

_LOCK = threading.Lock()
_CONNECTED: RayConnection | None = None


class RayMapError(RuntimeError):
    """A Ray map failed; nothing of it may be used. The message names the stage, never the data."""


@dataclass(frozen=True)
class RayConnection:
    address: str  # what the driver joined ("local" for a private instance)
    dashboard_url: str  # "" when the instance runs no dashboard
    private: bool  # started by this process, and gone with it
    cpus: float

    def describe(self) -> str:
        where = "a private local Ray instance" if self.private else f"the Ray cluster at {self.address}"
        return f"{where} ({self.cpus:g} CPUs{', dashboard ' + self.dashboard_url if self.dashboard_url else ''})"


@dataclass(frozen=True)
class RayCluster:
    """Which Ray cluster heavy stages run on: `address`; "" = the local head `aiplat stack up ray`
    runs, else a private local instance."""

    address: str = ""
    num_cpus: int | None = None  # of a private instance; default: this machine's CPUs
    dashboard_url: str = ""  # where people follow the jobs (prod: the KubeRay dashboard's URL)

    def connect(self) -> RayConnection:
        """Join (or start) the cluster once per process; later calls reuse the connection. A
        process joins one cluster at a time: asked for another, it leaves the one it is in."""
        global _CONNECTED
        with _LOCK:
            head = None if self.address else stack_head()
            target = self.address or (head[0] if head else "local")
            if _CONNECTED is not None:
                import ray

                if ray.is_initialized() and _CONNECTED.address == target:
                    return _CONNECTED
                ray.shutdown()
                _CONNECTED = None
            if head:  # the head `aiplat stack up ray` runs: the state folder's token lets this process in
                _use_token()
            import ray

            started = time.perf_counter()
            common = {"log_to_driver": False, "configure_logging": False, "namespace": "aiplat"}
            if target != "local":
                _reachable(target)
                context = ray.init(address=target, **common)
            else:
                context = _start_private(ray, self.num_cpus or os.cpu_count() or 1, common)
            cpus = float(ray.cluster_resources().get("CPU", 0))
            dashboard = self.dashboard_url or (head[1] if head else "") or (
                f"http://{context.dashboard_url}" if context.dashboard_url else "")
            _CONNECTED = RayConnection(target, dashboard, target == "local", cpus)
            log.info("joined %s in %.1f s", _CONNECTED.describe(), time.perf_counter() - started)
            return _CONNECTED


# Ray waits a fixed 30 s for a new node's raylet to register; on a loaded 2-core machine (a test
# run with two workers, each starting real servers) it once took longer and every test of a module
# failed in its set-up. The start is tried again, after the half-started processes are stopped.
START_ATTEMPTS = 3
_START_TIMEOUT = "timed out during startup"


def _start_private(ray, num_cpus: int, common: dict):
    for attempt in range(1, START_ATTEMPTS + 1):
        before = _own_ray_processes()
        try:
            # address="local": a new instance even where `ray start` left a cluster address file
            # (a bare ray.init() would join that one).
            return ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                            _node_ip_address="127.0.0.1", **common)
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            if _START_TIMEOUT not in str(e) or attempt == START_ATTEMPTS:
                raise
            log.warning("the private Ray instance did not start in Ray's 30 s (attempt %d of %d; a busy machine?): "
                        "stopping what it started and trying again", attempt, START_ATTEMPTS)
            ray.shutdown()
            _stop(_own_ray_processes() - before)
    raise AssertionError("unreachable")


def _own_ray_processes() -> set[int]:
    """PIDs of this process's descendants that run Ray (its GCS, raylet, workers, monitors)."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            argv = child.cmdline()
            if argv and (argv[0].startswith("ray::") or any("/ray/" in part for part in argv)):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def _stop(pids: set[int]) -> None:
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
            procs[-1].kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=10)


def stack_head() -> tuple[str, str] | None:
    """(address, dashboard URL) of the Ray head `aiplat stack up ray` runs for this state folder,
    when it is up and healthy (the local runtime only); else None."""
    from aiplat.config import runtime

    if runtime() != "local":
        return None
    from aiplat import stack

    [status] = stack.status([stack.RAY])
    return (f"127.0.0.1:{status.port}", status.url or "") if status.state == "running" else None


def _use_token() -> None:
    """Ray reads its authentication settings from the environment only (RAY_AUTH_MODE,
    RAY_AUTH_TOKEN_PATH): set them for this process, and have an already imported Ray read them
    again (what Ray's own `_enable_token_auth` does)."""
    import sys

    from aiplat.stack import ray_client_env

    os.environ.update(ray_client_env())
    if "ray._raylet" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _reachable(address: str, timeout: float = 10.0) -> None:
    """ConnectionError unless something accepts connections at `address` ("ray://host:port" or
    "host:port"): ray.init retries an unreachable head without end, and a step must not hang."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(f"nothing answers at {address} ({e})") from None


def current() -> RayConnection | None:
    """The cluster this process joined, if it did."""
    return _CONNECTED


class LoggedProgress:
    """`ordered_map`'s progress as log lines (where it runs, then about every tenth), and where the
    maps of one step ran, for its metadata."""

    def __init__(self, say: Callable[[str], None], what: str) -> None:
        self.say, self.what = say, what
        self.maps = 0
        self._tenth = 0

    def __call__(self, done: int, total: int) -> None:
        if done == 0:  # a map starts
            self.maps += 1
            self._tenth = 0
            where = current()
            self.say(f"{self.what}: {total} items on {where.describe() if where else 'Ray'}")
            return
        tenth = done * 10 // max(total, 1)
        if tenth > self._tenth:
            self._tenth = tenth
            self.say(f"{self.what}: {done}/{total} done")

    def metadata(self, url: Callable[[str], object] = str) -> dict:
        """{"ran_on": ...} and, when there is one, the dashboard's URL (as `url` makes it: a Dagster
        step passes dg.MetadataValue.url, so the UI links it)."""
        where = current() if self.maps else None
        if where is None:
            return {"ran_on": "this process (below the Ray threshold)"}
        return {"ran_on": where.describe(), **({"ray_dashboard": url(where.dashboard_url)} if where.dashboard_url else {})}


def shutdown() -> None:
    """Leave the cluster (a private instance stops with it)."""
    global _CONNECTED
    import ray

    with _LOCK:
        if ray.is_initialized():
            ray.shutdown()
        _CONNECTED = None


def ordered_map(cluster: RayCluster, items: Sequence[str], transform: type, args: tuple, *, workers: int,
                batch_size: int, progress: Progress | None = None) -> list:
    """`transform(*args)` called on batches {"item": [...]} by `workers` Ray actors; each returns
    {"out": [JSON text per item]}. The decoded outputs in the order of `items`."""
    if not items:
        return []
    try:
        cluster.connect()  # before Ray's import: joining the stack's head sets Ray's auth variables
    except Exception as e:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, ValueError, ...
        raise RayMapError(f"cannot reach the Ray cluster at {cluster.address or 'the local Ray'}: "
                          f"{_cause(e)}") from None
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # progress goes to `progress`
    rows = [{"index": i, "item": item} for i, item in enumerate(items)]
    blocks = max(1, min(len(rows), workers * 4))  # several blocks per actor keep every actor busy
    dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _Indexed, fn_constructor_args=(transform, args), batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, batch_format="numpy")
    out: list = [None] * len(items)
    done = 0
    if progress is not None:
        progress(0, len(items))
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for index, text in zip(batch["index"], batch["out"]):
                out[int(index)] = json.loads(text)
            done += len(batch["index"])
            if progress is not None:
                progress(done, len(items))
    except Exception as e:  # noqa: BLE001 - Ray wraps the transform's error in its own types
        raise RayMapError(_cause(e)) from None
    missing = sum(1 for o in out if o is None)
    if missing:
        raise RayMapError(f"Ray returned no result for {missing} of {len(items)} items")
    return out


class _Indexed:
    """Keeps each row's index beside the transform's output (actors may finish batches out of order)."""

    def __init__(self, transform: type, args: tuple) -> None:
        self.transform = transform(*args)

    def __call__(self, batch: dict) -> dict:
        result = self.transform({"item": list(batch["item"])})
        outputs = list(result["out"])
        if len(outputs) != len(batch["item"]):
            raise RayMapError(f"a batch of {len(batch['item'])} items gave {len(outputs)} results")
        return {"index": batch["index"], "out": outputs}


def _cause(error: BaseException) -> str:
    """The innermost error's type and first line: Ray's own wrapping says where it ran, and the
    transform's messages are written never to hold the data (a traceback's locals might)."""
    seen = error
    while True:
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    text = str(seen).strip().splitlines()
    message = text[-1] if text else ""
    return f"{type(seen).__name__}: {message}" if message else type(seen).__name__
