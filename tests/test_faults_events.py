"""The fault suite's event checks (faults/events_check.py) on small hand-made snapshots:
silent when the events agree with the data, and each check fires on its own defect."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from faults.events_check import check_events

Row = dict[str, Any]


def _order(oid: str, status: str = "pending") -> Row:
    return {"order": {"id": oid, "status": status}}


def _changed(sku: str, on_hand: int, reserved: int, available: int) -> Row:
    return {"sku": sku, "on_hand": on_hand, "reserved": reserved, "unavailable": 0,
            "available": available}  # fmt: skip


def _good() -> dict[str, list[Row]]:
    events = [
        ("stock.changed", _changed("A", 5, 0, 5)),
        ("order.placed", _order("o1")),
        ("stock.changed", _changed("A", 5, 1, 4)),
        ("order.placed", _order("o2")),
        ("order.cancelled", _order("o2", "cancelled")),
        ("order.deleted", _order("o2", "cancelled")),
        ("order.paid", _order("o1", "paid")),
        ("order.shipped", _order("o1", "shipped")),
        ("order.returned", _order("o1", "shipped")),
        ("stock.changed", _changed("A", 4, 0, 4)),
        ("transfer.shipped", {"transfer": {"id": "t1"}}),
        ("transfer.received", {"transfer": {"id": "t1"}}),
    ]
    return {
        "events": [{"seq": n, "type": t, "data": d} for n, (t, d) in enumerate(events, 1)],
        "orders": [
            {"id": "o1", "status": "shipped", "payment_id": "pi_1", "deleted": False},
            {"id": "o2", "status": "cancelled", "payment_id": None, "deleted": True},
        ],
        "returns": [{"order_id": "o1"}],
        "transfers": [{"id": "t1", "status": "received"}],
        "receipts": [{"transfer_id": "t1"}],
        "totals": [{"sku": "A", "on_hand": 4, "reserved": 0, "unavailable": 0, "available": 4}],
    }


def test_silent_when_events_agree() -> None:
    assert check_events(_good()) == []


def _drop(db: dict[str, list[Row]], event_type: str) -> None:
    db["events"] = [e for e in db["events"] if e["type"] != event_type]


@pytest.mark.parametrize(
    ("defect", "check"),
    [
        (lambda db: _drop(db, "order.placed"), "order_events"),
        (lambda db: _drop(db, "order.deleted"), "order_events"),
        (lambda db: _drop(db, "order.returned"), "order_events"),
        (lambda db: _drop(db, "order.paid"), "paid_order_without_event"),
        (lambda db: _drop(db, "transfer.received"), "transfer_events"),
        (
            lambda db: db["events"].append(
                {"seq": 99, "type": "order.placed", "data": _order("refused")}
            ),
            "event_of_an_order_never_placed",
        ),
        (
            lambda db: db["events"].append(
                {"seq": 99, "type": "transfer.shipped", "data": {"transfer": {"id": "t9"}}}
            ),
            "event_of_a_transfer_never_made",
        ),
        (lambda db: db["events"].pop(9), "last_stock_changed_is_the_level"),
        (lambda db: db["events"][0].update(seq=None), "event_numbered"),
    ],
)
def test_each_check_fires_on_its_defect(defect: Any, check: str) -> None:
    db = copy.deepcopy(_good())
    defect(db)
    assert check in {v["check"] for v in check_events(db)}
