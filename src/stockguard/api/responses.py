"""The OpenAPI description of answers: a named model of every JSON body a route answers,
and :func:`answers`, which builds a route's ``responses=`` from its success bodies and the
problem ``code``s it can answer (:mod:`stockguard.api.refusals`). Documentation only:
routes still render their own JSON (byte for byte what the idempotency store keeps), these
models never re-validate an answer on the request path; schemathesis checks the real
answers against them (tests/test_schemathesis.py)."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from stockguard.api.refusals import Problem, problem_response, status_of
from stockguard.config import CacheMode
from stockguard.domain.model import OrderStatus, ReservationStatus
from stockguard.service.recovery import Outcome
from stockguard.service.transfers import TransferStatus

__all__ = [
    "AdjustmentResult",
    "ApiKey",
    "ApiKeyCreated",
    "ApiKeyPage",
    "Availability",
    "BatchItemResult",
    "BatchResult",
    "Channel",
    "Event",
    "EventPage",
    "Explain",
    "Health",
    "InventoryLogPage",
    "LedgerPage",
    "Level",
    "Location",
    "LocationPage",
    "Order",
    "OrderPage",
    "Problem",
    "Readiness",
    "ReconcileReport",
    "RecoveryResult",
    "Return",
    "ReturnList",
    "Sku",
    "SkuPage",
    "Transfer",
    "TransferPage",
    "Verification",
    "WebhookOutcome",
    "answers",
    "header",
    "raw_body",
]

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Cursor = Annotated[str | None, Field(description="the next page's `after`, or null")]


class Answer(BaseModel):
    # Every field the route renders is declared: an undeclared one fails validation.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ------------------------------------------------------------ catalogue


class Location(Answer):
    code: str
    name: str
    priority: int
    active: bool
    created_at: Timestamp
    updated_at: Timestamp


class LocationPage(Answer):
    items: list[Location]
    next: Cursor


class Channel(Answer):
    code: str
    name: str
    locations: list[str] = Field(description="location codes, highest priority first")
    created_at: Timestamp
    updated_at: Timestamp


class SkuLevel(Answer):
    location: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int
    active: bool


class Sku(Answer):
    """Totals over active locations; ``levels`` lists every location."""

    sku: str
    name: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int
    low_stock_threshold: int | None
    levels: list[SkuLevel]


class SkuPage(Answer):
    items: list[Sku]
    next: Cursor


class SkuAvailability(Answer):
    sku: str
    available: int
    locations: dict[str, int] = Field(description="available units by location code")


class Availability(Answer):
    items: list[SkuAvailability]


# ------------------------------------------------------------ stock


class Level(Answer):
    sku: str
    location: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int
    active: bool


class StockLevel(Answer):
    """A level after a write of a batch."""

    sku: str
    location: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int


class AdjustmentResult(Answer):
    sku: str
    location: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int
    on_hand_delta: int
    unavailable_delta: int
    updated_at: Timestamp | None


class BatchItemResult(Answer):
    """``applied`` with the ``level`` after it, or ``failed`` with its ``error``."""

    index: int
    status: Literal["applied", "failed"]
    level: StockLevel | None = None
    error: Problem | None = None


class BatchResult(Answer):
    results: list[BatchItemResult]


class Counts(Answer):
    on_hand: int
    reserved: int
    unavailable: int


class ExplainLevel(Counts):
    location: str


class Movement(Answer):
    id: int
    location: str
    on_hand_delta: int
    reserved_delta: int
    unavailable_delta: int
    reason: str
    order_id: str | None
    reservation_id: int | None
    actor: str | None
    reference: str | None
    created_at: Timestamp


class Mismatch(Answer):
    location: str
    level: Counts
    ledger: Counts


class Explain(Answer):
    sku: str
    location: str | None
    at: Timestamp | None
    now: Timestamp
    levels: list[ExplainLevel]
    totals: Counts
    movements: list[Movement]
    next: Cursor
    consistent: bool
    mismatches: list[Mismatch]


# ------------------------------------------------------------ orders and returns


class ReturnLine(Answer):
    sku: str
    quantity: int
    disposition: Literal["restock", "damaged"]
    location: str


class Return(Answer):
    return_id: str
    order_id: str
    lines: list[ReturnLine]
    note: str | None
    created_at: Timestamp


class ReturnList(Answer):
    items: list[Return]


class OrderLine(Answer):
    sku: str
    quantity: int


class Reservation(Answer):
    id: int
    sku: str
    location: str
    quantity: int
    status: ReservationStatus
    expires_at: Timestamp | None


class Payment(Answer):
    provider: str | None
    payment_id: str
    paid_at: Timestamp | None


class Order(Answer):
    id: str
    status: OrderStatus
    channel: str | None
    lines: list[OrderLine]
    reservations: list[Reservation]
    payment: Payment | None
    total_amount: int | None
    currency: str | None
    preferred_locations: list[str]
    allow_split: bool
    cancel_reason: str | None
    returns: list[Return]
    created_at: Timestamp
    updated_at: Timestamp


# ------------------------------------------------------------ transfers


class TransferLine(Answer):
    sku: str
    quantity: int
    received: int
    in_transit: int
    cancelled: int


class ReceiptLine(Answer):
    sku: str
    quantity: int


class Receipt(Answer):
    receipt_id: str
    lines: list[ReceiptLine]
    actor: str
    created_at: Timestamp


class Transfer(Answer):
    id: str
    from_: str = Field(alias="from")
    to: str
    status: TransferStatus
    lines: list[TransferLine]
    receipts: list[Receipt]
    note: str | None
    created_at: Timestamp
    updated_at: Timestamp


class TransferPage(Answer):
    items: list[Transfer]
    next: Cursor


# ------------------------------------------------------------ events


class StockChangedData(Answer):
    """``stock.changed``: the SKU's totals over active locations after the change."""

    sku: str
    on_hand: int
    reserved: int
    unavailable: int
    safety_stock: int
    available: int
    locations: dict[str, int] = Field(description="available per active location")


class StockEdgeData(Answer):
    """``stock.out_of_stock``, ``stock.back_in_stock`` and ``stock.low`` (with
    ``threshold``)."""

    sku: str
    available: int
    threshold: int | None = None


class OrderEventData(Answer):
    """``order.*``: the order as ``GET /v1/orders/{id}`` shows it after the change."""

    order: Order
    reason: str | None = None


class PaymentInconsistencyData(Answer):
    order_id: str
    reason: str
    provider: str | None = None
    payment_id: str | None = None


class TransferEventData(Answer):
    """``transfer.shipped``, ``transfer.received`` (each receipt), ``transfer.cancelled``."""

    transfer: Transfer


class PingData(Answer):
    endpoint_id: str


class EventBase(Answer):
    id: str = Field(description="evt_…; every delivery attempt carries the same id")
    seq: int | None = Field(description="commit order; null only for a ping")
    occurred_at: Timestamp


class StockChangedEvent(EventBase):
    type: Literal["stock.changed"]
    data: StockChangedData


class StockEdgeEvent(EventBase):
    type: Literal["stock.out_of_stock", "stock.back_in_stock", "stock.low"]
    data: StockEdgeData


class OrderEvent(EventBase):
    type: Literal[
        "order.placed",
        "order.paid",
        "order.needs_review",
        "order.cancelled",
        "order.deleted",
        "order.shipped",
        "order.delivered",
        "order.expired",
        "order.recovered",
        "order.returned",
    ]
    data: OrderEventData


class PaymentInconsistencyEvent(EventBase):
    type: Literal["payment.inconsistency"]
    data: PaymentInconsistencyData


class TransferEvent(EventBase):
    type: Literal["transfer.shipped", "transfer.received", "transfer.cancelled"]
    data: TransferEventData


class PingEvent(EventBase):
    type: Literal["ping"]
    data: PingData


EVENT_MODELS = (
    StockChangedEvent,
    StockEdgeEvent,
    OrderEvent,
    PaymentInconsistencyEvent,
    TransferEvent,
    PingEvent,
)


class Event(
    RootModel[
        Annotated[
            StockChangedEvent
            | StockEdgeEvent
            | OrderEvent
            | PaymentInconsistencyEvent
            | TransferEvent
            | PingEvent,
            Field(discriminator="type"),
        ]
    ]
):
    """One event, as the feed lists it and a webhook delivers it (the body); ``data``
    by ``type``."""


class EventPage(Answer):
    items: list[Event]
    next: int | None = Field(description="the seq to pass as `after`, or null: nothing newer now")


# ------------------------------------------------------------ orders and admin


class OrderPage(Answer):
    items: list[Order]
    next: Cursor


class RecoveryResult(Answer):
    outcome: Outcome
    order: Order | None
    log_id: int | None


class ApiKey(Answer):
    """An API key as listed: never the key itself."""

    id: str
    name: str
    role: Literal["admin", "service"]
    key_prefix: str
    created_at: Timestamp
    revoked_at: Timestamp | None


class ApiKeyCreated(ApiKey):
    key: str | None = Field(
        description="the key, shown only in this answer (null when an Idempotency-Key replays it)"
    )


class ApiKeyPage(Answer):
    items: list[ApiKey]
    next: Cursor


class LedgerRow(Answer):
    id: int
    sku: str
    location: str
    on_hand_delta: int
    reserved_delta: int
    unavailable_delta: int
    reason: str
    order_id: str | None
    reservation_id: int | None
    actor: str | None
    reference: str | None
    created_at: Timestamp


class LedgerPage(Answer):
    items: list[LedgerRow]
    next: Cursor


class InventoryLog(Answer):
    id: int
    order_id: str
    action: str
    actor: str
    reservation_ids: list[int]
    error_reason: str | None
    context: dict[str, Any]
    created_at: Timestamp


class InventoryLogPage(Answer):
    items: list[InventoryLog]
    next: Cursor


class Violation(Answer):
    invariant: int = Field(description="the invariant's number in DESIGN.md")
    check: str
    detail: dict[str, Any]


class Verification(Answer):
    ok: bool
    violations: list[Violation]


class Drift(Answer):
    sku: str
    redis: int | None
    postgres: int


class ReconcileReport(Answer):
    checked: int
    drifted: list[Drift]
    repaired: int


# ------------------------------------------------------------ payment webhooks


class WebhookPaid(Answer):
    order: Order


class WebhookIgnored(Answer):
    ignored: str = Field(description="why nothing was done (logged too)")


class WebhookReplayed(Answer):
    replayed: Literal[True]


class WebhookOutcome(RootModel[WebhookPaid | WebhookIgnored | WebhookReplayed]):
    """``order`` when the event paid it; else why it was ignored, or that it was a replay."""


# ------------------------------------------------------------ operations


class Health(Answer):
    ok: bool
    reason: str | None = None


class Readiness(Answer):
    ok: bool
    mode: CacheMode
    checks: dict[str, bool]
    reasons: dict[str, str] | None = None


# ------------------------------------------------------------ bodies routes read raw

# Models that only the document names: request bodies a route reads as bytes (a payment
# webhook verifies the signature of the exact bytes before it parses them).
RAW_BODIES: list[type[BaseModel]] = []


def raw_body(model: type[BaseModel], *headers: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra=`` of a route that reads its body itself: ``model`` documents the
    JSON body, ``headers`` (see :func:`header`) the request headers it reads."""
    RAW_BODIES.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
        "parameters": list(headers),
    }


def header(name: str, description: str, *, required: bool) -> dict[str, Any]:
    """A request header parameter."""
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


# ------------------------------------------------------------ responses=

_OK = {
    200: "OK (also the replay of a request done before)",
    201: "Created",
    202: "Accepted",
    204: "Done; no body",
    503: "Not healthy or not ready (see the body)",
}


def answers(ok: dict[int, Any], *codes: str) -> dict[int | str, Any]:
    """``responses=`` of a route: its success bodies by status (a model, a union of models,
    None for no body, or a ready OpenAPI response object) and its problem+json answers,
    grouped by status from their ``code``s. The answers every route of a kind shares
    (401/403 of its role, 413, the Idempotency-Key's) are added by
    :func:`stockguard.api.openapi.install_openapi`."""
    out: dict[int | str, Any] = {}
    for status, body in ok.items():
        if body is None:
            out[status] = {"description": _OK[status]}
        elif isinstance(body, dict):
            out[status] = body
        else:
            out[status] = {"model": body, "description": _OK[status]}
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in codes:
        by_status[status_of(code)].append(code)
    for status, group in sorted(by_status.items()):
        out[status] = problem_response(group)
    return out
