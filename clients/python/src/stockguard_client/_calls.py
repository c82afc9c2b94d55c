"""Every API call as data, shared by :class:`~stockguard_client.Client` and
:class:`~stockguard_client.AsyncClient`: a builder function per route turns Python
arguments into a :class:`Call` (method, path, query, body, ``Idempotency-Key``, how to read
the answer). The two clients only send calls; nothing here does I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from stockguard_client.errors import StockguardError, error_from_problem
from stockguard_client.models import (
    AdjustmentResult,
    ApiKey,
    Availability,
    BatchResult,
    Channel,
    EventPage,
    Explanation,
    InventoryLog,
    Level,
    Location,
    Model,
    Movement,
    Order,
    Page,
    Readiness,
    ReconcileReport,
    RecoveryResult,
    Return,
    Sku,
    Transfer,
    VerifyReport,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = ["Call", "LineIn", "ReturnLineIn"]

T = TypeVar("T")


class LineIn(TypedDict):
    """An order or transfer line: ``{"sku": "TSHIRT-M", "quantity": 2}``."""

    sku: str
    quantity: int


class ReturnLineIn(TypedDict):
    """A returned line: ``{"sku": ..., "quantity": ..., "disposition": "restock"}``."""

    sku: str
    quantity: int
    disposition: Literal["restock", "damaged"]


class AdjustmentIn(TypedDict):
    """One item of :func:`adjust_batch`: ``sku``, ``location``, ``reason`` and one form."""

    sku: str
    location: str
    reason: str
    delta: NotRequired[int]
    set_on_hand: NotRequired[int]
    unavailable_delta: NotRequired[int]
    expected_on_hand: NotRequired[int]
    reference: NotRequired[str]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "leave as it is", unlike None which sends null


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> TypeAdapter[Any]:
    found = _ADAPTERS.get(kind)
    if found is None:
        found = _ADAPTERS[kind] = TypeAdapter(kind)
    return found


def _no_content(_response: httpx.Response) -> None:
    return None


def _json_of(kind: type[T]) -> Callable[[httpx.Response], T]:
    def read(response: httpx.Response) -> T:
        value: T = _adapter(kind).validate_json(response.content)
        return value

    return read


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: list[tuple[str, str | int]] = field(default_factory=list)
    body: Any = None
    idempotency_key: str | None = None
    answers: tuple[int, ...] = ()  # error statuses whose body is the answer, not a problem

    @property
    def safe_to_resend(self) -> bool:
        """Whether a request that got no answer (it may have been applied) may be sent
        again: reads, PUTs (they set a state), and POSTs under their Idempotency-Key."""
        return self.method in ("GET", "PUT") or self.idempotency_key is not None

    def headers(self) -> dict[str, str]:
        return {"Idempotency-Key": self.idempotency_key} if self.idempotency_key else {}

    def result(self, response: httpx.Response) -> T:
        """The answer read as its model, or the problem raised as its exception."""
        if response.status_code >= 400 and response.status_code not in self.answers:
            raise problem_error(response, self.idempotency_key)
        return self.read(response)


def problem_error(response: httpx.Response, idempotency_key: str | None) -> StockguardError:
    problem: dict[str, Any]
    try:
        decoded = response.json()
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        problem = decoded
    else:  # not ours (a proxy's error page): keep what it said
        problem = {"status": response.status_code, "detail": response.text[:500]}
    return error_from_problem(
        response.status_code,
        problem,
        idempotency_key=idempotency_key,
        retry_after=retry_after(response),
    )


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delay-seconds or an HTTP date), if the answer has one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seg(value: str) -> str:
    """A path segment, escaped (SKU codes may contain ``:``)."""
    return quote(value, safe="")


def _post(
    path: str,
    read: Callable[[httpx.Response], T],
    body: Any,
    idempotency_key: str | None,
) -> Call[T]:
    """A POST always carries an Idempotency-Key: the caller's, or a new one, reused by
    every retry of this call."""
    return Call("POST", path, read, body=body, idempotency_key=idempotency_key or str(uuid.uuid4()))


def _page(limit: int | None, after: str | None) -> list[tuple[str, str | int]]:
    params: list[tuple[str, str | int]] = []
    if limit is not None:
        params.append(("limit", limit))
    if after is not None:
        params.append(("after", after))
    return params


def _drop_unset(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not UNSET}


# ------------------------------------------------------------ catalogue and stock


def put_location(
    code: str, name: str, *, priority: int = 100, active: bool = True
) -> Call[Location]:
    """Create or change a location (admin)."""
    body = {"name": name, "priority": priority, "active": active}
    return Call("PUT", f"/v1/locations/{_seg(code)}", _json_of(Location), body=body)


def list_locations(*, limit: int | None = None, after: str | None = None) -> Call[Page[Location]]:
    """One page of locations, by code."""
    return Call("GET", "/v1/locations", _json_of(Page[Location]), params=_page(limit, after))


def put_channel(code: str, name: str, locations: Sequence[str]) -> Call[Channel]:
    """Create or change a sales channel; its locations in priority order (admin)."""
    body = {"name": name, "locations": list(locations)}
    return Call("PUT", f"/v1/channels/{_seg(code)}", _json_of(Channel), body=body)


def get_channel(code: str) -> Call[Channel]:
    """A sales channel."""
    return Call("GET", f"/v1/channels/{_seg(code)}", _json_of(Channel))


def put_sku(sku: str, name: str, *, low_stock_threshold: int | None = UNSET) -> Call[Sku]:
    """Create or rename a SKU (admin). ``low_stock_threshold``: an int, ``None`` to clear
    it, left out to keep it."""
    body = _drop_unset({"name": name, "low_stock_threshold": low_stock_threshold})
    return Call("PUT", f"/v1/skus/{_seg(sku)}", _json_of(Sku), body=body)


def get_sku(sku: str) -> Call[Sku]:
    """A SKU with its totals over active locations and every level."""
    return Call("GET", f"/v1/skus/{_seg(sku)}", _json_of(Sku))


def list_skus(*, limit: int | None = None, after: str | None = None) -> Call[Page[Sku]]:
    """One page of SKUs, by code."""
    return Call("GET", "/v1/skus", _json_of(Page[Sku]), params=_page(limit, after))


def adjust_stock(
    sku: str,
    location: str,
    *,
    reason: str,
    delta: int | None = None,
    set_on_hand: int | None = None,
    unavailable_delta: int | None = None,
    from_unavailable: bool = False,
    expected_on_hand: int | None = None,
    reference: str | None = None,
    idempotency_key: str | None = None,
) -> Call[AdjustmentResult]:
    """Change one level (admin): exactly one of ``delta``, ``set_on_hand``,
    ``unavailable_delta`` (``from_unavailable`` with a negative ``delta`` writes units off
    from the unavailable ones); ``expected_on_hand`` makes it a compare-and-set."""
    body: dict[str, Any] = {"location": location, "reason": reason}
    for name, value in (
        ("delta", delta),
        ("set_on_hand", set_on_hand),
        ("unavailable_delta", unavailable_delta),
        ("expected_on_hand", expected_on_hand),
        ("reference", reference),
    ):
        if value is not None:
            body[name] = value
    if from_unavailable:
        body["from"] = "unavailable"
    path = f"/v1/skus/{_seg(sku)}/adjustments"
    return _post(path, _json_of(AdjustmentResult), body, idempotency_key)


def adjust_batch(
    items: Iterable[AdjustmentIn | Mapping[str, Any]],
    *,
    error_policy: Literal["all_or_nothing", "skip_failed"] = "all_or_nothing",
    idempotency_key: str | None = None,
) -> Call[BatchResult]:
    """Up to 2,000 adjustments in one transaction (admin)."""
    body = {"items": [dict(i) for i in items], "error_policy": error_policy}
    return _post("/v1/adjustments/batch", _json_of(BatchResult), body, idempotency_key)


def set_safety_stock(sku: str, location: str, safety_stock: int) -> Call[Level]:
    """Keep units of a level back from online sale (admin)."""
    path = f"/v1/skus/{_seg(sku)}/levels/{_seg(location)}"
    return Call("PUT", path, _json_of(Level), body={"safety_stock": safety_stock})


class _Items(Model, Generic[T]):
    items: list[T]


def _availability_items(response: httpx.Response) -> list[Availability]:
    return _json_of(_Items[Availability])(response).items


def get_availability(
    skus: Iterable[str], *, channel: str | None = None
) -> Call[list[Availability]]:
    """What can be sold now of each SKU (from Redis, else PostgreSQL)."""
    params: list[tuple[str, str | int]] = [("sku", s) for s in skus]
    if channel is not None:
        params.append(("channel", channel))
    return Call("GET", "/v1/availability", _availability_items, params=params)


# ------------------------------------------------------------ orders


def place_order(
    lines: Iterable[LineIn],
    *,
    id: str | None = None,
    channel: str | None = None,
    preferred_locations: Sequence[str] | None = None,
    allow_split: bool | None = None,
    reservation_ttl_seconds: int | None = None,
    total_amount: int | None = None,
    currency: str | None = None,
    idempotency_key: str | None = None,
) -> Call[Order]:
    """Hold stock for an order: all lines or nothing (:class:`OutOfStock`). Give your
    own order ``id``: placing the same id with the same content again returns the same
    order, so a retry after a timeout never holds twice."""
    body: dict[str, Any] = {
        "lines": [{"sku": ln["sku"], "quantity": ln["quantity"]} for ln in lines]
    }
    for name, value in (
        ("id", id),
        ("channel", channel),
        ("preferred_locations", list(preferred_locations) if preferred_locations else None),
        ("allow_split", allow_split),
        ("reservation_ttl_seconds", reservation_ttl_seconds),
        ("total_amount", total_amount),
        ("currency", currency),
    ):
        if value is not None:
            body[name] = value
    return _post("/v1/orders", _json_of(Order), body, idempotency_key)


def get_order(order_id: str) -> Call[Order]:
    """An order with its reservations, payment and returns."""
    return Call("GET", f"/v1/orders/{_seg(order_id)}", _json_of(Order))


def list_orders(
    *, status: str | None = None, limit: int | None = None, after: str | None = None
) -> Call[Page[Order]]:
    """One page of orders, oldest first, optionally of one status."""
    params = _page(limit, after)
    if status is not None:
        params.insert(0, ("status", status))
    return Call("GET", "/v1/orders", _json_of(Page[Order]), params=params)


def pay_order(
    order_id: str,
    *,
    provider: Literal["stripe", "razorpay", "manual"],
    payment_id: str,
    amount: int | None = None,
    currency: str | None = None,
    idempotency_key: str | None = None,
) -> Call[Order]:
    """Record a payment: the held stock is committed (``paid``, or ``needs_review`` when
    the amount or currency disagrees)."""
    body: dict[str, Any] = {"provider": provider, "payment_id": payment_id}
    if amount is not None:
        body["amount"] = amount
    if currency is not None:
        body["currency"] = currency
    return _post(f"/v1/orders/{_seg(order_id)}/payments", _json_of(Order), body, idempotency_key)


def cancel_order(
    order_id: str, *, reason: str | None = None, idempotency_key: str | None = None
) -> Call[Order]:
    """Cancel an order and give its stock back (once, however often it is called)."""
    body = {"reason": reason} if reason is not None else {}
    return _post(f"/v1/orders/{_seg(order_id)}/cancel", _json_of(Order), body, idempotency_key)


def set_order_status(
    order_id: str, status: Literal["processing", "shipped", "delivered", "cancelled"]
) -> Call[Order]:
    """Move an order on (``PATCH``): :class:`InvalidTransition` when it cannot."""
    return Call("PATCH", f"/v1/orders/{_seg(order_id)}", _json_of(Order), body={"status": status})


def delete_order(order_id: str) -> Call[None]:
    """Delete an order (its held stock goes back); shipped ones cannot be."""
    return Call("DELETE", f"/v1/orders/{_seg(order_id)}", _no_content)


def extend_order(
    order_id: str, reservation_ttl_seconds: int, *, idempotency_key: str | None = None
) -> Call[Order]:
    """Hold a pending order's stock ``reservation_ttl_seconds`` from now."""
    body = {"reservation_ttl_seconds": reservation_ttl_seconds}
    return _post(f"/v1/orders/{_seg(order_id)}/extend", _json_of(Order), body, idempotency_key)


def create_return(
    order_id: str,
    return_id: str,
    lines: Iterable[ReturnLineIn],
    *,
    location: str | None = None,
    note: str | None = None,
    idempotency_key: str | None = None,
) -> Call[Return]:
    """Book units of a shipped order back in, once per ``return_id``."""
    body: dict[str, Any] = {"return_id": return_id, "lines": [dict(ln) for ln in lines]}
    if location is not None:
        body["location"] = location
    if note is not None:
        body["note"] = note
    return _post(f"/v1/orders/{_seg(order_id)}/returns", _json_of(Return), body, idempotency_key)


def list_returns(order_id: str) -> Call[list[Return]]:
    """An order's returns."""

    def read(response: httpx.Response) -> list[Return]:
        return _json_of(_Items[Return])(response).items

    return Call("GET", f"/v1/orders/{_seg(order_id)}/returns", read)


# ------------------------------------------------------------ transfers (admin)


def create_transfer(
    id: str,
    from_location: str,
    to_location: str,
    lines: Iterable[LineIn],
    *,
    note: str | None = None,
    idempotency_key: str | None = None,
) -> Call[Transfer]:
    """Send units from one location to another: they leave ``from_location`` now."""
    body: dict[str, Any] = {
        "id": id,
        "from": from_location,
        "to": to_location,
        "lines": [{"sku": ln["sku"], "quantity": ln["quantity"]} for ln in lines],
    }
    if note is not None:
        body["note"] = note
    return _post("/v1/transfers", _json_of(Transfer), body, idempotency_key)


def receive_transfer(
    transfer_id: str,
    receipt_id: str,
    lines: Iterable[LineIn],
    *,
    idempotency_key: str | None = None,
) -> Call[Transfer]:
    """Book units that arrived, once per ``receipt_id``."""
    body = {"receipt_id": receipt_id, "lines": [dict(ln) for ln in lines]}
    path = f"/v1/transfers/{_seg(transfer_id)}/receipts"
    return _post(path, _json_of(Transfer), body, idempotency_key)


def cancel_transfer(transfer_id: str, *, idempotency_key: str | None = None) -> Call[Transfer]:
    """Put what is still in transit back at the origin."""
    path = f"/v1/transfers/{_seg(transfer_id)}/cancel"
    return _post(path, _json_of(Transfer), None, idempotency_key)


def get_transfer(transfer_id: str) -> Call[Transfer]:
    return Call("GET", f"/v1/transfers/{_seg(transfer_id)}", _json_of(Transfer))


def list_transfers(
    *, status: str | None = None, limit: int | None = None, after: str | None = None
) -> Call[Page[Transfer]]:
    params = _page(limit, after)
    if status is not None:
        params.insert(0, ("status", status))
    return Call("GET", "/v1/transfers", _json_of(Page[Transfer]), params=params)


# ------------------------------------------------------------ events


def list_events(
    *, after: int | None = None, limit: int | None = None, types: Sequence[str] = ()
) -> Call[EventPage]:
    """Events with ``seq > after``, oldest first; ``types``: ``order.paid``, ``stock.*``…"""
    params: list[tuple[str, str | int]] = []
    if after is not None:
        params.append(("after", after))
    if limit is not None:
        params.append(("limit", limit))
    params.extend(("type", t) for t in types)
    return Call("GET", "/v1/events", _json_of(EventPage), params=params)


# ------------------------------------------------------------ admin


def create_api_key(
    role: Literal["admin", "service"], name: str, *, idempotency_key: str | None = None
) -> Call[ApiKey]:
    """A new API key; its secret (``key``) is in this answer only."""
    body = {"role": role, "name": name}
    return _post("/v1/admin/api-keys", _json_of(ApiKey), body, idempotency_key)


def list_api_keys(*, limit: int | None = None, after: str | None = None) -> Call[Page[ApiKey]]:
    return Call("GET", "/v1/admin/api-keys", _json_of(Page[ApiKey]), params=_page(limit, after))


def revoke_api_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/admin/api-keys/{_seg(key_id)}", _no_content)


def verify() -> Call[VerifyReport]:
    """Check every invariant over the whole database."""
    return Call("GET", "/v1/admin/verify", _json_of(VerifyReport))


def recover_inventory(order_id: str, *, idempotency_key: str | None = None) -> Call[RecoveryResult]:
    """Commit a paid order's stock and reserve again what expired (never releases)."""
    path = f"/v1/admin/orders/{_seg(order_id)}/recover-inventory"
    return _post(path, _json_of(RecoveryResult), None, idempotency_key)


def list_paid_uncommitted(
    *, limit: int | None = None, after: str | None = None
) -> Call[Page[Order]]:
    """Paid orders whose stock is not committed yet (recovery's work list)."""
    path = "/v1/admin/orders/paid-uncommitted"
    return Call("GET", path, _json_of(Page[Order]), params=_page(limit, after))


def list_movements(
    *,
    sku: str | None = None,
    order_id: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Call[Page[Movement]]:
    """Ledger rows, newest first, of a SKU and/or an order."""
    params = _page(limit, after)
    if sku is not None:
        params.append(("sku", sku))
    if order_id is not None:
        params.append(("order_id", order_id))
    return Call("GET", "/v1/admin/movements", _json_of(Page[Movement]), params=params)


def list_inventory_logs(
    order_id: str, *, limit: int | None = None, after: str | None = None
) -> Call[Page[InventoryLog]]:
    """An order's inventory log, oldest first."""
    path = f"/v1/admin/orders/{_seg(order_id)}/inventory-logs"
    return Call("GET", path, _json_of(Page[InventoryLog]), params=_page(limit, after))


def explain(
    sku: str,
    *,
    location: str | None = None,
    at: datetime | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Call[Explanation]:
    """A SKU's levels as of ``at`` (timezone-aware; default now) rebuilt from the ledger."""
    params: list[tuple[str, str | int]] = [("sku", sku)]
    if location is not None:
        params.append(("location", location))
    if at is not None:
        if at.tzinfo is None:
            raise ValueError("at: give a timezone-aware datetime")
        params.append(("at", at.isoformat()))
    params.extend(_page(limit, after))
    return Call("GET", "/v1/admin/explain", _json_of(Explanation), params=params)


def reconcile_cache(
    *, repair: bool = False, idempotency_key: str | None = None
) -> Call[ReconcileReport]:
    """Compare Redis with PostgreSQL for every SKU, rewriting drift when ``repair``."""
    body = {"repair": repair}
    return _post("/v1/admin/cache/reconcile", _json_of(ReconcileReport), body, idempotency_key)


def ready() -> Call[Readiness]:
    """``GET /readyz`` (no key needed): PostgreSQL, and Redis in strict mode, reachable.
    A server that is not ready answers with ``ok`` false rather than an exception."""
    return Call("GET", "/readyz", _json_of(Readiness), answers=(503,))


def list_needs_review(*, limit: int | None = None, after: str | None = None) -> Call[Page[Order]]:
    """Orders in ``needs_review``."""
    path = "/v1/admin/orders/needs-review"
    return Call("GET", path, _json_of(Page[Order]), params=_page(limit, after))


_HOOKS = "/v1/admin/webhook-endpoints"


def create_webhook_endpoint(
    url: str,
    events: Sequence[str],
    *,
    description: str | None = None,
    idempotency_key: str | None = None,
) -> Call[WebhookEndpoint]:
    """Send events of these types (``"*"``, ``"order.*"``, ``"order.paid"``) to ``url``;
    the answer's ``secret`` verifies them (:func:`verify_webhook`) and is shown only here."""
    body: dict[str, Any] = {"url": url, "events": list(events)}
    if description is not None:
        body["description"] = description
    return _post(_HOOKS, _json_of(WebhookEndpoint), body, idempotency_key)


def list_webhook_endpoints(
    *, limit: int | None = None, after: str | None = None
) -> Call[Page[WebhookEndpoint]]:
    return Call("GET", _HOOKS, _json_of(Page[WebhookEndpoint]), params=_page(limit, after))


def get_webhook_endpoint(endpoint_id: str) -> Call[WebhookEndpoint]:
    return Call("GET", f"{_HOOKS}/{_seg(endpoint_id)}", _json_of(WebhookEndpoint))


def update_webhook_endpoint(
    endpoint_id: str,
    *,
    url: str = UNSET,
    events: Sequence[str] = UNSET,
    description: str | None = UNSET,
    active: bool = UNSET,
) -> Call[WebhookEndpoint]:
    """Change what is named; the rest stays."""
    body = _drop_unset(
        {
            "url": url,
            "events": events if events is UNSET else list(events),
            "description": description,
            "active": active,
        }
    )
    path = f"{_HOOKS}/{_seg(endpoint_id)}"
    return Call("PATCH", path, _json_of(WebhookEndpoint), body=body)


def delete_webhook_endpoint(endpoint_id: str) -> Call[None]:
    return Call("DELETE", f"{_HOOKS}/{_seg(endpoint_id)}", _no_content)


def ping_webhook_endpoint(
    endpoint_id: str, *, idempotency_key: str | None = None
) -> Call[WebhookDelivery]:
    """Send one ``ping`` event now; the answer is the attempt."""
    path = f"{_HOOKS}/{_seg(endpoint_id)}/test"
    return _post(path, _json_of(WebhookDelivery), None, idempotency_key)


def list_webhook_deliveries(
    endpoint_id: str,
    *,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Call[Page[WebhookDelivery]]:
    params = _page(limit, after)
    if status is not None:
        params.insert(0, ("status", status))
    path = f"{_HOOKS}/{_seg(endpoint_id)}/deliveries"
    return Call("GET", path, _json_of(Page[WebhookDelivery]), params=params)


class _Queued(Model):
    queued: int


def replay_webhook_endpoint(
    endpoint_id: str, after_seq: int, *, idempotency_key: str | None = None
) -> Call[int]:
    """Send again every event of the endpoint's types with ``seq > after_seq``; the
    answer is how many were queued."""

    def read(response: httpx.Response) -> int:
        return _json_of(_Queued)(response).queued

    path = f"{_HOOKS}/{_seg(endpoint_id)}/replay"
    return _post(path, read, {"after_seq": after_seq}, idempotency_key)
