"""The OpenAPI description of answers: response models of the version-2 routes and their
problem+json refusals. Documentation only: routes still render their own JSON (byte for
byte what the idempotency store keeps), these models never re-validate an answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from stockguard.domain.model import OrderStatus, ReservationStatus
from stockguard.service.transfers import TransferStatus

__all__ = [
    "AdjustmentResult",
    "BatchItemResult",
    "BatchResult",
    "Event",
    "EventPage",
    "Explain",
    "Level",
    "Order",
    "Problem",
    "Return",
    "ReturnList",
    "Transfer",
    "TransferPage",
    "documented",
    "install_problem_schema",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Cursor = Annotated[str | None, Field(description="the next page's `after`, or null")]


class Answer(BaseModel):
    # Every field the route renders is declared: an undeclared one fails validation.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Problem(BaseModel):
    """RFC 9457 problem details; some codes add members (``errors``, ``lines``...)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str


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


class Event(Answer):
    """One event, as the feed lists it and a webhook delivers it (the body)."""

    id: str = Field(description="evt_…; every delivery attempt carries the same id")
    seq: int | None = Field(description="commit order; null only for a ping")
    type: str
    occurred_at: Timestamp
    data: (
        StockChangedData
        | StockEdgeData
        | OrderEventData
        | PaymentInconsistencyData
        | TransferEventData
        | PingData
    )


class EventPage(Answer):
    items: list[Event]
    next: int | None = Field(description="the seq to pass as `after`, or null: nothing newer now")


# ------------------------------------------------------------ operations' responses=

_WHY = {
    200: "Done before: the same request again (replay), or a read",
    201: "Created",
    401: "No valid API key",
    403: "The key's role may not do this",
    404: "Not found",
    409: "Refused: the current state does not allow it; nothing changed",
    410: "Gone: the events after this seq were removed by retention",
    422: "Invalid request; nothing changed",
    503: "Busy or the database is unreachable; retry",
}


def documented(ok: dict[int, type[BaseModel]], *problems: int) -> dict[int | str, Any]:
    """``responses=`` of a route: its success bodies by status and its problem+json ones
    (every route may also answer 401 and 503)."""
    out: dict[int | str, Any] = {
        status: {"model": model, "description": _WHY[status]} for status, model in ok.items()
    }
    for status in sorted({401, 503, *problems}):
        out[status] = {
            "description": _WHY[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
        }
    return out


def install_problem_schema(app: FastAPI) -> None:
    """Put ``Problem`` in the components the problem responses point at (no route returns
    it as a model, so FastAPI would not)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI's, cached after the first call
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "Problem", Problem.model_json_schema()
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
