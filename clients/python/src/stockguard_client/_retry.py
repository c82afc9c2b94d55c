"""When a call is sent again, and after how long: the one policy both clients follow."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx

from stockguard_client._calls import Call, retry_after

__all__ = ["RETRYABLE_CODES", "RetryPolicy"]

# 503 answers that mean "nothing changed, try again shortly".
RETRYABLE_CODES = frozenset({"busy", "cache_unavailable"})

# No answer: the request may or may not have been applied.
NO_ANSWER: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; waits ``Retry-After`` when the
    server names one (at most ``max_delay``), else an exponential backoff with full
    jitter from ``backoff`` seconds."""

    max_retries: int = 3
    backoff: float = 0.25
    max_delay: float = 10.0

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.backoff * 2**attempt))

    def after_answer(self, call: Call[Any], attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before sending ``call`` again after this answer, or ``None``:
        the answer stands. A 503 ``busy``/``cache_unavailable`` changed nothing, so any
        method may be sent again."""
        if attempt >= self.max_retries or response.status_code != 503:
            return None
        try:
            code = response.json().get("code")
        except (ValueError, AttributeError):
            return None
        if code not in RETRYABLE_CODES:
            return None
        wait = retry_after(response)
        return min(wait, self.max_delay) if wait is not None else self._backoff(attempt)

    def after_no_answer(self, call: Call[Any], attempt: int, exc: Exception) -> float | None:
        """Seconds to wait before sending ``call`` again after no answer, or ``None``.
        Only calls that cannot apply twice are resent: GET, PUT and keyed POSTs."""
        if attempt >= self.max_retries or not isinstance(exc, NO_ANSWER):
            return None
        return self._backoff(attempt) if call.safe_to_resend else None
