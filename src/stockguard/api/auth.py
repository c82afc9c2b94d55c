"""Authentication before anything else reads the request.

A pure ASGI middleware resolves ``Authorization: Bearer <key>`` for the routes that need a
key and answers 401 (no key, unknown or revoked) and 403 (wrong role) before the body is
parsed: a caller without a valid key learns nothing about its input. Which role a route
needs is read from the route's own dependencies (``service_role`` / ``admin_role`` in
:mod:`stockguard.api.routes`), so there is one place that says it. The key found is put
in the request's state, where the routes' dependencies and the idempotency layer take it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import asyncpg
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from stockguard.api.problems import from_error, unavailable
from stockguard.domain.errors import Forbidden, StockguardError, Unauthorized
from stockguard.store import keys
from stockguard.store.db import CONNECTION_LOST

__all__ = [
    "ADMIN",
    "SERVICE",
    "Authentication",
    "api_key_of",
    "api_routes",
    "bearer_token",
    "role_of",
]

ADMIN, SERVICE = "admin", "service"
MAX_AUTHORIZATION_BYTES = 1024


def bearer_token(scope: Scope) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (the scheme in any case), or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            if len(value) > MAX_AUTHORIZATION_BYTES:
                return None
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def api_key_of(scope: Scope) -> keys.ApiKey | None:
    found = scope.get("state", {}).get("api_key")
    return found if isinstance(found, keys.ApiKey) else None


def role_of(dependant: Dependant, roles: dict[Callable[..., Any], str]) -> str | None:
    """The role a route needs (admin wins over service), or None: no key needed."""
    found = roles.get(dependant.call) if dependant.call is not None else None
    for sub in dependant.dependencies:
        inner = role_of(sub, roles)
        if inner == ADMIN or (inner and not found):
            found = inner
    return found


def api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every route, also inside included routers (FastAPI keeps those as one entry)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)


class Authentication:
    def __init__(
        self,
        app: ASGIApp,
        routes: Callable[[], list[Any]],
        roles: dict[Callable[..., Any], str],
        pool: Callable[[], asyncpg.Pool],
    ) -> None:
        self.app = app
        self.routes = routes
        self.roles = roles
        self.pool = pool
        self._needs: list[tuple[APIRoute, str]] | None = None

    def _needed_role(self, scope: Scope) -> str | None:
        if self._needs is None:
            self._needs = [
                (r, role)
                for r in api_routes(self.routes())
                if (role := role_of(r.dependant, self.roles))
            ]
        for route, role in self._needs:
            if route.matches(scope)[0] is Match.FULL:
                return role
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        role = self._needed_role(scope)
        if role is None:
            await self.app(scope, receive, send)
            return
        try:
            key = await self._authenticate(scope, role)
        except StockguardError as exc:
            await from_error(exc)(scope, receive, send)
            return
        except CONNECTION_LOST:
            await unavailable()(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, role: str) -> keys.ApiKey:
        token = bearer_token(scope)
        if token is None:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        async with self.pool().acquire() as conn:
            key = await keys.authenticate(conn, token)
        if key is None:
            raise Unauthorized("unknown or revoked API key")
        if role == ADMIN and key.role != ADMIN:
            raise Forbidden("this needs an admin key")
        return key
