"""The rules of webhook delivery (API.md "Outgoing events"), without I/O: which event
types an endpoint may ask for, how an attempt is signed (Standard Webhooks), how long to
wait before the next attempt, and which network addresses a delivery may never reach."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable, Sequence

__all__ = [
    "EVENT_TYPES",
    "SECRET_PREFIX",
    "is_refused_address",
    "new_secret",
    "parse_schedule",
    "pattern_problem",
    "retry_delay",
    "sign",
]

# Every type API.md lists; "ping" only comes from the test route, never from a pattern.
EVENT_TYPES = frozenset(
    {
        "stock.changed",
        "stock.out_of_stock",
        "stock.back_in_stock",
        "stock.low",
        "order.placed",
        "order.paid",
        "order.needs_review",
        "order.cancelled",
        "order.deleted",
        "order.shipped",
        "order.delivered",
        "order.expired",
        "order.recovered",
        "order.returned",
        "payment.inconsistency",
        "transfer.shipped",
        "transfer.received",
        "transfer.cancelled",
    }
)
_PREFIXES = frozenset(t.split(".", 1)[0] for t in EVENT_TYPES)
SECRET_PREFIX = "whsec_"  # noqa: S105  (the prefix, not a secret)


def pattern_problem(pattern: str) -> str | None:
    """Why an endpoint's event pattern is refused, or None: ``*``, a type, or
    ``<prefix>.*`` of a known type (so a typo cannot silently match nothing)."""
    if pattern == "*" or pattern in EVENT_TYPES:
        return None
    prefix, dot, star = pattern.partition(".")
    if dot and star == "*" and prefix in _PREFIXES:
        return None
    return f"{pattern!r} is not '*', an event type or '<prefix>.*' of one"


def new_secret() -> str:
    """``whsec_`` and the base64 of 32 random bytes (the signing key)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` keyed with the base64-decoded secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"5,30,120"`` → (5.0, 30.0, 120.0): the waits after the first, second... failed
    attempt. Raises ValueError unless it is one or more non-negative numbers."""
    parts = [p.strip() for p in text.split(",")]
    delays = tuple(float(p) for p in parts)  # ValueError for "" or words
    if any(not 0 <= d < 10**7 for d in delays):  # also refuses nan and inf
        raise ValueError("each retry delay must be a number of seconds, 0 <= d < 10,000,000")
    return delays


def retry_delay(
    schedule: Sequence[float], failed_attempts: int, jitter: Callable[[], float]
) -> float | None:
    """Seconds to wait after ``failed_attempts`` failures, or None when the schedule is
    spent (the delivery is then ``failed``). ``jitter()`` gives a number in [0, 1): the
    wait is stretched by up to 20 %, never shortened, so the schedule's total (24 h and
    more by default) is a lower bound, and endpoints that failed together do not all come
    back at the same instant."""
    if failed_attempts < 1 or failed_attempts > len(schedule):
        return None
    return schedule[failed_attempts - 1] * (1 + 0.2 * jitter())


def is_refused_address(address: str) -> bool:
    """An address that a webhook may not reach unless private URLs are allowed: loopback,
    private, link-local, shared (CGNAT), multicast, unspecified, reserved or documentation
    ranges; an IPv4-mapped IPv6 address is judged as its IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip.is_reserved
