"""``verify_webhook`` against the ``standardwebhooks`` package as an independent signer
(and verifier of ``sign_webhook``): good signatures pass, anything altered, stale or
missing is refused."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from stockguard_client import (
    OrderEvent,
    PingEvent,
    StockChangedEvent,
    UnknownEvent,
    WebhookVerificationError,
    sign_webhook,
    verify_webhook,
)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
OTHER = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
EVENT = {
    "id": "evt_" + "a" * 32,
    "seq": 42,
    "type": "stock.changed",
    "occurred_at": "2026-11-26T10:00:00Z",
    "data": {
        "sku": "TSHIRT-M",
        "on_hand": 10,
        "reserved": 2,
        "unavailable": 0,
        "safety_stock": 1,
        "available": 7,
        "locations": {"main": 7},
    },
}


def _delivery(
    event: dict[str, object] = EVENT, secret: str = SECRET, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    """A delivery as stockguard sends it, signed by the standardwebhooks package."""
    body = json.dumps(event).encode()
    when = at or datetime.now(UTC)
    signature = Webhook(secret).sign(str(event["id"]), when, body.decode())
    headers = {
        "webhook-id": str(event["id"]),
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def test_a_delivery_signed_by_standardwebhooks_verifies() -> None:
    body, headers = _delivery()
    event = verify_webhook(body, headers, SECRET)
    assert isinstance(event, StockChangedEvent)
    assert (event.id, event.seq, event.data.available) == (EVENT["id"], 42, 7)
    assert event.occurred_at == datetime(2026, 11, 26, 10, tzinfo=UTC)
    # Header names in any case, as frameworks hand them over.
    assert verify_webhook(body, {k.title(): v for k, v in headers.items()}, SECRET) == event


def test_our_signature_verifies_with_standardwebhooks() -> None:
    body = json.dumps(EVENT).encode()
    stamp = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign_webhook(SECRET, "msg_1", stamp, body),
    }
    assert Webhook(SECRET).verify(body, headers) == EVENT


def test_one_matching_signature_among_several_is_enough() -> None:
    body, headers = _delivery()
    wrong = sign_webhook(OTHER, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    headers["webhook-signature"] = f"v1a,xyz {wrong} {headers['webhook-signature']}"
    assert verify_webhook(body, headers, SECRET).id == EVENT["id"]


@pytest.mark.parametrize(
    "tamper",
    [
        "body",
        "secret",
        "id",
        "timestamp",
        "old",
        "future",
        "no-signature",
        "no-id",
        "no-timestamp",
        "bad-timestamp",
        "version",
        "bad-secret",
        "not-an-event",
    ],
)
def test_anything_altered_stale_or_missing_is_refused(tamper: str) -> None:
    body, headers = _delivery()
    secret = SECRET
    if tamper == "body":
        body = body.replace(b'"available": 7', b'"available": 8')
    elif tamper == "secret":
        secret = OTHER
    elif tamper == "id":
        headers["webhook-id"] = "evt_" + "b" * 32
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + 1)
    elif tamper == "old":
        body, headers = _delivery(at=datetime.now(UTC) - timedelta(minutes=6))
    elif tamper == "future":
        body, headers = _delivery(at=datetime.now(UTC) + timedelta(minutes=6))
    elif tamper.startswith("no-"):
        del headers["webhook-" + tamper.removeprefix("no-")]
    elif tamper == "bad-timestamp":
        headers["webhook-timestamp"] = "yesterday"
    elif tamper == "version":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    elif tamper == "bad-secret":
        secret = "whsec_!!not base64!!"
    else:
        body, headers = _delivery(event={"id": "evt_x", "hello": "world"})
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, secret)


def test_tolerance_is_five_minutes_each_way() -> None:
    now = datetime.now(UTC)
    for offset in (timedelta(minutes=-4, seconds=-50), timedelta(minutes=4, seconds=50)):
        body, headers = _delivery(at=now + offset)
        assert verify_webhook(body, headers, SECRET, now=now.timestamp()).id == EVENT["id"]


def test_every_event_kind_parses() -> None:
    order = {
        "id": "o-1",
        "status": "paid",
        "channel": None,
        "lines": [{"sku": "A", "quantity": 1}],
        "reservations": [],
        "payment": {"provider": "stripe", "payment_id": "pi_1", "paid_at": None},
        "total_amount": None,
        "currency": None,
        "created_at": "2026-11-26T10:00:00Z",
        "updated_at": "2026-11-26T10:00:00Z",
    }
    paid = dict(EVENT, type="order.paid", data={"order": order})
    body, headers = _delivery(paid)
    event = verify_webhook(body, headers, SECRET)
    assert isinstance(event, OrderEvent)
    assert event.data.order.payment is not None
    ping = dict(EVENT, seq=None, type="ping", data={"endpoint_id": "we_1"})
    assert isinstance(verify_webhook(*_delivery(ping), SECRET), PingEvent)
    later = dict(EVENT, type="price.changed", data={"sku": "A", "price": 5})
    unknown = verify_webhook(*_delivery(later), SECRET)
    assert isinstance(unknown, UnknownEvent)
    assert unknown.data == {"sku": "A", "price": 5}
