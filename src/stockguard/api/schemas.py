"""Request bodies (strict: integers are JSON integers, unknown fields are refused) and
the JSON shapes of answers."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from stockguard.domain.errors import ValidationFailed
from stockguard.render import order_json, return_json, ts
from stockguard.service.catalogue import Adjustment

__all__ = [
    "CODE_PATTERN",
    "MAX_CODE",
    "ORDER_ID_PATTERN",
    "SKU_PATTERN",
    "AdjustmentIn",
    "ApiKeyIn",
    "CancelIn",
    "ChannelIn",
    "LevelIn",
    "LocationIn",
    "OrderIn",
    "PaymentIn",
    "SkuIn",
    "StatusIn",
    "decode_cursor",
    "encode_cursor",
    "order_json",
    "page",
    "return_json",
    "ts",
]

# API.md's [A-Za-z0-9._:-]{1,64} (SKUs, order ids) and [a-z0-9._-]{1,64} (locations,
# channels), with one character that is not a dot: "." and ".." are no URL path segment.
SKU_PATTERN = r"^[A-Za-z0-9._:-]*[A-Za-z0-9_:-][A-Za-z0-9._:-]*$"
CODE_PATTERN = r"^[a-z0-9._-]*[a-z0-9_-][a-z0-9._-]*$"
ORDER_ID_PATTERN = SKU_PATTERN  # what POST /v1/orders has always accepted as an id
MAX_CODE = 64
SkuCode = Annotated[str, StringConstraints(pattern=SKU_PATTERN, max_length=MAX_CODE)]
Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN, max_length=MAX_CODE)]
OrderId = Annotated[str, StringConstraints(pattern=ORDER_ID_PATTERN, max_length=MAX_CODE)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")]
Quantity = Annotated[int, Field(ge=1, le=1_000_000)]
BIG = 1_000_000_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LocationIn(Strict):
    name: Name
    priority: int = Field(default=100, ge=-1_000_000, le=1_000_000)
    active: bool = True


class ChannelIn(Strict):
    name: Name
    locations: list[Code] = Field(default_factory=list, max_length=1000)


class SkuIn(Strict):
    name: Name
    low_stock_threshold: int | None = Field(default=None, ge=0, le=BIG)


class AdjustmentIn(Strict):
    location: Code
    delta: int | None = Field(default=None, ge=-BIG, le=BIG)
    set_on_hand: int | None = Field(default=None, ge=0, le=BIG)
    unavailable_delta: int | None = Field(default=None, ge=-BIG, le=BIG)
    from_: Literal["unavailable"] | None = Field(default=None, alias="from")
    reason: Literal[
        "received",
        "correction",
        "cycle_count",
        "damaged",
        "shrinkage",
        "restock",
        "other",
        "quality_control",
    ]
    expected_on_hand: int | None = Field(default=None, ge=0, le=BIG)
    reference: Annotated[str, StringConstraints(max_length=200)] | None = None

    @field_validator("delta", "unavailable_delta")
    @classmethod
    def _moves_something(cls, delta: int | None) -> int | None:
        if delta == 0:  # would answer 201 and write nothing
            raise ValueError("must not be 0")
        return delta

    def adjustment(self, sku: str) -> Adjustment:
        """This body as the service's adjustment of ``sku`` (the single and the batch
        route)."""
        return Adjustment(
            sku=sku,
            location=self.location,
            reason=self.reason,
            delta=self.delta,
            set_on_hand=self.set_on_hand,
            expected_on_hand=self.expected_on_hand,
            reference=self.reference,
            unavailable_delta=self.unavailable_delta,
            from_unavailable=self.from_ == "unavailable",
        )


class LevelIn(Strict):
    safety_stock: int = Field(ge=0, le=BIG)


class OrderLineIn(Strict):
    sku: SkuCode
    quantity: Quantity


class OrderIn(Strict):
    id: OrderId | None = None
    channel: Code | None = None
    lines: list[OrderLineIn] = Field(min_length=1, max_length=500)
    preferred_locations: list[Code] = Field(default_factory=list, max_length=100)
    allow_split: bool = True
    reservation_ttl_seconds: int = Field(default=900, ge=1, le=86_400)
    total_amount: int | None = Field(default=None, ge=0, le=10**15)
    currency: Currency | None = None


class PaymentIn(Strict):
    provider: Literal["stripe", "razorpay", "manual"]
    payment_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    amount: int | None = Field(default=None, ge=0, le=10**15)
    currency: Currency | None = None


class CancelIn(Strict):
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class StatusIn(Strict):
    status: Literal["processing", "shipped", "delivered", "cancelled"]


class ApiKeyIn(Strict):
    role: Literal["admin", "service"]
    name: Name


class ReconcileIn(Strict):
    repair: bool = False


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("after: not a cursor this API gave out") from exc


def page(items: list[dict[str, Any]], limit: int, last: Any) -> dict[str, Any]:
    return {"items": items, "next": encode_cursor(last) if len(items) == limit else None}
