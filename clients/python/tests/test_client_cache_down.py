"""503 ``cache_unavailable`` from a real server whose Redis was stopped: the client sends
the call again under the same Idempotency-Key, then raises :class:`CacheUnavailable`, and
nothing was changed. A server of its own (strict cache mode, its own redis-server), so
the other tests' server keeps its Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import Machine, Server, running_stockguard
from sgc_network import RecordingTransport, Wire
from stockguard.embedded import EmbeddedRedis, start_redis
from stockguard_client import CacheUnavailable, Client, NotFound


@pytest.fixture(scope="module")
def cacheless(machine: Machine) -> Iterator[tuple[Server, EmbeddedRedis]]:
    own = machine.scratch / "cacheless-redis"
    cache = start_redis(own)
    try:
        with running_stockguard(machine.scratch, machine.base_db, cache.url, "cacheless") as s:
            yield s, cache
    finally:
        cache.stop()


def test_cache_unavailable_is_retried_under_one_key_then_raised(
    cacheless: tuple[Server, EmbeddedRedis],
) -> None:
    server, cache = cacheless
    with Client(server.url, server.admin_key) as admin:
        admin.put_location("main", "Main")
        admin.put_sku("CACHE-1", "cached")
        admin.adjust_stock("CACHE-1", "main", delta=5, reason="received")
        assert admin.get_sku("CACHE-1").available == 5
    cache.stop()

    wire = Wire()
    transport = RecordingTransport(wire)
    with Client(
        server.url, server.service_key, transport=transport, backoff=0.01, max_retries=2
    ) as shop:
        with pytest.raises(CacheUnavailable) as caught:
            shop.place_order([{"sku": "CACHE-1", "quantity": 1}], id="cache-order")
        assert [x.status for x in wire.exchanges] == [503, 503, 503]
        assert len({x.idempotency_key for x in wire.exchanges}) == 1
        assert caught.value.idempotency_key == wire.exchanges[0].idempotency_key
        assert caught.value.code == "cache_unavailable"
        with pytest.raises(NotFound):
            shop.get_order("cache-order")  # nothing was placed
