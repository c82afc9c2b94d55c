"""ASGI middleware: request body limit and Idempotency-Key replay."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockguard.api.auth import api_key_of
from stockguard.api.problems import problem, unavailable
from stockguard.service.idempotency import (
    Answer,
    Claim,
    close_claim,
    load_answer,
    open_claim,
    store_answer_after,
)
from stockguard.store.db import CONNECTION_LOST

__all__ = ["BodyLimit", "Idempotency", "read_body", "replay", "replay_answered"]


async def read_body(receive: Receive, limit: int) -> bytes | None:
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


def replay(body: bytes) -> Receive:
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
        body = await read_body(receive, self.max_bytes)
        if body is None:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, replay(body), send)

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

    Only authenticated requests take a key (:mod:`stockguard.api.auth` runs first), and
    keys belong to the API key that sent them, however its header is spelled. The
    answer of a request that changed something is stored by the use case itself, in the
    transaction of its effect (:mod:`stockguard.service.idempotency`); what is stored
    here afterwards is only the answer of a request that changed nothing."""

    def __init__(self, app: ASGIApp, pool: Callable[[], asyncpg.Pool]) -> None:
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key_raw = _header(scope, b"idempotency-key") if scope["type"] == "http" else None
        api_key = api_key_of(scope) if key_raw is not None else None
        if key_raw is None or scope["method"] != "POST" or api_key is None:
            await self.app(scope, receive, send)
            return
        key = key_raw.decode("latin-1")
        if not 1 <= len(key) <= 255:
            await problem(
                422, "validation_error", "Invalid request",
                "Idempotency-Key must be 1 to 255 characters",
            )(scope, receive, send)  # fmt: skip
            return
        body = await read_body(receive, 1 << 30) or b""
        fingerprint = hashlib.sha256(
            b"\0".join([scope["path"].encode(), scope.get("query_string", b""), body])
        ).hexdigest()
        claim = Claim(owner=api_key.id, key=key, fingerprint=fingerprint)
        try:
            row = await load_answer(self.pool(), claim.owner, key)
        except CONNECTION_LOST:
            await unavailable()(scope, receive, send)
            return
        if row is not None:
            await _answer_again(row, claim)(scope, receive, send)
            return
        captured: dict[str, Any] = {"status": 500, "headers": [], "body": []}
        held: list[Message] = []

        async def capture(message: Message) -> None:
            # Held until the answer is stored: a client that has its answer finds it
            # stored when it sends the key again.
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"].append(message.get("body", b""))
            held.append(message)

        token = open_claim(claim)
        try:
            await self.app(scope, replay(body), capture)
        finally:
            close_claim(token)
        status = int(captured["status"])
        if not claim.done and status < 500:
            content_type = next(
                (
                    bytes(v).decode("latin-1")
                    for k, v in captured["headers"]
                    if k == b"content-type"
                ),
                "application/json",
            )
            answer = Answer(status, content_type, b"".join(captured["body"]))
            with contextlib.suppress(*CONNECTION_LOST):  # a retry then simply runs again
                await store_answer_after(self.pool(), claim, answer)
        for message in held:
            await send(message)


def _answer_again(row: asyncpg.Record, claim: Claim) -> Response:
    if row["request_hash"] != claim.fingerprint:
        return problem(
            422,
            "idempotency_key_reused",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request",
        )
    if row["status_code"] is None:  # written by a version that stored answers later
        return problem(
            409, "conflict", "Conflict", "a request with this Idempotency-Key is in progress"
        )
    return Response(
        bytes(row["body"] or b""),
        status_code=row["status_code"],
        media_type=row["content_type"],
        headers={"Idempotent-Replayed": "true"},
    )


async def replay_answered(pool: asyncpg.Pool, claim: Claim) -> Response:
    """The answer of the concurrent request that took this key first."""
    row = await load_answer(pool, claim.owner, claim.key)
    if row is None:  # its transaction stored nothing after all: let the client retry
        return problem(409, "conflict", "Conflict", "retry the request")
    return _answer_again(row, claim)
