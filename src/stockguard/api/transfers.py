"""Routes of API.md "Transfers between locations (admin)": create, receive, cancel,
read and list transfers; the rules live in :mod:`stockguard.service.transfers`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StringConstraints
from starlette.responses import Response

from stockguard.api import responses as doc
from stockguard.api.answers import answered
from stockguard.api.routes import Admin, After, B, Limit, actor, order_cursor
from stockguard.api.schemas import (
    MAX_CODE,
    ORDER_ID_PATTERN,
    Code,
    OrderId,
    Quantity,
    SkuCode,
    Strict,
    page,
)
from stockguard.api.strict import StrictJSONRoute
from stockguard.domain.errors import ValidationFailed
from stockguard.render import transfer_json
from stockguard.service import transfers
from stockguard.service.transfers import TransferStatus

__all__ = ["router", "transfer_json"]

router = APIRouter(tags=["transfers"], route_class=StrictJSONRoute)


class TransferLineIn(Strict):
    sku: SkuCode
    quantity: Quantity


class TransferIn(Strict):
    id: OrderId
    from_: Code = Field(alias="from")
    to: Code
    lines: list[TransferLineIn] = Field(min_length=1, max_length=transfers.MAX_LINES)
    note: Annotated[str, StringConstraints(max_length=500)] | None = None


class ReceiptIn(Strict):
    receipt_id: OrderId
    lines: list[TransferLineIn] = Field(min_length=1, max_length=transfers.MAX_LINES)


def _transfer_path(transfer_id: str) -> str:
    if len(transfer_id) > MAX_CODE or not re.fullmatch(ORDER_ID_PATTERN, transfer_id):
        raise ValidationFailed(
            f"transfer_id: must be 1 to {MAX_CODE} characters of A-Z a-z 0-9 . _ : -, not only dots"
        )
    return transfer_id


TransferPath = Annotated[str, Depends(_transfer_path)]


def _written(w: transfers.Written) -> tuple[int, Any]:
    return (201 if w.created else 200), transfer_json(w.transfer)


@router.post(
    "/v1/transfers",
    status_code=201,
    response_model=None,
    responses=doc.documented({201: doc.Transfer, 200: doc.Transfer}, 403, 409, 422),
)
async def create_transfer(key: Admin, body: TransferIn, b: B) -> Response:
    req = transfers.CreateTransfer(
        id=body.id,
        from_location=body.from_,
        to_location=body.to,
        lines=tuple((ln.sku, ln.quantity) for ln in body.lines),
        note=body.note,
    )
    return await answered(lambda: transfers.create_transfer(b, req, actor(key)), _written)


@router.post(
    "/v1/transfers/{transfer_id}/receipts",
    status_code=201,
    response_model=None,
    responses=doc.documented({201: doc.Transfer, 200: doc.Transfer}, 403, 404, 409, 422),
)
async def receive_transfer(
    key: Admin, transfer_id: TransferPath, body: ReceiptIn, b: B
) -> Response:
    receipt = transfers.Receipt(
        receipt_id=body.receipt_id, lines=tuple((ln.sku, ln.quantity) for ln in body.lines)
    )
    return await answered(
        lambda: transfers.receive_transfer(b, transfer_id, receipt, actor(key)), _written
    )


@router.post(
    "/v1/transfers/{transfer_id}/cancel",
    response_model=None,
    responses=doc.documented({200: doc.Transfer}, 403, 404, 409, 422),
)
async def cancel_transfer(key: Admin, transfer_id: TransferPath, b: B) -> Response:
    return await answered(
        lambda: transfers.cancel_transfer(b, transfer_id, actor(key)),
        lambda t: (200, transfer_json(t)),
    )


@router.get(
    "/v1/transfers/{transfer_id}",
    response_model=None,
    responses=doc.documented({200: doc.Transfer}, 403, 404, 422),
)
async def get_transfer(_key: Admin, transfer_id: TransferPath, b: B) -> Any:
    return transfer_json(await transfers.get_transfer(b, transfer_id))


@router.get(
    "/v1/transfers",
    response_model=None,
    responses=doc.documented({200: doc.TransferPage}, 403, 422),
)
async def list_transfers(
    _key: Admin,
    b: B,
    status: Annotated[TransferStatus | None, Query()] = None,
    limit: Limit = 50,
    after: After = None,
) -> Any:
    found = await transfers.list_transfers(b, status, limit, order_cursor(after))
    last = [found[-1].created_at.isoformat(), found[-1].id] if found else None
    return page([transfer_json(t) for t in found], limit, last)
