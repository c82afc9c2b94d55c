"""Verifying the webhooks stockguard sends (Standard Webhooks): an HMAC-SHA256 signature of
``"{webhook-id}.{webhook-timestamp}.{body}"`` keyed by the endpoint's secret."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from stockguard_client.errors import WebhookVerificationError
from stockguard_client.models import Event, parse_event

__all__ = ["sign_webhook", "verify_webhook"]

TOLERANCE_SECONDS = 300


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the secret is not whsec_<base64>") from exc
    if not key:
        raise WebhookVerificationError("the secret is empty")
    return key


def sign_webhook(secret: str, webhook_id: str, timestamp: int, payload: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one delivery."""
    signed = f"{webhook_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify_webhook(
    payload: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_seconds: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> Event:
    """The event a webhook delivered, once its signature checks out.

    ``payload`` is the request body exactly as received (bytes, before any JSON
    parsing); ``headers`` the request's headers (any case); ``secret`` the endpoint's
    ``whsec_…``. Raises :class:`WebhookVerificationError` when a header is missing, the
    timestamp is more than ``tolerance_seconds`` away from now (a replay), or no
    ``v1`` signature matches. The same event may arrive more than once (same
    ``webhook-id``, same ``event.id``): handle it idempotently.
    """
    webhook_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    expected = sign_webhook(secret, webhook_id, timestamp, payload).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()):
            break
    else:
        raise WebhookVerificationError("no matching signature")
    try:
        return parse_event(json.loads(payload))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise WebhookVerificationError("the body is not an event") from exc
