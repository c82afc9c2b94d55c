"""The unit of work: one transaction, its level changes, and the cache sync before COMMIT.

strict (default): the Redis write happens after the PostgreSQL writes and before COMMIT;
if it fails the transaction rolls back and the caller gets CacheUnavailable. If COMMIT
fails after the Redis write, the touched SKUs are rewritten from PostgreSQL.
degraded: PostgreSQL commits even when Redis fails; the touched SKUs are marked dirty in
the same transaction and the reconciler repairs them.
disabled: no cache at all (benchmarks measure the cost of parity with it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
from redis.exceptions import RedisError

from stockguard.cache.breaker import CacheBreaker
from stockguard.cache.redis_cache import RedisCache, SkuAvailability, availability, stamp_and_load
from stockguard.config import CacheMode
from stockguard.domain.errors import CacheUnavailable
from stockguard.logging import get_logger
from stockguard.metrics import (
    CACHE_SYNC_FAILURES,
    COMPENSATION_FAILED,
    EVENTS_WRITTEN,
    OPERATION_SECONDS,
    RESTORED_UNITS,
)
from stockguard.service.idempotency import Answer, claim_key, current_claim, store_answer
from stockguard.store.db import CONNECTION_LOST, Conn, LostBeforeCommit, retrying
from stockguard.store.events import Outbox
from stockguard.store.levels import LevelWriter

__all__ = ["Backends", "CacheSkipped", "UnitOfWork", "mark_dirty", "repair_cache", "run"]

log = get_logger(__name__)
T = TypeVar("T")

CACHE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


@dataclass
class Backends:
    """What every use case runs against."""

    pool: asyncpg.Pool
    cache: RedisCache | None
    cache_mode: CacheMode = CacheMode.STRICT
    redis_timeout: float = 0.5
    breaker: CacheBreaker = field(default_factory=CacheBreaker)
    # The outbox; off only to measure what it costs (bench): events are the contract.
    events: bool = True


class CacheSkipped(ConnectionError):
    """Redis was not even tried: the breaker is open after a recent failure."""


@dataclass
class UnitOfWork:
    conn: Conn
    levels: LevelWriter
    actor: str
    events: Outbox = field(default_factory=Outbox)
    # Units given back, by how (cancel, delete, expiry...): counted once committed, so a
    # retried or re-run transaction does not count them twice.
    restored: Counter[str] = field(default_factory=Counter)


async def mark_dirty(conn: Conn, skus: Sequence[str]) -> None:
    await conn.execute(
        "INSERT INTO cache_dirty (sku) SELECT unnest($1::text[]) "
        "ON CONFLICT (sku) DO UPDATE SET marked_at = now()",
        sorted(skus),
    )


async def _put(backends: Backends, conn: Conn, states: dict[str, SkuAvailability]) -> None:
    """Write availability as stamped in this transaction to Redis; SKUs found partly
    evicted are dropped there (reads fall back to PostgreSQL meanwhile) and marked for
    the reconciler, in this transaction."""
    assert backends.cache is not None
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(backends.redis_timeout):
            written = await backends.cache.write(states.values())
    except CACHE_ERRORS:
        backends.breaker.failed()
        raise
    backends.breaker.succeeded()
    if written.dropped:
        await mark_dirty(conn, written.dropped)


async def repair_cache(backends: Backends, skus: Sequence[str]) -> None:
    """Rewrite these SKUs in Redis from PostgreSQL, under the levels' locks; on failure
    leave them marked dirty for the reconciler. Raises if even that is impossible."""
    if backends.cache is None or not skus:
        return
    wanted = sorted(set(skus))
    try:
        async with backends.pool.acquire() as conn, conn.transaction():
            await LevelWriter(conn, "system:cache").lock(wanted)
            # Repairs always try (no breaker): they are how a recovered Redis gets used
            # again. A SKU found partly evicted is marked again by _put.
            await conn.execute("DELETE FROM cache_dirty WHERE sku = ANY($1::text[])", wanted)
            await _put(backends, conn, await stamp_and_load(conn, wanted))
    except CACHE_ERRORS:
        # Outside the rolled-back transaction, so the mark stays.
        async with backends.pool.acquire() as conn:
            await mark_dirty(conn, wanted)
        raise


async def _after_failed_write(conn: Conn, skus: list[str]) -> None:
    """A Redis write may have landed before it failed: make sure it cannot linger.

    Runs on the connection the failed transaction already holds (after its rollback):
    waiting for a second pooled connection while holding one deadlocks the process on
    its own pool once every connection is held that way (a frozen Redis does exactly
    that to every request at once)."""
    try:
        await mark_dirty(conn, skus)
    except Exception:
        COMPENSATION_FAILED.inc()
        log.exception("cache_compensation_failed", skus=skus)


async def _flush_and_sync(backends: Backends, uow: UnitOfWork) -> bool:
    """Write the outbox and sync the touched SKUs to Redis; True when Redis was written.

    The events and the cache stamp are one statement (``Outbox.flush(stamp=True)``),
    after every level write of the transaction and under their locks."""
    skus = sorted(uow.levels.touched)
    if not skus or backends.cache is None or backends.cache_mode is CacheMode.DISABLED:
        await uow.events.flush(uow.conn, uow.levels)
        return False
    if not backends.breaker.allow():
        await _cache_failed(
            backends, skus, CacheSkipped("the availability cache failed a moment ago")
        )
        # degraded: the change commits, with its events, and the reconciler repairs
        await uow.events.flush(uow.conn, uow.levels)
        await mark_dirty(uow.conn, skus)
        return False
    stamped = await uow.events.flush(uow.conn, uow.levels, stamp=True)
    try:
        await _put(backends, uow.conn, availability(skus, stamped))
    except CACHE_ERRORS as exc:
        await _cache_failed(backends, skus, exc)
        await mark_dirty(uow.conn, skus)
        return False
    return True


async def _cache_failed(backends: Backends, skus: list[str], exc: BaseException) -> None:
    """Count a failed cache sync; in strict mode refuse the whole change."""
    CACHE_SYNC_FAILURES.labels(backends.cache_mode.value).inc()
    mode = backends.cache_mode.value
    log.warning("cache_sync_failed", mode=mode, skus=skus, error=type(exc).__name__)
    if backends.cache_mode is CacheMode.STRICT:
        raise CacheUnavailable(
            "the availability cache could not be updated; nothing was changed"
        ) from exc


async def run(
    backends: Backends,
    actor: str,
    fn: Callable[[UnitOfWork], Awaitable[T]],
    *,
    operation: str,
    answers: bool = True,
) -> T:
    """Run ``fn`` in one transaction (again after a deadlock), syncing the cache first.

    When the request carries an ``Idempotency-Key`` (and ``answers``: the use case's main
    transaction, not a failsafe of its own), the key is taken first and the answer stored
    last, in this same transaction."""
    claim = current_claim() if answers else None
    if claim is not None and (claim.render is None or claim.done):
        claim = None

    async def attempt() -> T:
        failed: BaseException | None = None
        answer: Answer | None = None
        async with backends.pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            uow = UnitOfWork(
                conn=conn,
                levels=LevelWriter(conn, actor),
                actor=actor,
                events=Outbox(enabled=backends.events),
            )
            try:
                if claim is not None:
                    await claim_key(conn, claim)
                result = await fn(uow)
                if claim is not None:
                    assert claim.render is not None
                    answer = claim.render(result)
                    await store_answer(conn, claim, answer)
                wrote = await _flush_and_sync(backends, uow)
            except CacheUnavailable:
                await tr.rollback()
                await _after_failed_write(conn, sorted(uow.levels.touched))
                raise
            except CONNECTION_LOST as exc:
                with contextlib.suppress(Exception):
                    await tr.rollback()  # the server rolled it back already
                raise LostBeforeCommit(type(exc).__name__) from exc
            except BaseException:
                await tr.rollback()
                raise
            try:
                await tr.commit()
            except BaseException as exc:
                if not wrote:
                    raise
                failed = exc
        if failed is not None:
            # Outside the block: the repair takes a connection of its own, and this
            # request must not hold one while it waits for another.
            await _restore_after_failed_commit(backends, sorted(uow.levels.touched))
            raise failed
        if claim is not None:
            claim.answer, claim.done = answer, True
        for event_type, n in uow.events.written.items():
            EVENTS_WRITTEN.labels(event_type).inc(n)
        for via, n in uow.restored.items():
            RESTORED_UNITS.labels(via).inc(n)
        return result

    with OPERATION_SECONDS.labels(operation).time():
        return await retrying(attempt)


async def _restore_after_failed_commit(backends: Backends, skus: list[str]) -> None:
    try:
        await repair_cache(backends, skus)
    except Exception:
        COMPENSATION_FAILED.inc()
        log.exception("cache_restore_after_failed_commit_failed", skus=skus)
