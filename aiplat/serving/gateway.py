"""The metering gateway: an OpenAI-compatible reverse proxy that labels and records every request.

Clients call it exactly as they would call vLLM, with `model` = the endpoint name. It resolves the
endpoint to its upstream (aiplat.serving.gateway_routing; in practice the endpoint's adapter route,
aiplat.serving.adapter_routes), rewrites `model` to the adapter version drawn (the name the shared
base-model server serves it under), forwards, and appends one RequestRecord per request to the
request log that the cost report reads.
The team is the one the API key's sha256 maps to (aiplat.serving.gateway_auth: an unknown key is a
401, never a fallback to `X-AIPLAT-Team`, which counts only where `trust_team_header`, i.e. locally);
the feature is `X-AIPLAT-Feature`.

What is recorded: every request that named a known endpoint, whatever its status (401 refused,
502/504 upstream failures, upstream errors passed through). A refused request is recorded with
latency 0: it never reached a GPU, so it must not add busy time to the endpoint's GPU-hours.
Requests for an unknown endpoint (404) and malformed bodies (400) are counted in /metrics and
logged, not written to the request log: no endpoint was used, so there is nothing to bill.
Client credentials are neither logged nor forwarded (unless `forward_authorization`).

Limits (aiplat.serving.gateway_guards): 413 past `max_body_bytes`, 400 for JSON nested deeper than
`max_depth`; error bodies never show the upstream's address (it goes to the gateway's own log).
Refusals are counted in /metrics and written to the logs at a bounded rate.
Hard budgets (aiplat.serving.budgets): the worst-case cost is reserved before the call (429 when it
does not fit) and settled to the real usage after it.
Durability: every request-log line is fsynced before the record completes (group commit: lines
queued by concurrent requests share one write and one fsync). A line that cannot be
written is kept in memory (the unbilled backlog, shown in /metrics and /health) and the gateway
refuses new requests (503) until the backlog is written: no request is ever served unbilled in silence.
PII guardrails (aiplat.pii.guardrails, optional): once the caller is authenticated and the body parsed,
the prompt is masked before a budget is reserved or the model sees it; a non-streamed answer is
checked (mask / block / log) before it is returned; a streamed one is only logged, since sent bytes
cannot be taken back (endpoints that mask or block answers refuse `stream: true`). Every action is
counted in /metrics and summarized in the request's log line (`pii`).
Grounding (aiplat.serving.gateway_grounding, optional): a grounded model's endpoint (its spec has
`training.retrieval`) gets the training-time prompt with KB passages retrieved now, after the PII
check (the KB side is redacted already) and before the budget; a KB that cannot be searched is a
503 recorded in the request log. Other endpoints' requests pass exactly as before.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import anyio
import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aiplat.pii.guardrails import Guardrails, check_prompt, check_response, check_streamed, request_note
from aiplat.operations.requests import HEADER_FEATURE, HEADER_TEAM, UNATTRIBUTED, RequestLog, RequestRecord
from aiplat.serving.budgets import OverBudget, Reservation, SpendLedger
from aiplat.serving.gateway_auth import Caller, identify
from aiplat.serving.gateway_grounding import PASSAGES_HEADER, Grounding, GroundingRefused, passages_note
from aiplat.serving.gateway_guards import (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DEPTH, BadBody, BodyTooLarge,
                                           RefusalLimiter, parse_body, read_limited)
from aiplat.serving.gateway_routing import Resolver, RoutesUnreadable, UnknownEndpoint, Upstream, label_problem

log = logging.getLogger("aiplat.gateway")

CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer was complete"
_EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class GatewaySettings:
    resolver: Resolver
    request_log: RequestLog
    require_attribution: bool = False
    api_key_teams: Mapping[str, str] = field(default_factory=dict, repr=False)  # sha256(key) -> team
    trust_team_header: bool = True  # local development only: in prod the header grants nothing
    upstream_api_key: str | None = field(default=None, repr=False)
    forward_authorization: bool = False
    timeout_s: float = 300.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    ledger: SpendLedger | None = None  # hard budgets; None = budgets are only reported, not enforced
    default_max_tokens: int = 1024  # set on requests without max_tokens when the team has a hard budget
    refusal_limiter: RefusalLimiter = field(default_factory=RefusalLimiter)
    guardrails: Guardrails | None = None  # PII policy per team / endpoint (aiplat.pii.guardrails)
    grounding: Grounding | None = None  # grounded endpoints from the model specs (aiplat.serving.gateway_grounding)


class GatewayMetrics:
    """A private registry per app, so two gateways in one process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aiplat_gateway_requests", "Requests through the gateway",
                                ["endpoint", "team", "feature", "status"], registry=self.registry)
        self.tokens = Counter("aiplat_gateway_tokens", "Tokens served through the gateway, by team",
                              ["team", "kind"], registry=self.registry)
        self.refused = Counter("aiplat_gateway_refused", "Requests refused before reaching an endpoint, by reason",
                               ["reason", "team"], registry=self.registry)
        self.refusal_lines_suppressed = Counter(
            "aiplat_gateway_refusal_log_suppressed", "Refusals not written to the logs (rate limit), by reason",
            ["reason"], registry=self.registry)
        self.request_log_failures = Counter("aiplat_gateway_request_log_write_failures",
                                            "Failed request-log writes", registry=self.registry)
        self.unbilled = Gauge("aiplat_gateway_unbilled_backlog", "Records waiting for the request log to be writable",
                              registry=self.registry)
        self.reserved = Gauge("aiplat_gateway_budget_reserved", "Spend reserved by requests in flight, by team",
                              ["team"], registry=self.registry)
        self.spent = Gauge("aiplat_gateway_budget_spent", "Token cost settled today, by team (hard-budget teams)",
                           ["team"], registry=self.registry)


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


def _content_chunks(payload: dict | None) -> int:
    """Chunks that carried generated text: each is at least one token, what a client that hung up
    before the final usage chunk is billed for when the upstream sent no running usage."""
    if not payload:
        return 0
    for choice in payload.get("choices") or []:
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if text:
                return 1
    return 0


def _content_texts(payload: dict | None) -> list[tuple[int, str]]:
    """(choice index, text) a stream chunk carries (delta content of chat, text of completions)."""
    out: list[tuple[int, str]] = []
    for choice in (payload or {}).get("choices") or []:
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str) and text:
                out.append((choice.get("index") if isinstance(choice.get("index"), int) else 0, text))
    return out


class _RecordingStream(StreamingResponse):
    """Closes its generator however the response ends (a client that disconnects included), so the
    generator's `finally` records the request exactly once. A generator that never started (the
    client left before the first byte) has no `finally` to run: `if_unstarted` records it instead."""

    def __init__(self, content: AsyncIterator[bytes], if_unstarted, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(content, **kwargs)
        self._generator, self._if_unstarted = content, if_unstarted

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            await super().__call__(scope, receive, send)
        finally:
            unstarted = inspect.getasyncgenstate(self._generator) == inspect.AGEN_CREATED  # type: ignore[arg-type]
            await self._generator.aclose()  # type: ignore[attr-defined]
            if unstarted:
                with anyio.CancelScope(shield=True):
                    await self._if_unstarted()


def build_app(settings: GatewaySettings) -> Starlette:
    metrics = GatewayMetrics()

    # Records not yet on disk. Group commit: whoever holds `write_lock` writes everything queued so
    # far with one fsync, so concurrent requests share fsyncs; each caller returns only once its own
    # record is on disk (or the write failed). `failing` is set while the log refuses writes.
    backlog: list[RequestRecord] = []
    queue_lock, write_lock = threading.Lock(), threading.Lock()
    failing = threading.Event()

    def settle(reservation: Reservation | None, tokens: tuple[int, int]) -> None:
        if reservation is None or settings.ledger is None:
            return
        settings.ledger.settle(reservation, *tokens)
        spent, reserved = settings.ledger.committed(reservation.team)
        metrics.spent.labels(reservation.team).set(spent)
        metrics.reserved.labels(reservation.team).set(reserved)

    def write_backlog() -> None:
        """Append everything queued, oldest first, with one fsync; on OSError the records stay queued."""
        with write_lock:
            with queue_lock:
                batch = list(backlog)
            if not batch:
                return
            try:
                settings.request_log.append_many(batch)
            except OSError:
                failing.set()
                with queue_lock:
                    metrics.unbilled.set(len(backlog))
                raise
            with queue_lock:
                del backlog[:len(batch)]
                metrics.unbilled.set(len(backlog))
            failing.clear()

    async def write(entry: RequestRecord) -> None:
        with queue_lock:
            backlog.append(entry)
        try:
            await run_in_threadpool(write_backlog)
        except OSError as e:
            metrics.request_log_failures.inc()
            log.error("REQUEST LOG UNWRITABLE (%s: %s): %d record(s) held in memory unbilled; the gateway refuses "
                      "new requests until %s is writable", type(e).__name__, e, len(backlog), settings.request_log.path)

    async def record(upstream: Upstream, team: str, feature: str, tokens: tuple[int, int], latency_ms: float,
                     status: int, reservation: Reservation | None = None, grounding: str = "") -> None:
        settle(reservation, tokens)
        metrics.requests.labels(upstream.endpoint, team, feature, str(status)).inc()
        metrics.tokens.labels(team, "prompt").inc(tokens[0])
        metrics.tokens.labels(team, "completion").inc(tokens[1])
        entry = RequestRecord(datetime.now(timezone.utc), upstream.endpoint, upstream.model_label, team, feature,
                              tokens[0], tokens[1], round(latency_ms, 3), status, pii=request_note(), grounding=grounding)
        log.info("request endpoint=%s team=%s feature=%s status=%d prompt_tokens=%d completion_tokens=%d latency_ms=%.1f"
                 + (" %s" if grounding else ""), upstream.endpoint, team, feature, status, tokens[0], tokens[1],
                 latency_ms, *((grounding,) if grounding else ()))
        await write(entry)

    async def refuse(status: int, reason: str, message: str, kind: str, team: str = UNATTRIBUTED,
                     feature: str = UNATTRIBUTED, upstream: Upstream | None = None) -> JSONResponse:
        """Answer a refusal: always counted; logged (and, for a known endpoint, recorded) at a bounded rate."""
        metrics.refused.labels(reason, team).inc()
        written, ended = settings.refusal_limiter.admit(reason, team)
        for (old_reason, old_team), count in ended.items():
            log.warning("refused: %d more %s refusal(s) for team=%s were not logged (rate limit)",
                        count, old_reason, old_team)
        if written:
            log.warning("refused status=%d reason=%s team=%s feature=%s", status, reason, team, feature)
            if upstream is not None:
                await record(upstream, team, feature, (0, 0), 0.0, status)
        else:
            metrics.refusal_lines_suppressed.labels(reason).inc()
            if upstream is not None:
                metrics.requests.labels(upstream.endpoint, team, feature, str(status)).inc()
        return _error(status, message, kind, reason)

    def upstream_headers(request: Request) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": request.headers.get("accept", "application/json")}
        if settings.upstream_api_key:
            headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        elif settings.forward_authorization and "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        return headers

    async def proxy(request: Request) -> Response:
        started = time.monotonic()
        if failing.is_set():
            try:
                await run_in_threadpool(write_backlog)
            except OSError:
                return await refuse(503, "request_log_unwritable", "the gateway cannot record requests right now, so it "
                                    "serves none; retry later", "server_error")
        try:
            raw = await read_limited(request.headers.get("content-length"), request.stream(), settings.max_body_bytes)
            body = parse_body(raw, settings.max_depth)
        except BodyTooLarge as e:
            return await refuse(413, "body_too_large", str(e), "invalid_request_error")
        except BadBody as e:
            metrics.requests.labels("", "", "", "400").inc()
            return _error(400, str(e), "invalid_request_error", "invalid_body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            metrics.requests.labels("", "", "", "400").inc()
            return _error(400, "the body must be a JSON object whose `model` is an endpoint name "
                               "(see GET /v1/models)", "invalid_request_error", "invalid_body")
        caller: Caller = identify(request.headers, settings.api_key_teams, settings.trust_team_header)
        team, feature = caller.team, caller.feature
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
        except RoutesUnreadable as e:
            # Its full reason (the file's path) goes to the gateway's log; the client learns only that routing is down.
            log.error("routes unreadable: %s", e)
            return _error(503, "the gateway cannot read its endpoint routes; try again later", "server_error",
                          "routes_unreadable")

        if caller.refused:
            return await refuse(401, caller.code, caller.refused, "authentication_error", team, feature, upstream)
        if settings.require_attribution and team == UNATTRIBUTED:
            return await refuse(401, "missing_team", "requests must name their team: send the X-AIPLAT-Team header "
                                "(and X-AIPLAT-Feature), or use an API key registered to a team",
                                "authentication_error", team, feature, upstream)

        if settings.guardrails is not None:  # after authentication, before any budget or model sees the prompt
            try:
                verdict = await check_prompt(settings.guardrails, body, team, upstream.endpoint)
            except Exception as e:  # fail closed (a scanner error is a 503 verdict already; this is anything else)
                log.error("PII guardrail failed on a prompt for endpoint %s: %s: %s", upstream.endpoint,
                          type(e).__name__, e)
                return await refuse(503, "pii_guardrail_unavailable", "the gateway could not check the prompt for "
                                    "personal data, so it did not send it; retry later", "server_error",
                                    team, feature, upstream)
            if verdict.error:
                status, message, code = verdict.error
                return await refuse(status, code, message, "server_error" if status >= 500 else "invalid_request_error",
                                    team, feature, upstream)
            body = verdict.body
        grounded = settings.grounding.of(upstream.endpoint) if settings.grounding is not None else None
        kb, kb_headers = "", {}
        if grounded is not None:
            try:
                body, passage_ids = await run_in_threadpool(settings.grounding.apply, request.url.path, body, grounded)
            except GroundingRefused as e:
                if e.status < 500:  # the caller's mistake: a refusal like the others
                    return await refuse(e.status, e.code, e.message, "invalid_request_error", team, feature, upstream)
                # The KB is down: always recorded (not rate-limited like refusals), like an unreachable upstream.
                metrics.refused.labels(e.code, team).inc()
                await record(upstream, team, feature, (0, 0), 0.0, e.status, grounding=e.note)
                return _error(e.status, e.message, "server_error", e.code)
            kb, kb_headers = passages_note(passage_ids), {PASSAGES_HEADER: ",".join(passage_ids)}
        forward = {**body, "model": upstream.served_model_name}
        reservation: Reservation | None = None
        if settings.ledger is not None and settings.ledger.limited(team):
            if not isinstance(forward.get("max_tokens"), int) and not isinstance(forward.get("max_completion_tokens"), int):
                forward["max_tokens"] = settings.default_max_tokens  # so the reservation is a real upper bound
            limit = forward.get("max_tokens") if isinstance(forward.get("max_tokens"), int) else forward["max_completion_tokens"]
            try:
                # Bytes bound tokens; a masked prompt's pseudonyms can be longer than the values they replace.
                # So can the passages a grounded prompt carries.
                grown = settings.guardrails is not None or grounded is not None
                sent = len(json.dumps(forward, separators=(",", ":"))) if grown else 0
                prompt_bound = max(len(raw), sent)
                reservation = settings.ledger.reserve(team, prompt_bound, max(0, limit))
            except OverBudget as e:
                return await refuse(429, "hard_budget", str(e), "rate_limit_error", team, feature, upstream)
            spent, reserved = settings.ledger.committed(team)
            metrics.reserved.labels(team).set(reserved)
        streaming = bool(body.get("stream"))
        client_wants_usage = client_wants_running_usage = False
        if streaming:
            requested = body.get("stream_options")
            options: dict = requested if isinstance(requested, dict) else {}
            client_wants_usage = bool(options.get("include_usage"))
            client_wants_running_usage = bool(options.get("continuous_usage_stats"))
            # continuous_usage_stats (vLLM): usage in every chunk, so a client that hangs up is billed
            # for what was produced; servers without it are billed by their content chunks.
            forward["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
        client: httpx.AsyncClient = request.app.state.client
        outgoing = client.build_request("POST", f"{upstream.base_url}{request.url.path}", json=forward,
                                        headers=upstream_headers(request))
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.TimeoutException:
            # The address stays in the gateway's log: error bodies must not map the cluster for callers.
            log.error("endpoint %s timed out after %.0f s at %s", upstream.endpoint, settings.timeout_s, upstream.base_url)
            await record(upstream, team, feature, (0, 0), (time.monotonic() - started) * 1000, 504, reservation, kb)
            return _error(504, f"endpoint {upstream.endpoint!r} did not answer within {settings.timeout_s:.0f} s",
                          "server_error", "upstream_timeout")
        except httpx.HTTPError as e:
            log.error("endpoint %s unreachable at %s: %s: %s", upstream.endpoint, upstream.base_url, type(e).__name__, e)
            await record(upstream, team, feature, (0, 0), (time.monotonic() - started) * 1000, 502, reservation, kb)
            return _error(502, f"endpoint {upstream.endpoint!r} is unreachable", "server_error", "upstream_unreachable")
        except BaseException:
            settle(reservation, (0, 0))  # cancelled: free the reservation
            raise

        media_type = answer.headers.get("content-type", "application/json")
        if not (streaming and answer.is_success and media_type.startswith("text/event-stream")):
            try:
                content = await answer.aread()
            except httpx.HTTPError as e:
                await answer.aclose()
                log.error("endpoint %s broke off its answer at %s: %s", upstream.endpoint, upstream.base_url, e)
                await record(upstream, team, feature, (0, 0), (time.monotonic() - started) * 1000, 502, reservation, kb)
                return _error(502, f"endpoint {upstream.endpoint!r} broke off its answer", "server_error",
                              "upstream_broken")
            except BaseException:
                await answer.aclose()
                settle(reservation, (0, 0))
                raise
            await answer.aclose()
            tokens = None
            if answer.is_success:
                try:
                    tokens = _usage(json.loads(content))
                except ValueError:
                    tokens = None
            status, withheld = answer.status_code, None
            if settings.guardrails is not None and answer.is_success:
                try:
                    verdict = await check_response(settings.guardrails, content, team, upstream.endpoint)
                    content, withheld = verdict.body, verdict.error
                except Exception as e:  # fail closed: an answer that was not checked is not returned
                    log.error("PII guardrail failed on an answer of endpoint %s: %s: %s", upstream.endpoint,
                              type(e).__name__, e)
                    withheld = (503, "the gateway could not check the answer for personal data, so it withheld it",
                                "pii_guardrail_unavailable")
                status = withheld[0] if withheld else status
            # A withheld answer is still billed: the model did the work.
            await record(upstream, team, feature, tokens or (0, 0), (time.monotonic() - started) * 1000,
                         status, reservation, kb)
            if withheld:
                return _error(withheld[0], withheld[1], "server_error" if withheld[0] >= 500 else "content_filter",
                              withheld[2])
            return Response(content, status_code=status, media_type=media_type, headers=kb_headers or None)

        async def relay() -> AsyncIterator[bytes]:
            tokens, status, buffer, produced = None, CLIENT_CLOSED, b"", 0
            said: dict[int, list[str]] = {}  # the streamed text per choice, for a log-only guardrail check at the end
            try:
                async for chunk in answer.aiter_bytes():
                    buffer += chunk
                    while (end := _EVENT_END.search(buffer)) is not None:
                        event, buffer = buffer[:end.end()], buffer[end.end():]
                        payload = _event_json(event)
                        produced += _content_chunks(payload)
                        if settings.guardrails is not None:
                            for index, text in _content_texts(payload):
                                said.setdefault(index, []).append(text)
                        found = _usage(payload)
                        if found is not None and payload is not None:
                            tokens = found
                            # The usage-only chunk exists because the gateway asked for it.
                            if payload.get("choices") == []:
                                if not client_wants_usage:
                                    continue
                            elif not client_wants_running_usage:
                                # Running usage the gateway asked for: not the client's.
                                event = b"data: " + json.dumps({k: v for k, v in payload.items() if k != "usage"}
                                                               ).encode() + b"\n\n"
                        yield event
                if buffer:
                    yield buffer
                status = answer.status_code
            except httpx.HTTPError:
                status = 502
            finally:
                # A client that hangs up cancels this generator; the record must still be written, with
                # the tokens produced so far: the running usage, else one token per content chunk.
                if tokens is None:
                    tokens = (0, produced)
                else:
                    tokens = (tokens[0], max(tokens[1], produced if status == CLIENT_CLOSED else 0))
                with anyio.CancelScope(shield=True):
                    await answer.aclose()
                    if settings.guardrails is not None and said:
                        try:
                            await check_streamed(settings.guardrails, ["".join(t) for t in said.values()], team,
                                                 upstream.endpoint)
                        except Exception as e:  # already sent: nothing to withhold; the record must still be written
                            log.error("PII guardrail failed on a streamed answer of endpoint %s: %s: %s",
                                      upstream.endpoint, type(e).__name__, e)
                    await record(upstream, team, feature, tokens, (time.monotonic() - started) * 1000, status,
                                 reservation, kb)

        async def never_started() -> None:
            await answer.aclose()
            await record(upstream, team, feature, (0, 0), (time.monotonic() - started) * 1000, CLIENT_CLOSED,
                         reservation, kb)

        return _RecordingStream(relay(), never_started, status_code=answer.status_code, media_type=media_type,
                                headers={"cache-control": "no-cache", **kb_headers})

    async def models(request: Request) -> JSONResponse:
        try:
            names = await run_in_threadpool(settings.resolver.endpoints)
        except RoutesUnreadable as e:
            log.error("routes unreadable: %s", e)
            return _error(503, "the gateway cannot read its endpoint routes; try again later", "server_error",
                          "routes_unreadable")
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "aiplat"} for name in names]})

    async def health(request: Request) -> JSONResponse:
        if failing.is_set():  # not ready: a load balancer stops sending traffic until the log is writable again
            return JSONResponse({"status": "request log unwritable", "unbilled_backlog": len(backlog)}, status_code=503)
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
