"""Authentication before anything else reads the request.

A pure ASGI middleware resolves ``Authorization: Bearer <key>`` for the routes that need a
key and answers 401 (no key, unknown or revoked) and 403 (wrong role) before the body is
parsed: a caller without a valid key learns nothing about its input. Which role a route
needs is read from the route's own dependencies (``service_role`` / ``admin_role`` in
:mod:`stockguard.api.routes`), so there is one place that says it. The key found is put
in the request's state, where the routes' dependencies and the idempotency layer take it.

A key found valid is remembered in the process (:class:`KnownKeys`) and trusted without a
database round trip for at most ``fresh_for`` seconds (0.5 s) since PostgreSQL last
confirmed it; one query then confirms every remembered key at once, so a key revoked in
any process is refused by every process within a second.
"""

from __future__ import annotations

import asyncio
import time
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

__all__ = ["ADMIN", "SERVICE", "Authentication", "KnownKeys", "api_key_of", "bearer_token"]

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


def _role(dependant: Dependant, roles: dict[Callable[..., Any], str]) -> str | None:
    found = roles.get(dependant.call) if dependant.call is not None else None
    for sub in dependant.dependencies:
        inner = _role(sub, roles)
        if inner == ADMIN or (inner and not found):
            found = inner
    return found


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every route, also inside included routers (FastAPI keeps those as one entry)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(included.routes)


class KnownKeys:
    """Keys found valid, each with when PostgreSQL last said it was not revoked."""

    def __init__(self, fresh_for: float = 0.5, max_keys: int = 10_000) -> None:
        self.fresh_for = fresh_for
        self.max_keys = max_keys
        self._known: dict[str, tuple[keys.ApiKey, float]] = {}
        self._confirming: asyncio.Task[None] | None = None
        self.lookups = 0  # database round trips (tests)

    async def authenticate(self, pool: asyncpg.Pool, token: str) -> keys.ApiKey | None:
        digest = keys.hash_key(token)
        known = self._known.get(digest)
        if known is not None:
            if time.monotonic() - known[1] < self.fresh_for:
                return known[0]
            await self._confirm(pool)
            known = self._known.get(digest)
            if known is not None and time.monotonic() - known[1] < self.fresh_for:
                return known[0]
        self.lookups += 1
        started = time.monotonic()
        async with pool.acquire() as conn:
            key = await keys.authenticate(conn, token)
        if key is not None:
            if len(self._known) >= self.max_keys:
                self._known.clear()
            self._known[digest] = (key, started)
        return key

    def forget(self, key_id: str) -> None:
        """A key revoked through this process is refused by it at once."""
        for digest, (key, _) in list(self._known.items()):
            if key.id == key_id:
                del self._known[digest]

    async def _confirm(self, pool: asyncpg.Pool) -> None:
        """One query for every remembered key; concurrent callers share it."""
        running = self._confirming
        if (
            running is None
            or running.done()
            or running.get_loop() is not asyncio.get_running_loop()
        ):
            running = self._confirming = asyncio.create_task(self._confirm_all(pool))
        await asyncio.shield(running)

    async def _confirm_all(self, pool: asyncpg.Pool) -> None:
        digests = list(self._known)
        started = time.monotonic()
        self.lookups += 1
        async with pool.acquire() as conn:
            valid = await keys.still_valid(conn, digests)
        for digest in digests:
            known = self._known.get(digest)
            if known is None or known[1] >= started:
                continue  # looked up meanwhile: as fresh as this answer
            if digest in valid:
                self._known[digest] = (known[0], started)
            else:
                del self._known[digest]


class Authentication:
    def __init__(
        self,
        app: ASGIApp,
        routes: Callable[[], list[Any]],
        roles: dict[Callable[..., Any], str],
        pool: Callable[[], asyncpg.Pool],
        known: KnownKeys,
    ) -> None:
        self.app = app
        self.routes = routes
        self.roles = roles
        self.pool = pool
        self.known = known
        self._needs: list[tuple[APIRoute, str]] | None = None
        self._seen: dict[tuple[str, str], str | None] = {}  # (method, path) -> role

    def _needed_role(self, scope: Scope) -> str | None:
        """Matching every route's pattern costs more than the rest of a small request:
        the answer is remembered per method and path (a bounded memory: hot paths)."""
        seen = (scope["method"], scope["path"])
        if seen in self._seen:
            return self._seen[seen]
        if len(self._seen) >= 4096:
            self._seen.clear()
        role = self._seen[seen] = self._match_role(scope)
        return role

    def _match_role(self, scope: Scope) -> str | None:
        if self._needs is None:
            self._needs = [
                (r, role)
                for r in _api_routes(self.routes())
                if (role := _role(r.dependant, self.roles))
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
        key = await self.known.authenticate(self.pool(), token)
        if key is None:
            raise Unauthorized("unknown or revoked API key")
        if role == ADMIN and key.role != ADMIN:
            raise Forbidden("this needs an admin key")
        return key
