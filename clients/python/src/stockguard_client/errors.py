"""Every refusal the API answers, as one exception hierarchy::

    StockguardError                  any problem+json answer (unknown codes too)
    ├── Unauthorized                 401 unauthorized
    ├── Forbidden                    403 forbidden
    ├── NotFound                     404 not_found
    ├── ValidationError              422 validation_error (``errors``)
    │   └── UnknownSku               422 unknown_sku (``skus``)
    ├── IdempotencyKeyReused         422 idempotency_key_reused
    ├── OutOfStock                   409 out_of_stock (``shortages``)
    ├── InvalidTransition            409 invalid_transition (``from_status``, ``to_status``)
    ├── OrderNotDeletable            409 order_not_deletable
    ├── InsufficientStock            409 insufficient_stock
    ├── StaleQuantity                409 stale_quantity
    ├── ReceiptExceedsInTransit      409 receipt_exceeds_in_transit (``lines``)
    ├── ReturnExceedsFulfilled       409 return_exceeds_fulfilled (``lines``)
    ├── ReservationExpired           409 reservation_expired
    ├── Conflict                     409 conflict
    ├── BatchRejected                409 batch_rejected (``items``)
    ├── EventsExpired                410 events_expired (``pruned_through``)
    ├── InvalidSignature             400 invalid_signature
    ├── PayloadTooLarge              413 payload_too_large
    ├── Busy                         503 busy (retried by the client first)
    ├── CacheUnavailable             503 cache_unavailable (retried by the client first)
    └── ConnectionFailed             no answer at all: the outcome is unknown

Every one carries the request's ``idempotency_key`` (for a POST): calling again with it
is always safe. :class:`WebhookVerificationError` (a signature that does not check out)
is not an API answer and stands alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = [
    "BatchRejected",
    "Busy",
    "CacheUnavailable",
    "Conflict",
    "ConnectionFailed",
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
    "ReceiptExceedsInTransit",
    "ReservationExpired",
    "ReturnExceedsFulfilled",
    "ReturnableLine",
    "Shortage",
    "StaleQuantity",
    "StockguardError",
    "Unauthorized",
    "UnknownSku",
    "ValidationError",
    "WebhookVerificationError",
    "error_from_problem",
]


class Shortage(BaseModel):
    """One SKU an order could not get: ``requested`` units, ``available`` ones."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    sku: str
    requested: int
    available: int


class ReturnableLine(BaseModel):
    """One SKU of a return beyond what was fulfilled."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    sku: str
    requested: int
    returnable: int


class StockguardError(Exception):
    """A problem+json answer (RFC 9457): ``status``, ``code``, ``detail`` and the whole
    ``problem``; ``status`` is 0 for :class:`ConnectionFailed`."""

    code_name: ClassVar[str | None] = None  # the API code this class stands for

    def __init__(
        self,
        status: int,
        problem: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.problem = problem
        self.code: str = str(problem.get("code") or f"http_{status}")
        self.title: str = str(problem.get("title") or "")
        self.detail: str = str(problem.get("detail") or self.title or f"HTTP {status}")
        self.idempotency_key = idempotency_key
        self.retry_after = retry_after
        super().__init__(f"{status} {self.code}: {self.detail}")


class Unauthorized(StockguardError):
    code_name = "unauthorized"


class Forbidden(StockguardError):
    code_name = "forbidden"


class NotFound(StockguardError):
    code_name = "not_found"


class ValidationError(StockguardError):
    """The request was invalid; ``errors`` lists the fields when the server named them."""

    code_name = "validation_error"

    @property
    def errors(self) -> list[dict[str, Any]]:
        found = self.problem.get("errors")
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


class UnknownSku(ValidationError):
    """An order named SKUs that do not exist (``skus``); nothing was reserved."""

    code_name = "unknown_sku"

    @property
    def skus(self) -> list[str]:
        found = self.problem.get("skus")
        return [s for s in found if isinstance(s, str)] if isinstance(found, list) else []


class IdempotencyKeyReused(StockguardError):
    """The same ``Idempotency-Key`` was used with another request."""

    code_name = "idempotency_key_reused"


class OutOfStock(StockguardError):
    """Nothing was reserved and no order stored; ``shortages`` lists every short SKU."""

    code_name = "out_of_stock"

    @property
    def shortages(self) -> list[Shortage]:
        return [Shortage.model_validate(s) for s in self.problem.get("shortages") or []]


class InvalidTransition(StockguardError):
    code_name = "invalid_transition"

    @property
    def from_status(self) -> str | None:
        value = self.problem.get("from")
        return value if isinstance(value, str) else None

    @property
    def to_status(self) -> str | None:
        value = self.problem.get("to")
        return value if isinstance(value, str) else None


class OrderNotDeletable(StockguardError):
    code_name = "order_not_deletable"


class InsufficientStock(StockguardError):
    """An adjustment or transfer would take units that are not there (``shortages`` for a
    transfer: ``[{sku, requested, movable}]``)."""

    code_name = "insufficient_stock"

    @property
    def shortages(self) -> list[dict[str, Any]]:
        found = self.problem.get("shortages")
        return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


class StaleQuantity(StockguardError):
    """``expected_on_hand`` did not match: read the level again."""

    code_name = "stale_quantity"


class ReceiptExceedsInTransit(StockguardError):
    code_name = "receipt_exceeds_in_transit"

    @property
    def lines(self) -> list[dict[str, Any]]:
        found = self.problem.get("lines")
        return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


class ReturnExceedsFulfilled(StockguardError):
    code_name = "return_exceeds_fulfilled"

    @property
    def lines(self) -> list[ReturnableLine]:
        return [ReturnableLine.model_validate(s) for s in self.problem.get("lines") or []]


class ReservationExpired(StockguardError):
    """The hold ran out before it was extended: pay it or place the order again."""

    code_name = "reservation_expired"


class Conflict(StockguardError):
    """An id (order, return, transfer, payment) already used with other content."""

    code_name = "conflict"


class BatchRejected(StockguardError):
    code_name = "batch_rejected"

    @property
    def items(self) -> list[dict[str, Any]]:
        found = self.problem.get("items")
        return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


class EventsExpired(StockguardError):
    """``after`` is older than the feed keeps; ``pruned_through`` is the first ``after``
    accepted again."""

    code_name = "events_expired"

    @property
    def pruned_through(self) -> int | None:
        value = self.problem.get("pruned_through")
        return value if isinstance(value, int) else None


class InvalidSignature(StockguardError):
    code_name = "invalid_signature"


class PayloadTooLarge(StockguardError):
    code_name = "payload_too_large"


class Busy(StockguardError):
    """The rows were locked too long; nothing changed. Raised once the retries ran out."""

    code_name = "busy"


class CacheUnavailable(StockguardError):
    """Redis could not take the change; nothing changed. Raised once the retries ran out."""

    code_name = "cache_unavailable"


class ConnectionFailed(StockguardError):
    """No answer (connection refused or lost, timeout) after the retries: the outcome is
    unknown. Call again with the same ``idempotency_key`` (or order id): it is applied at
    most once."""

    code_name = None


class WebhookVerificationError(Exception):
    """A webhook whose headers or signature do not check out: answer it with 400."""


_BY_CODE: dict[str, type[StockguardError]] = {
    cls.code_name: cls
    for cls in (
        Unauthorized,
        Forbidden,
        NotFound,
        ValidationError,
        UnknownSku,
        IdempotencyKeyReused,
        OutOfStock,
        InvalidTransition,
        OrderNotDeletable,
        InsufficientStock,
        StaleQuantity,
        ReceiptExceedsInTransit,
        ReturnExceedsFulfilled,
        ReservationExpired,
        Conflict,
        BatchRejected,
        EventsExpired,
        InvalidSignature,
        PayloadTooLarge,
        Busy,
        CacheUnavailable,
    )
    if cls.code_name is not None
}


def error_from_problem(
    status: int,
    problem: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    retry_after: float | None = None,
) -> StockguardError:
    """The exception for an answer: by its ``code``, the base class for a code this
    client does not know."""
    cls = _BY_CODE.get(str(problem.get("code")), StockguardError)
    return cls(status, problem, idempotency_key=idempotency_key, retry_after=retry_after)
