"""The delivery rules without a database: event patterns, secrets, the Standard Webhooks
signature (checked against the ``standardwebhooks`` package), the retry schedule and
which addresses a webhook may never reach; and the settings that configure them."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from stockguard.config import Settings
from stockguard.domain.delivery import (
    EVENT_TYPES,
    is_refused_address,
    new_secret,
    parse_schedule,
    pattern_problem,
    retry_delay,
    sign,
)
from stockguard.store import events


def test_the_pattern_rules_know_every_type_the_outbox_writes() -> None:
    assert EVENT_TYPES | {"ping"} == set(events.EVENT_TYPES)


@pytest.mark.parametrize(
    "pattern", ["*", "stock.changed", "order.paid", "stock.*", "order.*", "payment.*"]
)
def test_patterns_accepted(pattern: str) -> None:
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize(
    "pattern", ["", "ping", "stock", "stock.", "stocks.*", "stock.nope", "*.changed", "**", "x.*"]
)
def test_patterns_refused(pattern: str) -> None:
    problem = pattern_problem(pattern)
    assert problem is not None
    assert repr(pattern) in problem


def test_a_new_secret_is_32_random_bytes_in_base64() -> None:
    made = {new_secret() for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32


def test_our_signature_is_the_one_standardwebhooks_computes_and_verifies() -> None:
    secret = new_secret()
    body = b'{"id":"evt_1","seq":7,"type":"stock.changed","data":{"sku":"\xc3\xa9"}}'
    now = int(datetime.now(UTC).timestamp())
    ours = sign(secret, "evt_1", now, body)
    theirs = Webhook(secret).sign("evt_1", datetime.fromtimestamp(now, UTC), body.decode())
    assert ours == theirs
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(now), "webhook-signature": ours}
    assert Webhook(secret).verify(body, headers)["seq"] == 7
    assert sign(secret, "evt_2", now, body) != ours
    assert sign(secret, "evt_1", now + 1, body) != ours
    assert sign(new_secret(), "evt_1", now, body) != ours


def test_the_schedule_parses_and_refuses_nonsense() -> None:
    assert parse_schedule("5,30, 120") == (5.0, 30.0, 120.0)
    assert parse_schedule("0.05") == (0.05,)
    for bad in ("", "5,,30", "five", "-1", "nan", "inf", "1e9"):
        with pytest.raises(ValueError, match=r".+"):
            parse_schedule(bad)


def test_retry_delays_follow_the_schedule_stretched_by_at_most_a_fifth() -> None:
    schedule = (5.0, 30.0, 120.0)
    assert retry_delay(schedule, 1, lambda: 0.0) == 5.0
    assert retry_delay(schedule, 2, lambda: 0.5) == 33.0
    assert math.isclose(retry_delay(schedule, 3, lambda: 0.999) or 0, 143.976)
    assert retry_delay(schedule, 4, lambda: 0.0) is None  # spent: the delivery fails
    assert retry_delay(schedule, 0, lambda: 0.0) is None


def test_the_default_schedule_retries_for_over_24_hours_and_8_attempts() -> None:
    default = Settings().webhook_retry_delays
    assert len(default) >= 8
    assert sum(default) >= 24 * 3600


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.0.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),  # noqa: S104  (an address to refuse, not to bind)
        ("224.0.0.251", True),
        ("240.0.0.1", True),
        ("255.255.255.255", True),
        ("192.0.2.1", True),
        ("::1", True),
        ("::", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("93.184.216.34", False),
        ("8.8.8.8", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
        ("::ffff:93.184.216.34", False),
    ],
)
def test_which_addresses_a_webhook_may_not_reach(address: str, refused: bool) -> None:
    assert is_refused_address(address) is refused


def test_settings_refuse_a_bad_schedule_and_a_lease_shorter_than_an_attempt() -> None:
    with pytest.raises(ValidationError, match="webhook_retry_schedule"):
        Settings(webhook_retry_schedule="5,soon")
    with pytest.raises(ValidationError, match="webhook_lease_seconds"):
        Settings(webhook_timeout_seconds=10, webhook_lease_seconds=10.5)
    ok = Settings(webhook_retry_schedule="1,2", webhook_timeout_seconds=1, webhook_lease_seconds=3)
    assert ok.webhook_retry_delays == (1.0, 2.0)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKGUARD_WEBHOOK_RETRY_SCHEDULE", "0.5,1")
    monkeypatch.setenv("STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("STOCKGUARD_EVENT_RETENTION_DAYS", "3")
    s = Settings()
    assert (s.webhook_retry_delays, s.webhook_allow_private_urls) == ((0.5, 1.0), True)
    assert s.event_retention_days == 3
    defaults = Settings.model_fields
    assert defaults["webhook_allow_private_urls"].default is False
    assert defaults["event_retention_days"].default == 7
    assert defaults["webhook_timeout_seconds"].default == 10.0
