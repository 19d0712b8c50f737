"""The metering gateway: an OpenAI-compatible reverse proxy that labels and records every request.

Clients call it exactly as they would call vLLM, with `model` = the endpoint name. It resolves the
endpoint to its upstream (aiplat.serving.gateway_routing), rewrites `model` to the served name,
forwards, and appends one RequestRecord per request to the request log that the cost report reads.
The team is the one the API key's sha256 maps to, else `X-AIPLAT-Team`; the feature is `X-AIPLAT-Feature`.

What is recorded: every request that named a known endpoint, whatever its status (401 refused,
502/504 upstream failures, upstream errors passed through). A refused request is recorded with
latency 0: it never reached a GPU, so it must not add busy time to the endpoint's GPU-hours.
Requests for an unknown endpoint (404) and malformed bodies (400) are counted in /metrics and
logged, not written to the request log: no endpoint was used, so there is nothing to bill.
Client credentials are neither logged nor forwarded (unless `forward_authorization`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import anyio
import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aiplat.pii.guardrails import Guardrails, check_prompt, check_response, request_note
from aiplat.operations.requests import HEADER_FEATURE, HEADER_TEAM, UNATTRIBUTED, RequestLog, RequestRecord, labels_for_request
from aiplat.serving.gateway_routing import Resolver, UnknownEndpoint, Upstream, label_problem
from aiplat.serving.registry import RegistryError

log = logging.getLogger("aiplat.gateway")

CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer was complete"
_EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class GatewaySettings:
    resolver: Resolver
    request_log: RequestLog
    require_attribution: bool = False
    api_key_teams: Mapping[str, str] = field(default_factory=dict, repr=False)
    upstream_api_key: str | None = field(default=None, repr=False)
    forward_authorization: bool = False
    timeout_s: float = 300.0
    guardrails: Guardrails | None = None  # PII policy per team / endpoint (aiplat.pii.guardrails)


class GatewayMetrics:
    """A private registry per app, so two gateways in one process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aiplat_gateway_requests", "Requests through the gateway",
                                ["endpoint", "team", "feature", "status"], registry=self.registry)
        self.tokens = Counter("aiplat_gateway_tokens", "Tokens served through the gateway, by team",
                              ["team", "kind"], registry=self.registry)


def _error(status: int, message: str, kind: str, code: str) -> JSONResponse:
    # OpenAI's error shape, so the official clients surface `message` as is.
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def _event_json(event: bytes) -> dict | None:
    data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    if not data or data == b"[DONE]":
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _usage(payload: dict | None) -> tuple[int, int] | None:
    usage = payload.get("usage") if payload else None
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class _RecordingStream(StreamingResponse):
    """Closes its generator however the response ends (a client that disconnects included), so the
    generator's `finally` records the request exactly once."""

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def build_app(settings: GatewaySettings) -> Starlette:
    metrics = GatewayMetrics()

    async def record(upstream: Upstream, team: str, feature: str, tokens: tuple[int, int], latency_ms: float,
                     status: int) -> None:
        metrics.requests.labels(upstream.endpoint, team, feature, str(status)).inc()
        metrics.tokens.labels(team, "prompt").inc(tokens[0])
        metrics.tokens.labels(team, "completion").inc(tokens[1])
        entry = RequestRecord(datetime.now(timezone.utc), upstream.endpoint, upstream.model_label, team, feature,
                              tokens[0], tokens[1], round(latency_ms, 3), status, pii=request_note())
        log.info("request endpoint=%s team=%s feature=%s status=%d prompt_tokens=%d completion_tokens=%d latency_ms=%.1f",
                 upstream.endpoint, team, feature, status, tokens[0], tokens[1], latency_ms)
        try:
            await run_in_threadpool(settings.request_log.append, entry)
        except OSError:
            # The answer is already on its way; a lost record must at least be loud.
            log.exception("could not append to the request log %s", settings.request_log.path)

    def upstream_headers(request: Request) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": request.headers.get("accept", "application/json")}
        if settings.upstream_api_key:
            headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        elif settings.forward_authorization and "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        return headers

    async def proxy(request: Request) -> Response:
        started = time.monotonic()
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            metrics.requests.labels("", "", "", "400").inc()
            return _error(400, "the body must be a JSON object whose `model` is an endpoint name "
                               "(see GET /v1/models)", "invalid_request_error", "invalid_body")
        team, feature = labels_for_request(request.headers, settings.api_key_teams)
        for header, value in ((HEADER_TEAM, team), (HEADER_FEATURE, feature)):
            problem = label_problem(header, value)
            if problem:
                metrics.requests.labels("", "", "", "400").inc()
                return _error(400, problem, "invalid_request_error", "invalid_label")
        try:
            upstream = await run_in_threadpool(settings.resolver.resolve, body["model"])
        except UnknownEndpoint as e:
            metrics.requests.labels("unknown", team, feature, "404").inc()
            log.warning("unknown endpoint requested by team=%s feature=%s (known: %s)", team, feature, ", ".join(e.known))
            return _error(404, str(e), "invalid_request_error", "model_not_found")
        except RegistryError as e:
            log.error("endpoint registry unreadable: %s", e)
            return _error(503, f"the gateway cannot read the endpoint registry: {e}", "server_error", "registry_unreadable")

        if settings.require_attribution and team == UNATTRIBUTED:
            await record(upstream, team, feature, (0, 0), 0.0, 401)
            return _error(401, "requests must name their team: send the X-AIPLAT-Team header (and X-AIPLAT-Feature), "
                               "or use an API key registered to a team", "authentication_error", "missing_team")

        if settings.guardrails is not None:
            verdict = await check_prompt(settings.guardrails, body, team, upstream.endpoint)
            if verdict.error:
                await record(upstream, team, feature, (0, 0), 0.0, verdict.error[0])
                return _error(verdict.error[0], verdict.error[1], "invalid_request_error", verdict.error[2])
            body = verdict.body

        forward = {**body, "model": upstream.served_model_name}
        streaming = bool(body.get("stream"))
        client_wants_usage = False
        if streaming:
            requested = body.get("stream_options")
            options: dict = requested if isinstance(requested, dict) else {}
            client_wants_usage = bool(options.get("include_usage"))
            forward["stream_options"] = {**options, "include_usage": True}
        client: httpx.AsyncClient = request.app.state.client
        outgoing = client.build_request("POST", f"{upstream.base_url}{request.url.path}", json=forward,
                                        headers=upstream_headers(request))
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.TimeoutException:
            await record(upstream, team, feature, (0, 0), (time.monotonic() - started) * 1000, 504)
            return _error(504, f"endpoint {upstream.endpoint!r} did not answer within {settings.timeout_s:.0f} s "
                               f"({upstream.base_url})", "server_error", "upstream_timeout")
        except httpx.HTTPError as e:
            await record(upstream, team, feature, (0, 0), (time.monotonic() - started) * 1000, 502)
            return _error(502, f"endpoint {upstream.endpoint!r} is unreachable at {upstream.base_url}: "
                               f"{type(e).__name__}: {e}", "server_error", "upstream_unreachable")

        media_type = answer.headers.get("content-type", "application/json")
        if not (streaming and answer.is_success and media_type.startswith("text/event-stream")):
            try:
                content = await answer.aread()
            except httpx.HTTPError as e:
                await answer.aclose()
                await record(upstream, team, feature, (0, 0), (time.monotonic() - started) * 1000, 502)
                return _error(502, f"endpoint {upstream.endpoint!r} broke off its answer: {type(e).__name__}",
                              "server_error", "upstream_broken")
            await answer.aclose()
            tokens = None
            if answer.is_success:
                try:
                    tokens = _usage(json.loads(content))
                except ValueError:
                    tokens = None
            status, verdict = answer.status_code, None
            if settings.guardrails is not None and answer.is_success:
                verdict = await check_response(settings.guardrails, content, team, upstream.endpoint)
                content, status = verdict.body, verdict.error[0] if verdict.error else status
            await record(upstream, team, feature, tokens or (0, 0), (time.monotonic() - started) * 1000, status)
            if verdict is not None and verdict.error:
                return _error(verdict.error[0], verdict.error[1], "content_filter", verdict.error[2])
            return Response(content, status_code=status, media_type=media_type)

        async def relay() -> AsyncIterator[bytes]:
            tokens, status, buffer = (0, 0), CLIENT_CLOSED, b""
            try:
                async for chunk in answer.aiter_bytes():
                    buffer += chunk
                    while (end := _EVENT_END.search(buffer)) is not None:
                        event, buffer = buffer[:end.end()], buffer[end.end():]
                        payload = _event_json(event)
                        found = _usage(payload)
                        if found is not None:
                            tokens = found
                            # The usage-only chunk exists because the gateway asked for it.
                            if not client_wants_usage and payload is not None and payload.get("choices") == []:
                                continue
                        yield event
                if buffer:
                    yield buffer
                status = answer.status_code
            except httpx.HTTPError:
                status = 502
            finally:
                # A client that hangs up cancels this generator; the record must still be written.
                with anyio.CancelScope(shield=True):
                    await answer.aclose()
                    await record(upstream, team, feature, tokens, (time.monotonic() - started) * 1000, status)

        return _RecordingStream(relay(), status_code=answer.status_code, media_type=media_type,
                                headers={"cache-control": "no-cache"})

    async def models(request: Request) -> JSONResponse:
        try:
            names = await run_in_threadpool(settings.resolver.endpoints)
        except RegistryError as e:
            return _error(503, f"the gateway cannot read the endpoint registry: {e}", "server_error", "registry_unreadable")
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "aiplat"} for name in names]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.timeout_s, connect=10.0)
        # trust_env=False: proxy variables of the host must not reroute in-cluster traffic.
        async with httpx.AsyncClient(timeout=timeout, trust_env=False,
                                     limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)) as client:
            app.state.client = client
            yield

    app = Starlette(routes=[
        Route("/v1/chat/completions", proxy, methods=["POST"]),
        Route("/v1/completions", proxy, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.metrics = metrics
    if settings.guardrails is not None:
        settings.guardrails.bind_metrics(metrics.registry)
    return app
