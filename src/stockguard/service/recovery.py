"""Failsafe recovery of paid orders whose stock is not committed (seed 003, DESIGN.md §4).

An order in any other status (``pending``, ``cancelled``, ``shipped``...) is refused with
``invalid_transition`` saying why, and nothing is done or logged: there is nothing to
recover. For a ``paid``, ``processing`` or ``needs_review`` order: log
``RECOVERY_ATTEMPT``; with no payment proof (a CHECK makes that state impossible) log
``INCONSISTENCY_DETECTED`` and commit nothing; when every line is already committed
log ``RECOVERY_SKIPPED_ALREADY_COMMITTED``; otherwise commit what is reserved and reserve
again what expired, all or nothing: ``RECOVERY_SUCCESS`` and ``paid``, or
``RECOVERY_FAILED`` and ``needs_review``. Recovery never releases stock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg

from stockguard.domain.errors import InvalidTransition, NotFound, OutOfStock, StockguardError
from stockguard.domain.model import LogAction, OrderStatus, ReservationStatus
from stockguard.logging import get_logger
from stockguard.service.failsafe import write_failure_log
from stockguard.service.orders import commit_reserved, rereserve_missing, set_order_status
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.orders import (
    LogEntry,
    OrderRecord,
    find_orders,
    insert_logs,
    load_order,
    log_inconsistency,
)

__all__ = [
    "WORKER_ACTOR",
    "Outcome",
    "Recovery",
    "list_needs_review",
    "list_paid_uncommitted",
    "recover_order",
    "recover_paid_uncommitted",
    "resolve_order",
]

log = get_logger(__name__)
WORKER_ACTOR = "system:recovery-worker"
RECOVERABLE = (OrderStatus.PAID, OrderStatus.PROCESSING, OrderStatus.NEEDS_REVIEW)
# The worker leaves needs_review to an operator (seed 003): it only retries paid states.
WORKER_RECOVERS = (OrderStatus.PAID, OrderStatus.PROCESSING)


class Outcome(StrEnum):
    SUCCESS = "success"
    SKIPPED_ALREADY_COMMITTED = "skipped_already_committed"
    FAILED = "failed"
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True, slots=True)
class Recovery:
    outcome: Outcome
    order: OrderRecord | None
    log_id: int | None


def _state(order: OrderRecord) -> dict[str, Any]:
    reserved = [r.id for r in order.reservations if r.status == ReservationStatus.RESERVED]
    committed = [r.id for r in order.reservations if r.status == ReservationStatus.COMMITTED]
    held = order.held_by_line()
    missing = {n: q - held.get(n, 0) for n, _, q in order.lines if held.get(n, 0) < q}
    return {
        "reserved_count": len(reserved),
        "committed_count": len(committed),
        "missing_lines": len(missing),
        "reserved_ids": reserved,
    }


def _not_recoverable(order: OrderRecord) -> str:
    """Why recovery does nothing for an order outside ``RECOVERABLE``."""
    if order.status == OrderStatus.PENDING:
        why = "it is pending: not paid yet, so its stock stays reserved until it is paid"
    elif order.status == OrderStatus.CANCELLED:
        why = "it is cancelled: its stock was released"
    else:
        why = f"it is {order.status.value}: its stock was already committed and fulfilled"
    return (
        f"nothing to recover for order {order.id}: {why}. Recovery commits the stock of "
        "paid, processing or needs_review orders only; nothing was changed or logged"
    )


async def _recover(uow: UnitOfWork, order_id: str, skip_locked: bool) -> Recovery | None:
    order = await load_order(uow.conn, order_id, lock=True, skip_locked=skip_locked)
    if order is None:
        if skip_locked:
            return None  # another worker has it right now
        raise NotFound(f"order {order_id} not found")
    if order.deleted_at is not None:
        if skip_locked:
            return None  # deleted since the worker listed it
        raise NotFound(f"order {order_id} not found")
    state = _state(order)
    if skip_locked and (
        order.status not in WORKER_RECOVERS
        or (not state["reserved_ids"] and not state["missing_lines"])
    ):
        return None  # paid, cancelled or committed by someone else since it was listed
    if order.status not in RECOVERABLE:
        raise InvalidTransition(order.status.value, OrderStatus.PAID.value, _not_recoverable(order))
    ids = state.pop("reserved_ids")
    (attempt,) = await insert_logs(
        uow.conn,
        uow.actor,
        [LogEntry(order.id, LogAction.RECOVERY_ATTEMPT, ids, context=state)],
    )
    if not order.has_payment_proof:  # pragma: no cover - CHECK paid_orders_carry_payment_proof
        log_id = await log_inconsistency(
            uow.conn,
            uow.actor,
            order.id,
            "NO_PAYMENT_PROOF",
            "nothing committed: no payment proof (provider and payment id)",
            ids,
            attempt_log_id=attempt,
        )
        return Recovery(Outcome.INCONSISTENT, order, log_id)
    if state["reserved_count"] == 0 and state["missing_lines"] == 0:
        (log_id,) = await insert_logs(
            uow.conn,
            uow.actor,
            [LogEntry(order.id, LogAction.RECOVERY_SKIPPED_ALREADY_COMMITTED, context=state)],
        )
        return Recovery(Outcome.SKIPPED_ALREADY_COMMITTED, order, log_id)
    rereserved = await rereserve_missing(uow, order)
    if isinstance(rereserved, OutOfStock):
        (log_id,) = await insert_logs(
            uow.conn,
            uow.actor,
            [
                LogEntry(
                    order.id,
                    LogAction.RECOVERY_FAILED,
                    ids,
                    error_reason="RESERVATION_EXPIRED_OR_NOT_FOUND",
                    context={**state, "shortages": rereserved.extra["shortages"]},
                )
            ],
        )
        await set_order_status(uow, order, OrderStatus.NEEDS_REVIEW)
        return Recovery(Outcome.FAILED, await load_order(uow.conn, order.id), log_id)
    committed = await commit_reserved(uow, order)
    (log_id,) = await insert_logs(
        uow.conn,
        uow.actor,
        [
            LogEntry(
                order.id,
                LogAction.RECOVERY_SUCCESS,
                committed,
                context={"committed": len(committed), "rereserved": len(rereserved), **state},
            )
        ],
    )
    # A recovered order is paid again; one the shop had already moved on stays there.
    recovered = (
        OrderStatus.PROCESSING if order.status == OrderStatus.PROCESSING else OrderStatus.PAID
    )
    await set_order_status(uow, order, recovered)
    uow.events.order(order.id, "order.recovered")
    return Recovery(Outcome.SUCCESS, await load_order(uow.conn, order.id), log_id)


async def _to_review(uow: UnitOfWork, order_id: str) -> None:
    """After a recovery that failed for a reason of its own: a paid order needs a person."""
    order = await load_order(uow.conn, order_id, lock=True)
    if order is not None and order.status in WORKER_RECOVERS and not order.fully_committed:
        await set_order_status(uow, order, OrderStatus.NEEDS_REVIEW)


async def recover_order(
    backends: Backends, order_id: str, actor: str, *, skip_locked: bool = False
) -> Recovery | None:
    """Recover one order. On an unexpected failure the attempt and the failure are logged
    in a transaction of their own and a paid order goes to ``needs_review``."""

    async def body(uow: UnitOfWork) -> Recovery | None:
        return await _recover(uow, order_id, skip_locked)

    try:
        return await run(backends, actor, body, operation="recover_order")
    except (StockguardError, asyncio.CancelledError):
        raise
    except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
        ids = await write_failure_log(
            backends.pool,
            actor,
            [
                LogEntry(order_id, LogAction.RECOVERY_ATTEMPT),
                LogEntry(
                    order_id,
                    LogAction.RECOVERY_FAILED,
                    error_reason=f"{type(exc).__name__}: {exc}"[:500],
                    context={"detail": "recovery failed; manual follow-up needed"},
                ),
            ],
        )
        try:
            await run(
                backends,
                actor,
                lambda uow: _to_review(uow, order_id),
                operation="recover_order_failed",
                answers=False,
            )
        except Exception:
            log.exception("needs_review_not_set", order_id=order_id)
        order = None
        try:
            async with backends.pool.acquire() as conn:
                order = await load_order(conn, order_id)
        except Exception:
            log.exception("order_not_loaded", order_id=order_id)
        return Recovery(Outcome.FAILED, order, ids[1] if ids else None)


_PAID_UNCOMMITTED = """
WHERE o.status IN ('paid', 'processing') AND o.deleted_at IS NULL
  AND (EXISTS (SELECT 1 FROM reservations r WHERE r.order_id = o.id AND r.status = 'reserved')
       OR NOT EXISTS (SELECT 1 FROM reservations r WHERE r.order_id = o.id
                      AND r.status = 'committed'))
  AND ($1::timestamptz IS NULL OR (o.created_at, o.id) > ($1, $2))
ORDER BY o.created_at, o.id
LIMIT $3
"""

_NEEDS_REVIEW = """
WHERE o.status = 'needs_review' AND o.deleted_at IS NULL
  AND ($1::timestamptz IS NULL OR (o.created_at, o.id) > ($1, $2))
ORDER BY o.created_at, o.id
LIMIT $3
"""


async def _listed(
    backends: Backends, where: str, limit: int, after: tuple[Any, str] | None
) -> list[OrderRecord]:
    async with backends.pool.acquire() as conn:
        return await find_orders(
            conn, where, after[0] if after else None, after[1] if after else "", limit
        )


async def list_paid_uncommitted(
    backends: Backends, limit: int = 100, after: tuple[Any, str] | None = None
) -> list[OrderRecord]:
    """Paid (or processing) orders with reservations still ``reserved``, or none
    ``committed`` (seed 003)."""
    return await _listed(backends, _PAID_UNCOMMITTED, limit, after)


async def list_needs_review(
    backends: Backends, limit: int = 100, after: tuple[Any, str] | None = None
) -> list[OrderRecord]:
    return await _listed(backends, _NEEDS_REVIEW, limit, after)


async def recover_paid_uncommitted(backends: Backends, limit: int = 100) -> int:
    """One pass of the recovery worker; returns how many orders it recovered or tried."""
    found = await list_paid_uncommitted(backends, limit)
    done = 0
    for order in found:
        try:
            result = await recover_order(backends, order.id, WORKER_ACTOR, skip_locked=True)
        except StockguardError as exc:  # one order's refusal never stops the pass
            log.warning("recovery_skipped", order_id=order.id, error=exc.code)
            continue
        done += result is not None
    return done


async def resolve_order(
    backends: Backends, order_id: str, target: OrderStatus, actor: str, note: str | None = None
) -> OrderRecord:
    """Seed 003's manual step 5: a reviewed order goes back to ``paid`` or on to
    ``processing`` - only when every line is fully committed."""
    if target not in (OrderStatus.PAID, OrderStatus.PROCESSING):
        raise InvalidTransition(OrderStatus.NEEDS_REVIEW.value, target.value)

    async def body(uow: UnitOfWork) -> OrderRecord:
        order = await load_order(uow.conn, order_id, lock=True)
        if order is None or order.deleted_at is not None:
            raise NotFound(f"order {order_id} not found")
        if order.status not in (OrderStatus.NEEDS_REVIEW, OrderStatus.PAID):
            raise InvalidTransition(order.status.value, target.value)
        if not order.has_payment_proof or not order.fully_committed:
            raise InvalidTransition(
                order.status.value,
                target.value,
                "every reservation must be committed first: run recovery, or adjust "
                "stock and recover",
            )
        await set_order_status(uow, order, target)
        await insert_logs(
            uow.conn,
            uow.actor,
            [
                LogEntry(
                    order.id,
                    LogAction.STATUS_CHANGED,
                    context={"from": order.status.value, "to": target.value, "note": note},
                )
            ],
        )
        fresh = await load_order(uow.conn, order.id)
        assert fresh is not None
        return fresh

    return await run(backends, actor, body, operation="resolve_order")
