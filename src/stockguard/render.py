"""The JSON shapes of orders, returns and transfers: what the API answers and what the
events carry (an ``order.*`` event's ``order`` is the order as ``GET /v1/orders/{id}``
shows it), so both are rendered by the same code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stockguard.store.orders import OrderRecord
from stockguard.store.returns import ReturnRecord

if TYPE_CHECKING:
    from stockguard.service.transfers import TransferRecord

__all__ = ["order_json", "return_json", "transfer_json", "ts"]


def ts(value: datetime | None) -> str | None:
    """RFC 3339 UTC."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # what the database gives is UTC already
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def return_json(r: ReturnRecord) -> dict[str, Any]:
    return {
        "return_id": r.return_id,
        "order_id": r.order_id,
        "lines": [
            {
                "sku": ln.sku,
                "quantity": ln.quantity,
                "disposition": ln.disposition,
                "location": ln.location,
            }
            for ln in r.lines
        ],
        "note": r.note,
        "created_at": ts(r.created_at),
    }


def order_json(o: OrderRecord) -> dict[str, Any]:
    payment = (
        {"provider": o.payment_provider, "payment_id": o.payment_id, "paid_at": ts(o.paid_at)}
        if o.payment_id
        else None
    )
    return {
        "id": o.id,
        "status": o.status.value,
        "channel": o.channel,
        "lines": [{"sku": sku, "quantity": q} for _, sku, q in o.lines],
        "reservations": [
            {
                "id": r.id,
                "sku": r.sku,
                "location": r.location,
                "quantity": r.quantity,
                "status": r.status.value,
                "expires_at": ts(r.expires_at),
            }
            for r in o.reservations
        ],
        "payment": payment,
        "total_amount": o.total_amount,
        "currency": o.currency,
        "preferred_locations": o.preferred_locations,
        "allow_split": o.allow_split,
        "cancel_reason": o.cancel_reason,
        "returns": [return_json(r) for r in o.returns],
        "created_at": ts(o.created_at),
        "updated_at": ts(o.updated_at),
    }


def transfer_json(t: TransferRecord) -> dict[str, Any]:
    return {
        "id": t.id,
        "from": t.from_location,
        "to": t.to_location,
        "status": t.status.value,
        "lines": [
            {
                "sku": ln.sku,
                "quantity": ln.quantity,
                "received": ln.received,
                "in_transit": ln.in_transit,
                "cancelled": ln.cancelled,
            }
            for ln in t.lines
        ],
        "receipts": [
            {
                "receipt_id": r.receipt_id,
                "lines": [{"sku": sku, "quantity": q} for sku, q in r.lines],
                "actor": r.actor,
                "created_at": ts(r.created_at),
            }
            for r in t.receipts
        ],
        "note": t.note,
        "created_at": ts(t.created_at),
        "updated_at": ts(t.updated_at),
    }
