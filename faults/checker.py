"""The end of a run: let the workers settle, then check the history against the database.

Settling (faults stopped, every process up): wait until no pending order has an overdue
reservation, no abandonable order is left, no paid order waits for recovery and no SKU is
marked dirty, then until the cache reconciler has left Redis equal to PostgreSQL. Not
settling within its deadline is a violation (a worker stuck or spinning), and so is a
service process that burns more than half a CPU while there is nothing to do.

Then, over one snapshot of the database and the history:

- ``GET /v1/admin/verify`` is clean; every level's ledger sums equal the level;
- Redis equals PostgreSQL (``POST /v1/admin/cache/reconcile`` with ``repair: false``);
- per SKU, stock is conserved: Σ on_hand + Σ units in transit = initial + applied
  adjustments - fulfilled units + returned units, where every adjustment ledger row
  (on_hand, unavailable moves, write-offs) names its operation (``reference``) and an
  acknowledged adjustment was applied exactly once, a refused one never and an
  ambiguous one at most once; returns and transfers are decided from their tables;
- a level's safety stock is one a PUT asked for (the last acknowledged, or one that
  may have landed after it);
- each return is applied once (its ledger rows are its lines), only if asked for, with
  the lines asked, and an order's returned units never exceed its fulfilled ones;
- each transfer exists only if asked for, with its lines; each receipt is applied once
  (the receipts add up to each line's ``received`` and to its ``transfer_in`` rows),
  only if asked for; units go back on cancel only if a cancel was asked for, and every
  acknowledged receipt and cancel is there;
- no reservation gave its units back twice (one ``release``/``expire`` row at most);
- every acknowledged order exists with its lines, and no order exists that nobody
  placed; every acknowledged cancel left its order cancelled, every acknowledged delete
  left it deleted, every payment acknowledged with its order left its payment proof,
  every acknowledged ship left it shipped with all its units fulfilled, and nothing
  was fulfilled without a ship request;
- no paid order's stock was released without a cancel or delete of it in the history
  (acknowledged or ambiguous), none was cancelled as abandoned, and none had a
  reservation expire after its stock was committed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from typing import Any

import httpx

from bench.driver import cpu_seconds
from faults.cluster import Cluster, connect
from faults.history import AMBIGUOUS, OK, REFUSED, History, Op
from faults.workload import SEED_REFERENCE, SKUS

__all__ = ["Row", "Snapshot", "check", "check_history", "settle", "snapshot"]

ADJUSTMENT_REASONS = ("received", "shrinkage", "damaged", "quality_control", "restock",
                      "correction")  # fmt: skip
ADJUSTMENT_KINDS = ("adjust", "unavailable", "write_off")
RETURN_REASONS = ("returned", "returned_damaged")
TRANSFER_REASONS = ("transfer_out", "transfer_in", "transfer_cancelled")
GIVE_BACK = ("release", "expire")
MAYBE = (OK, AMBIGUOUS)
Row = dict[str, Any]
Snapshot = dict[str, list[Row]]  # table -> rows
IDLE_WINDOW_S = 3.0
IDLE_CPU_MAX = 0.5  # of one CPU: the worker loops sleep between passes

_UNSETTLED_SQL = """
SELECT
  (SELECT count(DISTINCT r.order_id) FROM reservations r JOIN orders o ON o.id = r.order_id
    WHERE r.status = 'reserved' AND o.status = 'pending' AND o.deleted_at IS NULL
      AND r.expires_at < now() - interval '2 seconds') AS overdue_orders,
  (SELECT count(*) FROM orders o WHERE o.status = 'pending' AND o.deleted_at IS NULL
      AND o.created_at + make_interval(secs => o.reservation_ttl_seconds + $1 + 3) < now()
      AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.order_id = o.id
                      AND r.status IN ('reserved', 'committed'))) AS abandonable_orders,
  (SELECT count(DISTINCT o.id) FROM orders o JOIN reservations r ON r.order_id = o.id
    WHERE o.status = 'paid' AND r.status = 'reserved') AS paid_uncommitted_orders,
  (SELECT count(*) FROM cache_dirty) AS dirty_skus
"""


def _violation(check: str, **detail: Any) -> dict[str, Any]:
    return {"check": check, **detail}


async def settle(
    cluster: Cluster, abandon_after_s: int, patience: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Wait for the workers, then for cache parity; returns (violations, what was seen)."""
    t0 = time.monotonic()
    seen: dict[str, Any] = {}
    violations: list[dict[str, Any]] = []
    conn = await connect(cluster.database_url)
    try:
        while True:
            row = await conn.fetchrow(_UNSETTLED_SQL, float(abandon_after_s))
            assert row is not None
            seen = dict(row.items())
            if not any(seen.values()):
                break
            if time.monotonic() - t0 > patience:
                violations.append(
                    _violation(
                        "workers_settled",
                        detail=f"the workers did not settle in {patience:.0f} s",
                        left=seen,
                    )
                )
                break
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    seen["workers_settled_s"] = round(time.monotonic() - t0, 2)
    seen["idle_cpu"] = await _idle_cpu(cluster)
    for name, share in seen["idle_cpu"].items():
        if share > IDLE_CPU_MAX:
            violations.append(
                _violation(
                    "idle_when_idle",
                    process=name,
                    detail=f"used {share:.0%} of a CPU over {IDLE_WINDOW_S:.0f} s with no "
                    "traffic and nothing left to do (a loop spinning?)",
                )
            )
    t1 = time.monotonic()
    drifted: list[Any] = []
    async with _admin(cluster) as h:
        while True:
            r = await h.post("/v1/admin/cache/reconcile", json={"repair": False})
            r.raise_for_status()
            drifted = r.json()["drifted"]
            if not drifted or time.monotonic() - t1 > patience:
                break
            await asyncio.sleep(0.5)
    seen["cache_parity_s"] = round(time.monotonic() - t1, 2)
    if drifted:
        violations.append(
            _violation(
                "redis_equals_postgres",
                detail=f"{len(drifted)} SKU(s) still drifted {patience:.0f} s after the "
                "faults stopped (the reconciler did not repair them)",
                drifted=drifted,
            )
        )
    return violations, seen


async def _idle_cpu(cluster: Cluster) -> dict[str, float]:
    """Each service process's share of one CPU over IDLE_WINDOW_S of no traffic."""
    procs = [*cluster.apis, cluster.worker]
    before = {p.name: cpu_seconds(p.pid) for p in procs}
    await asyncio.sleep(IDLE_WINDOW_S)
    return {p.name: round((cpu_seconds(p.pid) - before[p.name]) / IDLE_WINDOW_S, 3) for p in procs}


def _admin(cluster: Cluster) -> httpx.AsyncClient:
    base = cluster.apis[0].base_url
    assert base is not None
    headers = {"Authorization": f"Bearer {cluster.admin_key}"}
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=30)


async def snapshot(database_url: str) -> Snapshot:
    """The rows the checks read, from one repeatable-read transaction."""
    queries = {
        "orders": "SELECT id, status, payment_provider, payment_id, deleted_at, cancel_reason "
        "FROM orders",
        "lines": "SELECT order_id, sku, quantity FROM order_lines",
        "reservations": "SELECT id, order_id, sku, location, quantity, status FROM reservations",
        "movements": "SELECT id, sku, location, on_hand_delta, reserved_delta, "
        "unavailable_delta, reason, order_id, reservation_id, actor, reference "
        "FROM stock_movements ORDER BY id",
        "logs": "SELECT id, order_id, action, actor FROM order_inventory_logs ORDER BY id",
        "levels": "SELECT sku, location, on_hand, reserved, unavailable, safety_stock "
        "FROM inventory_levels",
        "returns": "SELECT return_id, order_id FROM order_returns",
        "return_lines": "SELECT return_id, order_id, sku, location, quantity, disposition "
        "FROM order_return_lines",
        "transfers": "SELECT id, from_location, to_location, status FROM transfers",
        "transfer_lines": "SELECT transfer_id, sku, quantity, received, cancelled, in_transit "
        "FROM transfer_lines",
        "receipts": "SELECT transfer_id, receipt_id, lines::text AS lines FROM transfer_receipts",
    }
    conn = await connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            db = {
                name: [dict(r.items()) for r in await conn.fetch(sql)]
                for name, sql in queries.items()
            }
    finally:
        await conn.close()
    for r in db["receipts"]:
        r["lines"] = [list(pair) for pair in json.loads(r["lines"])]
    return db


async def check(
    cluster: Cluster, history: History, initial: dict[str, int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every check of the module docstring; returns (violations, figures)."""
    violations: list[dict[str, Any]] = []
    async with _admin(cluster) as h:
        answer = await h.get("/v1/admin/verify")
        answer.raise_for_status()
        verified = answer.json()
    for v in verified["violations"]:
        violations.append(_violation("verify", **v))
    db = await snapshot(cluster.database_url)
    violations += check_history(db, history, initial)
    figures = {
        "orders": len(db["orders"]),
        "orders_by_status": dict(Counter(r["status"] for r in db["orders"])),
        "orders_deleted": sum(1 for r in db["orders"] if r["deleted_at"] is not None),
        "reservations_by_status": dict(Counter(r["status"] for r in db["reservations"])),
        "movements": len(db["movements"]),
        "returns": len(db["returns"]),
        "returned_units": sum(r["quantity"] for r in db["return_lines"]),
        "transfers_by_status": dict(Counter(r["status"] for r in db["transfers"])),
        "transfer_receipts": len(db["receipts"]),
        "in_transit_units": sum(r["in_transit"] for r in db["transfer_lines"]),
        "inventory_logs": len(db["logs"]),
        "verify_violations": len(verified["violations"]),
    }
    return violations, figures


def check_history(db: Snapshot, history: History, initial: dict[str, int]) -> list[Row]:
    """The checks of the history against the database (all but verify and parity)."""
    orders = {r["id"]: r for r in db["orders"]}
    lines: dict[str, Counter[str]] = defaultdict(Counter)
    for r in db["lines"]:
        lines[r["order_id"]][r["sku"]] += r["quantity"]
    return [
        *_check_levels(db, history, initial),
        *_check_orders(db, orders, lines, history),
        *_check_paid_releases(db, orders, history),
        *_check_safety_stock(db, history),
        *_check_returns(db, history),
        *_check_transfers(db, history),
    ]


def _check_levels(db: Snapshot, history: History, initial: dict[str, int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ledger: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for m in db["movements"]:
        sums = ledger[(m["sku"], m["location"])]
        sums[0] += m["on_hand_delta"]
        sums[1] += m["reserved_delta"]
        sums[2] += m.get("unavailable_delta", 0)
    on_hand: Counter[str] = Counter()
    for lv in db["levels"]:
        on_hand[lv["sku"]] += lv["on_hand"]
        level = [lv["on_hand"], lv["reserved"], lv.get("unavailable", 0)]
        if ledger[(lv["sku"], lv["location"])] != level:
            out.append(_violation("ledger_sums_equal_levels", sku=lv["sku"],
                                  location=lv["location"], level=level,
                                  ledger=ledger[(lv["sku"], lv["location"])]))  # fmt: skip
    # Adjustments (on_hand, unavailable moves, write-offs): each ledger row names its
    # operation; applied once at most.
    adjust_ops = {o.id: o for k in ADJUSTMENT_KINDS for o in history.of(k)}
    applied: Snapshot = defaultdict(list)
    for m in db["movements"]:
        if m["reason"] in ADJUSTMENT_REASONS and m["reference"] != SEED_REFERENCE:
            applied[m["reference"]].append(m)
    for ref, rows in applied.items():
        op = adjust_ops.get(ref)
        if op is None:
            out.append(_violation("adjustment_without_request", reference=ref, rows=len(rows)))
            continue
        if len(rows) > 1:
            out.append(_violation("adjustment_applied_twice", op=ref, outcome=op.outcome,
                                  rows=len(rows), delta=op.detail["delta"]))  # fmt: skip
        if op.outcome == REFUSED:
            out.append(_violation("refused_adjustment_applied", op=ref, code=op.code))
        m = rows[0]
        got = (m["sku"], m["location"], m["on_hand_delta"], m.get("unavailable_delta", 0))
        want = (op.target, op.detail["location"], op.detail["delta"],
                op.detail.get("unavailable", 0))  # fmt: skip
        if got != want:
            out.append(_violation("adjustment_differs", op=ref, kind=op.kind,
                                  row=dict(m.items())))  # fmt: skip
    for op in (o for k in ADJUSTMENT_KINDS for o in history.of(k, OK)):
        if op.id not in applied:
            out.append(_violation("acknowledged_adjustment_missing", op=op.id, kind=op.kind,
                                  sku=op.target, delta=op.detail["delta"]))  # fmt: skip
    # Conservation: Σ on_hand + Σ in transit = initial + applied adjustments - fulfilled
    # units + returned units (the returns' own rows, checked against the ledger below).
    seeded: Counter[str] = Counter()
    adjusted: Counter[str] = Counter()
    for m in db["movements"]:
        if m["reason"] in ADJUSTMENT_REASONS:
            seed = m["reference"] == SEED_REFERENCE
            (seeded if seed else adjusted)[m["sku"]] += m["on_hand_delta"]
    fulfilled: Counter[str] = Counter()
    for r in db["reservations"]:
        if r["status"] == "fulfilled":
            fulfilled[r["sku"]] += r["quantity"]
    returned: Counter[str] = Counter()
    for r in db.get("return_lines", []):
        returned[r["sku"]] += r["quantity"]
    in_transit: Counter[str] = Counter()
    for r in db.get("transfer_lines", []):
        in_transit[r["sku"]] += r["in_transit"]
    for sku in SKUS:
        expected = initial[sku] + adjusted[sku] - fulfilled[sku] + returned[sku]
        held = on_hand[sku] + in_transit[sku]
        if held != expected or seeded[sku] != initial[sku]:
            out.append(_violation("stock_conserved", sku=sku, on_hand=on_hand[sku],
                                  in_transit=in_transit[sku], initial=initial[sku],
                                  seeded=seeded[sku], adjusted=adjusted[sku],
                                  fulfilled=fulfilled[sku], returned=returned[sku],
                                  expected=expected))  # fmt: skip
    # Restore at most once: one give-back row per reservation.
    give_backs = Counter(m["reservation_id"] for m in db["movements"] if m["reason"] in GIVE_BACK)
    for rid, n in give_backs.items():
        if n > 1:
            out.append(_violation("restored_at_most_once", reservation_id=rid, give_backs=n))
    return out


def _check_orders(
    db: Snapshot,
    orders: dict[str, Row],
    lines: dict[str, Counter[str]],
    history: History,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    placed = {o.target: o for o in history.of("place") if o.outcome in MAYBE}
    for op in history.of("place", OK):
        want = Counter[str]()
        for ln in op.detail["lines"]:
            want[ln["sku"]] += ln["quantity"]
        if op.target not in orders:
            out.append(_violation("acknowledged_order_missing", order=op.target, op=op.id))
        elif lines[op.target] != want:
            out.append(_violation("order_lines_differ", order=op.target,
                                  placed=dict(want), stored=dict(lines[op.target])))  # fmt: skip
    for oid in orders:
        if oid not in placed:
            out.append(_violation("order_without_request", order=oid))

    def status_after(kind: str, ok: Any, check: str) -> None:
        for op in history.of(kind, OK):
            row = orders.get(op.target)
            if row is None or not ok(row):
                out.append(_violation(check, order=op.target, op=op.id,
                                      status=row and row["status"],
                                      deleted=bool(row and row["deleted_at"])))  # fmt: skip

    status_after("cancel", lambda r: r["status"] == "cancelled", "acknowledged_cancel_lost")
    status_after("delete", lambda r: r["deleted_at"] is not None, "acknowledged_delete_lost")
    status_after("ship", lambda r: r["status"] in ("shipped", "delivered"),
                 "acknowledged_ship_lost")  # fmt: skip
    for op in history.of("pay", OK):
        if op.code == "replayed":
            continue
        row = orders.get(op.target)
        proof = (op.detail["provider"], op.detail["payment_id"])
        if row is None or (row["payment_provider"], row["payment_id"]) != proof:
            stored = row and [row["payment_provider"], row["payment_id"]]
            out.append(_violation("acknowledged_payment_lost", order=op.target, op=op.id,
                                  via=op.detail["via"], payment=proof, stored=stored))  # fmt: skip
    fulfilled: Counter[str] = Counter()
    for r in db["reservations"]:
        if r["status"] == "fulfilled":
            fulfilled[r["order_id"]] += r["quantity"]
    shipped_by = {o.target for o in history.of("ship") if o.outcome in MAYBE}
    for oid, n in fulfilled.items():
        if oid not in shipped_by:
            out.append(_violation("fulfilled_without_ship", order=oid, units=n))
        elif n != sum(lines[oid].values()):
            out.append(_violation("fulfilled_units_differ", order=oid, fulfilled=n,
                                  ordered=sum(lines[oid].values())))  # fmt: skip
    return out


def _check_paid_releases(
    db: Snapshot, orders: dict[str, Row], history: History
) -> list[dict[str, Any]]:
    """Invariant 11: only an explicit cancel or delete releases a paid order's stock."""
    out: list[dict[str, Any]] = []
    paid = {oid for oid, r in orders.items() if r["payment_id"] is not None}
    asked: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops:
        if op.kind in ("cancel", "delete") and op.outcome in MAYBE:
            asked[op.target].append(op)
    for oid in sorted(paid):
        row = orders[oid]
        if row["cancel_reason"] == "abandoned":
            out.append(_violation("paid_order_abandoned", order=oid, status=row["status"]))
    released: Snapshot = defaultdict(list)
    for m in db["movements"]:
        if m["reason"] == "release" and m["order_id"] in paid:
            released[m["order_id"]].append(m)
    for oid, rows in released.items():
        if not asked.get(oid):
            out.append(_violation("paid_order_released_unasked", order=oid,
                                  units=-sum(m["reserved_delta"] for m in rows),
                                  actors=sorted({m["actor"] for m in rows})))  # fmt: skip
    committed_at: dict[str, int] = {}
    for lg in db["logs"]:
        oid = lg["order_id"]
        if oid not in paid:
            continue
        if lg["action"] == "COMMITTED":
            committed_at.setdefault(oid, lg["id"])
        elif lg["action"] == "EXPIRED" and oid in committed_at:
            out.append(_violation("paid_order_expired", order=oid, log_id=lg["id"],
                                  actor=lg["actor"]))  # fmt: skip
    return out


def _check_safety_stock(db: Snapshot, history: History) -> list[dict[str, Any]]:
    """A level's safety stock is the last acknowledged PUT's, or one of a PUT that may have
    run after it (overlapping it, or ambiguous); 0 if no PUT was acknowledged."""
    out: list[dict[str, Any]] = []
    puts: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in history.of("safety_stock"):
        if op.outcome in MAYBE:
            puts[(op.target, op.detail["location"])].append(op)
    for lv in db["levels"]:
        ops = puts.get((lv["sku"], lv["location"]), [])
        acked = [o for o in ops if o.outcome == OK]
        last = max(acked, key=lambda o: o.end, default=None)
        if last is None:
            allowed = {0} | {o.detail["safety_stock"] for o in ops}
        else:
            allowed = {last.detail["safety_stock"]} | {
                o.detail["safety_stock"]
                for o in ops
                if o is not last and (o.outcome == AMBIGUOUS or o.end > last.start)
            }
        if lv.get("safety_stock", 0) not in allowed:
            out.append(_violation("safety_stock_lost", sku=lv["sku"], location=lv["location"],
                                  safety_stock=lv.get("safety_stock", 0),
                                  allowed=sorted(allowed),
                                  last_acknowledged=last and last.id))  # fmt: skip
    return out


def _check_returns(db: Snapshot, history: History) -> list[dict[str, Any]]:
    """Each return applied once (its ledger rows are its lines), only if asked, never
    beyond what its order fulfilled."""
    out: list[dict[str, Any]] = []
    ops = {o.detail["return_id"]: o for o in history.of("return")}
    stored = {r["return_id"]: r for r in db.get("returns", [])}
    lines: dict[str, Counter[tuple[str, str, int, int]]] = defaultdict(Counter)
    # Units per (sku, disposition): a line is stored once per location it went back to
    # (its units' fulfilment locations), so one asked line may be stored as several.
    asked: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    per_order: dict[tuple[str, str], int] = defaultdict(int)
    for r in db.get("return_lines", []):
        damaged = r["quantity"] if r["disposition"] == "damaged" else 0
        lines[r["return_id"]][(r["sku"], r["location"], r["quantity"], damaged)] += 1
        asked[r["return_id"]][(r["sku"], r["disposition"])] += r["quantity"]
        per_order[(r["order_id"], r["sku"])] += r["quantity"]
    ledger: dict[str, Counter[tuple[str, str, int, int]]] = defaultdict(Counter)
    for m in db["movements"]:
        if m["reason"] in RETURN_REASONS:
            key = (m["sku"], m["location"], m["on_hand_delta"], m.get("unavailable_delta", 0))
            ledger[m["reference"]][key] += 1
    for rid in sorted(set(ledger) | set(stored)):
        if ledger[rid] != lines[rid]:
            out.append(_violation("return_applied_once", return_id=rid,
                                  ledger_rows=sum(ledger[rid].values()),
                                  return_lines=sum(lines[rid].values()),
                                  ledger=sorted(ledger[rid].elements()),
                                  lines=sorted(lines[rid].elements())))  # fmt: skip
        op = ops.get(rid)
        if rid not in stored:
            continue
        if op is None or op.target != stored[rid]["order_id"]:
            out.append(_violation("return_without_request", return_id=rid,
                                  order=stored[rid]["order_id"]))  # fmt: skip
            continue
        if op.outcome == REFUSED:
            out.append(_violation("refused_return_applied", op=op.id, return_id=rid,
                                  code=op.code))  # fmt: skip
        want: Counter[tuple[str, str]] = Counter()
        for ln in op.detail["lines"]:
            want[(ln["sku"], ln["disposition"])] += ln["quantity"]
        if asked[rid] != want:
            out.append(_violation("return_differs", op=op.id, return_id=rid,
                                  asked=sorted(want.items()),
                                  stored=sorted(asked[rid].items())))  # fmt: skip
    for op in history.of("return", OK):
        if op.detail["return_id"] not in stored:
            out.append(_violation("acknowledged_return_missing", op=op.id, order=op.target,
                                  return_id=op.detail["return_id"]))  # fmt: skip
    fulfilled: Counter[tuple[str, str]] = Counter()
    for r in db["reservations"]:
        if r["status"] == "fulfilled":
            fulfilled[(r["order_id"], r["sku"])] += r["quantity"]
    for (oid, sku), n in sorted(per_order.items()):
        if n > fulfilled[(oid, sku)]:
            out.append(_violation("returned_beyond_fulfilled", order=oid, sku=sku,
                                  returned=n, fulfilled=fulfilled[(oid, sku)]))  # fmt: skip
    return out


def _check_transfers(db: Snapshot, history: History) -> list[dict[str, Any]]:
    """Transfers exist only if asked, with their lines; each receipt is applied once (the
    receipts add up to each line's ``received`` and to its ``transfer_in`` rows); the ledger
    moved each line's units out of ``from``, into ``to`` and back on cancel."""
    out: list[dict[str, Any]] = []
    created = {o.target: o for o in history.of("transfer")}
    stored = {t["id"]: t for t in db.get("transfers", [])}
    tlines: dict[str, dict[str, Row]] = defaultdict(dict)
    for ln in db.get("transfer_lines", []):
        tlines[ln["transfer_id"]][ln["sku"]] = ln
    for tid, t in sorted(stored.items()):
        op = created.get(tid)
        if op is None:
            out.append(_violation("transfer_without_request", transfer=tid))
            continue
        if op.outcome == REFUSED:
            out.append(_violation("refused_transfer_applied", op=op.id, code=op.code))
        want = {ln["sku"]: ln["quantity"] for ln in op.detail["lines"]}
        got = {s: ln["quantity"] for s, ln in tlines[tid].items()}
        where = (t["from_location"], t["to_location"])
        if got != want or where != (op.detail["source"], op.detail["dest"]):
            out.append(_violation("transfer_differs", op=op.id, transfer=tid, asked=want,
                                  stored=got, locations=list(where)))  # fmt: skip
    for op in history.of("transfer", OK):
        if op.target not in stored:
            out.append(_violation("acknowledged_transfer_missing", op=op.id, transfer=op.target))
    # Receipts: one row per (transfer, receipt id), asked for, with the lines asked.
    receipt_ops = {(o.target, o.detail["receipt_id"]): o for o in history.of("receive")}
    receipts = {(r["transfer_id"], r["receipt_id"]): r for r in db.get("receipts", [])}
    received: Counter[tuple[str, str]] = Counter()
    for key, r in sorted(receipts.items()):
        for sku, q in r["lines"]:
            received[(key[0], sku)] += q
        op = receipt_ops.get(key)
        if op is None:
            out.append(_violation("receipt_without_request", transfer=key[0], receipt_id=key[1]))
            continue
        if op.outcome == REFUSED:
            out.append(_violation("refused_receipt_applied", op=op.id, code=op.code))
        asked_lines = sorted((ln["sku"], ln["quantity"]) for ln in op.detail["lines"])
        if sorted((sku, q) for sku, q in r["lines"]) != asked_lines:
            out.append(_violation("receipt_differs", op=op.id, asked=asked_lines,
                                  stored=r["lines"]))  # fmt: skip
    for op in history.of("receive", OK):
        if (op.target, op.detail["receipt_id"]) not in receipts:
            out.append(_violation("acknowledged_receipt_missing", op=op.id, transfer=op.target,
                                  receipt_id=op.detail["receipt_id"]))  # fmt: skip
    # The ledger: out of from (the whole line), into to (what was received), back to from
    # (what was cancelled), each row naming its transfer.
    moved: Counter[tuple[str, str, str, str]] = Counter()
    for m in db["movements"]:
        if m["reason"] in TRANSFER_REASONS:
            moved[(m["reference"], m["sku"], m["location"], m["reason"])] += m["on_hand_delta"]
    expected: Counter[tuple[str, str, str, str]] = Counter()
    for tid, t in stored.items():
        src, dst = t["from_location"], t["to_location"]
        for sku, ln in tlines[tid].items():
            expected[(tid, sku, src, "transfer_out")] -= ln["quantity"]
            expected[(tid, sku, dst, "transfer_in")] += ln["received"]
            expected[(tid, sku, src, "transfer_cancelled")] += ln["cancelled"]
            if ln["received"] != received[(tid, sku)]:
                out.append(_violation("receipt_applied_once", transfer=tid, sku=sku,
                                      line_received=ln["received"],
                                      receipts=received[(tid, sku)]))  # fmt: skip
            if ln["cancelled"] and not any(
                o.outcome in MAYBE for o in history.for_order(tid, "transfer_cancel")
            ):
                out.append(_violation("transfer_cancelled_unasked", transfer=tid, sku=sku,
                                      cancelled=ln["cancelled"]))  # fmt: skip
    for row_key in sorted(set(moved) | set(expected)):
        if moved[row_key] != expected[row_key]:
            tid, sku, loc, reason = row_key
            out.append(_violation("transfer_ledger_differs", transfer=tid, sku=sku,
                                  location=loc, reason=reason, ledger=moved[row_key],
                                  expected=expected[row_key]))  # fmt: skip
    for op in history.of("transfer_cancel", OK):
        row = stored.get(op.target)
        if row is None or row["status"] != "cancelled":
            out.append(_violation("acknowledged_transfer_cancel_lost", op=op.id,
                                  transfer=op.target, status=row and row["status"]))  # fmt: skip
    return out
