"""Receiving stockguard's webhooks: check the signature with the endpoint's secret,
apply the event, answer 2xx quickly. Anything else is sent again later."""

from __future__ import annotations

from collections.abc import Mapping

from events import Storefront
from stockguard_client import WebhookVerificationError, verify_webhook


def receive(body: bytes, headers: Mapping[str, str], secret: str, store: Storefront) -> int:
    """Your webhook route's handler: the raw body (bytes, not parsed JSON), the request
    headers and the ``whsec_…`` secret shown when the endpoint was created. Returns the
    HTTP status to answer."""
    try:
        event = verify_webhook(body, headers, secret)
    except WebhookVerificationError:
        return 400  # not from stockguard, altered, or too old
    store.apply(event)  # the same event may arrive twice: apply() skips a repeat
    return 204
