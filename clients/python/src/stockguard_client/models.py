"""What the stockguard API answers, as Pydantic models.

Fields the server adds later are ignored (a newer server does not break an older client);
timestamps are timezone-aware :class:`datetime.datetime` in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

__all__ = [
    "AdjustmentResult",
    "ApiKey",
    "Availability",
    "BatchItemResult",
    "BatchResult",
    "Channel",
    "Counts",
    "Drift",
    "Event",
    "EventPage",
    "ExplainLevel",
    "Explanation",
    "InventoryLog",
    "Level",
    "Location",
    "Model",
    "Movement",
    "Order",
    "OrderEvent",
    "OrderEventData",
    "OrderLine",
    "OrderStatus",
    "Page",
    "Payment",
    "PaymentInconsistency",
    "PaymentInconsistencyEvent",
    "PingEvent",
    "Readiness",
    "Receipt",
    "ReconcileReport",
    "RecoveryResult",
    "Reservation",
    "Return",
    "ReturnLine",
    "Sku",
    "SkuLevel",
    "StockChanged",
    "StockChangedEvent",
    "StockEdge",
    "StockEdgeEvent",
    "Transfer",
    "TransferEvent",
    "TransferLine",
    "UnknownEvent",
    "VerifyReport",
    "Violation",
    "WebhookDelivery",
    "WebhookEndpoint",
    "parse_event",
]


class Model(BaseModel):
    """Every answer: unknown fields ignored, instances immutable."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


T = TypeVar("T")


class Page(Model, Generic[T]):
    """One page of a list: pass ``next`` as ``after`` for the following one (``None``: the
    last page)."""

    items: list[T]
    next: str | None = None


# ------------------------------------------------------------ catalogue and stock


class Location(Model):
    code: str
    name: str
    priority: int
    active: bool
    created_at: datetime
    updated_at: datetime


class Channel(Model):
    code: str
    name: str
    locations: list[str]
    created_at: datetime
    updated_at: datetime


class SkuLevel(Model):
    """One location's level of a SKU, as ``GET /v1/skus/{sku}`` lists it."""

    location: str
    on_hand: int
    reserved: int
    unavailable: int = 0
    safety_stock: int = 0
    available: int
    active: bool = True


class Level(SkuLevel):
    """A level with its SKU (``PUT /v1/skus/{sku}/levels/{location}``)."""

    sku: str


class Sku(Model):
    """A SKU with its totals over active locations and every level."""

    sku: str
    name: str
    on_hand: int
    reserved: int
    unavailable: int = 0
    safety_stock: int = 0
    available: int
    low_stock_threshold: int | None = None
    levels: list[SkuLevel]


class AdjustmentResult(Model):
    """The level after an adjustment."""

    sku: str
    location: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int
    on_hand_delta: int
    unavailable_delta: int
    updated_at: datetime | None = None


class BatchItemResult(Model):
    index: int
    status: Literal["applied", "failed"]
    level: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class BatchResult(Model):
    results: list[BatchItemResult]


class Availability(Model):
    sku: str
    available: int
    locations: dict[str, int]


# ------------------------------------------------------------ orders and returns

OrderStatus = Literal[
    "pending",
    "paid",
    "processing",
    "shipped",
    "delivered",
    "cancelled",
    "needs_review",
]


class OrderLine(Model):
    sku: str
    quantity: int


class Reservation(Model):
    id: int
    sku: str
    location: str
    quantity: int
    status: str  # reserved, committed, fulfilled, released, expired
    expires_at: datetime | None = None


class Payment(Model):
    provider: str | None = None
    payment_id: str
    paid_at: datetime | None = None


class ReturnLine(Model):
    sku: str
    quantity: int
    disposition: Literal["restock", "damaged"]
    location: str


class Return(Model):
    return_id: str
    order_id: str
    lines: list[ReturnLine]
    note: str | None = None
    created_at: datetime


class Order(Model):
    id: str
    status: str  # one of OrderStatus; a str so that a new status never breaks parsing
    channel: str | None = None
    lines: list[OrderLine]
    reservations: list[Reservation]
    payment: Payment | None = None
    total_amount: int | None = None
    currency: str | None = None
    preferred_locations: list[str] = Field(default_factory=list)
    allow_split: bool = True
    cancel_reason: str | None = None
    returns: list[Return] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime

    def expires_at(self) -> datetime | None:
        """When the first of this order's held (``reserved``) reservations expires."""
        times = [r.expires_at for r in self.reservations if r.status == "reserved" and r.expires_at]
        return min(times) if times else None


# ------------------------------------------------------------ transfers


class TransferLine(Model):
    sku: str
    quantity: int
    received: int
    in_transit: int
    cancelled: int = 0


class Receipt(Model):
    receipt_id: str
    lines: list[OrderLine]
    actor: str | None = None
    created_at: datetime


class Transfer(Model):
    id: str
    from_: str = Field(alias="from")
    to: str
    status: Literal["in_transit", "received", "cancelled"]
    lines: list[TransferLine]
    receipts: list[Receipt]
    note: str | None = None
    created_at: datetime
    updated_at: datetime


# ------------------------------------------------------------ admin


class ApiKey(Model):
    """An API key; ``key`` (the secret) only in the answer that created it."""

    id: str
    name: str
    role: Literal["admin", "service"]
    key_prefix: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None
    key: str | None = None


class Movement(Model):
    """A ledger row (``GET /v1/admin/movements``), newest first; ``sku`` is left out in
    an :class:`Explanation` (they are all of its SKU)."""

    id: int
    sku: str | None = None
    location: str
    on_hand_delta: int
    reserved_delta: int
    unavailable_delta: int = 0
    reason: str
    order_id: str | None = None
    reservation_id: int | None = None
    actor: str | None = None
    reference: str | None = None
    created_at: datetime


class InventoryLog(Model):
    """One row of an order's inventory log, oldest first."""

    id: int
    order_id: str
    action: str
    actor: str | None = None
    reservation_ids: list[int] = Field(default_factory=list)
    error_reason: str | None = None
    context: Any = None
    created_at: datetime


class Counts(Model):
    on_hand: int
    reserved: int
    unavailable: int


class ExplainLevel(Counts):
    location: str


class Explanation(Model):
    """A SKU's levels as of ``at`` rebuilt from the ledger, the movements that made them,
    and whether the whole ledger adds up to the levels now."""

    sku: str
    location: str | None = None
    at: datetime | None = None
    now: datetime
    levels: list[ExplainLevel]
    totals: Counts
    movements: list[Movement]
    next: str | None = None
    consistent: bool
    mismatches: list[dict[str, Any]]


class Drift(Model):
    sku: str
    redis: Any = None
    postgres: Any = None


class ReconcileReport(Model):
    checked: int
    drifted: list[Drift]
    repaired: int


class RecoveryResult(Model):
    outcome: Literal["success", "skipped_already_committed", "failed", "inconsistent"]
    order: Order | None = None
    log_id: int | None = None


class Readiness(Model):
    """``GET /readyz``: whether this server can change stock now, and why not."""

    ok: bool
    mode: str | None = None
    checks: dict[str, bool] = Field(default_factory=dict)
    reasons: dict[str, str] = Field(default_factory=dict)


class Violation(Model):
    invariant: str | int
    check: str
    detail: Any = None


class VerifyReport(Model):
    ok: bool
    violations: list[Violation]


class WebhookEndpoint(Model):
    """An endpoint that receives events; ``secret`` (``whsec_…``) only in the answer that
    created it."""

    id: str
    url: str
    events: list[str]
    description: str | None = None
    active: bool
    created_at: datetime
    updated_at: datetime | None = None
    secret: str | None = None


class WebhookDelivery(Model):
    event_id: str
    seq: int | None = None
    type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    created_at: datetime | None = None


# ------------------------------------------------------------ events


class StockChanged(Model):
    """``stock.changed``: the SKU's totals over active locations after the change."""

    sku: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int
    locations: dict[str, int]


class StockEdge(Model):
    """``stock.out_of_stock``, ``stock.back_in_stock``, ``stock.low`` (with ``threshold``)."""

    sku: str
    available: int
    threshold: int | None = None


class OrderEventData(Model):
    order: Order
    reason: str | None = None


class PaymentInconsistency(Model):
    order_id: str
    reason: str
    provider: str | None = None
    payment_id: str | None = None


class TransferEventData(Model):
    transfer: Transfer


class PingData(Model):
    endpoint_id: str


class _EventBase(Model):
    id: str
    seq: int | None = None  # None only for a ping
    type: str
    occurred_at: datetime


class StockChangedEvent(_EventBase):
    type: Literal["stock.changed"]
    data: StockChanged


class StockEdgeEvent(_EventBase):
    type: Literal["stock.out_of_stock", "stock.back_in_stock", "stock.low"]
    data: StockEdge


class OrderEvent(_EventBase):
    """``order.placed``, ``order.paid``, ``order.cancelled``… with the order after the
    change."""

    data: OrderEventData


class PaymentInconsistencyEvent(_EventBase):
    type: Literal["payment.inconsistency"]
    data: PaymentInconsistency


class TransferEvent(_EventBase):
    data: TransferEventData


class PingEvent(_EventBase):
    type: Literal["ping"]
    data: PingData


class UnknownEvent(_EventBase):
    """An event type this client does not know yet: ``data`` as the server sent it."""

    data: dict[str, Any]


def _event_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return "unknown"
    if kind == "stock.changed":
        return "stock.changed"
    if kind in ("stock.out_of_stock", "stock.back_in_stock", "stock.low"):
        return "stock.edge"
    if kind.startswith("order."):
        return "order"
    if kind == "payment.inconsistency":
        return "payment.inconsistency"
    if kind.startswith("transfer."):
        return "transfer"
    if kind == "ping":
        return "ping"
    return "unknown"


Event = Annotated[
    Annotated[StockChangedEvent, Tag("stock.changed")]
    | Annotated[StockEdgeEvent, Tag("stock.edge")]
    | Annotated[OrderEvent, Tag("order")]
    | Annotated[PaymentInconsistencyEvent, Tag("payment.inconsistency")]
    | Annotated[TransferEvent, Tag("transfer")]
    | Annotated[PingEvent, Tag("ping")]
    | Annotated[UnknownEvent, Tag("unknown")],
    Discriminator(_event_kind),
]
"""One event, from the feed or a webhook: check its class (``isinstance(e, OrderEvent)``)
or its ``type``."""

_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(value: Any) -> Event:
    """An event from its decoded JSON."""
    return _EVENT.validate_python(value)


class EventPage(Model):
    """A page of the feed: ``next`` is the ``seq`` to pass as ``after``, ``None`` when
    nothing newer exists now (poll again later from the last ``seq`` seen)."""

    items: list[Event]
    next: int | None = None
