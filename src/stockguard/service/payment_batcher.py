"""Group commit of payments (DESIGN.md §10 "Group commit on the HTTP path"):
:class:`stockguard.service.group_commit.GroupCommit` with payments decided by
:func:`stockguard.service.orders.decide_payments`, each on its own: concurrent ``POST
/v1/orders/{id}/payments`` requests share one transaction (the orders' row locks in id
order, one read of them, one check of their proofs, one write of every plain payment,
one read back) instead of a transaction of a dozen statements each. Lanes by the order
id; two payments of one order never share a batch (the later one finds the first).

A batch that fails for a reason that may be one request's runs each request alone through
:func:`stockguard.service.orders.pay_order`, with its failsafe: a payment whose stock
cannot be committed is still recorded, never lost."""

from __future__ import annotations

import zlib

from stockguard.domain.errors import StockguardError
from stockguard.service import orders
from stockguard.service.group_commit import GroupCommit
from stockguard.service.orders import PayOrder
from stockguard.service.uow import Backends, UnitOfWork
from stockguard.store.orders import OrderRecord

__all__ = ["PaymentBatcher", "PaymentOutcome"]

PaymentOutcome = OrderRecord | StockguardError


class PaymentBatcher(GroupCommit[PayOrder, PaymentOutcome]):
    """The one place that batches payments; ``pay`` is the whole interface."""

    operation = "pay_order_batch"

    async def pay(self, request: PayOrder, actor: str) -> PaymentOutcome:
        """Pay one order through a batch: the order as it is afterwards, or why it was
        not paid (see :meth:`GroupCommit.submit` for ``Idempotency-Key``)."""
        return await self.submit(request, actor)

    async def decide(self, uow: UnitOfWork, requests: list[PayOrder]) -> list[PaymentOutcome]:
        return await orders.decide_payments(uow, requests)

    async def alone(self, backends: Backends, request: PayOrder, actor: str) -> PaymentOutcome:
        try:
            return await orders.pay_order(backends, request.id, request.proof, actor)
        except StockguardError as exc:
            return exc

    async def failed(self, request: PayOrder, actor: str, exc: Exception) -> None:
        """The failsafe :func:`~stockguard.service.orders.pay_order` runs when its own
        transaction fails: the payment is recorded all the same."""
        if isinstance(exc, orders.COMMIT_FAILURES):
            await orders.record_unpaid_commit(
                self._backends(), request.id, request.proof, actor, exc
            )

    def lane_of(self, request: PayOrder, lanes: int) -> int:
        return zlib.crc32(request.id.encode()) % lanes

    def identity(self, request: PayOrder) -> str:
        return request.id
