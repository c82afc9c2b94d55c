"""Group commit of cancels (DESIGN.md §10 "Group commit on the HTTP path"):
:class:`stockguard.service.group_commit.GroupCommit` with cancels decided by
:func:`stockguard.service.orders.decide_cancels`, each on its own: concurrent
``POST /v1/orders/{id}/cancel`` requests share one transaction (the orders' row locks in id
order, one read of them, one release of their reservations, one level update, one read
back) instead of a transaction of a dozen statements each. Lanes by the order id; two
cancels of one order never share a batch (the later one finds it cancelled)."""

from __future__ import annotations

import zlib

from stockguard.domain.errors import StockguardError
from stockguard.service import orders
from stockguard.service.group_commit import GroupCommit
from stockguard.service.orders import CancelOrder
from stockguard.service.uow import Backends, UnitOfWork
from stockguard.store.orders import OrderRecord

__all__ = ["CancelBatcher", "CancelOutcome"]

CancelOutcome = OrderRecord | StockguardError


class CancelBatcher(GroupCommit[CancelOrder, CancelOutcome]):
    """The one place that batches cancels; ``cancel`` is the whole interface."""

    operation = "cancel_order_batch"

    async def cancel(self, request: CancelOrder, actor: str) -> CancelOutcome:
        """Cancel one order through a batch: the order as it is afterwards, or why it was
        not cancelled (see :meth:`GroupCommit.submit` for ``Idempotency-Key``)."""
        return await self.submit(request, actor)

    async def decide(self, uow: UnitOfWork, requests: list[CancelOrder]) -> list[CancelOutcome]:
        return await orders.decide_cancels(uow, requests)

    async def alone(self, backends: Backends, request: CancelOrder, actor: str) -> CancelOutcome:
        try:
            return await orders.cancel_order(backends, request.id, actor, request.reason)
        except StockguardError as exc:
            return exc

    def lane_of(self, request: CancelOrder, lanes: int) -> int:
        return zlib.crc32(request.id.encode()) % lanes

    def identity(self, request: CancelOrder) -> str:
        return request.id
