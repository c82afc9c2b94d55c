"""The shop's routes through the client against the live server: an order's whole life,
and every refusal raised as its own exception with the problem's fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import Server, StockHelper
from stockguard_client import (
    Client,
    Conflict,
    Forbidden,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    OrderNotDeletable,
    OutOfStock,
    ReturnExceedsFulfilled,
    Shortage,
    StockguardError,
    Unauthorized,
    UnknownSku,
    ValidationError,
)


def test_an_order_from_checkout_to_return(shop: Client, stock: StockHelper) -> None:
    tee, mug = stock.sku("TEE", 5), stock.sku("MUG", 2)
    order = shop.place_order(
        [{"sku": tee, "quantity": 2}, {"sku": mug, "quantity": 1}],
        id=f"cart-{stock.uid}",
        total_amount=4500,
        currency="eur",
        reservation_ttl_seconds=60,
    )
    assert order.id == f"cart-{stock.uid}"
    assert order.status == "pending"
    assert order.currency == "EUR"
    assert {(r.sku, r.quantity, r.status) for r in order.reservations} == {
        (tee, 2, "reserved"),
        (mug, 1, "reserved"),
    }
    held_until = order.expires_at()
    assert held_until is not None
    assert held_until.tzinfo is not None

    again = shop.place_order(
        [{"sku": tee, "quantity": 2}, {"sku": mug, "quantity": 1}],
        id=f"cart-{stock.uid}",
        total_amount=4500,
        currency="eur",
        reservation_ttl_seconds=60,
    )
    assert again == order  # the same id and content: the same order, held once
    assert shop.get_sku(tee).reserved == 2

    extended = shop.extend_order(order.id, 3600)
    later = extended.expires_at()
    assert later is not None
    assert later > held_until
    assert later > datetime.now(UTC) + timedelta(minutes=59)

    paid = shop.pay_order(
        order.id, provider="stripe", payment_id=f"pi_{stock.uid}", amount=4500, currency="EUR"
    )
    assert paid.status == "paid"
    assert paid.payment is not None
    assert paid.payment.payment_id == f"pi_{stock.uid}"
    assert {r.status for r in paid.reservations} == {"committed"}

    assert shop.set_order_status(order.id, "processing").status == "processing"
    assert shop.set_order_status(order.id, "shipped").status == "shipped"
    assert shop.get_sku(tee).on_hand == 3
    returned = shop.create_return(
        order.id,
        f"ret-{stock.uid}",
        [{"sku": tee, "quantity": 1, "disposition": "restock"}],
        note="too small",
    )
    assert returned.order_id == order.id
    assert [(ln.sku, ln.quantity, ln.location) for ln in returned.lines] == [(tee, 1, "main")]
    assert shop.list_returns(order.id) == [returned]
    assert shop.get_order(order.id).returns == [returned]
    assert shop.get_sku(tee).on_hand == 4

    with pytest.raises(ReturnExceedsFulfilled) as caught:
        shop.create_return(
            order.id, f"ret2-{stock.uid}", [{"sku": tee, "quantity": 2, "disposition": "damaged"}]
        )
    assert caught.value.status == 409
    assert [(x.sku, x.requested, x.returnable) for x in caught.value.lines] == [(tee, 2, 1)]

    with pytest.raises(OrderNotDeletable):
        shop.delete_order(order.id)
    assert shop.set_order_status(order.id, "delivered").status == "delivered"


def test_cancel_and_delete_give_the_stock_back(shop: Client, stock: StockHelper) -> None:
    sku = stock.sku("BACK", 4)
    first = shop.place_order([{"sku": sku, "quantity": 3}], id=f"c1-{stock.uid}")
    cancelled = shop.cancel_order(first.id, reason="customer left")
    assert cancelled.status == "cancelled"
    assert cancelled.cancel_reason == "customer left"
    assert shop.cancel_order(first.id) == cancelled  # cancelling again changes nothing
    assert shop.get_sku(sku).available == 4

    second = shop.place_order([{"sku": sku, "quantity": 4}], id=f"c2-{stock.uid}")
    assert shop.get_sku(sku).available == 0
    assert shop.delete_order(second.id) is None
    assert shop.get_sku(sku).available == 4
    with pytest.raises(NotFound) as caught:
        shop.get_order(second.id)
    assert caught.value.status == 404
    assert caught.value.code == "not_found"


def test_out_of_stock_lists_every_short_sku(shop: Client, stock: StockHelper) -> None:
    one, two, plenty = stock.sku("ONE", 1), stock.sku("TWO", 2), stock.sku("PLENTY", 9)
    with pytest.raises(OutOfStock) as caught:
        shop.place_order(
            [
                {"sku": one, "quantity": 3},
                {"sku": two, "quantity": 5},
                {"sku": plenty, "quantity": 1},
            ],
            id=f"short-{stock.uid}",
        )
    err = caught.value
    assert err.status == 409
    assert err.code == "out_of_stock"
    assert sorted(err.shortages, key=lambda s: s.sku) == sorted(
        [Shortage(sku=one, requested=3, available=1), Shortage(sku=two, requested=5, available=2)],
        key=lambda s: s.sku,
    )
    assert err.problem["status"] == 409
    assert err.detail
    assert err.idempotency_key is not None
    assert shop.get_sku(plenty).reserved == 0  # nothing held
    with pytest.raises(NotFound):
        shop.get_order(f"short-{stock.uid}")


def test_invalid_transition_carries_from_and_to(shop: Client, stock: StockHelper) -> None:
    sku = stock.sku("TRANS", 2)
    order = shop.place_order([{"sku": sku, "quantity": 1}], id=f"t-{stock.uid}")
    with pytest.raises(InvalidTransition) as caught:
        shop.set_order_status(order.id, "delivered")
    assert (caught.value.from_status, caught.value.to_status) == ("pending", "delivered")
    assert caught.value.idempotency_key is None  # PATCH carries none


def test_the_same_order_id_with_other_content_is_a_conflict(
    shop: Client, stock: StockHelper
) -> None:
    sku = stock.sku("CONF", 5)
    shop.place_order([{"sku": sku, "quantity": 1}], id=f"x-{stock.uid}")
    with pytest.raises(Conflict) as caught:
        shop.place_order([{"sku": sku, "quantity": 2}], id=f"x-{stock.uid}")
    assert caught.value.code == "conflict"
    assert shop.get_sku(sku).reserved == 1


def test_validation_errors_name_the_fields(shop: Client, stock: StockHelper) -> None:
    sku = stock.sku("VAL", 5)
    with pytest.raises(ValidationError) as caught:
        shop.place_order([{"sku": sku, "quantity": 0}])
    assert caught.value.status == 422
    assert caught.value.errors, caught.value.problem
    with pytest.raises(ValidationError):
        shop.place_order([{"sku": sku, "quantity": 1}], reservation_ttl_seconds=86_401)
    with pytest.raises(UnknownSku) as unknown:
        shop.place_order([{"sku": sku, "quantity": 1}, {"sku": f"NONE-{stock.uid}", "quantity": 1}])
    assert unknown.value.status == 422
    assert unknown.value.skus == [f"NONE-{stock.uid}"]
    assert shop.get_sku(sku).reserved == 0


def test_keys_and_roles(server: Server, admin: Client, stock: StockHelper) -> None:
    with Client(server.url, "sg_not_a_key") as stranger, pytest.raises(Unauthorized) as caught:
        stranger.get_sku("ANY")
    assert caught.value.status == 401
    with Client(server.url, server.service_key) as shop, pytest.raises(Forbidden) as refused:
        shop.put_sku(f"NOPE-{stock.uid}", "not for a shop")
    assert refused.value.status == 403
    assert isinstance(refused.value, StockguardError)


def test_stock_writes_and_their_refusals(admin: Client, stock: StockHelper) -> None:
    sku = stock.sku("ADJ", 0)
    level = admin.adjust_stock(sku, "main", delta=10, reason="received", reference="po-1")
    assert (level.on_hand, level.on_hand_delta, level.available) == (10, 10, 10)
    level = admin.adjust_stock(sku, "main", unavailable_delta=2, reason="damaged")
    assert (level.on_hand, level.unavailable, level.available) == (10, 2, 8)
    level = admin.adjust_stock(sku, "main", delta=-1, from_unavailable=True, reason="damaged")
    assert (level.on_hand, level.unavailable) == (9, 1)
    with pytest.raises(InsufficientStock):
        admin.adjust_stock(sku, "main", set_on_hand=0, reason="cycle_count")
    safety = admin.set_safety_stock(sku, "main", 3)
    assert (safety.sku, safety.safety_stock, safety.available) == (sku, 3, 5)
    [avail] = admin.get_availability([sku])
    assert (avail.sku, avail.available, avail.locations) == (sku, 5, {"main": 5})
    found = admin.put_sku(sku, "renamed", low_stock_threshold=4)
    assert (found.name, found.low_stock_threshold) == ("renamed", 4)
    assert admin.put_sku(sku, "renamed again").low_stock_threshold == 4  # left out: kept
    assert admin.put_sku(sku, "renamed", low_stock_threshold=None).low_stock_threshold is None
