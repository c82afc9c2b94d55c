"""RFC 9457 problem+json responses; never a stack trace or an internal detail."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from stockguard.api.answers import json_bytes
from stockguard.domain.errors import StockguardError
from stockguard.logging import get_logger
from stockguard.store.db import CONNECTION_LOST

__all__ = ["from_error", "install_handlers", "problem", "unavailable"]

log = get_logger(__name__)

PROBLEM = "application/problem+json"
_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    body = {
        "type": f"https://stockguard.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(json_bytes(body), status_code=status, media_type=PROBLEM, headers=headers)


def unavailable() -> Response:
    """The database connection died or the server is restarting. Unlike a timeout, the
    outcome of a change in flight is unknown: the client retries with the same id or
    Idempotency-Key, which makes the retry safe."""
    response = problem(
        503,
        "busy",
        "Busy",
        "the database connection was lost; retry with the same id or Idempotency-Key",
    )
    response.headers["Retry-After"] = "1"
    return response


def from_error(exc: StockguardError) -> Response:
    return problem(exc.status, exc.code, exc.title, exc.detail, **exc.extra)


MAX_ERRORS = 20  # a body of 100,000 bad fields must not answer with 100,000 errors


def _validation_errors(exc: RequestValidationError) -> tuple[list[dict[str, Any]], int]:
    """The first ``MAX_ERRORS`` errors, and how many there are."""
    errors = exc.errors()
    out = []
    for err in errors[:MAX_ERRORS]:
        if err.get("type") == "json_invalid":  # FastAPI's loc is a character offset
            why = (err.get("ctx") or {}).get("error") or err.get("msg", "")
            out.append({"loc": ["body"], "msg": str(why), "type": "json_invalid"})
            continue
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    return out, len(errors)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path."""
    return [
        method
        for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


def install_handlers(app: FastAPI) -> None:
    async def on_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StockguardError)
        return from_error(exc)

    async def on_validation(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors, count = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        return problem(
            422, "validation_error", "Invalid request", detail, errors=errors, error_count=count
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8 JSON)
            return problem(
                422, "validation_error", "Invalid request", "the request body is not valid JSON"
            )
        code, title = _HTTP_CODES.get(exc.status_code, ("error", "Error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        response = problem(exc.status_code, code, title, detail)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:  # Starlette names only the first route's methods
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    async def on_bad_text(_request: Request, exc: Exception) -> Response:
        # PostgreSQL text cannot hold U+0000: a client's input, not an internal error.
        return problem(
            422, "validation_error", "Invalid request", "text must not contain U+0000 characters"
        )

    async def on_busy(request: Request, exc: Exception) -> Response:
        # lock_timeout or statement_timeout: the transaction rolled back whole; retryable.
        log.warning("busy", path=request.url.path, error=type(exc).__name__)
        response = problem(
            503, "busy", "Busy", "the stock is busy right now; nothing changed, retry shortly"
        )
        response.headers["Retry-After"] = "1"
        return response

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
        return unavailable()

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("unhandled_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
        return problem(500, "internal_error", "Internal error", "an internal error occurred")

    app.add_exception_handler(StockguardError, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(asyncpg.LockNotAvailableError, on_busy)
    app.add_exception_handler(asyncpg.QueryCanceledError, on_busy)
    for lost in CONNECTION_LOST:
        app.add_exception_handler(lost, on_unavailable)
    app.add_exception_handler(asyncpg.TooManyConnectionsError, on_unavailable)
    app.add_exception_handler(asyncpg.CharacterNotInRepertoireError, on_bad_text)
    app.add_exception_handler(asyncpg.UntranslatableCharacterError, on_bad_text)
    app.add_exception_handler(Exception, on_crash)
