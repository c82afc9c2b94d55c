"""A hypothesis state machine: random operations against the real service (PostgreSQL and
Redis) and an in-memory model of what the service promises.

The model holds every level (per SKU and location: on hand, reserved, unavailable, safety
stock), which locations are active, every order's status, payment, deletion and
reservations, every return and where its units went, and every transfer's lines (received,
cancelled, so what is still in transit). Each operation is a pair: the real use
case, and a pure function that applies it to a model and predicts its answer. One at a
time, the answer must be the predicted one; several at once (on separate connections,
released together by a barrier), some serial order of them must explain every answer, and
the database must then equal the model that order produces. After every step: ``verify``
is clean, Redis equals PostgreSQL, and the ledger shows units conserved (per SKU, on hand
plus in transit moves only through adjustments, shipments and returns), no reservation
given back twice, no order restored twice, nothing released but by cancel or delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import itertools
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode
from stockguard.domain.errors import StockguardError
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue, orders, transfers
from stockguard.service.expiry import abandon_order, abandon_stale, expire_order
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.recovery import recover_order, recover_paid_uncommitted
from stockguard.service.returns import ReturnLine, ReturnRequest, record_return
from stockguard.service.uow import Backends
from stockguard.service.webhooks import PaymentEvent, handle_event, razorpay_event_id
from stockguard.store.db import connect_pool
from stockguard.store.orders import OrderRecord
from tests.conftest import Servers
from tests.helpers import assert_cache_parity, assert_invariants, make_overdue, mark_paid, race

LOCATIONS = ("a", "b")  # priorities 0 and 1
SKUS = ("x", "y", "z")
HELD = ("reserved", "committed")
ABANDON_AFTER = 60
# Distinct actors, so the ledger tells who gave stock back.
CANCEL_ACTOR, DELETE_ACTOR = "h:cancel", "h:delete"
ADJUST_REASON = "correction"
WRITE_OFF_REASON = "shrinkage"


# ---------------------------------------------------------------- the model


@dataclass
class MRes:
    line_no: int
    sku: str
    loc: str
    qty: int
    status: str = "reserved"
    overdue: bool = False

    def key(self) -> tuple[int, str, str, int, str, bool]:
        return (self.line_no, self.sku, self.loc, self.qty, self.status, self.overdue)


@dataclass
class MOrder:
    lines: list[tuple[str, int]]  # line i + 1
    res: list[MRes]
    status: str = "pending"
    payment: tuple[str, str] | None = None
    cancel_reason: str | None = None
    deleted: bool = False
    aged: bool = False  # created long before the abandonment window
    restores: int = 0  # cancels or deletes that gave stock back

    def missing(self) -> list[tuple[int, str, int]]:
        out = []
        for n, (sku, q) in enumerate(self.lines, 1):
            held = sum(
                r.qty
                for r in self.res
                if r.line_no == n and r.status in ("reserved", "committed", "fulfilled")
            )
            if held < q:
                out.append((n, sku, q - held))
        return out

    def fully_committed(self) -> bool:
        if any(r.status == "reserved" for r in self.res):
            return False
        return all(
            sum(
                r.qty for r in self.res if r.line_no == n and r.status in ("committed", "fulfilled")
            )
            >= q
            for n, (_, q) in enumerate(self.lines, 1)
        )


@dataclass
class MReturn:
    order: str
    content: tuple[Any, ...]  # what the request said: the same id with other content conflicts
    placed: list[tuple[str, str, int, str]]  # (sku, location, units, disposition)


@dataclass
class MTransfer:
    src: str
    dst: str
    content: tuple[Any, ...]
    lines: dict[str, list[int]]  # sku -> [quantity, received, cancelled]
    status: str = "in_transit"
    receipts: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)

    def in_transit(self, sku: str) -> int:
        q, got, back = self.lines[sku]
        return q - got - back


Level = tuple[str, str]
LevelState = tuple[int, int, int, int]  # on_hand, reserved, unavailable, safety_stock
State = tuple[
    dict[Level, LevelState],
    dict[str, bool],
    dict[str, tuple[Any, ...]],
    dict[str, tuple[Any, ...]],
    dict[str, tuple[Any, ...]],
]


@dataclass
class Model:
    on_hand: dict[Level, int] = field(default_factory=dict)
    reserved: dict[Level, int] = field(default_factory=dict)
    unavailable: dict[Level, int] = field(default_factory=dict)
    safety: dict[Level, int] = field(default_factory=dict)
    active: dict[str, bool] = field(default_factory=dict)
    orders: dict[str, MOrder] = field(default_factory=dict)
    payments: dict[tuple[str, str], str] = field(default_factory=dict)  # payment -> order
    inbox: set[tuple[str, str]] = field(default_factory=set)
    adjusted: dict[str, int] = field(default_factory=dict)  # per SKU: units adjusted in
    shipped: dict[str, int] = field(default_factory=dict)  # per SKU: units shipped out
    returned: dict[str, int] = field(default_factory=dict)  # per SKU: units returned
    returns: dict[str, MReturn] = field(default_factory=dict)
    transfers: dict[str, MTransfer] = field(default_factory=dict)

    def state(self) -> State:
        levels = {
            (s, loc): (
                self.on_hand.get((s, loc), 0),
                self.reserved.get((s, loc), 0),
                self.unavailable.get((s, loc), 0),
                self.safety.get((s, loc), 0),
            )
            for s in SKUS
            for loc in LOCATIONS
        }
        ords = {
            oid: (
                o.status,
                o.deleted,
                o.payment,
                o.cancel_reason,
                tuple(sorted(r.key() for r in o.res)),
            )
            for oid, o in self.orders.items()
        }
        rets = {rid: (r.order, tuple(sorted(r.placed))) for rid, r in self.returns.items()}
        moves = {
            tid: (t.src, t.dst, t.status, tuple(sorted((s, *v) for s, v in t.lines.items())))
            for tid, t in self.transfers.items()
        }
        return levels, dict(self.active), ords, rets, moves

    def in_transit(self, sku: str) -> int:
        return sum(t.in_transit(sku) for t in self.transfers.values() if sku in t.lines)

    def available(self, lv: Level) -> int:
        """What may be sold from a level: domain.model.available."""
        return max(
            0,
            self.on_hand.get(lv, 0)
            - self.reserved.get(lv, 0)
            - self.unavailable.get(lv, 0)
            - self.safety.get(lv, 0),
        )

    def _ensure(self, lv: Level) -> None:
        for d in (self.on_hand, self.reserved, self.unavailable, self.safety):
            d.setdefault(lv, 0)

    # -------------------------------------------------- stock

    def _allocate(self, lines: list[tuple[int, str, int]]) -> list[MRes] | None:
        """Each line whole from the first active location that can hold it, else split
        across active locations in priority order; None when any line is short."""
        free = {k: self.available(k) for k in self.on_hand}
        cands = [loc for loc in LOCATIONS if self.active[loc]]
        out: list[MRes] = []
        for n, sku, q in lines:
            whole = next((loc for loc in cands if free.get((sku, loc), 0) >= q), None)
            if whole is not None:
                free[(sku, whole)] -= q
                out.append(MRes(n, sku, whole, q))
                continue
            if sum(max(free.get((sku, loc), 0), 0) for loc in cands) < q:
                return None
            need = q
            for loc in cands:
                take = min(need, free.get((sku, loc), 0))
                if take > 0:
                    free[(sku, loc)] -= take
                    out.append(MRes(n, sku, loc, take))
                    need -= take
        return out

    def _hold(self, o: MOrder, new: list[MRes]) -> None:
        for r in new:
            self.reserved[(r.sku, r.loc)] += r.qty
        o.res.extend(new)

    def _give_back(self, o: MOrder, which: tuple[str, ...], to: str) -> int:
        units = 0
        for r in o.res:
            if r.status in which and (to != "expired" or r.overdue):
                r.status = to
                self.reserved[(r.sku, r.loc)] -= r.qty
                units += r.qty
        return units

    def _restore(self, o: MOrder) -> None:
        if self._give_back(o, HELD, "released"):
            o.restores += 1

    def _commit(self, o: MOrder) -> None:
        for r in o.res:
            if r.status == "reserved":
                r.status = "committed"

    def adjust(self, sku: str, loc: str, delta: int) -> str:
        lv = (sku, loc)
        new = self.on_hand.get(lv, 0) + delta
        if new < self.reserved.get(lv, 0) + self.unavailable.get(lv, 0):
            return "!InsufficientStock"
        self._ensure(lv)
        self.on_hand[lv] = new
        self.adjusted[sku] = self.adjusted.get(sku, 0) + delta
        return "ok"

    def make_unavailable(self, sku: str, loc: str, moved: int) -> str:
        """``unavailable_delta``: units between sellable and unavailable, on_hand unchanged."""
        lv = (sku, loc)
        sellable = self.on_hand.get(lv, 0) - self.reserved.get(lv, 0) - self.unavailable.get(lv, 0)
        if moved > sellable or -moved > self.unavailable.get(lv, 0):
            return "!InsufficientStock"
        self._ensure(lv)
        self.unavailable[lv] += moved
        return "ok"

    def write_off(self, sku: str, loc: str, delta: int) -> str:
        """``delta < 0`` from unavailable: on_hand and unavailable both drop."""
        lv = (sku, loc)
        if -delta > self.unavailable.get(lv, 0):
            return "!InsufficientStock"
        self.on_hand[lv] += delta
        self.unavailable[lv] += delta
        self.adjusted[sku] = self.adjusted.get(sku, 0) + delta
        return "ok"

    def set_safety(self, sku: str, loc: str, units: int) -> str:
        self._ensure((sku, loc))
        self.safety[(sku, loc)] = units
        return "ok"

    # -------------------------------------------------- returns

    def give_return(
        self, rid: str, oid: str, lines: list[tuple[str, int, str]], loc: str | None
    ) -> str:
        o = self.orders.get(oid)
        if o is None or o.deleted:
            return "!NotFound"
        content = (oid, tuple(lines), loc)
        if rid in self.returns:
            return "return:existing" if self.returns[rid].content == content else "!Conflict"
        if o.status not in ("shipped", "delivered"):
            return "!InvalidTransition"
        room: dict[Level, int] = {}
        for r in o.res:
            if r.status == "fulfilled":
                room[(r.sku, r.loc)] = room.get((r.sku, r.loc), 0) + r.qty
        for ret in self.returns.values():
            if ret.order == oid:
                for s, at, q, _ in ret.placed:
                    room[(s, at)] = room.get((s, at), 0) - q
        for s, q, _ in lines:
            if q > sum(v for (k, _), v in room.items() if k == s):
                return "!ReturnExceedsFulfilled"
        placed: list[tuple[str, str, int, str]] = []
        for s, q, disp in lines:
            if loc is not None:
                placed.append((s, loc, q, disp))
                continue
            for key in sorted(k for k in room if k[0] == s):  # location priority = LOCATIONS
                take = min(q, room[key])
                if take > 0:
                    room[key] -= take
                    q -= take
                    placed.append((s, key[1], take, disp))
        for s, at, q, disp in placed:
            self._ensure((s, at))
            self.on_hand[(s, at)] += q
            self.unavailable[(s, at)] += q if disp == "damaged" else 0
            self.returned[s] = self.returned.get(s, 0) + q
        self.returns[rid] = MReturn(oid, content, placed)
        return "return:created"

    # -------------------------------------------------- transfers

    def create_transfer(self, tid: str, src: str, dst: str, lines: dict[str, int]) -> str:
        content = (src, dst, tuple(sorted(lines.items())))
        t = self.transfers.get(tid)
        if t is not None:
            return f"existing:{t.status}" if t.content == content else "!Conflict"
        for s, q in lines.items():
            lv = (s, src)
            movable = (
                self.on_hand.get(lv, 0) - self.reserved.get(lv, 0) - self.unavailable.get(lv, 0)
            )
            if q > movable:
                return "!InsufficientStock"
        for s, q in lines.items():
            self.on_hand[(s, src)] -= q
        self.transfers[tid] = MTransfer(src, dst, content, {s: [q, 0, 0] for s, q in lines.items()})
        return "created:in_transit"

    def receive(self, tid: str, rid: str, lines: dict[str, int]) -> str:
        t = self.transfers.get(tid)
        if t is None:
            return "!NotFound"
        content = tuple(sorted(lines.items()))
        if rid in t.receipts:
            return f"existing:{t.status}" if t.receipts[rid] == content else "!Conflict"
        if t.status == "cancelled":
            return "!InvalidTransition"
        if any(s not in t.lines for s in lines):
            return "!ValidationFailed"
        if any(q > t.in_transit(s) for s, q in lines.items()):
            return "!ReceiptExceedsInTransit"
        for s, q in lines.items():
            t.lines[s][1] += q
            self._ensure((s, t.dst))
            self.on_hand[(s, t.dst)] += q
        t.receipts[rid] = content
        if not any(t.in_transit(s) for s in t.lines):
            t.status = "received"
        return f"created:{t.status}"

    def cancel_transfer(self, tid: str) -> str:
        t = self.transfers.get(tid)
        if t is None:
            return "!NotFound"
        if t.status == "received":
            return "!InvalidTransition"
        if t.status == "in_transit":
            for s, v in t.lines.items():
                back = t.in_transit(s)
                v[2] += back
                self.on_hand[(s, t.src)] += back
            t.status = "cancelled"
        return "status:cancelled"

    def put_location(self, loc: str, active: bool) -> str:
        self.active[loc] = active
        return "ok"

    # -------------------------------------------------- orders

    def place(self, oid: str, lines: list[tuple[str, int]]) -> str:
        got = self._allocate([(n, s, q) for n, (s, q) in enumerate(lines, 1)])
        if got is None:
            return "!OutOfStock"
        o = MOrder(list(lines), [])
        self._hold(o, got)
        self.orders[oid] = o
        return "placed"

    def pay(self, oid: str, provider: str, pid: str, webhook: bool = False) -> str:
        o = self.orders.get(oid)
        if o is None:
            return "ignored:unknown order" if webhook else "!NotFound"
        if o.deleted:
            return "ignored:order deleted" if webhook else "!NotFound"
        if o.status == "cancelled":
            return "ignored:order cancelled" if webhook else "!InvalidTransition"
        if o.payment is not None:
            if o.payment != (provider, pid) and o.status == "paid":
                o.status = "needs_review"  # a second payment: possible double charge
            return f"status:{o.status}"
        assert o.status == "pending", o  # every other status carries payment proof
        if (provider, pid) in self.payments:
            return "ignored:other" if webhook else "!PaymentReused"
        o.payment = (provider, pid)
        self.payments[(provider, pid)] = oid
        again = self._allocate(o.missing())
        if again is None:  # late payment, expired lines cannot be held again
            o.status = "needs_review"
            return "status:needs_review"
        self._hold(o, again)
        self._commit(o)
        o.status = "paid"
        return "status:paid"

    def webhook(self, ev: PaymentEvent) -> str:
        if (ev.provider, ev.event_id) in self.inbox:
            return "replayed"
        self.inbox.add((ev.provider, ev.event_id))
        if not ev.is_payment:
            return "ignored:type"
        assert ev.order_id is not None
        assert ev.payment_id is not None
        return self.pay(ev.order_id, ev.provider, ev.payment_id, webhook=True)

    def mark_paid(self, oid: str) -> str:
        o = self.orders[oid]
        o.status, o.payment = "paid", ("manual", f"m-{oid}")
        self.payments[o.payment] = oid
        return "ok"

    def cancel(self, oid: str) -> str:
        o = self.orders.get(oid)
        if o is None or o.deleted:
            return "!NotFound"
        if o.status in ("shipped", "delivered"):
            return "!InvalidTransition"
        if o.status != "cancelled":
            self._restore(o)
            o.status, o.cancel_reason = "cancelled", None
        return "status:cancelled"

    def delete(self, oid: str) -> str:
        o = self.orders.get(oid)
        if o is None or o.deleted:
            return "!NotFound"
        if o.status in ("shipped", "delivered"):
            return "!OrderNotDeletable"
        if o.status != "cancelled":
            self._restore(o)
        o.status, o.deleted = "cancelled", True
        o.cancel_reason = o.cancel_reason or "deleted"
        return "ok"

    def set_status(self, oid: str, target: str) -> str:
        o = self.orders.get(oid)
        if o is None or o.deleted:
            return "!NotFound"
        if o.status == target:
            return f"status:{target}"
        before = {"processing": "paid", "shipped": "processing", "delivered": "shipped"}
        if before[target] != o.status:
            return "!InvalidTransition"
        if target in ("processing", "shipped") and not o.fully_committed():
            return "!InvalidTransition"
        if target == "shipped":
            for r in o.res:
                if r.status == "committed":
                    r.status = "fulfilled"
                    self.on_hand[(r.sku, r.loc)] -= r.qty
                    self.reserved[(r.sku, r.loc)] -= r.qty
                    self.shipped[r.sku] = self.shipped.get(r.sku, 0) + r.qty
        o.status = target
        return f"status:{target}"

    def make_overdue(self, oid: str) -> str:
        for r in self.orders[oid].res:
            r.overdue = True
        return "ok"

    def expire(self, oid: str) -> str:
        o = self.orders.get(oid)
        if o is None or o.deleted or o.status != "pending":
            return "units:0"  # a paid order's stock is never released by expiry
        return f"units:{self._give_back(o, ('reserved',), 'expired')}"

    def age(self, oid: str) -> str:
        self.orders[oid].aged = True
        return "ok"

    def abandonable(self, oid: str) -> bool:
        o = self.orders.get(oid)
        return bool(
            o is not None
            and o.status == "pending"
            and not o.deleted
            and o.payment is None
            and o.aged
            and not any(r.status in HELD for r in o.res)
        )

    def abandon(self, oid: str) -> str:
        if not self.abandonable(oid):
            return "abandoned:False"
        o = self.orders[oid]
        o.status, o.cancel_reason = "cancelled", "abandoned"
        return "abandoned:True"

    def recover(self, oid: str) -> str:
        o = self.orders.get(oid)
        if o is None or o.deleted:
            return "!NotFound"
        if o.status not in ("paid", "processing", "needs_review"):
            return "!InvalidTransition"  # refused: nothing done, nothing logged
        if o.payment is None:  # a CHECK makes every paid state carry proof
            return "inconsistent"
        missing = o.missing()
        if not missing and not any(r.status == "reserved" for r in o.res):
            return "skipped_already_committed"
        again = self._allocate(missing)
        if again is None:
            o.status = "needs_review"
            return "failed"
        self._hold(o, again)
        self._commit(o)
        o.status = "processing" if o.status == "processing" else "paid"
        return "success"

    def worker_recovers(self, oid: str) -> bool:
        o = self.orders[oid]
        return (
            o.status in ("paid", "processing")
            and not o.deleted
            and (bool(o.missing()) or any(r.status == "reserved" for r in o.res))
        )


# ---------------------------------------------------------------- operations


@dataclass
class Op:
    """One use case: ``call`` runs it and answers a token, ``model`` applies it to a model
    and predicts that token. ``skip`` is the answer of a worker that skipped a locked
    order (SKIP LOCKED): under concurrency it means "did nothing"."""

    label: str
    call: Callable[[], Coroutine[Any, Any, str]]
    model: Callable[[Model], str]
    skip: str | None = None


def _status(order: OrderRecord) -> str:
    return f"status:{order.status.value}"


def _webhook_answer(got: dict[str, Any]) -> str:
    if got.get("replayed"):
        return "replayed"
    if "order" in got:
        return _status(got["order"])
    why = str(got["ignored"])
    if why in ("order deleted", "order cancelled", "unknown order"):
        return f"ignored:{why}"
    return "ignored:type" if why.startswith("event type") else "ignored:other"


def _written(w: transfers.Written) -> str:
    return f"{'created' if w.created else 'existing'}:{w.transfer.status.value}"


async def _answer(call: Awaitable[Any], norm: Callable[[Any], str]) -> str:
    """The use case's answer as a token; a refusal is ``!`` and its class name. Anything
    else (a database error, an assertion) propagates and fails the run."""
    try:
        got = await call
    except StockguardError as exc:
        return f"!{type(exc).__name__}"
    return norm(got)


T = TypeVar("T")


def _choose(data: st.DataObject, items: Sequence[T]) -> T | None:
    """One of ``items``, drawn as a plain integer: what is drawn never depends on the
    state (under concurrency the state depends on timing, and hypothesis replays draws)."""
    i = data.draw(st.integers(0, 255))
    return items[i % len(items)] if items else None


class StockMachine(RuleBasedStateMachine):
    servers: Servers

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tag = secrets.token_hex(3)
        self.model = Model()
        self.n = 0
        self.sent: list[PaymentEvent] = []
        self.hot: str | None = None  # a payment id the operations of one step share
        self.hot_transfer: str | None = None  # a transfer the operations of one step share
        self.returns_sent: list[tuple[str, str, list[tuple[str, int, str]], str | None]] = []
        self.transfers_sent: list[tuple[str, str, str, dict[str, int]]] = []
        self.receipts_sent: list[tuple[str, str, dict[str, int]]] = []
        self.backends = self.runner.run(self._open())

    async def _open(self) -> Backends:
        import redis.asyncio as aioredis

        pool = await connect_pool(self.servers.database_url, min_size=1, max_size=6)
        client = aioredis.Redis.from_url(self.servers.redis_url)
        return Backends(pool, RedisCache(client, self.servers.redis_prefix), CacheMode.STRICT, 2.0)

    def teardown(self) -> None:
        async def close() -> None:
            # Leave nothing for the global worker passes of the tests that run later.
            for oid, o in self.model.orders.items():
                if not o.deleted and o.status not in ("shipped", "delivered"):
                    with contextlib.suppress(Exception):  # a failed run keeps its own error
                        await orders.delete_order(self.backends, oid, DELETE_ACTOR)
            assert self.backends.cache is not None
            await self.backends.cache.client.aclose()
            await self.backends.pool.close()

        self.runner.run(close())
        self.runner.close()

    def sku(self, s: str) -> str:
        return f"h{self.tag}{s}"

    def loc(self, s: str) -> str:
        return f"h{self.tag}{s}"

    def _unsku(self, s: str) -> str:
        return s.removeprefix(f"h{self.tag}")

    def _fresh_id(self) -> str:
        self.n += 1
        return f"h{self.tag}-{self.n}"

    @initialize(
        stock=st.lists(st.integers(0, 12), min_size=6, max_size=6),
        placed=st.lists(
            st.dictionaries(st.sampled_from(SKUS), st.integers(1, 4), min_size=1, max_size=3),
            max_size=4,
        ),
    )
    def setup(self, stock: list[int], placed: list[dict[str, int]]) -> None:
        async def go() -> None:
            for i, loc in enumerate(LOCATIONS):
                await catalogue.put_location(self.backends, self.loc(loc), loc, i, True, "h")
                self.model.active[loc] = True
            for s in SKUS:
                await catalogue.put_sku(self.backends, self.sku(s), s)

        self.runner.run(go())
        levels = [(s, loc) for s in SKUS for loc in LOCATIONS]
        for (s, loc), units in zip(levels, stock, strict=True):
            if units:
                self.one(self.op_adjust(s, loc, units))
        for lines in placed:
            self.one(self.op_place(lines))

    # ------------------------------------------------------------ operation builders

    def op_adjust(self, sku: str, loc: str, delta: int) -> Op:
        adj = catalogue.Adjustment(self.sku(sku), self.loc(loc), ADJUST_REASON, delta=delta)
        return Op(
            f"adjust {sku}@{loc} {delta:+}",
            lambda: _answer(catalogue.adjust_stock(self.backends, adj, "h"), lambda _: "ok"),
            lambda m: m.adjust(sku, loc, delta),
        )

    def op_unavailable(self, sku: str, loc: str, moved: int, pick: int) -> Op:
        reason = ("damaged", "quality_control") if moved > 0 else ("restock", "correction")
        adj = catalogue.Adjustment(
            self.sku(sku), self.loc(loc), reason[pick % 2], unavailable_delta=moved
        )
        return Op(
            f"unavailable {sku}@{loc} {moved:+} {adj.reason}",
            lambda: _answer(catalogue.adjust_stock(self.backends, adj, "h"), lambda _: "ok"),
            lambda m: m.make_unavailable(sku, loc, moved),
        )

    def op_write_off(self, sku: str, loc: str, delta: int) -> Op:
        adj = catalogue.Adjustment(
            self.sku(sku), self.loc(loc), WRITE_OFF_REASON, delta=delta, from_unavailable=True
        )
        return Op(
            f"write off {sku}@{loc} {delta:+}",
            lambda: _answer(catalogue.adjust_stock(self.backends, adj, "h"), lambda _: "ok"),
            lambda m: m.write_off(sku, loc, delta),
        )

    def op_safety(self, sku: str, loc: str, units: int) -> Op:
        return Op(
            f"safety {sku}@{loc} {units}",
            lambda: _answer(
                catalogue.set_safety_stock(self.backends, self.sku(sku), self.loc(loc), units, "h"),
                lambda _: "ok",
            ),
            lambda m: m.set_safety(sku, loc, units),
        )

    def op_return(
        self, rid: str, oid: str, lines: list[tuple[str, int, str]], loc: str | None
    ) -> Op:
        req = ReturnRequest(
            rid,
            oid,
            tuple(ReturnLine(self.sku(s), q, d) for s, q, d in lines),
            None if loc is None else self.loc(loc),
        )
        return Op(
            f"return {rid} of {oid} {lines} to {loc}",
            lambda: _answer(
                record_return(self.backends, req, "h"),
                lambda r: "return:created" if r.created else "return:existing",
            ),
            lambda m: m.give_return(rid, oid, lines, loc),
        )

    def op_transfer(self, tid: str, src: str, dst: str, lines: dict[str, int]) -> Op:
        req = transfers.CreateTransfer(
            tid, self.loc(src), self.loc(dst), tuple((self.sku(s), q) for s, q in lines.items())
        )
        return Op(
            f"transfer {tid} {src}->{dst} {lines}",
            lambda: _answer(transfers.create_transfer(self.backends, req, "h"), _written),
            lambda m: m.create_transfer(tid, src, dst, lines),
        )

    def op_receive(self, tid: str, rid: str, lines: dict[str, int]) -> Op:
        receipt = transfers.Receipt(rid, tuple((self.sku(s), q) for s, q in lines.items()))
        return Op(
            f"receive {tid} {rid} {lines}",
            lambda: _answer(transfers.receive_transfer(self.backends, tid, receipt, "h"), _written),
            lambda m: m.receive(tid, rid, lines),
        )

    def op_cancel_transfer(self, tid: str) -> Op:
        return Op(
            f"cancel transfer {tid}",
            lambda: _answer(
                transfers.cancel_transfer(self.backends, tid, "h"),
                lambda t: f"status:{t.status.value}",
            ),
            lambda m: m.cancel_transfer(tid),
        )

    def op_location(self, loc: str, active: bool) -> Op:
        code, prio = self.loc(loc), LOCATIONS.index(loc)
        return Op(
            f"location {loc} active={active}",
            lambda: _answer(
                catalogue.put_location(self.backends, code, loc, prio, active, "h"),
                lambda _: "ok",
            ),
            lambda m: m.put_location(loc, active),
        )

    def op_place(self, lines: dict[str, int]) -> Op:
        oid = self._fresh_id()
        req = PlaceOrder(oid, tuple((self.sku(s), q) for s, q in lines.items()))
        return Op(
            f"place {oid} {lines}",
            lambda: _answer(orders.place_order(self.backends, req, "h"), lambda _: "placed"),
            lambda m: m.place(oid, list(lines.items())),
        )

    def op_pay(self, oid: str, pid: str) -> Op:
        proof = PaymentProof("manual", pid)
        return Op(
            f"pay {oid} {pid}",
            lambda: _answer(orders.pay_order(self.backends, oid, proof, "h"), _status),
            lambda m: m.pay(oid, "manual", pid),
        )

    def op_webhook(self, ev: PaymentEvent) -> Op:
        return Op(
            f"webhook {ev.provider} {ev.event_type} {ev.event_id} -> {ev.order_id}",
            lambda: _answer(handle_event(self.backends, ev), _webhook_answer),
            lambda m: m.webhook(ev),
        )

    def op_cancel(self, oid: str) -> Op:
        return Op(
            f"cancel {oid}",
            lambda: _answer(orders.cancel_order(self.backends, oid, CANCEL_ACTOR), _status),
            lambda m: m.cancel(oid),
        )

    def op_delete(self, oid: str) -> Op:
        return Op(
            f"delete {oid}",
            lambda: _answer(orders.delete_order(self.backends, oid, DELETE_ACTOR), lambda _: "ok"),
            lambda m: m.delete(oid),
        )

    def op_status(self, oid: str, target: str) -> Op:
        return Op(
            f"set {oid} {target}",
            lambda: _answer(
                orders.set_status(self.backends, oid, OrderStatus(target), "h"), _status
            ),
            lambda m: m.set_status(oid, target),
        )

    def op_make_overdue(self, oid: str) -> Op:
        return Op(
            f"overdue {oid}",
            lambda: _answer(make_overdue(self.backends.pool, oid), lambda _: "ok"),
            lambda m: m.make_overdue(oid),
        )

    def op_expire(self, oid: str) -> Op:
        return Op(
            f"expire {oid}",
            lambda: _answer(expire_order(self.backends, oid), lambda n: f"units:{n}"),
            lambda m: m.expire(oid),
            skip="units:0",
        )

    def op_age(self, oid: str) -> Op:
        async def age() -> None:
            await self.backends.pool.execute(
                "UPDATE orders SET created_at = now() - interval '2 hours' WHERE id = $1", oid
            )

        return Op(f"age {oid}", lambda: _answer(age(), lambda _: "ok"), lambda m: m.age(oid))

    def op_abandon(self, oid: str) -> Op:
        return Op(
            f"abandon {oid}",
            lambda: _answer(
                abandon_order(self.backends, oid, ABANDON_AFTER), lambda b: f"abandoned:{b}"
            ),
            lambda m: m.abandon(oid),
            skip="abandoned:False",
        )

    def op_recover(self, oid: str) -> Op:
        return Op(
            f"recover {oid}",
            lambda: _answer(
                recover_order(self.backends, oid, "h"),
                lambda r: "none" if r is None else r.outcome.value,
            ),
            lambda m: m.recover(oid),
        )

    def op_mark_paid(self, oid: str) -> Op:
        return Op(
            f"mark_paid {oid}",
            lambda: _answer(mark_paid(self.backends.pool, oid), lambda _: "ok"),
            lambda m: m.mark_paid(oid),
        )

    # ------------------------------------------------------------ running them

    def _pick(self, data: st.DataObject, *statuses: str) -> str:
        """Mostly a live order (in one of ``statuses`` when there is one); now and then
        any order of this run, deleted ones too, or an id nobody placed."""
        live = sorted(i for i, o in self.model.orders.items() if not o.deleted)
        fit = [i for i in live if self.model.orders[i].status in statuses]
        if data.draw(st.integers(0, 7)) == 0:
            fit = [*sorted(self.model.orders), f"h{self.tag}-ghost"]
        oid = _choose(data, fit or live or [f"h{self.tag}-ghost"])
        assert oid is not None
        return oid

    def one(self, op: Op) -> str:
        """Run one operation alone: its answer must be the model's, no lock to skip."""
        got = self.runner.run(op.call())
        want = op.model(self.model)
        assert got == want, f"{op.label}: service answered {got!r}, the model {want!r}"
        return got

    def together(self, ops: list[Op]) -> None:
        """Run the operations at once; some serial order must explain every answer and
        leave the database as it is."""
        answers = self.runner.run(race(*(op.call for op in ops)))
        got: list[str] = []
        for a in answers:
            if isinstance(a, BaseException):
                raise a
            got.append(a)
        labels = [op.label for op in ops]
        explained: list[tuple[tuple[int, ...], Model]] = []
        for order in itertools.permutations(range(len(ops))):
            m = copy.deepcopy(self.model)
            for i in order:
                if got[i] == ops[i].skip:
                    continue  # skipped (a lock was held) or did nothing: either way no change
                if ops[i].model(m) != got[i]:
                    break
            else:
                explained.append((order, m))
        assert explained, f"no serial order explains {list(zip(labels, got, strict=True))}"
        db = self.runner.run(self._db_state())
        for _, m in explained:
            if m.state() == db:
                self.model = m
                return
        raise AssertionError(
            f"{list(zip(labels, got, strict=True))}: explained by "
            f"{[o for o, _ in explained]}, but the database is {db}, not "
            f"{explained[0][1].state()}"
        )

    # ------------------------------------------------------------ rules

    @rule(
        sku=st.sampled_from(SKUS),
        loc=st.sampled_from(LOCATIONS),
        delta=st.integers(-4, 8).filter(bool),
    )
    def adjust(self, sku: str, loc: str, delta: int) -> None:
        self.one(self.op_adjust(sku, loc, delta))

    @rule(
        sku=st.sampled_from(SKUS),
        loc=st.sampled_from(LOCATIONS),
        moved=st.integers(-3, 4).filter(bool),
        pick=st.integers(0, 1),
    )
    def make_unavailable(self, sku: str, loc: str, moved: int, pick: int) -> None:
        self.one(self.op_unavailable(sku, loc, moved, pick))

    @rule(
        sku=st.sampled_from(SKUS),
        loc=st.sampled_from(LOCATIONS),
        damaged=st.integers(0, 3),
        delta=st.integers(-3, -1),
    )
    def write_off(self, sku: str, loc: str, damaged: int, delta: int) -> None:
        """Units found damaged (so there is something to write off), then written off."""
        if damaged:
            self.one(self.op_unavailable(sku, loc, damaged, 0))
        self.one(self.op_write_off(sku, loc, delta))

    @rule(sku=st.sampled_from(SKUS), loc=st.sampled_from(LOCATIONS), units=st.integers(0, 4))
    def safety_stock(self, sku: str, loc: str, units: int) -> None:
        self.one(self.op_safety(sku, loc, units))

    @rule(data=st.data())
    def give_return(self, data: st.DataObject) -> None:
        """A return, mostly of a shipped order (a pending one is paid and shipped first)."""
        oid = self._pick(data, "shipped", "delivered", "paid", "processing", "pending")
        o = self.model.orders.get(oid)
        if o is not None and o.status == "pending" and not o.deleted:
            self.n += 1
            self.one(self.op_pay(oid, f"p{self.tag}-{self.n}"))
        if o is not None and o.status in ("paid", "processing"):
            for target in ("processing", "shipped"):
                self.one(self.op_status(oid, target))
        self.one(self._return_op(data, oid))

    @rule(data=st.data(), then=st.integers(0, 3), damaged=st.integers(0, 3))
    def transfer(self, data: st.DataObject, then: int, damaged: int) -> None:
        """A transfer (sometimes of a SKU with units just found damaged at its source, which
        may not move), then (1) a receipt, (2) a cancel, or (3) a receipt and a cancel."""
        tid, op = self._transfer_op(data)
        if damaged and tid in self.model.transfers:
            pass  # a retry of a transfer made already: nothing to damage at its source
        elif damaged:
            src, (sku, _) = (
                self.transfers_sent[-1][1],
                next(iter(self.transfers_sent[-1][3].items())),
            )
            self.one(self.op_unavailable(sku, src, damaged, 0))
        self.one(op)
        if then & 1:
            self.one(self._receive_op(data, tid))
        if then & 2:
            self.one(self.op_cancel_transfer(tid))

    @rule(data=st.data())
    def receive(self, data: st.DataObject) -> None:
        self.one(self._receive_op(data, self._pick_transfer(data)))

    @rule(data=st.data())
    def cancel_transfer(self, data: st.DataObject) -> None:
        self.one(self.op_cancel_transfer(self._pick_transfer(data)))

    @rule(loc=st.sampled_from(LOCATIONS), active=st.booleans())
    def toggle_location(self, loc: str, active: bool) -> None:
        self.one(self.op_location(loc, active))

    @rule(lines=st.dictionaries(st.sampled_from(SKUS), st.integers(1, 4), min_size=1, max_size=3))
    def place(self, lines: dict[str, int]) -> None:
        self.one(self.op_place(lines))

    @rule(data=st.data())
    def pay(self, data: st.DataObject) -> None:
        oid = self._pick(data, "pending")
        self.one(self.op_pay(oid, self._payment_id(data, oid)))

    @rule(data=st.data())
    def webhook(self, data: st.DataObject) -> None:
        self.one(self.op_webhook(self._event(data)))

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.one(self.op_cancel(self._pick(data)))

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        self.one(self.op_delete(self._pick(data)))

    @rule(data=st.data())
    def ship(self, data: st.DataObject) -> None:
        oid = self._pick(data, "paid", "processing", "needs_review")
        for target in ("processing", "shipped", "delivered"):
            self.one(self.op_status(oid, target))
        if oid in self.model.orders and self.model.orders[oid].status == "delivered":
            self.one(self.op_cancel(oid))  # refused, and nothing changes
            self.one(self.op_delete(oid))

    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        oid = self._pick(data, "pending", "paid", "needs_review")
        if oid in self.model.orders:
            self.one(self.op_make_overdue(oid))
        self.one(self.op_expire(oid))

    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        """The worker's pass cancels exactly this run's orders that hold nothing and were
        placed before the window (it may cancel other runs' too: the database is shared)."""
        oid = self._pick(data, "pending")
        if oid in self.model.orders:
            self.one(self.op_make_overdue(oid))
            self.one(self.op_expire(oid))
            self.one(self.op_age(oid))
        due = [i for i in self.model.orders if self.model.abandonable(i)]
        done = self.runner.run(abandon_stale(self.backends, ABANDON_AFTER, limit=10_000))
        assert done >= len(due)
        for i in due:
            self.model.abandon(i)

    @rule(data=st.data())
    def mark_paid(self, data: st.DataObject) -> None:
        """A payment whose commit failed: paid, with its stock as it was (seed 003)."""
        oid = self._pick(data, "pending")
        o = self.model.orders.get(oid)
        if o is not None and o.status == "pending" and not o.deleted:  # a legal state only
            self.one(self.op_mark_paid(oid))

    @rule(data=st.data())
    def recover(self, data: st.DataObject) -> None:
        self.one(self.op_recover(self._pick(data, "paid", "needs_review")))

    @rule()
    def recovery_worker(self) -> None:
        """One pass over paid orders with uncommitted stock, oldest first (they compete
        for the same units, so the order matters)."""
        due = [i for i in self.model.orders if self.model.worker_recovers(i)]
        rows = self.runner.run(
            self.backends.pool.fetch(
                "SELECT id FROM orders WHERE id = ANY($1::text[]) ORDER BY created_at, id", due
            )
        )
        done = self.runner.run(recover_paid_uncommitted(self.backends, limit=10_000))
        assert done >= len(due)
        for r in rows:
            self.model.recover(r["id"])

    @rule(data=st.data(), n=st.integers(2, 4))
    def concurrently(self, data: st.DataObject, n: int) -> None:
        """2-4 operations at once, mostly on one order, so they collide; payments may
        share one new payment id (one payment pays at most one order)."""
        focus = self._pick(data)
        self.hot_transfer = self._pick_transfer(data)
        self.n += 1
        self.hot = f"hot{self.tag}-{self.n}"
        ops: list[Op] = []
        for _ in range(n):
            oid = focus if data.draw(st.integers(0, 3)) else self._pick(data)
            kind = data.draw(
                st.sampled_from(
                    (
                        "place",
                        "adjust",
                        "location",
                        "pay",
                        "webhook",
                        "cancel",
                        "delete",
                        "expire",
                        "abandon",
                        "recover",
                        "processing",
                        "shipped",
                        "unavailable",
                        "write_off",
                        "safety",
                        "return",
                        "transfer",
                        "receive",
                        "cancel_transfer",
                    )
                )
            )
            ops.append(self._concurrent_op(data, kind, oid))
        self.hot = self.hot_transfer = None
        self.together(ops)

    def _concurrent_op(self, data: st.DataObject, kind: str, oid: str) -> Op:
        known = oid in self.model.orders
        if kind == "place":
            lines = data.draw(
                st.dictionaries(st.sampled_from(SKUS), st.integers(1, 3), min_size=1, max_size=2)
            )
            return self.op_place(lines)
        if kind == "adjust":
            return self.op_adjust(
                data.draw(st.sampled_from(SKUS)),
                data.draw(st.sampled_from(LOCATIONS)),
                data.draw(st.integers(-3, 4).filter(bool)),
            )
        if kind == "location":
            return self.op_location(data.draw(st.sampled_from(LOCATIONS)), data.draw(st.booleans()))
        if kind == "pay":
            return self.op_pay(oid, self._payment_id(data, oid))
        if kind == "webhook":
            return self.op_webhook(self._event(data, oid))
        if kind == "cancel":
            return self.op_cancel(oid)
        if kind == "delete":
            return self.op_delete(oid)
        if kind == "expire":
            if known:  # overdue before the race: the race is over who takes the order
                self.one(self.op_make_overdue(oid))
            return self.op_expire(oid)
        if kind == "abandon":
            if known and not self.model.orders[oid].deleted:
                self.one(self.op_make_overdue(oid))
                self.one(self.op_expire(oid))
                self.one(self.op_age(oid))
            return self.op_abandon(oid)
        if kind == "recover":
            return self.op_recover(oid)
        if kind in ("unavailable", "write_off", "safety"):
            sku, loc = data.draw(st.sampled_from(SKUS)), data.draw(st.sampled_from(LOCATIONS))
            units = data.draw(st.integers(-3, 4).filter(bool))
            if kind == "unavailable":
                return self.op_unavailable(sku, loc, units, data.draw(st.integers(0, 1)))
            if kind == "write_off":
                return self.op_write_off(sku, loc, -abs(units))
            return self.op_safety(sku, loc, abs(units))
        if kind == "return":
            other = self._pick(data, "shipped", "delivered")
            o = self.model.orders.get(oid)
            shipped = o is not None and o.status in ("shipped", "delivered")
            return self._return_op(data, oid if shipped else other)
        if kind == "transfer":
            return self._transfer_op(data)[1]
        tid = self._pick_transfer(data)
        tid = self.hot_transfer if data.draw(st.integers(0, 3)) and self.hot_transfer else tid
        if kind == "receive":
            return self._receive_op(data, tid)
        if kind == "cancel_transfer":
            return self.op_cancel_transfer(tid)
        return self.op_status(oid, kind)

    # ------------------------------------------------------------ returns and transfers

    def _return_op(self, data: st.DataObject, oid: str) -> Op:
        """A new return; now and then the same return again, or its id with other content."""
        kind, old = data.draw(st.integers(0, 5)), _choose(data, self.returns_sent)
        drawn = data.draw(
            st.dictionaries(
                st.sampled_from(SKUS),
                st.tuples(st.integers(1, 3), st.sampled_from(("restock", "damaged"))),
                min_size=1,
                max_size=2,
            )
        )
        loc = data.draw(st.sampled_from((None, None, *LOCATIONS)))
        lines = [(s, q, d) for s, (q, d) in drawn.items()]
        o = self.model.orders.get(oid)
        if o is not None and kind > 2:  # mostly SKUs the order shipped
            sent = {r.sku for r in o.res if r.status == "fulfilled"}
            lines = [ln for ln in lines if ln[0] in sent] or lines
        if kind == 0 and old is not None:
            return self.op_return(*old)
        if kind == 1 and old is not None:
            rid = old[0]
        else:
            self.n += 1
            rid = f"h{self.tag}-r{self.n}"
        self.returns_sent.append((rid, oid, lines, loc))
        return self.op_return(rid, oid, lines, loc)

    def _pick_transfer(self, data: st.DataObject) -> str:
        """Mostly one of this run's transfers (in transit when there is one); now and then
        an id nobody created."""
        ids = sorted(self.model.transfers)
        moving = [t for t in ids if self.model.transfers[t].status == "in_transit"]
        ghost = data.draw(st.integers(0, 7)) == 0
        tid = _choose(data, moving or ids)
        return f"h{self.tag}-tghost" if ghost or tid is None else tid

    def _transfer_op(self, data: st.DataObject) -> tuple[str, Op]:
        """A new transfer; now and then a retry of one, or its id with other content."""
        kind, old = data.draw(st.integers(0, 5)), _choose(data, self.transfers_sent)
        src = data.draw(st.sampled_from(LOCATIONS))
        lines = data.draw(
            st.dictionaries(st.sampled_from(SKUS), st.integers(1, 4), min_size=1, max_size=2)
        )
        if kind == 0 and old is not None:
            return old[0], self.op_transfer(*old)
        if kind == 1 and old is not None:
            tid = old[0]
        else:
            self.n += 1
            tid = f"h{self.tag}-t{self.n}"
        dst = next(loc for loc in LOCATIONS if loc != src)
        self.transfers_sent.append((tid, src, dst, lines))
        return tid, self.op_transfer(tid, src, dst, lines)

    def _receive_op(self, data: st.DataObject, tid: str) -> Op:
        """A receipt of some of the transfer's lines, or of everything in transit; now and
        then one sent before again, its id with other lines, or a SKU the transfer lacks."""
        kind, old = data.draw(st.integers(0, 7)), _choose(data, self.receipts_sent)
        drawn = data.draw(
            st.dictionaries(st.sampled_from(SKUS), st.integers(1, 3), min_size=1, max_size=2)
        )
        if kind == 0 and old is not None:
            return self.op_receive(*old)
        if kind == 1 and old is not None:
            tid = old[0]
        t = self.model.transfers.get(tid)
        lines = drawn
        if t is not None and kind in (2, 3, 4):  # the SKUs it moves, a few units each
            lines = {s: q for s, q in drawn.items() if s in t.lines} or drawn
        elif t is not None and kind in (5, 6):  # everything still in transit
            lines = {s: t.in_transit(s) for s in sorted(t.lines) if t.in_transit(s)} or drawn
        if kind == 1 and old is not None:
            rid = old[1]
        else:
            self.n += 1
            rid = f"r{self.n}"
        self.receipts_sent.append((tid, rid, lines))
        return self.op_receive(tid, rid, lines)

    # ------------------------------------------------------------ payments

    def _payment_id(self, data: st.DataObject, oid: str) -> str:
        """Mostly a new payment; sometimes the order's own again, another order's, or the
        one this step's operations share."""
        used = sorted(pid for (prov, pid) in self.model.payments if prov == "manual")
        choice, other = data.draw(st.integers(0, 5)), _choose(data, used)
        o = self.model.orders.get(oid)
        if choice == 0 and other is not None:
            return other
        if choice == 1 and o is not None and o.payment is not None and o.payment[0] == "manual":
            return o.payment[1]
        if choice == 2 and self.hot is not None:
            return self.hot
        self.n += 1
        return f"p{self.tag}-{self.n}"

    def _event(self, data: st.DataObject, oid: str | None = None) -> PaymentEvent:
        """A new payment event, a replay of one sent before, Razorpay's other event for
        the same payment, or an event that is not a payment. Every draw is made whatever
        the state, so a replay draws alike when the service's answers differ."""
        kind = data.draw(st.sampled_from(("new", "new", "replay", "sibling", "other")))
        sent = _choose(data, self.sent)
        razorpay = _choose(data, [e for e in self.sent if e.provider == "razorpay"])
        target = self._pick(data, "pending")
        provider = data.draw(st.sampled_from(("stripe", "razorpay")))
        choice = data.draw(st.integers(0, 5))
        paid = _choose(data, sorted(p for p in self.model.payments if p[0] == provider))
        rp_type = data.draw(st.sampled_from(("payment.captured", "order.paid")))
        if kind == "replay" and sent is not None:
            return sent
        if kind == "sibling" and razorpay is not None:
            other = (
                "order.paid" if razorpay.event_type == "payment.captured" else "payment.captured"
            )
            eid = razorpay_event_id(other, razorpay.payment_id, b"")
            return dataclasses.replace(razorpay, event_type=other, event_id=eid)
        oid = oid or target
        o = self.model.orders.get(oid)
        if choice == 0 and o is not None and o.payment and o.payment[0] == provider:
            pid = o.payment[1]  # the same payment, delivered again under a new event
        elif choice == 1 and paid is not None:
            pid = paid[1]  # another order's payment
        elif choice == 2 and self.hot is not None:
            pid = self.hot
        else:
            self.n += 1
            pid = f"{provider[:2]}{self.tag}-{self.n}"
        if kind == "other":
            etype = "payment_intent.payment_failed" if provider == "stripe" else "payment.failed"
        else:
            etype = "payment_intent.succeeded" if provider == "stripe" else rp_type
        self.n += 1
        eid = (
            f"evt_{self.tag}_{self.n}"
            if provider == "stripe"
            else razorpay_event_id(etype, pid, b"")
        )
        ev = PaymentEvent(provider, eid, etype, oid, pid, None, None)
        self.sent.append(ev)
        return ev

    # ------------------------------------------------------------ checks

    async def _db_state(self) -> State:
        pool: asyncpg.Pool = self.backends.pool
        levels: dict[Level, LevelState] = {
            (s, loc): (0, 0, 0, 0) for s in SKUS for loc in LOCATIONS
        }
        for r in await pool.fetch(
            "SELECT sku, location, on_hand, reserved, unavailable, safety_stock "
            "FROM inventory_levels WHERE sku = ANY($1::text[])",
            [self.sku(s) for s in SKUS],
        ):
            levels[(self._unsku(r["sku"]), self._unsku(r["location"]))] = (
                int(r["on_hand"]),
                int(r["reserved"]),
                int(r["unavailable"]),
                int(r["safety_stock"]),
            )
        rets: dict[str, list[tuple[str, str, int, str]]] = {}
        owner: dict[str, str] = {}
        for r in await pool.fetch(
            "SELECT r.return_id, r.order_id, l.sku, l.location, l.quantity, l.disposition "
            "FROM order_returns r JOIN order_return_lines l USING (return_id, order_id) "
            "WHERE r.order_id LIKE $1",
            f"h{self.tag}-%",
        ):
            owner[r["return_id"]] = r["order_id"]
            rets.setdefault(r["return_id"], []).append(
                (
                    self._unsku(r["sku"]),
                    self._unsku(r["location"]),
                    int(r["quantity"]),
                    r["disposition"],
                )
            )
        moves: dict[str, tuple[Any, ...]] = {}
        for r in await pool.fetch(
            "SELECT t.id, t.from_location, t.to_location, t.status, array_agg("
            "ROW(l.sku, l.quantity, l.received, l.cancelled) ORDER BY l.sku) AS lines "
            "FROM transfers t JOIN transfer_lines l ON l.transfer_id = t.id "
            "WHERE t.id LIKE $1 GROUP BY t.id",
            f"h{self.tag}-%",
        ):
            moves[r["id"]] = (
                self._unsku(r["from_location"]),
                self._unsku(r["to_location"]),
                r["status"],
                tuple((self._unsku(s), int(q), int(g), int(c)) for s, q, g, c in r["lines"]),
            )
        active = {
            self._unsku(r["code"]): bool(r["active"])
            for r in await pool.fetch(
                "SELECT code, active FROM locations WHERE code = ANY($1::text[])",
                [self.loc(loc) for loc in LOCATIONS],
            )
        }
        res: dict[str, list[tuple[int, str, str, int, str, bool]]] = {}
        for r in await pool.fetch(
            "SELECT order_id, line_no, sku, location, quantity, status, "
            "expires_at <= now() AS overdue FROM reservations WHERE order_id LIKE $1",
            f"h{self.tag}-%",
        ):
            res.setdefault(r["order_id"], []).append(
                (
                    r["line_no"],
                    self._unsku(r["sku"]),
                    self._unsku(r["location"]),
                    r["quantity"],
                    r["status"],
                    r["overdue"],
                )
            )
        ords: dict[str, tuple[Any, ...]] = {}
        for r in await pool.fetch(
            "SELECT id, status, deleted_at IS NOT NULL AS deleted, payment_provider, "
            "payment_id, cancel_reason FROM orders WHERE id LIKE $1",
            f"h{self.tag}-%",
        ):
            payment = (r["payment_provider"], r["payment_id"]) if r["payment_id"] else None
            ords[r["id"]] = (
                r["status"],
                r["deleted"],
                payment,
                r["cancel_reason"],
                tuple(sorted(res.get(r["id"], []))),
            )
        returns = {rid: (owner[rid], tuple(sorted(lines))) for rid, lines in rets.items()}
        return levels, active, ords, returns, moves

    async def _ledger_checks(self) -> None:
        pool: asyncpg.Pool = self.backends.pool
        mine, skus = f"h{self.tag}-%", [self.sku(s) for s in SKUS]
        twice = await pool.fetch(
            "SELECT reservation_id, array_agg(reason) AS reasons FROM stock_movements "
            "WHERE order_id LIKE $1 AND reserved_delta < 0 "
            "GROUP BY reservation_id HAVING count(*) > 1",
            mine,
        )
        assert twice == [], f"reservations given back more than once: {twice}"
        restored = await pool.fetch(
            "SELECT order_id FROM stock_movements WHERE order_id LIKE $1 AND reason = 'release' "
            "GROUP BY order_id HAVING count(DISTINCT created_at) > 1",
            mine,
        )
        assert restored == [], f"orders restored more than once: {restored}"
        releasers = await pool.fetch(
            "SELECT DISTINCT actor FROM stock_movements WHERE order_id LIKE $1 "
            "AND reason = 'release'",
            mine,
        )
        assert {r["actor"] for r in releasers} <= {CANCEL_ACTOR, DELETE_ACTOR}, releasers
        paid_released = await pool.fetch(
            "SELECT o.id, o.status, o.cancel_reason FROM orders o "
            "JOIN reservations r ON r.order_id = o.id "
            "WHERE o.id LIKE $1 AND o.payment_id IS NOT NULL AND r.status = 'released' "
            "AND (o.status <> 'cancelled' OR o.cancel_reason = 'abandoned')",
            mine,
        )
        assert paid_released == [], f"paid orders released automatically: {paid_released}"
        # Units are conserved (invariant 13): per SKU, on_hand plus what is in transit moves
        # only through adjustments, shipments and returns; transfers only move them around.
        moved = await pool.fetch(
            "SELECT sku, reason, sum(on_hand_delta) AS units FROM stock_movements "
            "WHERE sku = ANY($1::text[]) AND on_hand_delta <> 0 GROUP BY sku, reason",
            skus,
        )
        by: dict[str, dict[str, int]] = {}
        for r in moved:
            by.setdefault(self._unsku(r["sku"]), {})[r["reason"]] = int(r["units"])
        transit = {
            self._unsku(r["sku"]): int(r["units"])
            for r in await pool.fetch(
                "SELECT sku, sum(in_transit) AS units FROM transfer_lines "
                "WHERE sku = ANY($1::text[]) GROUP BY sku",
                skus,
            )
        }
        on_hand = {
            self._unsku(r["sku"]): int(r["units"])
            for r in await pool.fetch(
                "SELECT sku, sum(on_hand) AS units FROM inventory_levels "
                "WHERE sku = ANY($1::text[]) GROUP BY sku",
                skus,
            )
        }
        moves = ("transfer_out", "transfer_in", "transfer_cancelled")
        for s in SKUS:
            got = by.get(s, {})
            assert set(got) <= {ADJUST_REASON, WRITE_OFF_REASON, "fulfil", "returned"}.union(
                {"returned_damaged", *moves}
            ), got
            adjusted = got.get(ADJUST_REASON, 0) + got.get(WRITE_OFF_REASON, 0)
            returned = got.get("returned", 0) + got.get("returned_damaged", 0)
            assert adjusted == self.model.adjusted.get(s, 0), (s, got)
            assert -got.get("fulfil", 0) == self.model.shipped.get(s, 0), (s, got)
            assert returned == self.model.returned.get(s, 0), (s, got)
            assert -sum(got.get(m, 0) for m in moves) == transit.get(s, 0), (s, got, transit)
            assert transit.get(s, 0) == self.model.in_transit(s), (s, transit)
            total = adjusted + got.get("fulfil", 0) + returned
            assert on_hand.get(s, 0) + transit.get(s, 0) == total, (s, on_hand, transit, got)

    def _check_database(self) -> None:
        db = self.runner.run(self._db_state())
        want = self.model.state()
        assert db == want, f"database {db}\n   model {want}"

    @invariant()
    def everything_holds(self) -> None:
        if not self.model.active:
            return  # before setup
        for oid, o in self.model.orders.items():
            assert o.restores <= 1, f"{oid} restored {o.restores} times"
            if o.payment is not None and any(r.status == "released" for r in o.res):
                assert o.status == "cancelled", (oid, o)
                assert o.cancel_reason != "abandoned", (oid, o)
        self._check_database()

        async def check() -> None:
            await assert_invariants(self.backends.pool)
            await self._ledger_checks()
            rows = await self.backends.pool.fetch(
                "SELECT DISTINCT sku FROM inventory_levels WHERE sku = ANY($1::text[])",
                [self.sku(s) for s in SKUS],
            )
            await assert_cache_parity(self.backends, sorted(r["sku"] for r in rows))
            # What a shop reads: active locations only, as the model counts them.
            for a in await catalogue.availability(self.backends, [self.sku(s) for s in SKUS]):
                s = self._unsku(a.sku)
                want = {
                    self.loc(loc): self.model.available((s, loc))
                    for loc in LOCATIONS
                    if self.model.active[loc] and (s, loc) in self.model.on_hand
                }
                assert (a.available, a.locations) == (sum(want.values()), want), (a, want)

        self.runner.run(check())


def test_random_operations_keep_every_invariant(servers: Servers, migrated: str) -> None:
    StockMachine.servers = servers
    run = settings(
        max_examples=30,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )(StockMachine).TestCase
    run().runTest()
