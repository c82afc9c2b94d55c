"""Every failure a caller can see, as one hierarchy::

    StockguardError                    code                    HTTP
    ├── Unauthorized                   unauthorized            401
    ├── Forbidden                      forbidden               403
    ├── NotFound                       not_found               404
    ├── ValidationFailed               validation_error        422
    ├── IdempotencyKeyReused           idempotency_key_reused  422
    ├── UnknownSku                     unknown_sku             422
    ├── OutOfStock                     out_of_stock            409
    ├── InvalidTransition              invalid_transition      409
    ├── OrderNotDeletable              order_not_deletable     409
    ├── InsufficientStock              insufficient_stock      409
    ├── ReceiptExceedsInTransit        receipt_exceeds_in_transit 409
    ├── StaleQuantity                  stale_quantity          409
    ├── ReturnExceedsFulfilled         return_exceeds_fulfilled 409
    ├── ReservationExpired             reservation_expired     409
    ├── Conflict                       conflict                409
    ├── BatchRejected                  batch_rejected          409
    │   └── PaymentReused              conflict                409
    ├── EventsExpired                  events_expired          410
    ├── InvalidSignature               invalid_signature       400
    ├── PayloadTooLarge                payload_too_large       413
    └── CacheUnavailable               cache_unavailable       503

The HTTP status lives with the error so that the API layer maps nothing by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "BatchRejected",
    "CacheUnavailable",
    "Conflict",
    "EventsExpired",
    "Forbidden",
    "IdempotencyKeyReused",
    "InsufficientStock",
    "InvalidSignature",
    "InvalidTransition",
    "NotFound",
    "OrderNotDeletable",
    "OutOfStock",
    "PayloadTooLarge",
    "PaymentReused",
    "ReceiptExceedsInTransit",
    "ReservationExpired",
    "ReturnExceedsFulfilled",
    "Shortage",
    "StaleQuantity",
    "StockguardError",
    "Unauthorized",
    "UnknownSku",
    "ValidationFailed",
    "problem_body",
]


class StockguardError(Exception):
    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Unauthorized(StockguardError):
    code, status, title = "unauthorized", 401, "Unauthorized"


class Forbidden(StockguardError):
    code, status, title = "forbidden", 403, "Forbidden"


class NotFound(StockguardError):
    code, status, title = "not_found", 404, "Not found"


class ValidationFailed(StockguardError):
    code, status, title = "validation_error", 422, "Invalid request"


class IdempotencyKeyReused(StockguardError):
    code, status, title = "idempotency_key_reused", 422, "Idempotency key reused"


class UnknownSku(StockguardError):
    """An order names SKUs that were never created (``PUT /v1/skus/{sku}``); ``skus``
    lists every one of them."""

    code, status, title = "unknown_sku", 422, "Unknown SKU"

    def __init__(self, skus: list[str]) -> None:
        super().__init__(
            f"unknown SKU{'s' if len(skus) > 1 else ''} {', '.join(skus)}: create "
            f"{'them' if len(skus) > 1 else 'it'} with PUT /v1/skus/{{sku}} first; nothing "
            "was reserved",
            skus=skus,
        )
        self.skus = skus


class InvalidTransition(StockguardError):
    code, status, title = "invalid_transition", 409, "Invalid status transition"

    def __init__(self, from_status: str, to_status: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"an order cannot go from {from_status} to {to_status}",
            **{"from": from_status, "to": to_status},
        )


class OrderNotDeletable(StockguardError):
    code, status, title = "order_not_deletable", 409, "Order cannot be deleted"


class InsufficientStock(StockguardError):
    code, status, title = "insufficient_stock", 409, "Insufficient stock"


class ReceiptExceedsInTransit(StockguardError):
    """A transfer receipt for more units than are still in transit."""

    code, status, title = "receipt_exceeds_in_transit", 409, "Receipt exceeds units in transit"


class StaleQuantity(StockguardError):
    code, status, title = "stale_quantity", 409, "Stale quantity"


class ReturnExceedsFulfilled(StockguardError):
    """More units returned than the order shipped (DESIGN.md §10, invariant 12)."""

    code, status, title = "return_exceeds_fulfilled", 409, "Return exceeds fulfilled units"

    def __init__(self, lines: list[tuple[str, int, int]]) -> None:
        super().__init__(
            "more units returned than fulfilled for " + ", ".join(sku for sku, _, _ in lines),
            lines=[{"sku": s, "requested": r, "returnable": n} for s, r, n in lines],
        )


class ReservationExpired(StockguardError):
    code, status, title = "reservation_expired", 409, "Reservation expired"


class Conflict(StockguardError):
    code, status, title = "conflict", 409, "Conflict"


class PaymentReused(Conflict):
    """One payment pays one order (DESIGN.md §10, invariant 11)."""

    def __init__(self, order_id: str, paid_order_id: str, provider: str, payment_id: str) -> None:
        super().__init__(
            f"payment {provider}/{payment_id} already paid order {paid_order_id}",
            paid_order_id=paid_order_id,
        )
        self.order_id = order_id
        self.paid_order_id = paid_order_id


class BatchRejected(StockguardError):
    """An all_or_nothing batch with failed items: nothing of it was applied."""

    code, status, title = "batch_rejected", 409, "Batch rejected"

    def __init__(self, failed: list[tuple[int, StockguardError]]) -> None:
        super().__init__(
            f"{len(failed)} item(s) failed; nothing was applied",
            items=[{"index": i, "problem": problem_body(e)} for i, e in failed],
        )
        self.failed = failed


class EventsExpired(StockguardError):
    code, status, title = "events_expired", 410, "Events expired"


class InvalidSignature(StockguardError):
    code, status, title = "invalid_signature", 400, "Invalid signature"


class PayloadTooLarge(StockguardError):
    code, status, title = "payload_too_large", 413, "Payload too large"


class CacheUnavailable(StockguardError):
    code, status, title = "cache_unavailable", 503, "Cache unavailable"


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    requested: int
    available: int


class OutOfStock(StockguardError):
    code, status, title = "out_of_stock", 409, "Out of stock"

    def __init__(self, shortages: list[Shortage]) -> None:
        super().__init__(
            "not enough stock for " + ", ".join(s.sku for s in shortages),
            shortages=[
                {"sku": s.sku, "requested": s.requested, "available": s.available}
                for s in shortages
            ],
        )
        self.shortages = shortages


def problem_body(exc: StockguardError) -> dict[str, Any]:
    """The problem+json object of an error (RFC 9457), e.g. inside a batch's answer."""
    return {
        "type": f"https://stockguard.dev/problems/{exc.code}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "code": exc.code,
        **exc.extra,
    }
