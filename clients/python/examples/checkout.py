"""Checkout with stockguard: hold the stock when the customer checks out, keep holding it
while they pay, then ship, cancel or take a return. Every function is safe to call again
with the same arguments (after a timeout, a crash, a double click)."""

from __future__ import annotations

import logging
import os

from stockguard_client import (
    Client,
    ConnectionFailed,
    LineIn,
    Order,
    OutOfStock,
    ReservationExpired,
    Return,
    ReturnLineIn,
    Shortage,
)

log = logging.getLogger(__name__)


def connect() -> Client:
    """One client per process: it keeps its connections and retries what is safe."""
    return Client(os.environ["STOCKGUARD_URL"], os.environ["STOCKGUARD_API_KEY"], timeout=5.0)


def hold_stock(
    sg: Client, order_id: str, lines: list[LineIn], total_amount: int, currency: str
) -> Order | list[Shortage]:
    """At checkout: hold every line for 15 minutes under the shop's own order id, or
    nothing at all and the list of what is short (show it to the customer)."""

    def place() -> Order:
        return sg.place_order(
            lines,
            id=order_id,  # the shop's id: placing it again never holds twice
            total_amount=total_amount,  # minor units; a payment for another amount
            currency=currency,  # puts the order in needs_review
            reservation_ttl_seconds=900,
        )

    try:
        try:
            return place()
        except ConnectionFailed:
            # No answer even after the client's own retries: the order may exist or not.
            # The same id with the same lines answers the order if it was placed.
            return place()
    except OutOfStock as short:
        return short.shortages  # nothing was held


def keep_holding(sg: Client, order_id: str) -> Order | None:
    """The customer is still on the payment page: hold the stock until 15 minutes from
    now. ``None``: the hold ran out already; place the order again."""
    try:
        return sg.extend_order(order_id, reservation_ttl_seconds=900)
    except ReservationExpired:
        return None


def record_payment(sg: Client, order_id: str, payment_id: str, amount: int, currency: str) -> Order:
    """A payment your backend confirmed itself (bank transfer, cash, a provider whose
    webhook you receive): the held stock is committed to the order. One payment id pays
    one order; recording it again changes nothing."""
    order = sg.pay_order(
        order_id, provider="manual", payment_id=payment_id, amount=amount, currency=currency
    )
    if order.status == "needs_review":  # the amount or currency disagreed: look at it
        log.warning("order %s needs review", order_id)
    return order


def ship(sg: Client, order_id: str) -> Order:
    """The parcel left: paid → processing → shipped (each step only once)."""
    order = sg.get_order(order_id)
    if order.status == "paid":
        order = sg.set_order_status(order_id, "processing")
    if order.status == "processing":
        order = sg.set_order_status(order_id, "shipped")
    return order


def cancel(sg: Client, order_id: str, reason: str) -> Order:
    """Cancel before shipping: the held or committed stock goes back, once."""
    return sg.cancel_order(order_id, reason=reason)


def take_return(sg: Client, order_id: str, rma: str, lines: list[ReturnLineIn]) -> Return:
    """Units back from the customer after shipping, booked once per return id (your RMA
    number): ``restock`` puts them on sale again, ``damaged`` keeps them off sale."""
    return sg.create_return(order_id, rma, lines, note="returned by the customer")
