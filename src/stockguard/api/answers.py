"""Answers of the routes that change something: rendered once, inside the use case's
transaction when the request carries an ``Idempotency-Key`` (so the stored answer and
the one sent are the same bytes), or after it otherwise."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.responses import Response

from stockguard.service.idempotency import Answer, current_claim

__all__ = ["answered", "json_bytes"]

T = TypeVar("T")


def json_bytes(body: Any) -> bytes:
    """Compact UTF-8 JSON, the bytes Starlette's ``JSONResponse`` would send, rendered by
    orjson (several times cheaper on the order answers of the hot path). What orjson
    refuses (an integer beyond 64 bits) is rendered by :mod:`json`. The answers carry no
    floats (amounts are integers in minor units)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(
            body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("utf-8")


async def answered(
    call: Callable[[], Awaitable[T]],
    render: Callable[[T], tuple[int, Any]],
    *,
    replay: Callable[[T], Any] | None = None,
) -> Response:
    """Run the use case ``call`` and answer with ``render(result)`` = (status, body).
    ``replay`` renders what a replay may show when it must differ (a secret shown once)."""

    def to_answer(result: T) -> Answer:
        status, body = render(result)
        stored = json_bytes(replay(result)) if replay is not None else None
        return Answer(status, "application/json", json_bytes(body), stored)

    claim = current_claim()
    if claim is not None:
        claim.render = to_answer
    result = await call()
    answer = claim.answer if claim is not None and claim.answer is not None else None
    if answer is None:
        answer = to_answer(result)
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)
