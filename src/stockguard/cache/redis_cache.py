"""Availability in Redis.

Keys (Redis-Cluster safe: the SKU in braces is the hash tag, so one SKU's keys share a
slot and each script call touches one slot):

- ``product:{SKU}:inventory`` - total available across active locations (integer string)
- ``product:{SKU}:locations`` - hash location -> available, active locations only
- ``product:{SKU}:version``   - the PostgreSQL cache version the two keys above reflect

A write carries the version of the transaction that produced it (``cache_version_seq``)
and a Lua script applies it only if no newer version is stored, so a slow, older write
never overwrites a newer value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from stockguard.store.db import Conn
from stockguard.store.levels import AVAILABLE_SQL, STAMP_SQL

__all__ = [
    "Entry",
    "RedisCache",
    "SkuAvailability",
    "Written",
    "availability",
    "load_availability",
    "stamp_and_load",
]

# Returns 1 written, 0 refused (a newer version is stored), -1 partial state found: some
# of the three keys were evicted, so the stored version cannot be trusted to refuse an
# older write; the SKU's keys are dropped (reads fall back to PostgreSQL) and the writer
# marks it for the reconciler.
_WRITE_LUA = """
local stored = redis.call('GET', KEYS[3])
if not stored and redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return -1
end
local cur = tonumber(stored or '-1')
local ver = tonumber(ARGV[1])
if ver < cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
if #ARGV > 2 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 3))
end
redis.call('SET', KEYS[3], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Entry:
    total: int | None
    locations: dict[str, int]
    versioned: bool

    @property
    def answer(self) -> tuple[int, dict[str, int]] | None:
        whole = (
            self.total is not None and self.versioned and sum(self.locations.values()) == self.total
        )
        return (self.total, self.locations) if whole and self.total is not None else None


@dataclass(frozen=True, slots=True)
class Written:
    count: int  # SKUs written
    dropped: tuple[str, ...]  # SKUs found partly evicted: dropped, to be repaired


@dataclass(frozen=True, slots=True)
class SkuAvailability:
    sku: str
    version: int
    locations: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.locations.values())


async def load_availability(conn: Conn, skus: Sequence[str]) -> dict[str, SkuAvailability]:
    """PostgreSQL's availability for these SKUs (active locations only), with versions."""
    rows = await conn.fetch(
        f"""
        SELECT l.sku, l.location, {AVAILABLE_SQL} AS available, l.version, loc.active
        FROM inventory_levels l JOIN locations loc ON loc.code = l.location
        WHERE l.sku = ANY($1::text[])
        """,
        list(skus),
    )
    return availability(skus, rows)


async def stamp_and_load(conn: Conn, skus: Sequence[str]) -> dict[str, SkuAvailability]:
    """Give these SKUs' levels a new cache version and return their availability.

    Call only while holding the locks on every level of these SKUs: then every earlier
    writer of them (committed or rolled back) took its version before this one, so this
    write outranks all of theirs in Redis.
    """
    rows = await conn.fetch(STAMP_SQL, list(skus))
    return availability(skus, rows)


def availability(skus: Sequence[str], rows: Sequence[asyncpg.Record]) -> dict[str, SkuAvailability]:
    """Each SKU's availability from its level rows (sku, location, available, version,
    active), as ``store.levels.stamp_cte`` returns them."""
    locations: dict[str, dict[str, int]] = {s: {} for s in skus}
    versions: dict[str, int] = dict.fromkeys(skus, 0)
    for r in rows:
        versions[r["sku"]] = max(versions[r["sku"]], r["version"])
        if r["active"]:
            locations[r["sku"]][r["location"]] = r["available"]
    return {s: SkuAvailability(s, versions[s], locations[s]) for s in skus}


class RedisCache:
    """Reads and versioned writes of availability."""

    def __init__(self, client: aioredis.Redis, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self._sha: str | None = None

    def keys(self, sku: str) -> tuple[str, str, str]:
        base = f"{self.prefix}product:{{{sku}}}"
        return f"{base}:inventory", f"{base}:locations", f"{base}:version"

    async def _script_sha(self) -> str:
        if self._sha is None:
            self._sha = str(await self.client.script_load(_WRITE_LUA))
        return self._sha

    async def write(self, states: Iterable[SkuAvailability]) -> Written:
        """Write each SKU's availability unless Redis holds a newer version; one round
        trip for all of them."""
        states = list(states)
        if not states:
            return Written(0, ())
        sha = await self._script_sha()
        try:
            return await self._write(sha, states)
        except NoScriptError:  # Redis restarted and lost its script cache
            self._sha = None
            return await self._write(await self._script_sha(), states)

    async def _write(self, sha: str, states: list[SkuAvailability]) -> Written:
        pipe = self.client.pipeline(transaction=False)
        for st in states:
            args: list[str | int] = [st.version, st.total]
            for loc, n in sorted(st.locations.items()):
                args.extend((loc, n))
            pipe.evalsha(sha, 3, *self.keys(st.sku), *args)
        results = [int(r) for r in await pipe.execute()]
        return Written(
            results.count(1),
            tuple(st.sku for st, r in zip(states, results, strict=True) if r < 0),
        )

    async def read(self, skus: Sequence[str]) -> dict[str, tuple[int, dict[str, int]] | None]:
        """SKU -> (total, {location: available}); None where Redis has no whole entry:
        a key evicted alone (the hash, the total or the version) makes a miss, never a
        wrong number."""
        return {sku: e.answer for sku, e in (await self.entries(skus)).items()}

    async def entries(self, skus: Sequence[str]) -> dict[str, Entry]:
        """What Redis holds for each SKU, whole or not (the reconciler's view)."""
        pipe = self.client.pipeline(transaction=False)
        for sku in skus:
            inv, loc, ver = self.keys(sku)
            pipe.get(inv)
            pipe.hgetall(loc)
            pipe.exists(ver)
        raw = await pipe.execute()
        return {
            sku: Entry(
                None if raw[3 * i] is None else int(raw[3 * i]),
                {_text(k): int(v) for k, v in raw[3 * i + 1].items()},
                bool(raw[3 * i + 2]),
            )
            for i, sku in enumerate(skus)
        }

    async def delete(self, skus: Iterable[str]) -> None:
        keys = [k for sku in skus for k in self.keys(sku)]
        if keys:
            await self.client.delete(*keys)

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
