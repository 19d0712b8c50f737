"""What PII guardrails add to a gateway request: the same chat completions through one gateway
without guardrails and one with them (prompt masked, answer checked), in interleaved rounds in
this one process, against the same upstream.

The default upstream answers at once with a short answer that holds a phone number, so the
difference is the guardrails' own cost (scanning the prompt and the answer with the platform's
scanner, spaCy NER included); `--upstream URL --served-model NAME` measures in front of a real
server, where generation dominates. Prompts are support-style messages with a name, an e-mail and
a phone number (about 200 characters).

    .venv/bin/python benchmarks/gateway_guardrails.py [--requests 200] [--concurrency 1 4] [--response mask]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiplat.operations.requests import RequestLog  # noqa: E402
from aiplat.pii.guardrails import GuardrailPolicies, GuardrailPolicy, Guardrails  # noqa: E402
from aiplat.pii.redact import Pseudonymizer  # noqa: E402
from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes  # noqa: E402
from aiplat.serving.gateway import GatewaySettings, build_app  # noqa: E402
from benchmarks.gateway import serve  # noqa: E402

ENDPOINT = "bench"
NAMES = ["Ingrid Solberg", "Mateusz Wróbel", "Aiko Tanaka", "Rafael Moreira", "Zsófia Kertész", "Dmitri Volkov"]


def prompt(i: int) -> str:
    name = NAMES[i % len(NAMES)]
    return (f"Hi, this is {name}. My order A{100000 + i} never arrived; reach me at "
            f"{name.split()[0].lower()}.{i}@example.org or +44 7700 9{i % 1000:03d}12. The parcel was the "
            f"Vega Music gift, thanks!")


def instant_upstream() -> Starlette:
    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": "We will call you at +1 415-555-0142."},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 60, "completion_tokens": 12, "total_tokens": 72}})

    return Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])


def run(url: str, requests: int, concurrency: int) -> list[float]:
    """Per-request latencies in ms."""
    latencies: list[float] = []
    headers = {"X-AIPLAT-Team": "team:support", "X-AIPLAT-Feature": "benchmark"}
    with httpx.Client(limits=httpx.Limits(max_connections=concurrency), timeout=300) as client:
        def one(i: int) -> None:
            body = {"model": ENDPOINT, "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": 16,
                    "temperature": 0}
            t0 = time.perf_counter()
            response = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            latencies.append((time.perf_counter() - t0) * 1000)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--response", choices=["mask", "block", "log"], default="mask")
    parser.add_argument("--upstream", default=None)
    parser.add_argument("--served-model", default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiplat-guardrail-bench-"))
    if args.upstream:
        upstream, served = args.upstream.rstrip("/"), args.served_model or ENDPOINT
    else:
        upstream, _ = serve(instant_upstream())
        served = "bench-served"
    routes = AdapterRoutes(work / "adapter-routes.json")
    routes.set(ENDPOINT, upstream, {served: 100.0})
    plain, _ = serve(build_app(GatewaySettings(resolver=AdapterRouteResolver(routes),
                                               request_log=RequestLog(work / "plain.jsonl"))))
    guard = Guardrails(GuardrailPolicies(default=GuardrailPolicy(prompt="mask", response=args.response)),
                       Pseudonymizer("benchmark-key-not-a-secret-0123"))
    guard.warm_up()
    guarded_log = RequestLog(work / "guarded.jsonl")
    guarded, _ = serve(build_app(GatewaySettings(resolver=AdapterRouteResolver(routes), request_log=guarded_log,
                                                 guardrails=guard)))
    run(plain, 20, 1)
    run(guarded, 20, 1)  # warm both

    print(f"upstream: {'instant in-process app' if not args.upstream else upstream}; {args.requests} requests "
          f"per run, {args.rounds} interleaved rounds; guardrails: prompt mask, response {args.response}")
    for c in args.concurrency:
        base: list[float] = []
        with_guard: list[float] = []
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits both alike
            base += run(plain, args.requests, c)
            with_guard += run(guarded, args.requests, c)
        b50, b99, g50, g99 = pct(base, 0.5), pct(base, 0.99), pct(with_guard, 0.5), pct(with_guard, 0.99)
        print(f"c={c}: without p50 {b50:7.2f} ms p99 {b99:7.2f} ms | with guardrails p50 {g50:7.2f} ms "
              f"p99 {g99:7.2f} ms | added p50 {g50 - b50:+.2f} ms, p99 {g99 - b99:+.2f} ms, "
              f"p50 ratio {g50 / b50:.2f}x; mean {statistics.mean(with_guard):.2f} vs {statistics.mean(base):.2f} ms")
    records, _ = guarded_log.read()
    masked = sum(1 for r in records if "prompt:mask" in r.pii)
    print(f"guarded request log: {len(records)} lines, {masked} with masked prompts")
    guard.close()


if __name__ == "__main__":
    main()
