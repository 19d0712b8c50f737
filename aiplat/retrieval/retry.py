"""Retries with exponential backoff for calls to Milvus, and the error raised when they run out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class MilvusUnavailableError(RuntimeError):
    """Milvus did not answer after all retries. Nothing was switched: the alias is where it was."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delays(self) -> list[float]:
        return [min(self.max_delay_s, self.base_delay_s * 2**i) for i in range(max(self.attempts - 1, 0))]


def is_transient(exc: BaseException) -> bool:
    """Connection-level failures are worth retrying; a bad request (wrong schema, missing
    collection) fails the same way every time and is raised at once."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpc ships with pymilvus
        grpc = None
    from pymilvus.exceptions import ConnectError, MilvusException, MilvusUnavailableException

    if isinstance(exc, MilvusUnavailableException | ConnectError | ConnectionError | TimeoutError):
        return True
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if isinstance(exc, MilvusException):
        message = str(getattr(exc, "message", exc)).lower()
        return exc.code in (1, 2) and ("connect" in message or "unavailable" in message or "deadline" in message)
    return False


def call_with_retries(
    fn: Callable[[], T], *, what: str, uri: str, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep
) -> T:
    delays = policy.delays()
    started = time.monotonic()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt >= len(delays):
                waited = time.monotonic() - started
                raise MilvusUnavailableError(
                    f"Milvus at {uri} is unreachable while {what}: gave up after {policy.attempts} attempts "
                    f"over {waited:.1f}s ({type(exc).__name__}: {getattr(exc, 'message', exc)}). "
                    "Nothing was switched; the serving alias is unchanged."
                ) from exc
            log.warning("Milvus at %s unreachable while %s (attempt %d/%d); retrying in %.1fs",
                        uri, what, attempt + 1, policy.attempts, delays[attempt])
            sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover
