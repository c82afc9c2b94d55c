"""The PostgreSQL pool and the transaction runner that every use case goes through."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
import orjson

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection of our own or one borrowed from the pool.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = Any

from stockguard.logging import get_logger

__all__ = [
    "CONNECTION_LOST",
    "RETRYABLE",
    "Conn",
    "LostBeforeCommit",
    "connect_pool",
    "is_retryable",
]

log = get_logger(__name__)
T = TypeVar("T")

# The connection died (a terminated backend, a restarted server, a broken socket).
CONNECTION_LOST: tuple[type[Exception], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a protocol state broken by a lost connection
    ConnectionError,
)


class LostBeforeCommit(Exception):
    """The connection died before COMMIT was sent: the transaction certainly rolled back,
    so running it again on another connection is safe."""


# Errors after which the whole transaction is simply run again.
RETRYABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    # A concurrent insert of the same key (an order id, a payment, an idempotency key)
    # committed first: run again, and the use case finds it and decides accordingly.
    asyncpg.exceptions.UniqueViolationError,
    LostBeforeCommit,
)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RETRYABLE)


def _jsonb_text(value: Any) -> str:
    """A jsonb parameter's text: orjson's (the outbox encodes an order per event), the
    standard library's for what orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_jsonb_text, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Instead of the pool's reset query (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``,
    advisory unlocks) on every release: nothing here changes session state outside a
    transaction (no ``SET``, ``LISTEN``, advisory locks or cursors), and asyncpg rolls
    back an open transaction before this is called."""


async def connect_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    statement_timeout_ms: int = 10_000,
    lock_timeout_ms: int = 5_000,
) -> asyncpg.Pool:
    settings = {
        "statement_timeout": str(statement_timeout_ms),
        "lock_timeout": str(lock_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
        "application_name": "stockguard",
        "timezone": "UTC",
        # Plans made per execution with the actual parameters and the table's current
        # size: a generic plan cached while a table was empty (no ANALYZE yet, autovacuum
        # off) would keep scanning it sequentially once it holds millions of rows.
        "plan_cache_mode": "force_custom_plan",
        # Never JIT-compile: without statistics the estimates of the order reads grow
        # with the tables until they pass jit_above_cost, and compiling then costs
        # 50-100 ms per execution of a statement that runs in well under one.
        "jit": "off",
    }
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings=settings,
    )
    return pool


async def backoff(attempt: int) -> None:
    await asyncio.sleep(min(0.2, 0.005 * 2**attempt) * random.random())


async def retrying(fn: Callable[[], Awaitable[T]], attempts: int = 6) -> T:
    """Run ``fn`` again after a deadlock or serialization failure (never seen by clients)."""
    for attempt in range(attempts):
        try:
            return await fn()
        except RETRYABLE as exc:
            if attempt == attempts - 1:
                if isinstance(exc, LostBeforeCommit) and exc.__cause__ is not None:
                    raise exc.__cause__ from None
                raise
            log.warning("transaction_retry", attempt=attempt + 1, error=type(exc).__name__)
            await backoff(attempt)
    raise AssertionError("unreachable")


def record_to_dict(record: asyncpg.Record) -> dict[str, Any]:
    return dict(record.items())
