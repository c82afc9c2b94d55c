"""Paying through Stripe: stockguard receives Stripe's ``payment_intent.succeeded``
webhook itself, checks its signature and commits the order named in the payment's
metadata. Your backend only has to put the order id there."""

from __future__ import annotations

import stripe

from stockguard_client import Order


def start_stripe_payment(stripe_client: stripe.StripeClient, order: Order) -> str:
    """Create the PaymentIntent for a held order; the answer's client secret goes to
    Stripe.js in the browser."""
    if order.total_amount is None or order.currency is None:
        raise ValueError("place the order with total_amount and currency to take a payment")
    intent = stripe_client.v1.payment_intents.create(
        params={
            "amount": order.total_amount,
            "currency": order.currency.lower(),
            "metadata": {"order_id": order.id},  # how stockguard finds the order
        },
        options={"idempotency_key": f"pay-{order.id}"},
    )
    return intent.client_secret or ""
