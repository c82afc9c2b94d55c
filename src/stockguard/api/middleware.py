"""ASGI middleware: request body limit and Idempotency-Key replay."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockguard.api.problems import problem

__all__ = ["STALE_SECONDS", "BodyLimit", "Idempotency"]

STALE_SECONDS = 30.0


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


class BodyLimit:
    """413 ``payload_too_large`` for bodies over the limit (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body = await _read_body(receive, self.max_bytes)
        if body is None:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, _replay(body), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "payload_too_large",
            "Payload too large",
            f"request bodies are limited to {self.max_bytes} bytes",
        )
        await response(scope, receive, send)


class Idempotency:
    """``Idempotency-Key`` on POST: the same key and body replay the first answer (any
    status but 5xx); the same key with another body is 422 ``idempotency_key_reused``.
    Keys are scoped to the caller's credentials."""

    def __init__(self, app: ASGIApp, pool: Callable[[], asyncpg.Pool]) -> None:
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key_raw = _header(scope, b"idempotency-key") if scope["type"] == "http" else None
        if key_raw is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = key_raw.decode("latin-1")
        if not 1 <= len(key) <= 255:
            await problem(
                422, "validation_error", "Invalid request",
                "Idempotency-Key must be 1 to 255 characters",
            )(scope, receive, send)  # fmt: skip
            return
        body = await _read_body(receive, 1 << 30) or b""
        owner = hashlib.sha256(_header(scope, b"authorization") or b"").hexdigest()
        fingerprint = hashlib.sha256(
            b"\0".join([scope["path"].encode(), scope.get("query_string", b""), body])
        ).hexdigest()
        pool = self.pool()
        claim = (
            "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING true"
        )
        inserted = await pool.fetchval(claim, owner, key, fingerprint)
        if not inserted:
            # A claim with no answer after STALE_SECONDS belonged to a request that died
            # (a crashed process, a lost connection): the key is free again.
            freed = await pool.execute(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 "
                "AND status_code IS NULL AND created_at < now() - make_interval(secs => $3)",
                owner,
                key,
                STALE_SECONDS,
            )
            if freed != "DELETE 0":
                inserted = await pool.fetchval(claim, owner, key, fingerprint)
        if not inserted:
            await self._answer_again(scope, receive, send, owner, key, fingerprint)
            return
        captured: dict[str, Any] = {"status": 500, "headers": [], "body": []}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"].append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, _replay(body), capture)
        finally:
            status = int(captured["status"])
            if status >= 500:
                await pool.execute(
                    "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", owner, key
                )
            else:
                content_type = next(
                    (v.decode() for k, v in captured["headers"] if k == b"content-type"), None
                )
                await pool.execute(
                    "UPDATE idempotency_keys SET status_code = $3, content_type = $4, body = $5 "
                    "WHERE scope = $1 AND key = $2",
                    owner,
                    key,
                    status,
                    content_type,
                    b"".join(captured["body"]),
                )

    async def _answer_again(
        self, scope: Scope, receive: Receive, send: Send, owner: str, key: str, fingerprint: str
    ) -> None:
        row = await self.pool().fetchrow(
            "SELECT request_hash, status_code, content_type, body FROM idempotency_keys "
            "WHERE scope = $1 AND key = $2",
            owner,
            key,
        )
        if row is None:  # purged or its first attempt failed a moment ago
            response = problem(409, "conflict", "Conflict", "retry the request")
        elif row["request_hash"] != fingerprint:
            response = problem(
                422,
                "idempotency_key_reused",
                "Idempotency key reused",
                "this Idempotency-Key was used with a different request",
            )
        elif row["status_code"] is None:
            response = problem(
                409, "conflict", "Conflict", "a request with this Idempotency-Key is in progress"
            )
        else:
            from starlette.responses import Response

            response = Response(
                bytes(row["body"] or b""),
                status_code=row["status_code"],
                media_type=row["content_type"],
                headers={"Idempotent-Replayed": "true"},
            )
        await response(scope, receive, send)
