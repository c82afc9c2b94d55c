"""The end of a run: let the workers settle, then check the history against the database.

Settling (faults stopped, every process up): wait until no pending order has an overdue
reservation, no abandonable order is left, no paid order waits for recovery and no SKU is
marked dirty, then until the cache reconciler has left Redis equal to PostgreSQL. Not
settling within its deadline is a violation (a worker stuck or spinning), and so is a
service process that burns more than half a CPU while there is nothing to do.

Then, over one snapshot of the database and the history:

- ``GET /v1/admin/verify`` is clean; every level's ledger sums equal the level;
- Redis equals PostgreSQL (``POST /v1/admin/cache/reconcile`` with ``repair: false``);
- per SKU, stock is conserved: Σ on_hand = initial + applied adjustments - fulfilled
  units, where every adjustment ledger row names its operation (``reference``) and an
  acknowledged adjustment was applied exactly once, a refused one never and an
  ambiguous one at most once;
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
import time
from collections import Counter, defaultdict
from typing import Any

import httpx

from bench.driver import cpu_seconds
from faults.cluster import Cluster, connect
from faults.history import AMBIGUOUS, OK, REFUSED, History, Op
from faults.workload import SEED_REFERENCE, SKUS

__all__ = ["Row", "Snapshot", "check", "check_history", "settle", "snapshot"]

ADJUSTMENT_REASONS = ("received", "shrinkage", "damaged")
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
        "movements": "SELECT id, sku, location, on_hand_delta, reserved_delta, reason, "
        "order_id, reservation_id, actor, reference FROM stock_movements ORDER BY id",
        "logs": "SELECT id, order_id, action, actor FROM order_inventory_logs ORDER BY id",
        "levels": "SELECT sku, location, on_hand, reserved FROM inventory_levels",
    }
    conn = await connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return {
                name: [dict(r.items()) for r in await conn.fetch(sql)]
                for name, sql in queries.items()
            }
    finally:
        await conn.close()


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
    ]


def _check_levels(db: Snapshot, history: History, initial: dict[str, int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ledger: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for m in db["movements"]:
        ledger[(m["sku"], m["location"])][0] += m["on_hand_delta"]
        ledger[(m["sku"], m["location"])][1] += m["reserved_delta"]
    on_hand: Counter[str] = Counter()
    for lv in db["levels"]:
        on_hand[lv["sku"]] += lv["on_hand"]
        if ledger[(lv["sku"], lv["location"])] != [lv["on_hand"], lv["reserved"]]:
            out.append(_violation("ledger_sums_equal_levels", sku=lv["sku"],
                                  location=lv["location"], level=[lv["on_hand"], lv["reserved"]],
                                  ledger=ledger[(lv["sku"], lv["location"])]))  # fmt: skip
    # Adjustments: each ledger row names its operation; applied once at most.
    adjust_ops = {o.id: o for o in history.of("adjust")}
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
        if (m["sku"], m["location"], m["on_hand_delta"]) != (
            op.target, op.detail["location"], op.detail["delta"]
        ):  # fmt: skip
            out.append(_violation("adjustment_differs", op=ref, row=dict(m.items())))
    for op in history.of("adjust", OK):
        if op.id not in applied:
            out.append(_violation("acknowledged_adjustment_missing", op=op.id,
                                  sku=op.target, delta=op.detail["delta"]))  # fmt: skip
    # Conservation: initial + applied adjustments - fulfilled units = on_hand now.
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
    for sku in SKUS:
        expected = initial[sku] + adjusted[sku] - fulfilled[sku]
        if on_hand[sku] != expected or seeded[sku] != initial[sku]:
            out.append(_violation("stock_conserved", sku=sku, on_hand=on_hand[sku],
                                  initial=initial[sku], seeded=seeded[sku],
                                  adjusted=adjusted[sku], fulfilled=fulfilled[sku],
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
