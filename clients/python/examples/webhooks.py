"""Receiving stockguard's webhooks: check the signature with the endpoint's secret,
apply the event, answer 2xx quickly. Anything else is sent again later."""

from __future__ import annotations

from collections.abc import Mapping

from events import Storefront
from stockguard_client import Client, WebhookVerificationError, verify_webhook


def subscribe(admin: Client, url: str) -> tuple[str, str]:
    """Once, with an admin key: send order and stock events to ``url``. Returns the
    endpoint's id and its secret, which is shown only now: keep it with your app's
    other secrets."""
    endpoint = admin.create_webhook_endpoint(url, ["order.*", "stock.*"], description="shop")
    assert endpoint.secret is not None
    return endpoint.id, endpoint.secret


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
