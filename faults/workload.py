"""The workload: C concurrent clients placing, paying, cancelling, deleting, shipping,
returning, adjusting (on_hand, unavailable, safety stock) and transferring between two
locations, on a few SKUs, so that they contend for the same rows.

Every operation goes to a randomly chosen API process. A timeout, a connection error, a
5xx or a 409 ``conflict`` saying the same request is still running is retried (on any
process) with the same order id, the same ``Idempotency-Key`` and the same body until
:data:`OP_BUDGET_S` runs out. Payments arrive three ways for the same payment: the API,
a signed Stripe webhook and a signed Razorpay webhook (``payment.captured`` or
``order.paid``), and earlier deliveries are replayed. Some shoppers pay late: right when
the worker may abandon their order (its hold expired), so the payment races the
abandonment. Each client draws its choices from its own ``Random(seed, client)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from faults.cluster import RAZORPAY_SECRET, STRIPE_SECRET
from faults.history import AMBIGUOUS, OK, REFUSED, History, Op

__all__ = [
    "INITIAL_ON_HAND",
    "LOCATIONS",
    "OP_BUDGET_S",
    "SEED_REFERENCE",
    "SKUS",
    "Workload",
    "seed_catalogue",
]

SKUS = ("FLT-A", "FLT-B", "FLT-C", "FLT-D")
LOCATIONS = {"wh-1": 10, "wh-2": 20}
INITIAL_ON_HAND = 30  # per level
SEED_REFERENCE = "faults-seed"
OP_BUDGET_S = 12.0  # how long one operation keeps retrying
ATTEMPT_TIMEOUT_S = 3.0
# (kind, weight) of each client's next operation
MIX = (
    ("place", 30),
    ("pay", 22),
    ("cancel", 8),
    ("delete", 5),
    ("ship", 12),
    ("adjust", 10),
    ("read", 5),
    ("levels", 4),  # unavailable moves, write-offs, safety stock
    ("return", 3),
    ("transfer", 5),  # new transfers, receipts, cancels
)
RECENT = 40  # operations on orders pick among the most recent ones

Sign = Callable[[bytes], dict[str, str]]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def seed_catalogue(base_url: str, admin_key: str) -> dict[str, int]:
    """Locations, SKUs and their first stock (ledger reference ``faults-seed``); returns
    each SKU's initial on_hand over both locations."""
    async with httpx.AsyncClient(base_url=base_url, headers=_auth(admin_key), timeout=10) as c:
        for code, priority in LOCATIONS.items():
            r = await c.put(f"/v1/locations/{code}", json={"name": code, "priority": priority})
            r.raise_for_status()
        for sku in SKUS:
            (await c.put(f"/v1/skus/{sku}", json={"name": f"faults {sku}"})).raise_for_status()
            for loc in LOCATIONS:
                r = await c.post(
                    f"/v1/skus/{sku}/adjustments",
                    json={"location": loc, "delta": INITIAL_ON_HAND, "reason": "received",
                          "reference": SEED_REFERENCE},
                )  # fmt: skip
                r.raise_for_status()
    return {sku: INITIAL_ON_HAND * len(LOCATIONS) for sku in SKUS}


# ---------------------------------------------------------------- signed webhooks


def stripe_signer(body: bytes) -> dict[str, str]:
    """``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>``, fresh per
    attempt (Stripe signs every delivery again)."""
    t = int(time.time())
    mac = hmac.new(STRIPE_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256)
    return {"Stripe-Signature": f"t={t},v1={mac.hexdigest()}", "content-type": "application/json"}


def razorpay_signer(event_id: str) -> Sign:
    def sign(body: bytes) -> dict[str, str]:
        mac = hmac.new(RAZORPAY_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return {
            "X-Razorpay-Signature": mac,
            "X-Razorpay-Event-Id": event_id,
            "content-type": "application/json",
        }

    return sign


def stripe_body(event_id: str, order_id: str, payment_id: str) -> bytes:
    intent = {"id": payment_id, "object": "payment_intent", "amount_received": 1000,
              "currency": "usd", "metadata": {"order_id": order_id}}  # fmt: skip
    event = {"id": event_id, "object": "event", "type": "payment_intent.succeeded",
             "created": int(time.time()), "data": {"object": intent}}  # fmt: skip
    return json.dumps(event).encode()


def razorpay_body(event_type: str, order_id: str, payment_id: str) -> bytes:
    entity = {"id": payment_id, "entity": "payment", "amount": 1000, "currency": "INR",
              "status": "captured", "notes": {"order_id": order_id}}  # fmt: skip
    event = {"entity": "event", "event": event_type, "payload": {"payment": {"entity": entity}},
             "created_at": int(time.time())}  # fmt: skip
    return json.dumps(event).encode()


# ---------------------------------------------------------------- the clients


@dataclass
class OrderState:
    """What the clients believe about an order (from the answers they got)."""

    id: str
    provider: str  # every payment of this order is this one payment
    payment_id: str
    pay_late_at: float | None = None  # a shopper who pays around the abandonment deadline
    status: str = "pending"
    lines: dict[str, int] = field(default_factory=dict)  # sku -> units ordered
    # (provider, event id, body) of webhook deliveries sent, for replays
    deliveries: list[tuple[str, str, bytes]] = field(default_factory=list)


@dataclass
class TransferState:
    """What the clients believe about a transfer: units still in transit per SKU."""

    id: str
    source: str
    dest: str
    in_transit: dict[str, int]
    status: str = "in_transit"


class Workload:
    def __init__(
        self,
        api_urls: list[str],
        admin_key: str,
        seed: int,
        run_tag: str,
        history: History,
        abandon_after_s: float,
    ) -> None:
        self.api_urls = api_urls
        self.abandon_after_s = abandon_after_s
        self.admin_key = admin_key
        self.seed = seed
        self.run_tag = run_tag
        self.history = history
        self.orders: dict[str, OrderState] = {}
        self.late: dict[int, list[OrderState]] = {}  # each client's late payers
        self.order_ids: list[str] = []
        self.transfers: list[TransferState] = []
        self.t0 = time.monotonic()
        self.http = httpx.AsyncClient(
            timeout=ATTEMPT_TIMEOUT_S, limits=httpx.Limits(max_connections=200)
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, clients: int, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._client(n, stop) for n in range(clients)))

    async def _client(self, n: int, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}:{n}")
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        late = self.late.setdefault(n, [])
        i = 0
        while not stop.is_set():
            i += 1
            op_id = f"{self.run_tag}-{n}-{i}"
            now = time.monotonic()
            due = next((o for o in late if (o.pay_late_at or now) <= now), None)
            if due is not None:
                late.remove(due)
                due.pay_late_at = None
                await self._pay(rng, n, op_id, due)
                continue
            kind = rng.choices(kinds, weights)[0]
            await getattr(self, f"_{kind}")(rng, n, op_id)
            await asyncio.sleep(0)  # let the nemesis and the other clients in

    # ------------------------------------------------------------ one request, retried

    async def request(
        self,
        op: Op,
        rng: random.Random,
        method: str,
        path: str,
        *,
        body: Any = None,
        sign: Sign | None = None,
        idempotent_key: bool = False,
    ) -> None:
        """Send until answered for sure or out of budget; fills ``op``'s outcome."""
        raw = None if body is None else body if isinstance(body, bytes) else json.dumps(body)
        deadline = time.monotonic() + OP_BUDGET_S
        in_doubt = False
        while True:
            op.attempts += 1
            if sign is not None:
                headers = sign(raw if isinstance(raw, bytes) else b"")
            else:
                headers = _auth(self.admin_key) | {"content-type": "application/json"}
                if idempotent_key:
                    headers["Idempotency-Key"] = op.id
            url = rng.choice(self.api_urls) + path
            retry_as: str
            try:
                r = await self.http.request(method, url, content=raw, headers=headers)
            except httpx.TimeoutException:
                retry_as = "timeout"
            except httpx.TransportError as exc:
                retry_as = f"connection:{type(exc).__name__}"
            else:
                try:
                    answer = r.json() if r.content else None
                except ValueError:
                    answer = None
                code = answer.get("code") if isinstance(answer, dict) else None
                if r.is_success:
                    op.outcome, op.answer, op.code = OK, answer, None
                    if isinstance(answer, dict) and "ignored" in answer:
                        op.outcome, op.code = REFUSED, f"ignored:{answer['ignored']}"
                    elif isinstance(answer, dict) and answer.get("replayed"):
                        op.code = "replayed"  # acknowledged, but it says nothing of the payment
                    break
                detail = str(answer.get("detail", "")) if isinstance(answer, dict) else ""
                if r.status_code >= 500:
                    retry_as = f"{r.status_code}:{code}"
                elif code == "conflict" and "other content" not in detail:
                    retry_as = "in_progress"  # the same request is running (or died) elsewhere
                else:
                    op.outcome, op.code = REFUSED, code or str(r.status_code)
                    break
            in_doubt = True
            op.code = retry_as
            if time.monotonic() > deadline:
                op.outcome = AMBIGUOUS
                break
            await asyncio.sleep(0.05 + 0.25 * rng.random())
        if in_doubt and op.outcome == REFUSED:
            # An earlier attempt may have done it; the refusal may answer that attempt.
            op.outcome, op.code = AMBIGUOUS, f"refused_after_doubt:{op.code}"
        op.end = self.now()
        self.history.add(op)

    def _op(self, op_id: str, kind: str, client: int, target: str, **detail: Any) -> Op:
        return Op(op_id, kind, client, target, start=self.now(), detail=detail)

    def _pick(self, rng: random.Random, *statuses: str) -> OrderState | None:
        # Late payers are left alone until their shopper pays.
        recent = [
            o for o in (self.orders[i] for i in self.order_ids[-RECENT:]) if o.pay_late_at is None
        ]
        wanted = [o for o in recent if o.status in statuses] if statuses else recent
        # Now and then any order: refusals (and races with other clients) are part of it.
        pool = wanted if wanted and rng.random() < 0.85 else recent
        return rng.choice(pool) if pool else None

    def _learn(self, op: Op) -> None:
        order = op.answer.get("order", op.answer) if isinstance(op.answer, dict) else None
        if isinstance(order, dict) and "status" in order and order.get("id") in self.orders:
            self.orders[order["id"]].status = order["status"]

    # ------------------------------------------------------------ the operations

    async def _place(self, rng: random.Random, n: int, op_id: str) -> None:
        oid = f"o-{op_id}"
        skus = rng.sample(SKUS, rng.choice((1, 1, 2)))
        lines: list[dict[str, Any]] = [{"sku": s, "quantity": rng.randint(1, 3)} for s in skus]
        ttl = rng.choice((2, 3, 5, 60))
        body: dict[str, Any] = {"id": oid, "lines": lines, "reservation_ttl_seconds": ttl}
        if rng.random() < 0.3:
            body["allow_split"] = False
        if rng.random() < 0.3:
            body["preferred_locations"] = [rng.choice(list(LOCATIONS))]
        op = self._op(op_id, "place", n, oid, lines=lines, ttl=ttl)
        await self.request(op, rng, "POST", "/v1/orders", body=body, idempotent_key=True)
        if op.outcome != REFUSED:
            provider = rng.choice(("manual", "stripe", "razorpay"))
            prefix = {"manual": "man", "stripe": "pi", "razorpay": "pay"}[provider]
            payment_id = f"{prefix}_{op_id.replace('-', '_')}"
            order = self.orders[oid] = OrderState(oid, provider, payment_id)
            order.lines = {ln["sku"]: ln["quantity"] for ln in lines}
            self.order_ids.append(oid)
            self._learn(op)
            if ttl <= 3 and rng.random() < 0.3:
                # Pays when the worker may abandon the order (its hold long expired).
                due = time.monotonic() + ttl + self.abandon_after_s + rng.uniform(-0.3, 0.3)
                order.pay_late_at = due
                self.late[n].append(order)

    async def _pay(
        self, rng: random.Random, n: int, op_id: str, late: OrderState | None = None
    ) -> None:
        o = late or self._pick(rng, "pending")
        if o is None:
            return
        via = "api" if o.provider == "manual" or rng.random() < 0.35 else "webhook"
        detail: dict[str, Any] = {"via": via, "provider": o.provider, "payment_id": o.payment_id}
        if late is not None:
            detail["late"] = True
        if via == "api":
            op = self._op(op_id, "pay", n, o.id, **detail)
            body = {"provider": o.provider, "payment_id": o.payment_id}
            await self.request(
                op, rng, "POST", f"/v1/orders/{o.id}/payments", body=body, idempotent_key=True
            )
        else:
            if o.deliveries and rng.random() < 0.4:
                provider, event_id, raw = rng.choice(o.deliveries)
                detail["replay"] = True
            else:
                provider, event_id = o.provider, f"evt_{op_id.replace('-', '_')}"
                if provider == "stripe":
                    raw = stripe_body(event_id, o.id, o.payment_id)
                else:
                    kind = rng.choice(("payment.captured", "order.paid"))
                    raw = razorpay_body(kind, o.id, o.payment_id)
                    detail["event_type"] = kind
                o.deliveries.append((provider, event_id, raw))
            detail["event_id"] = event_id
            op = self._op(op_id, "pay", n, o.id, **detail)
            sign = stripe_signer if provider == "stripe" else razorpay_signer(event_id)
            await self.request(op, rng, "POST", f"/v1/webhooks/{provider}", body=raw, sign=sign)
        self._learn(op)

    async def _cancel(self, rng: random.Random, n: int, op_id: str) -> None:
        o = self._pick(rng, "pending", "paid", "processing", "needs_review")
        if o is not None:
            op = self._op(op_id, "cancel", n, o.id)
            body = {"reason": "faults"}
            path = f"/v1/orders/{o.id}/cancel"
            await self.request(op, rng, "POST", path, body=body, idempotent_key=True)
            self._learn(op)

    async def _delete(self, rng: random.Random, n: int, op_id: str) -> None:
        o = self._pick(rng, "pending", "cancelled", "paid")
        if o is not None:
            op = self._op(op_id, "delete", n, o.id)
            await self.request(op, rng, "DELETE", f"/v1/orders/{o.id}")
            if op.outcome == OK:
                o.status = "deleted"

    async def _ship(self, rng: random.Random, n: int, op_id: str) -> None:
        o = self._pick(rng, "paid", "processing")
        if o is None:
            return
        for step, kind in (("processing", "process"), ("shipped", "ship")):
            if step == "processing" and o.status == "processing":
                continue
            op = self._op(f"{op_id}-{kind}", kind, n, o.id)
            path = f"/v1/orders/{o.id}"
            await self.request(op, rng, "PATCH", path, body={"status": step})
            self._learn(op)
            if op.outcome != OK:
                return

    async def _adjust(self, rng: random.Random, n: int, op_id: str) -> None:
        sku, loc = rng.choice(SKUS), rng.choice(list(LOCATIONS))
        if rng.random() < 0.7:
            delta, reason = rng.randint(1, 5), "received"
        else:
            delta, reason = -rng.randint(1, 3), rng.choice(("shrinkage", "damaged"))
        op = self._op(op_id, "adjust", n, sku, location=loc, delta=delta, unavailable=0,
                      reason=reason)  # fmt: skip
        body = {"location": loc, "delta": delta, "reason": reason, "reference": op_id}
        path = f"/v1/skus/{sku}/adjustments"
        await self.request(op, rng, "POST", path, body=body, idempotent_key=True)

    async def _read(self, rng: random.Random, n: int, op_id: str) -> None:
        skus = rng.sample(SKUS, 2)
        op = self._op(op_id, "read", n, skus[0])
        query = "&".join(f"sku={s}" for s in skus)
        await self.request(op, rng, "GET", f"/v1/availability?{query}")

    async def _levels(self, rng: random.Random, n: int, op_id: str) -> None:
        """A move between sellable and unavailable, a write-off of unavailable units, or a
        safety stock; every adjustment carries its operation id as ``reference``."""
        sku, loc = rng.choice(SKUS), rng.choice(list(LOCATIONS))
        path = f"/v1/skus/{sku}/adjustments"
        pick = rng.random()
        if pick < 0.45:
            if rng.random() < 0.65:
                moved, reason = rng.randint(1, 2), rng.choice(("damaged", "quality_control"))
            else:
                moved, reason = -rng.randint(1, 2), rng.choice(("restock", "correction"))
            op = self._op(op_id, "unavailable", n, sku, location=loc, delta=0,
                          unavailable=moved, reason=reason)  # fmt: skip
            body: dict[str, Any] = {"location": loc, "unavailable_delta": moved,
                                    "reason": reason, "reference": op_id}  # fmt: skip
            await self.request(op, rng, "POST", path, body=body, idempotent_key=True)
        elif pick < 0.75:
            gone = -rng.choice((1, 1, 2))
            op = self._op(op_id, "write_off", n, sku, location=loc, delta=gone,
                          unavailable=gone, reason="damaged")  # fmt: skip
            body = {"location": loc, "delta": gone, "from": "unavailable", "reason": "damaged",
                    "reference": op_id}  # fmt: skip
            await self.request(op, rng, "POST", path, body=body, idempotent_key=True)
        else:
            safety = rng.randint(0, 2)  # small: placements must still find stock
            op = self._op(op_id, "safety_stock", n, sku, location=loc, safety_stock=safety)
            body = {"safety_stock": safety}
            await self.request(op, rng, "PUT", f"/v1/skus/{sku}/levels/{loc}", body=body)

    async def _return(self, rng: random.Random, n: int, op_id: str) -> None:
        """A return of 1-2 units of a shipped order (sometimes more than is left: refused);
        retries reuse the ``return_id`` and the ``Idempotency-Key``."""
        o = self._pick(rng, "shipped")
        if o is None or not o.lines:
            return
        sku = rng.choice(sorted(o.lines))
        disposition = "damaged" if rng.random() < 0.3 else "restock"
        lines = [{"sku": sku, "quantity": rng.randint(1, 2), "disposition": disposition}]
        return_id = f"r-{op_id}"
        op = self._op(op_id, "return", n, o.id, return_id=return_id, lines=lines)
        body = {"return_id": return_id, "lines": lines}
        path = f"/v1/orders/{o.id}/returns"
        await self.request(op, rng, "POST", path, body=body, idempotent_key=True)

    async def _transfer(self, rng: random.Random, n: int, op_id: str) -> None:
        """A new transfer, a (partial) receipt of one in transit, or its cancel."""
        open_ = [t for t in self.transfers[-RECENT:] if t.status == "in_transit"]
        pick = rng.random()
        if open_ and pick < 0.55:
            t = rng.choice(open_)
            left = {s: q for s, q in t.in_transit.items() if q > 0}
            if not left:
                return
            lines: list[dict[str, Any]] = [
                {"sku": s, "quantity": rng.randint(1, q)} for s, q in sorted(left.items())
            ]
            if rng.random() < 0.1:
                lines[0]["quantity"] += 5  # more than is in transit: refused
            receipt_id = f"rc-{op_id}"
            op = self._op(op_id, "receive", n, t.id, receipt_id=receipt_id, lines=lines)
            body: dict[str, Any] = {"receipt_id": receipt_id, "lines": lines}
            path = f"/v1/transfers/{t.id}/receipts"
            await self.request(op, rng, "POST", path, body=body, idempotent_key=True)
            self._learn_transfer(t, op)
        elif open_ and pick < 0.7:
            t = rng.choice(open_)
            op = self._op(op_id, "transfer_cancel", n, t.id)
            path = f"/v1/transfers/{t.id}/cancel"
            await self.request(op, rng, "POST", path, idempotent_key=True)
            self._learn_transfer(t, op)
        else:
            source, dest = rng.sample(list(LOCATIONS), 2)
            skus = rng.sample(SKUS, rng.choice((1, 1, 2)))
            lines = [{"sku": s, "quantity": rng.randint(1, 3)} for s in sorted(skus)]
            tid = f"t-{op_id}"
            op = self._op(op_id, "transfer", n, tid, source=source, dest=dest, lines=lines)
            body = {"id": tid, "from": source, "to": dest, "lines": lines}
            await self.request(op, rng, "POST", "/v1/transfers", body=body, idempotent_key=True)
            if op.outcome != REFUSED:
                t = TransferState(tid, source, dest, {ln["sku"]: ln["quantity"] for ln in lines})
                self.transfers.append(t)
                self._learn_transfer(t, op)

    def _learn_transfer(self, t: TransferState, op: Op) -> None:
        answer = op.answer
        if op.outcome == OK and isinstance(answer, dict) and answer.get("id") == t.id:
            t.status = answer.get("status", t.status)
            for ln in answer.get("lines", []):
                t.in_transit[ln["sku"]] = ln["in_transit"]
        elif op.outcome == REFUSED and op.code in ("invalid_transition", "not_found"):
            t.status = "unknown"  # moved on, or never made: leave it alone
