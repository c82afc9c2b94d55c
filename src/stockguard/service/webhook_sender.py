"""One webhook attempt, per Standard Webhooks: ``POST <url>`` with the event JSON as body
and the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers; a 2xx
answer within the timeout acknowledges. Never called inside a database transaction.

The URL's host is resolved and checked (:mod:`stockguard.service.url_guard`) before each
attempt and the connection goes to that checked address (Host and TLS SNI still name the
host), so a DNS answer that changes between the check and the connection cannot redirect
the attempt. Redirects are not followed (a 3xx is a failed attempt) and the answer's body
is never read."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from stockguard.domain.delivery import sign
from stockguard.render import ts
from stockguard.service.url_guard import UrlRefused, resolve_destination

__all__ = ["Attempt", "event_body", "new_client", "send"]

USER_AGENT = "stockguard-webhooks/1"
MAX_ERROR = 500


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to: ``ok`` for a 2xx; otherwise the status or the error."""

    ok: bool
    status_code: int | None
    error: str | None
    seconds: float


def event_body(
    event_id: str, seq: int | None, type_: str, occurred_at: datetime, data: Any
) -> bytes:
    """The event as the feed shows it (:func:`stockguard.store.events.event_json`):
    ``{id, seq, type, occurred_at, data}``; a ping's seq is null."""
    body = {
        "id": event_id,
        "seq": seq,
        "type": type_,
        "occurred_at": ts(occurred_at),
        "data": data,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def new_client(timeout: float) -> httpx.AsyncClient:
    """One client per worker process (it pools connections per endpoint address)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,  # a proxy from the environment would bypass the address check
        headers={"user-agent": USER_AGENT},
    )


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR]


async def send(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    event_id: str,
    body: bytes,
    *,
    allow_private: bool,
    timeout_seconds: float,
) -> Attempt:
    """Make one attempt; never raises for what the endpoint or the network does."""
    started = time.monotonic()
    try:
        destination = await resolve_destination(url, allow_private)
    except UrlRefused as exc:
        return Attempt(False, None, f"refused: {exc}"[:MAX_ERROR], time.monotonic() - started)
    timestamp = int(time.time())
    target = httpx.URL(url)
    headers = {
        "host": target.netloc.decode("ascii"),
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, event_id, timestamp, body),
    }
    extensions = {"sni_hostname": destination.host} if target.scheme == "https" else {}
    request = client.build_request(
        "POST",
        target.copy_with(host=destination.address),
        content=body,
        headers=headers,
        extensions=extensions,
    )
    try:
        # The client's timeout bounds each read and write; this bounds the whole attempt.
        async with asyncio.timeout(timeout_seconds):
            response = await client.send(request, stream=True)
            await response.aclose()  # the body is never read
    except (TimeoutError, httpx.TimeoutException):
        late = f"timeout after {timeout_seconds:g} s"
        return Attempt(False, None, late, time.monotonic() - started)
    except httpx.HTTPError as exc:
        return Attempt(False, None, _error(exc), time.monotonic() - started)
    code = response.status_code
    ok = 200 <= code < 300
    return Attempt(ok, code, None if ok else f"HTTP {code}", time.monotonic() - started)
