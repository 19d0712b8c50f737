"""What the metering gateway adds to a request: the same chat completions sent straight to an
upstream and through the gateway (registry lookup, labels, forwarding, one request-log line), in
interleaved rounds in this one process.

The default upstream answers at once (an OpenAI-shaped app in the same process), so the difference
is the gateway's own cost; `--upstream URL --served-model NAME` measures in front of a real server
(e.g. a vLLM endpoint from `aiplat endpoints list`), where generation dominates.

    .venv/bin/python benchmarks/gateway.py [--requests 300] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import statistics
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

from aiplat.net import free_port  # noqa: E402
from aiplat.operations.requests import RequestLog  # noqa: E402
from aiplat.serving.gateway import GatewaySettings, build_app  # noqa: E402
from aiplat.serving.gateway_routing import RegistryResolver  # noqa: E402
from aiplat.serving.registry import EndpointRecord, EndpointRegistry, ServerRecord  # noqa: E402

ENDPOINT = "bench"


def instant_upstream() -> Starlette:
    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
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
    """(requests/s, p50 ms, p95 ms)."""
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
    return requests / elapsed, statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstream", default=None, help="Base URL of a real OpenAI-compatible server")
    parser.add_argument("--served-model", default=None, help="Its served model name (with --upstream)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiplat-gateway-bench-"))
    if args.upstream:
        upstream, served = args.upstream.rstrip("/"), args.served_model or ENDPOINT
    else:
        upstream, _ = serve(instant_upstream())
        served = "bench-served"
    registry = EndpointRegistry(work / "endpoints.json")
    live = ServerRecord(url=upstream, port=0, pid=0, create_time=0.0, model_version="1", model_path="-",
                        served_model_name=served, started_at="-", log_file="", pid_file="", health="ready", checked_at="-")
    registry.update(ENDPOINT, lambda _: EndpointRecord(name=ENDPOINT, live=live))
    log = RequestLog(work / "requests.jsonl")
    gateway, _ = serve(build_app(GatewaySettings(resolver=RegistryResolver(registry), request_log=log)))
    labels = {"X-AIPLAT-Team": "team:platform", "X-AIPLAT-Feature": "benchmark"}

    print(f"upstream: {'instant in-process app' if not args.upstream else upstream}; {args.requests} requests per run")
    for c in args.concurrency:
        direct, via = [], []
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits both alike
            direct.append(run(upstream, served, args.requests, c, {}))
            via.append(run(gateway, ENDPOINT, args.requests, c, labels))
        d = [statistics.median(x) for x in zip(*direct)]
        g = [statistics.median(x) for x in zip(*via)]
        print(f"c={c}: direct {d[0]:7.1f} req/s p50 {d[1]:6.2f} ms p95 {d[2]:6.2f} ms | gateway {g[0]:7.1f} req/s "
              f"p50 {g[1]:6.2f} ms p95 {g[2]:6.2f} ms | throughput ratio gateway/direct {g[0] / d[0]:.3f}, "
              f"added p50 {g[1] - d[1]:+.2f} ms")
    records, rejected = log.read()
    expected = args.requests * args.rounds * len(args.concurrency)
    print(f"request log: {len(records)} lines written (expected {expected}), {len(rejected)} unreadable")


if __name__ == "__main__":
    main()
