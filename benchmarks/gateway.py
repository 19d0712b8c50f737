"""What the metering gateway adds to a request: the same chat completions sent straight to an
upstream and through the gateway (adapter-route lookup in a routes file, labels, forwarding, one
request-log line), in interleaved rounds in this one process.

The default upstream answers at once (an OpenAI-shaped app in the same process), so the difference
is the gateway's own cost; `--upstream URL --served-model NAME` measures in front of a real server
(e.g. a local base-model vLLM server, NAME one of its adapters `<model>@<version>` or the base
model), where generation dominates.

`--compare litellm mlflow` also measures, in front of the same instant upstream and interleaved in
the same rounds, LiteLLM's proxy (`litellm --config`, from the venv given by --litellm-python,
scripts/setup_litellm_bench.sh makes it: it conflicts with this venv's pins) and the AI
Gateway inside MLflow's tracking server (`mlflow server`, an endpoint made in its SQLite store,
OpenAI-compatible route /gateway/mlflow/v1/chat/completions). Those run as their own server
processes, as they would in production; the platform gateway runs in this process (uvicorn thread).
The platform gateway is measured with an API key (the prod identity path) and a hard budget set,
so the numbers include key lookup, reservation and the fsynced request-log line.

    .venv/bin/python benchmarks/gateway.py [--requests 300] [--concurrency 1 8] [--compare litellm mlflow]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiplat.net import free_port, wait_for_port  # noqa: E402
from aiplat.operations.cost import CostRates  # noqa: E402
from aiplat.operations.requests import RequestLog  # noqa: E402
from aiplat.serving.budgets import InProcessLedger  # noqa: E402
from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes  # noqa: E402
from aiplat.serving.gateway import GatewaySettings, build_app  # noqa: E402

ENDPOINT = "bench"


def instant_upstream() -> Starlette:
    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "category: billing"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 42, "completion_tokens": 5, "total_tokens": 47}})

    return Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])


def serve(app) -> tuple[str, uvicorn.Server]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def run(url: str, model: str, requests: int, concurrency: int, headers: dict) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms)."""
    body = {"model": model, "messages": [{"role": "user", "content": "My invoice is wrong."}], "max_tokens": 8,
            "temperature": 0}
    latencies: list[float] = []
    with httpx.Client(limits=httpx.Limits(max_connections=concurrency), timeout=300) as client:
        def one(_: int) -> None:
            t0 = time.perf_counter()
            response = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            latencies.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return requests / elapsed, statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))]


BENCH_KEY = "sk-bench-team-ml-0000"
LITELLM_MASTER_KEY = "sk-" + hashlib.sha256(os.urandom(32)).hexdigest()  # it refuses to start without one


def _wait_http(url: str, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def start_litellm(python: str, upstream: str, served: str, work: Path) -> tuple[str, subprocess.Popen]:
    """LiteLLM's proxy without a database (no virtual keys or budgets: those need PostgreSQL)."""
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: {ENDPOINT}
    litellm_params:
      model: openai/{served}
      api_base: {upstream}/v1
      api_key: not-used
litellm_settings:
  telemetry: false
""")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work), "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "NO_PROXY": "*", "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY}
    bindir = Path(python).parent
    process = subprocess.Popen([str(bindir / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                                "--port", str(port), "--num_workers", "1"], env=env, cwd=work,
                               stdout=(work / "litellm.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/health/liveliness", process, "litellm")
    return url, process


def start_mlflow_gateway(upstream: str, served: str, work: Path, usage_tracking: bool) -> tuple[str, subprocess.Popen]:
    """MLflow's tracking server with one AI Gateway endpoint (OpenAI provider, api_base = upstream)."""
    from mlflow.entities.gateway_endpoint import GatewayEndpointModelConfig, GatewayModelLinkageType
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = f"sqlite:///{work / 'mlflow.db'}"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work), "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_CRYPTO_KEK_PASSPHRASE": "benchmark-only-passphrase", "NO_PROXY": "*",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("MLFLOW_")})
    store = SqlAlchemyStore(db, str(work / "artifacts"))
    secret = store.create_gateway_secret("bench-secret", {"api_key": "not-used"}, provider="openai",
                                         auth_config={"api_base": f"{upstream}/v1"})
    model = store.create_gateway_model_definition("bench-model", secret.secret_id, "openai", served)
    store.create_gateway_endpoint(ENDPOINT, [GatewayEndpointModelConfig(
        model_definition_id=model.model_definition_id, linkage_type=GatewayModelLinkageType.PRIMARY, weight=1.0)],
        usage_tracking=usage_tracking)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db,
                                "--default-artifact-root", str(work / "artifacts"), "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"], env=env, cwd=work,
                               stdout=(work / "mlflow.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/health", process, "mlflow server")
    return f"{url}/gateway/mlflow", process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstream", default=None, help="Base URL of a real OpenAI-compatible server")
    parser.add_argument("--served-model", default=None, help="Its served model name (with --upstream)")
    parser.add_argument("--compare", nargs="*", default=[], choices=["litellm", "mlflow"],
                        help="Also measure these gateways in front of the same upstream")
    parser.add_argument("--litellm-python", default=None,
                        help="Python of a venv with litellm[proxy] (default: <state>/venvs/litellm-bench, "
                             "from scripts/setup_litellm_bench.sh)")
    parser.add_argument("--mlflow-usage-tracking", action="store_true",
                        help="Create MLflow's endpoint with usage tracking (traces), which its budgets need")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiplat-gateway-bench-"))
    if args.upstream:
        upstream, served = args.upstream.rstrip("/"), args.served_model or ENDPOINT
    else:
        upstream, _ = serve(instant_upstream())
        served = "bench-served"
    routes = AdapterRoutes(work / "adapter-routes.json")  # read at every request, as in production
    routes.set(ENDPOINT, upstream, {served: 100.0})
    log = RequestLog(work / "requests.jsonl")
    ledger = InProcessLedger(CostRates(), {"team:ml": 1e9})  # enforced, never reached: measures reserve/settle
    gateway, _ = serve(build_app(GatewaySettings(
        resolver=AdapterRouteResolver(routes), request_log=log, trust_team_header=False, ledger=ledger,
        api_key_teams={hashlib.sha256(BENCH_KEY.encode()).hexdigest(): "team:ml"})))
    # The same gateway without fsync per request-log line: what durability costs on this disk.
    unsynced, _ = serve(build_app(GatewaySettings(
        resolver=AdapterRouteResolver(routes), request_log=RequestLog(work / "unsynced.jsonl", fsync=False),
        trust_team_header=False, ledger=InProcessLedger(CostRates(), {"team:ml": 1e9}),
        api_key_teams={hashlib.sha256(BENCH_KEY.encode()).hexdigest(): "team:ml"})))
    auth = {"Authorization": f"Bearer {BENCH_KEY}", "X-AIPLAT-Feature": "benchmark"}
    targets = {"aiplat": (gateway, ENDPOINT, auth), "aiplat-nofsync": (unsynced, ENDPOINT, auth)}
    processes = []
    try:
        if "litellm" in args.compare:
            from aiplat.config import state_dir

            python = args.litellm_python or str(state_dir() / "venvs" / "litellm-bench" / "bin" / "python")
            url, process = start_litellm(python, upstream, served, work)
            processes.append(process)
            targets["litellm"] = (url, ENDPOINT, {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"})
        if "mlflow" in args.compare:
            url, process = start_mlflow_gateway(upstream, served, work, args.mlflow_usage_tracking)
            processes.append(process)
            targets["mlflow"] = (url, ENDPOINT, {})
        for name, (url, model, headers) in targets.items():  # warm up, and fail early if one does not route
            run(url, model, 20, 1, headers)

        print(f"upstream: {'instant in-process app' if not args.upstream else upstream}; {args.requests} requests "
              f"per run, {args.rounds} interleaved rounds, medians of rounds")
        for c in args.concurrency:
            results: dict[str, list] = {"direct": [], **{name: [] for name in targets}}
            for _ in range(args.rounds):  # interleaved, so drift in machine load hits all alike
                results["direct"].append(run(upstream, served, args.requests, c, {}))
                for name, (url, model, headers) in targets.items():
                    results[name].append(run(url, model, args.requests, c, headers))
            d = [statistics.median(x) for x in zip(*results["direct"])]
            print(f"c={c}: direct {d[0]:7.1f} req/s p50 {d[1]:6.2f} ms p99 {d[2]:6.2f} ms")
            for name in targets:
                g = [statistics.median(x) for x in zip(*results[name])]
                print(f"c={c}:   {name:14s} {g[0]:7.1f} req/s p50 {g[1]:6.2f} ms p99 {g[2]:6.2f} ms | throughput "
                      f"ratio {name}/direct {g[0] / d[0]:.3f}, p50 ratio {g[1] / d[1]:.2f}, p99 ratio {g[2] / d[2]:.2f}, "
                      f"added p50 {g[1] - d[1]:+.2f} ms")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
    records, rejected = log.read()
    expected = args.requests * args.rounds * len(args.concurrency) + 20
    print(f"request log: {len(records)} lines written (expected {expected}), {len(rejected)} unreadable")


if __name__ == "__main__":
    main()
