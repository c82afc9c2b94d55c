"""Order and reservation states and the transitions between them (DESIGN.md §2)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from stockguard.domain.errors import InvalidTransition

__all__ = [
    "ACTIVE_RESERVATION",
    "CANCELLABLE",
    "DELETE_BLOCKED",
    "LogAction",
    "MovementReason",
    "OrderStatus",
    "ReservationStatus",
    "available",
    "check_patch_transition",
    "is_fully_committed",
]


class OrderStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    PROCESSING = "processing"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    NEEDS_REVIEW = "needs_review"


class ReservationStatus(StrEnum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    FULFILLED = "fulfilled"
    RELEASED = "released"
    EXPIRED = "expired"


class MovementReason(StrEnum):
    """Why a ledger row exists; the adjustment reasons are the API's."""

    RESERVE = "reserve"
    RELEASE = "release"
    EXPIRE = "expire"
    FULFIL = "fulfil"
    RECEIVED = "received"
    CORRECTION = "correction"
    CYCLE_COUNT = "cycle_count"
    DAMAGED = "damaged"
    SHRINKAGE = "shrinkage"
    RESTOCK = "restock"
    OTHER = "other"
    QUALITY_CONTROL = "quality_control"
    RETURNED = "returned"
    RETURNED_DAMAGED = "returned_damaged"
    TRANSFER_OUT = "transfer_out"
    TRANSFER_IN = "transfer_in"
    TRANSFER_CANCELLED = "transfer_cancelled"


ADJUSTMENT_REASONS = frozenset(
    {
        MovementReason.RECEIVED,
        MovementReason.CORRECTION,
        MovementReason.CYCLE_COUNT,
        MovementReason.DAMAGED,
        MovementReason.SHRINKAGE,
        MovementReason.RESTOCK,
        MovementReason.OTHER,
    }
)


class LogAction(StrEnum):
    """``order_inventory_logs.action`` values (seed 003 and DESIGN.md §6)."""

    RESERVED = "RESERVED"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    FULFILLED = "FULFILLED"
    STOCK_RESTORED = "STOCK_RESTORED"
    RECOVERY_ATTEMPT = "RECOVERY_ATTEMPT"
    RECOVERY_SUCCESS = "RECOVERY_SUCCESS"
    RECOVERY_SKIPPED_ALREADY_COMMITTED = "RECOVERY_SKIPPED_ALREADY_COMMITTED"
    RECOVERY_FAILED = "RECOVERY_FAILED"
    INCONSISTENCY_DETECTED = "INCONSISTENCY_DETECTED"
    STATUS_CHANGED = "STATUS_CHANGED"


# Reservations that hold units (they count in Level.reserved).
ACTIVE_RESERVATION = (ReservationStatus.RESERVED, ReservationStatus.COMMITTED)
# Orders that cancel may restore.
CANCELLABLE = frozenset(
    {OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.PROCESSING, OrderStatus.NEEDS_REVIEW}
)
# Orders that may never be deleted (seed 000's kept rule).
DELETE_BLOCKED = frozenset({OrderStatus.SHIPPED, OrderStatus.DELIVERED})

# What PATCH may do besides cancelling: the fulfilment path only.
_PATCH_FORWARD: dict[OrderStatus, OrderStatus] = {
    OrderStatus.PROCESSING: OrderStatus.PAID,
    OrderStatus.SHIPPED: OrderStatus.PROCESSING,
    OrderStatus.DELIVERED: OrderStatus.SHIPPED,
}


def check_patch_transition(current: OrderStatus, target: OrderStatus) -> bool:
    """Return True when the order must change, False when it already is ``target`` (a retry).

    Raises InvalidTransition for anything else. Cancelling is checked by the cancel flow.
    """
    if current == target:
        return False
    if _PATCH_FORWARD.get(target) == current:
        return True
    raise InvalidTransition(current.value, target.value)


def is_fully_committed(
    lines: Iterable[tuple[int, int]], reservations: Iterable[tuple[int, ReservationStatus, int]]
) -> bool:
    """Every line's units are committed (or already shipped) and none is merely reserved:
    the only state in which a paid order may move on (processing, shipped) or be
    resolved. ``lines`` are (line_no, quantity), ``reservations`` (line_no, status,
    quantity)."""
    done: dict[int, int] = {}
    for line_no, status, quantity in reservations:
        if status == ReservationStatus.RESERVED:
            return False
        if status in (ReservationStatus.COMMITTED, ReservationStatus.FULFILLED):
            done[line_no] = done.get(line_no, 0) + quantity
    wanted = list(lines)
    return bool(wanted) and all(done.get(n, 0) >= q for n, q in wanted)


def available(on_hand: int, reserved: int, unavailable: int = 0, safety_stock: int = 0) -> int:
    """What may be sold from a level (DESIGN.md §10, invariant 1'): never the reserved,
    unavailable or safety units, and never below zero."""
    return max(0, on_hand - reserved - unavailable - safety_stock)
