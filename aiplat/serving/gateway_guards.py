"""Input limits of the gateway and the rate limit on logging refusals.

A body is read up to `max_body_bytes` (413 past it, whether or not the client sent a
Content-Length), parsed, and refused (400) when nested deeper than `max_depth`: Python's json
module raises RecursionError on very deep input (that used to escape as a 500), and a moderately
deep one would still reach vLLM's validator.
Refusals (401, 413, 429, ...) are cheap for a client to produce, so their log lines and
request-log lines are rate-limited per (reason, team); every refusal is still counted in /metrics.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_DEPTH = 32


class BodyTooLarge(ValueError):
    pass


class BadBody(ValueError):
    pass


async def read_limited(declared_length: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    if declared_length is not None:
        if not declared_length.strip().isdigit():
            raise BadBody("Content-Length is not a number")
        if int(declared_length) > limit:
            raise BodyTooLarge(f"the body is {int(declared_length)} bytes; the limit is {limit}")
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
    return bytes(data)


def depth(value: object, limit: int) -> int:
    """Nesting depth of a parsed JSON value, walking iteratively (no recursion to exhaust); stops
    counting once past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_body(raw: bytes, max_depth: int) -> object:
    try:
        parsed = json.loads(raw)
    except RecursionError:
        raise BadBody(f"the JSON body is nested deeper than {max_depth} levels") from None
    except ValueError as e:
        raise BadBody(f"the body is not JSON ({type(e).__name__})") from None
    if depth(parsed, max_depth) > max_depth:
        raise BadBody(f"the JSON body is nested deeper than {max_depth} levels")
    return parsed


class RefusalLimiter:
    """At most `per_window` written lines per (reason, team) and window; the rest are counted and
    reported in one summary line when the window turns over."""

    def __init__(self, per_window: int = 20, window_s: float = 60.0) -> None:
        self.per_window, self.window_s = per_window, window_s
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._written: dict[tuple[str, str], int] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def admit(self, reason: str, team: str) -> tuple[bool, dict[tuple[str, str], int]]:
        """(write this one?, suppressed counts of the window that just ended — to report, else {})."""
        with self._lock:
            now, ended = time.monotonic(), {}
            if now - self._window_start >= self.window_s:
                ended, self._suppressed, self._written = self._suppressed, {}, {}
                self._window_start = now
            key = (reason, team)
            if self._written.get(key, 0) < self.per_window:
                self._written[key] = self._written.get(key, 0) + 1
                return True, ended
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, ended
