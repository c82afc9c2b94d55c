"""Lists as iterators against the live server: cursors followed page by page, the events
feed followed by ``seq`` and parsed into typed events."""

from __future__ import annotations

import time

import pytest

from conftest import Server, StockHelper
from sgc_network import RecordingTransport, Wire
from stockguard_client import (
    AsyncClient,
    Client,
    Event,
    OrderEvent,
    StockChangedEvent,
    StockEdgeEvent,
    ValidationError,
)


def test_iter_orders_follows_the_cursors(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("PAGE", 20)
    wire = Wire()
    with Client(server.url, server.service_key, transport=RecordingTransport(wire)) as shop:
        placed = [
            shop.place_order([{"sku": sku, "quantity": 1}], id=f"p{i}-{stock.uid}").id
            for i in range(7)
        ]
        shop.cancel_order(placed[3])
        wire.exchanges.clear()
        mine = [o.id for o in shop.iter_orders(page_size=3) if o.lines[0].sku == sku]
        assert mine == placed  # oldest first, each once
        pages = len(wire.exchanges)
        assert pages >= 3
        first = shop.list_orders(limit=3)
        assert len(first.items) == 3
        assert first.next is not None
        second = shop.list_orders(limit=3, after=first.next)
        assert {o.id for o in first.items}.isdisjoint(o.id for o in second.items)

        pending = [o.id for o in shop.iter_orders(status="pending", page_size=2)]
        assert placed[3] not in pending
        assert set(placed) - {placed[3]} <= set(pending)
        cancelled = shop.list_orders(status="cancelled", limit=500)
        assert placed[3] in {o.id for o in cancelled.items}


def test_other_lists_iterate(admin: Client, stock: StockHelper) -> None:
    skus = {stock.sku(f"L{i}", 0) for i in range(4)}
    assert skus <= {s.sku for s in admin.iter_skus(page_size=2)}
    assert "main" in {loc.code for loc in admin.iter_locations(page_size=1)}
    assert {k.name for k in admin.iter_api_keys(page_size=1)} >= {
        "client-tests",
        "client-tests-shop",
    }
    with pytest.raises(ValidationError):
        admin.list_skus(limit=501)


def _wait_for(client: Client, after: int | None, order_id: str, kind: str) -> list[Event]:
    """The feed numbers events just after they commit: poll until the one we expect."""
    deadline = time.monotonic() + 15
    seen: list[Event] = []
    while time.monotonic() < deadline:
        seen = list(client.iter_events(after=after, page_size=2))
        if any(
            isinstance(e, OrderEvent) and e.type == kind and e.data.order.id == order_id
            for e in seen
        ):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"no {kind} of {order_id} in the feed: {seen}")


def test_iter_events_follows_seq_and_types_them(shop: Client, stock: StockHelper) -> None:
    sku = stock.sku("FEED", 1)
    start = max((e.seq or 0 for e in shop.iter_events(page_size=500)), default=0)
    order = shop.place_order([{"sku": sku, "quantity": 1}], id=f"feed-{stock.uid}")
    shop.cancel_order(order.id, reason="changed mind")
    events = _wait_for(shop, start, order.id, "order.cancelled")

    seqs = [e.seq or 0 for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert all(s > start for s in seqs)
    mine = [e for e in events if isinstance(e, OrderEvent) and e.data.order.id == order.id]
    assert [e.type for e in mine] == ["order.placed", "order.cancelled"]
    assert mine[1].data.reason == "changed mind"
    assert mine[1].data.order.status == "cancelled"
    changes = [e for e in events if isinstance(e, StockChangedEvent) and e.data.sku == sku]
    assert [c.data.available for c in changes][-2:] == [0, 1]
    edges = [e.type for e in events if isinstance(e, StockEdgeEvent) and e.data.sku == sku]
    assert edges[-2:] == ["stock.out_of_stock", "stock.back_in_stock"]

    only_orders = list(shop.iter_events(after=start, types=["order.*"]))
    assert only_orders
    assert all(e.type.startswith("order.") for e in only_orders)
    page = shop.list_events(after=start, limit=1)
    assert len(page.items) == 1
    assert page.next == page.items[0].seq


async def test_async_client_has_the_same_methods(ashop: AsyncClient, stock: StockHelper) -> None:
    sku = stock.sku("ASYNC", 6)
    placed = [
        (await ashop.place_order([{"sku": sku, "quantity": 1}], id=f"a{i}-{stock.uid}")).id
        for i in range(5)
    ]
    mine = [o.id async for o in ashop.iter_orders(page_size=2) if o.lines[0].sku == sku]
    assert mine == placed
    paid = await ashop.pay_order(placed[0], provider="manual", payment_id=f"m-{stock.uid}")
    assert paid.status == "paid"
    assert (await ashop.get_sku(sku)).reserved == 5
    [avail] = await ashop.get_availability([sku])
    assert avail.available == 1
    events = [e async for e in ashop.iter_events(types=["order.placed"], page_size=50)]
    assert events
    assert all(isinstance(e, OrderEvent) for e in events)


def test_sync_and_async_clients_offer_the_same_methods() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(Client) - {"close"} == public(AsyncClient) - {"aclose"}


async def test_async_iterators_of_every_list(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("AITER", 3)
    store = f"astore-{stock.uid}"
    async with AsyncClient(server.url, server.admin_key) as admin:
        await admin.put_location(store, "Store")
        await admin.create_transfer(f"at-{stock.uid}", "main", store, [{"sku": sku, "quantity": 1}])
        assert sku in {s.sku async for s in admin.iter_skus(page_size=2)}
        assert store in {loc.code async for loc in admin.iter_locations(page_size=2)}
        transfers = {t.id async for t in admin.iter_transfers(status="in_transit", page_size=1)}
        assert f"at-{stock.uid}" in transfers
        assert "client-tests" in {k.name async for k in admin.iter_api_keys(page_size=1)}
