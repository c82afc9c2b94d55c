"""The fault-injection suite (``python -m faults``, docs/FAULTS.md).

- Its checker, on a small hand-made history and database: silent when they agree, and
  each check fires on the one defect it is for (a checker that cannot fail proves nothing).
- One bounded run (35 s of workload under faults, about a minute of wall time) against
  the test session's PostgreSQL server: it must find no violation, and it must have done
  something: every fault kind injected and every operation kind acknowledged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.__main__ import parse_args, phases
from faults.checker import Row, Snapshot, check_history
from faults.history import AMBIGUOUS, OK, OP_KINDS, REFUSED, History, Op
from faults.nemesis import FAULT_KINDS, plan
from faults.report import summary
from faults.workload import INITIAL_ON_HAND, LOCATIONS, SEED_REFERENCE, SKUS
from tests.conftest import Servers

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("STOCKGUARD_FAULTS_SEED", "7"))


def test_schedule_is_seeded_and_injects_every_kind_early() -> None:
    first, again, other = plan(3, 40, 2), plan(3, 40, 2), plan(4, 40, 2)
    assert first == again
    assert first != other
    kinds = [p.kind for p in first]
    assert sorted(kinds[: len(FAULT_KINDS)]) == sorted(FAULT_KINDS)
    assert all(kinds.count(k) >= 2 for k in FAULT_KINDS)
    times = [p.at for p in first]
    assert times == sorted(times)
    assert times[0] >= 2.0
    assert times[-1] < 40
    assert all(1.0 <= p.hold <= 3.0 for p in first if p.kind == "redis_freeze")


def test_long_schedule_keeps_its_interval_and_every_kinds_floor() -> None:
    """A long run plans one fault per --fault-interval and at least --faults-per-kind of
    every kind, all after the fault-free baseline and before the end of the faulted phase."""
    base = plan(5, 1200, 2)
    assert len(base) == int(1200 / 3.5)
    dense = plan(5, 1200, 2, interval=2.0, per_kind=60, offset=120)
    assert len(dense) == 600
    floor = plan(5, 400, 2, interval=3.5, per_kind=60, offset=120)
    assert len(floor) == 300  # the floor wins over the interval
    for schedule, offset, end in ((dense, 120, 1320), (floor, 120, 520)):
        kinds = [p.kind for p in schedule]
        assert all(kinds.count(k) >= 60 for k in FAULT_KINDS)
        assert sorted(kinds[: len(FAULT_KINDS)]) == sorted(FAULT_KINDS)
        times = [p.at for p in schedule]
        assert times == sorted(times)
        assert offset + 2.0 <= times[0]
        assert times[-1] < end
    assert plan(5, 40, 2, offset=100) == [
        dataclasses.replace(p, at=round(p.at + 100, 2)) for p in plan(5, 40, 2)
    ]
    with pytest.raises(ValueError, match="per_kind"):
        plan(5, 40, 2, per_kind=1)
    with pytest.raises(ValueError, match="interval"):
        plan(5, 40, 2, interval=0)


def test_baseline_phase_is_reported_apart() -> None:
    said = [(1.0, OK), (9.9, AMBIGUOUS), (10.0, OK), (25.0, REFUSED), (29.0, OK)]
    ops = [Op(f"o{i}", "read", 0, "FLT-A", at, outcome=out) for i, (at, out) in enumerate(said)]
    got = phases(History(ops), 10.0, 30.0)
    assert got["baseline"] == {
        "seconds": 10.0,
        "operations": 2,
        "acknowledged": 1,
        "ambiguous": 1,
        "ops_per_s": 0.2,
        "acknowledged_per_s": 0.1,
    }
    assert got["faults"] == {
        "seconds": 20.0,
        "operations": 3,
        "acknowledged": 2,
        "ambiguous": 0,
        "ops_per_s": 0.1,
        "acknowledged_per_s": 0.1,
    }
    doc: dict[str, object] = {
        "config": {"seed": 1, "duration_s": 20, "clients": 1, "api_processes": 2},
        "run_id": "x",
        "operations": {"by_kind": {"read": {OK: 3, REFUSED: 1, AMBIGUOUS: 1}}},
        "throughput": {"operations": 5, "acknowledged": 3, "attempts": 5, "workload_s": 30.0,
                       "ops_per_s": 0.2, "acknowledged_per_s": 0.1, "phases": got},
        "faults": {"by_kind": {}, "skipped": 0},
        "violations": [],
    }  # fmt: skip
    text = summary(doc)
    assert (
        "  baseline  2 operations in 10.0 s = 0.2 ops/s (0.1 acknowledged/s, 1 ambiguous)" in text
    )
    assert "  faults    3 operations in 20.0 s" in text
    assert "5 operations (3 acknowledged)" in text


def test_cli_refuses_a_schedule_it_cannot_keep() -> None:
    assert (
        parse_args(["--duration", "600", "--fault-interval", "2", "--baseline", "60"]).baseline
        == 60
    )
    for bad in (["--fault-interval", "0.1"], ["--faults-per-kind", "1"], ["--baseline", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# ------------------------------------------------------------ the checker


def _move(sku: str, loc: str, on_hand: int, reserved: int, reason: str, **more: object) -> Row:
    return {"sku": sku, "location": loc, "on_hand_delta": on_hand, "reserved_delta": reserved,
            "unavailable_delta": 0, "reason": reason, "order_id": None, "reservation_id": None,
            "actor": "key:x", "reference": None, **more}  # fmt: skip


def _said(outcome: str, op_id: str, kind: str, target: str, **detail: object) -> Op:
    return Op(op_id, kind, 0, target, 0.0, outcome=outcome, detail=detail)


def _world() -> tuple[Snapshot, History]:
    """A consistent story: order A placed, paid by webhook, shipped; order B placed, its
    hold expired, paid late (reserved again), then cancelled by an ambiguous request;
    adjustments acknowledged, ambiguous (applied or not) and refused; a unit of A made
    unavailable then written off; a safety stock set; A returned (one restocked, one
    damaged); transfer T of 3 units, 2 received (one receipt ambiguous), 1 still in
    transit; transfer U of 2 units cancelled (the cancel ambiguous)."""
    moves = [
        _move(sku, loc, INITIAL_ON_HAND, 0, "received", reference=SEED_REFERENCE)
        for sku in SKUS
        for loc in LOCATIONS
    ]
    moves += [
        _move("FLT-A", "wh-1", 0, 2, "reserve", order_id="A", reservation_id=1),
        _move("FLT-A", "wh-1", -2, -2, "fulfil", order_id="A", reservation_id=1),
        _move("FLT-B", "wh-1", 0, 1, "reserve", order_id="B", reservation_id=2),
        _move("FLT-B", "wh-1", 0, -1, "expire", order_id="B", reservation_id=2, actor="w"),
        _move("FLT-B", "wh-2", 0, 1, "reserve", order_id="B", reservation_id=3),
        _move("FLT-B", "wh-2", 0, -1, "release", order_id="B", reservation_id=3),
        _move("FLT-C", "wh-2", 5, 0, "received", reference="adj-ok"),
        _move("FLT-D", "wh-1", -2, 0, "shrinkage", reference="adj-maybe-applied"),
        _move("FLT-A", "wh-2", 0, 0, "quality_control", reference="un-ok", unavailable_delta=2),
        _move("FLT-A", "wh-2", -1, 0, "damaged", reference="wo-ok", unavailable_delta=-1),
        _move("FLT-A", "wh-1", 1, 0, "returned", order_id="A", reference="r-1"),
        _move("FLT-A", "wh-1", 1, 0, "returned_damaged", order_id="A", reference="r-1",
              unavailable_delta=1),
        _move("FLT-B", "wh-1", -3, 0, "transfer_out", reference="T"),
        _move("FLT-B", "wh-2", 1, 0, "transfer_in", reference="T"),
        _move("FLT-B", "wh-2", 1, 0, "transfer_in", reference="T"),
        _move("FLT-C", "wh-2", -2, 0, "transfer_out", reference="U"),
        _move("FLT-C", "wh-2", 2, 0, "transfer_cancelled", reference="U"),
    ]  # fmt: skip
    db: Snapshot = {
        "orders": [
            {"id": "A", "status": "shipped", "payment_provider": "stripe", "payment_id": "pi_A",
             "deleted_at": None, "cancel_reason": None},
            {"id": "B", "status": "cancelled", "payment_provider": "manual",
             "payment_id": "man_B", "deleted_at": None, "cancel_reason": "faults"},
        ],
        "lines": [{"order_id": "A", "sku": "FLT-A", "quantity": 2},
                  {"order_id": "B", "sku": "FLT-B", "quantity": 1}],
        "reservations": [
            {"id": 1, "order_id": "A", "sku": "FLT-A", "location": "wh-1", "quantity": 2,
             "status": "fulfilled"},
            {"id": 2, "order_id": "B", "sku": "FLT-B", "location": "wh-1", "quantity": 1,
             "status": "expired"},
            {"id": 3, "order_id": "B", "sku": "FLT-B", "location": "wh-2", "quantity": 1,
             "status": "released"},
        ],
        "movements": moves,
        "logs": [{"id": i, "order_id": o, "action": a, "actor": "key:x"} for i, (o, a) in
                 enumerate([("A", "RESERVED"), ("B", "RESERVED"), ("B", "EXPIRED"),
                            ("A", "COMMITTED"), ("B", "RESERVED"), ("B", "COMMITTED"),
                            ("A", "FULFILLED"), ("B", "RELEASED")])],
        "levels": [],
        "returns": [{"return_id": "r-1", "order_id": "A"}],
        "return_lines": [
            {"return_id": "r-1", "order_id": "A", "sku": "FLT-A", "location": "wh-1",
             "quantity": 1, "disposition": "restock"},
            {"return_id": "r-1", "order_id": "A", "sku": "FLT-A", "location": "wh-1",
             "quantity": 1, "disposition": "damaged"},
        ],
        "transfers": [
            {"id": "T", "from_location": "wh-1", "to_location": "wh-2", "status": "in_transit"},
            {"id": "U", "from_location": "wh-2", "to_location": "wh-1", "status": "cancelled"},
        ],
        "transfer_lines": [
            {"transfer_id": "T", "sku": "FLT-B", "quantity": 3, "received": 2, "cancelled": 0,
             "in_transit": 1},
            {"transfer_id": "U", "sku": "FLT-C", "quantity": 2, "received": 0, "cancelled": 2,
             "in_transit": 0},
        ],
        "receipts": [
            {"transfer_id": "T", "receipt_id": "rc-1", "lines": [["FLT-B", 1]]},
            {"transfer_id": "T", "receipt_id": "rc-2", "lines": [["FLT-B", 1]]},
        ],
    }  # fmt: skip
    _level_from_ledger(db)
    db["levels"][0]["safety_stock"] = 2
    line_a, line_b = {"sku": "FLT-A", "quantity": 2}, {"sku": "FLT-B", "quantity": 1}
    ops = [
        _said(OK, "p-A", "place", "A", lines=[line_a]),
        _said(OK, "p-B", "place", "B", lines=[line_b]),
        _said(OK, "pay-A", "pay", "A", via="webhook", provider="stripe", payment_id="pi_A"),
        _said(OK, "pay-B", "pay", "B", via="api", provider="manual", payment_id="man_B"),
        _said(OK, "pr-A", "process", "A"),
        _said(OK, "sh-A", "ship", "A"),
        _said(AMBIGUOUS, "c-B", "cancel", "B"),
        _said(REFUSED, "c-A", "cancel", "A"),
        _said(OK, "adj-ok", "adjust", "FLT-C", location="wh-2", delta=5),
        _said(AMBIGUOUS, "adj-maybe-applied", "adjust", "FLT-D", location="wh-1", delta=-2),
        _said(AMBIGUOUS, "adj-maybe-not", "adjust", "FLT-C", location="wh-1", delta=3),
        _said(REFUSED, "adj-no", "adjust", "FLT-D", location="wh-2", delta=-99),
        _said(OK, "un-ok", "unavailable", "FLT-A", location="wh-2", delta=0, unavailable=2),
        _said(OK, "wo-ok", "write_off", "FLT-A", location="wh-2", delta=-1, unavailable=-1),
        _said(OK, "ss-ok", "safety_stock", "FLT-A", location="wh-1", safety_stock=2),
        _said(REFUSED, "ss-no", "safety_stock", "FLT-A", location="wh-1", safety_stock=1),
        _said(OK, "ret-1", "return", "A", return_id="r-1",
              lines=[{"sku": "FLT-A", "quantity": 1, "disposition": "restock"},
                     {"sku": "FLT-A", "quantity": 1, "disposition": "damaged"}]),
        _said(REFUSED, "ret-2", "return", "A", return_id="r-2",
              lines=[{"sku": "FLT-A", "quantity": 9, "disposition": "restock"}]),
        _said(OK, "tr-T", "transfer", "T", source="wh-1", dest="wh-2",
              lines=[{"sku": "FLT-B", "quantity": 3}]),
        _said(AMBIGUOUS, "tr-U", "transfer", "U", source="wh-2", dest="wh-1",
              lines=[{"sku": "FLT-C", "quantity": 2}]),
        _said(OK, "rc-T1", "receive", "T", receipt_id="rc-1",
              lines=[{"sku": "FLT-B", "quantity": 1}]),
        _said(AMBIGUOUS, "rc-T2", "receive", "T", receipt_id="rc-2",
              lines=[{"sku": "FLT-B", "quantity": 1}]),
        _said(REFUSED, "rc-T3", "receive", "T", receipt_id="rc-3",
              lines=[{"sku": "FLT-B", "quantity": 5}]),
        _said(AMBIGUOUS, "tc-U", "transfer_cancel", "U"),
    ]  # fmt: skip
    return db, History(ops)


def _level_from_ledger(db: Snapshot) -> None:
    sums = {(s, loc): [0, 0, 0] for s in SKUS for loc in LOCATIONS}
    for m in db["movements"]:
        sums[(m["sku"], m["location"])][0] += m["on_hand_delta"]
        sums[(m["sku"], m["location"])][1] += m["reserved_delta"]
        sums[(m["sku"], m["location"])][2] += m["unavailable_delta"]
    db["levels"] = [{"sku": s, "location": loc, "on_hand": oh, "reserved": r, "unavailable": u,
                     "safety_stock": 0} for (s, loc), (oh, r, u) in sums.items()]  # fmt: skip


INITIAL = {sku: INITIAL_ON_HAND * len(LOCATIONS) for sku in SKUS}


def test_checker_is_silent_when_history_and_database_agree() -> None:
    db, history = _world()
    assert check_history(db, history, INITIAL) == []


def test_a_return_line_stored_in_parts_is_what_was_asked() -> None:
    """The service may store one asked line as several (one per location the units were
    fulfilled from): the units per SKU and disposition are what was asked."""
    db, history = _world()
    db["return_lines"][1]["disposition"] = "restock"  # r-1: 2 restocked units, in two lines
    damaged = next(m for m in db["movements"] if m["reason"] == "returned_damaged")
    damaged.update(reason="returned", unavailable_delta=0)
    _level_from_ledger(db)
    db["levels"][0]["safety_stock"] = 2
    _op(history, "ret-1").detail["lines"] = [
        {"sku": "FLT-A", "quantity": 2, "disposition": "restock"}
    ]
    assert check_history(db, history, INITIAL) == []
    _op(history, "ret-1").detail["lines"] = [
        {"sku": "FLT-A", "quantity": 2, "disposition": "damaged"}
    ]
    assert [v["check"] for v in check_history(db, history, INITIAL)] == ["return_differs"]


def _op(history: History, op_id: str) -> Op:
    return next(o for o in history.ops if o.id == op_id)


def _order(db: Snapshot, oid: str) -> Row:
    return next(r for r in db["orders"] if r["id"] == oid)


def _twice(db: Snapshot, h: History) -> None:
    db["movements"].append(_move("FLT-C", "wh-2", 5, 0, "received", reference="adj-ok"))
    _level_from_ledger(db)


def _lost_unit(db: Snapshot, h: History) -> None:
    db["levels"][0]["on_hand"] -= 1


def _unasked_release(db: Snapshot, h: History) -> None:
    h.ops.remove(_op(h, "c-B"))


def _abandoned(db: Snapshot, h: History) -> None:
    _order(db, "B")["cancel_reason"] = "abandoned"


def _expired_after_commit(db: Snapshot, h: History) -> None:
    db["logs"].append({"id": 99, "order_id": "A", "action": "EXPIRED", "actor": "system:x"})


def _restored_twice(db: Snapshot, h: History) -> None:
    db["movements"].append(_move("FLT-B", "wh-2", 0, -1, "release", order_id="B",
                                 reservation_id=3))  # fmt: skip


def _cancel_lost(db: Snapshot, h: History) -> None:
    _op(h, "c-A").outcome = OK


def _payment_lost(db: Snapshot, h: History) -> None:
    _order(db, "A")["payment_id"] = "pi_other"


def _order_missing(db: Snapshot, h: History) -> None:
    h.ops.append(Op("p-C", "place", 0, "C", 9, outcome=OK, detail={"lines": []}))


def _phantom_order(db: Snapshot, h: History) -> None:
    h.ops.remove(_op(h, "p-B"))


def _shipped_unasked(db: Snapshot, h: History) -> None:
    h.ops.remove(_op(h, "sh-A"))


def _refused_applied(db: Snapshot, h: History) -> None:
    _op(h, "adj-ok").outcome = REFUSED


def _acknowledged_missing(db: Snapshot, h: History) -> None:
    _op(h, "adj-maybe-not").outcome = OK


def _unavailable_twice(db: Snapshot, h: History) -> None:
    db["movements"].append(_move("FLT-A", "wh-2", 0, 0, "quality_control", reference="un-ok",
                                 unavailable_delta=2))  # fmt: skip
    _level_from_ledger(db)


def _write_off_differs(db: Snapshot, h: History) -> None:
    _op(h, "wo-ok").detail["unavailable"] = 0  # asked as an on_hand-only shrinkage


def _safety_stock_lost(db: Snapshot, h: History) -> None:
    db["levels"][0]["safety_stock"] = 1  # the refused PUT's value


def _return_twice(db: Snapshot, h: History) -> None:
    db["movements"].append(_move("FLT-A", "wh-1", 1, 0, "returned", order_id="A",
                                 reference="r-1"))  # fmt: skip
    _level_from_ledger(db)


def _refused_return_applied(db: Snapshot, h: History) -> None:
    _op(h, "ret-1").outcome = REFUSED


def _return_missing(db: Snapshot, h: History) -> None:
    _op(h, "ret-2").outcome = OK


def _returned_beyond(db: Snapshot, h: History) -> None:
    db["reservations"][0]["quantity"] = 1  # A fulfilled 1 unit, 2 came back


def _receipt_twice(db: Snapshot, h: History) -> None:
    db["movements"].append(_move("FLT-B", "wh-2", 1, 0, "transfer_in", reference="T"))
    _level_from_ledger(db)


def _receipt_missing(db: Snapshot, h: History) -> None:
    _op(h, "rc-T3").outcome = OK


def _refused_receipt_applied(db: Snapshot, h: History) -> None:
    _op(h, "rc-T2").outcome = REFUSED


def _in_transit_lost(db: Snapshot, h: History) -> None:
    row = db["transfer_lines"][0]
    row["cancelled"], row["in_transit"] = 1, 0  # the last unit vanished on the road


def _transfer_cancel_lost(db: Snapshot, h: History) -> None:
    _op(h, "tc-U").outcome = OK
    db["transfers"][1]["status"] = "in_transit"


def _cancelled_unasked(db: Snapshot, h: History) -> None:
    h.ops.remove(_op(h, "tc-U"))


def _phantom_transfer(db: Snapshot, h: History) -> None:
    h.ops.remove(_op(h, "tr-U"))


@pytest.mark.parametrize(
    ("defect", "check"),
    [
        (_unavailable_twice, "adjustment_applied_twice"),
        (_write_off_differs, "adjustment_differs"),
        (_safety_stock_lost, "safety_stock_lost"),
        (_return_twice, "return_applied_once"),
        (_return_twice, "stock_conserved"),
        (_refused_return_applied, "refused_return_applied"),
        (_return_missing, "acknowledged_return_missing"),
        (_returned_beyond, "returned_beyond_fulfilled"),
        (_receipt_twice, "transfer_ledger_differs"),
        (_receipt_twice, "stock_conserved"),
        (_receipt_missing, "acknowledged_receipt_missing"),
        (_refused_receipt_applied, "refused_receipt_applied"),
        (_in_transit_lost, "stock_conserved"),
        (_in_transit_lost, "transfer_cancelled_unasked"),
        (_transfer_cancel_lost, "acknowledged_transfer_cancel_lost"),
        (_cancelled_unasked, "transfer_cancelled_unasked"),
        (_phantom_transfer, "transfer_without_request"),
        (_twice, "adjustment_applied_twice"),
        (_lost_unit, "stock_conserved"),
        (_lost_unit, "ledger_sums_equal_levels"),
        (_unasked_release, "paid_order_released_unasked"),
        (_abandoned, "paid_order_abandoned"),
        (_expired_after_commit, "paid_order_expired"),
        (_restored_twice, "restored_at_most_once"),
        (_cancel_lost, "acknowledged_cancel_lost"),
        (_payment_lost, "acknowledged_payment_lost"),
        (_order_missing, "acknowledged_order_missing"),
        (_phantom_order, "order_without_request"),
        (_shipped_unasked, "fulfilled_without_ship"),
        (_refused_applied, "refused_adjustment_applied"),
        (_acknowledged_missing, "acknowledged_adjustment_missing"),
    ],
)
def test_checker_finds_each_defect(defect: Callable[[Snapshot, History], None], check: str) -> None:
    db, history = _world()
    defect(db, history)
    found = Counter(v["check"] for v in check_history(db, history, INITIAL))
    assert found[check] >= 1, found


# ------------------------------------------------------------ a short run


@pytest.mark.faults
def test_short_fault_run_finds_no_violation(servers: Servers, tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    env = dict(os.environ, STOCKGUARD_DATABASE_URL=servers.admin_url)
    args = [sys.executable, "-m", "faults", "--seed", str(SEED), "--duration", "35",
            "--clients", "6", "--out", str(out)]  # fmt: skip
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    doc = json.loads(out.read_text())

    faults = doc["faults"]["by_kind"]
    assert {k for k, f in faults.items() if f["injected"] >= 1} == set(FAULT_KINDS), faults
    acked = doc["operations"]["by_kind"]
    assert {k for k, c in acked.items() if c[OK] >= 1} == set(OP_KINDS), acked
    assert doc["operations"]["total"] >= 200, doc["throughput"]

    assert doc["violations"] == [], f"seed {SEED}:\n{done.stdout}"
    assert doc["ok"] is True
    assert done.returncode == 0
    assert all(f["recover_s_max"] is not None for f in faults.values()), faults
