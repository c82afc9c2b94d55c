"""Admin routes through the client against the live server (channels, transfers, batch
writes, keys, verify, recovery), and the mapping of every problem code to its exception,
also for answers that are not ours."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from conftest import Server, StockHelper
from stockguard_client import (
    BatchRejected,
    Busy,
    CacheUnavailable,
    Client,
    EventsExpired,
    InsufficientStock,
    InvalidTransition,
    PayloadTooLarge,
    ReceiptExceedsInTransit,
    StaleQuantity,
    StockguardError,
    Unauthorized,
    UnknownSku,
    ValidationError,
)
from stockguard_client._calls import problem_error, retry_after
from stockguard_client.errors import error_from_problem


def test_channels_and_availability_per_channel(admin: Client, stock: StockHelper) -> None:
    admin.put_location(f"shop-{stock.uid}", "Shop", priority=10)
    sku = stock.sku("CHAN", 4)
    channel = admin.put_channel(f"web-{stock.uid}", "Web", ["main"])
    assert channel.locations == ["main"]
    assert admin.get_channel(f"web-{stock.uid}") == channel
    [avail] = admin.get_availability([sku], channel=f"web-{stock.uid}")
    assert (avail.available, avail.locations) == (4, {"main": 4})


def test_transfers(admin: Client, stock: StockHelper) -> None:
    shop = f"store-{stock.uid}"
    admin.put_location(shop, "Store")
    sku = stock.sku("MOVE", 10)
    made = admin.create_transfer(f"t-{stock.uid}", "main", shop, [{"sku": sku, "quantity": 6}])
    assert (made.from_, made.to, made.status) == ("main", shop, "in_transit")
    assert admin.get_sku(sku).on_hand == 4
    part = admin.receive_transfer(made.id, f"r1-{stock.uid}", [{"sku": sku, "quantity": 4}])
    assert [(ln.received, ln.in_transit) for ln in part.lines] == [(4, 2)]
    assert [r.receipt_id for r in part.receipts] == [f"r1-{stock.uid}"]
    with pytest.raises(ReceiptExceedsInTransit) as caught:
        admin.receive_transfer(made.id, f"r2-{stock.uid}", [{"sku": sku, "quantity": 3}])
    assert caught.value.lines[0]["sku"] == sku
    cancelled = admin.cancel_transfer(made.id)
    assert cancelled.status == "cancelled"
    assert admin.get_transfer(made.id) == cancelled
    with pytest.raises(InvalidTransition):
        admin.receive_transfer(made.id, f"r3-{stock.uid}", [{"sku": sku, "quantity": 1}])
    assert made.id in {t.id for t in admin.iter_transfers(status="cancelled", page_size=1)}
    assert admin.list_transfers(status="in_transit", limit=500).items is not None
    with pytest.raises(InsufficientStock) as short:
        admin.create_transfer(f"t2-{stock.uid}", "main", shop, [{"sku": sku, "quantity": 99}])
    assert short.value.shortages[0]["sku"] == sku


def test_batch_writes(admin: Client, stock: StockHelper) -> None:
    a, b = stock.sku("BA", 5), stock.sku("BB", 0)
    done = admin.adjust_batch(
        [
            {"sku": a, "location": "main", "delta": 1, "reason": "received"},
            {"sku": b, "location": "main", "set_on_hand": 3, "reason": "cycle_count"},
        ]
    )
    assert [r.status for r in done.results] == ["applied", "applied"]
    with pytest.raises(BatchRejected) as caught:
        admin.adjust_batch(
            [
                {"sku": a, "location": "main", "delta": 1, "reason": "received"},
                {"sku": b, "location": "main", "delta": -9, "reason": "shrinkage"},
            ]
        )
    assert [item["index"] for item in caught.value.items] == [1]
    assert admin.get_sku(a).on_hand == 6
    with pytest.raises(StaleQuantity):
        admin.adjust_stock(a, "main", delta=1, expected_on_hand=1, reason="received")


def test_keys_verify_and_recovery(server: Server, admin: Client, stock: StockHelper) -> None:
    made = admin.create_api_key("service", f"temp-{stock.uid}")
    assert made.key is not None
    assert made.role == "service"
    with Client(server.url, made.key) as temp:
        assert temp.list_orders(limit=1).items is not None
        admin.revoke_api_key(made.id)
        # Every process refuses a revoked key within a second or two.
        deadline = time.monotonic() + 5
        with pytest.raises(Unauthorized):  # noqa: PT012 - polls until refused
            while time.monotonic() < deadline:
                temp.list_orders(limit=1)
                time.sleep(0.1)
    report = admin.verify()
    assert report.ok, report.violations
    sku = stock.sku("RECOVER", 2)
    order = admin.place_order([{"sku": sku, "quantity": 1}], id=f"rec-{stock.uid}")
    admin.pay_order(order.id, provider="manual", payment_id=f"rec-{stock.uid}")
    recovered = admin.recover_inventory(order.id)
    assert recovered.outcome == "skipped_already_committed"
    assert recovered.order is not None
    assert recovered.order.status == "paid"
    assert order.id not in {o.id for o in admin.list_needs_review(limit=500).items}


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("busy", 503, Busy),
        ("cache_unavailable", 503, CacheUnavailable),
        ("unknown_sku", 422, UnknownSku),
        ("payload_too_large", 413, PayloadTooLarge),
        ("events_expired", 410, EventsExpired),
        ("something_new", 418, StockguardError),
    ],
)
def test_codes_map_to_their_exceptions(code: str, status: int, cls: type) -> None:
    problem = {"type": "t", "title": "T", "status": status, "detail": "d", "code": code}
    err = error_from_problem(status, {**problem, "pruned_through": 41}, idempotency_key="k")
    assert type(err) is cls
    assert (err.status, err.code, err.detail, err.idempotency_key) == (status, code, "d", "k")
    if isinstance(err, EventsExpired):
        assert err.pruned_through == 41
    if isinstance(err, UnknownSku):
        assert isinstance(err, ValidationError)
        assert err.errors == []


def test_an_answer_that_is_not_ours_still_raises() -> None:
    request = httpx.Request("GET", "http://proxy/v1/orders")
    later = datetime.now(UTC) + timedelta(seconds=30)
    page = httpx.Response(
        502,
        text="<html>Bad gateway</html>",
        headers={"Retry-After": format_datetime(later, usegmt=True)},
        request=request,
    )
    err = problem_error(page, None)
    assert type(err) is StockguardError
    assert (err.status, err.code) == (502, "http_502")
    assert "Bad gateway" in err.detail
    assert err.retry_after is not None
    assert 20 < err.retry_after <= 30
    junk = httpx.Response(503, headers={"Retry-After": "soon"}, request=request)
    assert retry_after(junk) is None


def test_ledger_logs_explain_reconcile_and_readiness(
    server: Server, admin: Client, stock: StockHelper
) -> None:
    sku = stock.sku("LEDGER", 5)
    order = admin.place_order([{"sku": sku, "quantity": 2}], id=f"led-{stock.uid}")
    moves = admin.list_movements(sku=sku, limit=10).items
    assert [(m.reason, m.on_hand_delta, m.reserved_delta) for m in moves][:1] == [("reserve", 0, 2)]
    assert all(m.sku == sku for m in moves)
    assert [m.order_id for m in admin.list_movements(order_id=order.id).items] == [order.id]
    logs = admin.list_inventory_logs(order.id).items
    assert logs
    assert all(log.order_id == order.id for log in logs)
    found = admin.explain(sku, location="main", at=datetime.now(UTC))
    assert found.consistent
    assert [(lv.location, lv.on_hand, lv.reserved) for lv in found.levels] == [("main", 5, 2)]
    with pytest.raises(ValueError, match="timezone"):
        admin.explain(sku, at=datetime(2026, 1, 1))  # noqa: DTZ001 - the refused case
    report = admin.reconcile_cache(repair=False)
    assert report.checked >= 1
    assert report.drifted == []
    assert admin.list_paid_uncommitted(limit=500).items is not None
    with Client(server.url, "no key needed") as anyone:
        readiness = anyone.ready()
    assert readiness.ok
    assert readiness.checks == {"postgres": True, "redis": True}
