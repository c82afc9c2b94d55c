"""API keys: stored as SHA-256 hashes, never in the clear; shown once at creation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from stockguard.store.db import Conn

__all__ = [
    "ApiKey",
    "authenticate",
    "create_key",
    "hash_key",
    "list_keys",
    "revoke_key",
    "still_valid",
]

ROLES = ("admin", "service")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None = None
    key_prefix: str = ""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=str(row["id"]),
        name=row["name"],
        role=row["role"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        key_prefix=row["key_prefix"],
    )


async def create_key(
    conn: Conn, role: str, name: str, key: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key (random unless given); returns it with the clear key, shown only now."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    clear = key or f"sg_{role[:3]}_{secrets.token_urlsafe(32)}"
    row = await conn.fetchrow(
        "INSERT INTO api_keys (name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (key_hash) DO UPDATE SET name = api_keys.name "
        "RETURNING id, name, role, created_at, revoked_at, key_prefix",
        name,
        role,
        hash_key(clear),
        clear[:8],
    )
    assert row is not None
    return _key(row), clear


async def authenticate(conn: Conn, key: str) -> ApiKey | None:
    digest = hash_key(key)
    row = await conn.fetchrow(
        "SELECT id, name, role, created_at, revoked_at, key_prefix, key_hash FROM api_keys "
        "WHERE key_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    if row is None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    return _key(row)


async def still_valid(conn: Conn, digests: list[str]) -> set[str]:
    """Which of these key hashes still name a key that is not revoked."""
    rows = await conn.fetch(
        "SELECT key_hash FROM api_keys WHERE key_hash = ANY($1::text[]) AND revoked_at IS NULL",
        digests,
    )
    return {r["key_hash"] for r in rows}


async def list_keys(conn: Conn, limit: int, after: str | None) -> list[ApiKey]:
    rows = await conn.fetch(
        "SELECT id, name, role, created_at, revoked_at, key_prefix FROM api_keys "
        "WHERE $1::uuid IS NULL OR id > $1::uuid ORDER BY id LIMIT $2",
        after,
        limit,
    )
    return [_key(r) for r in rows]


async def revoke_key(conn: Conn, key_id: str) -> bool:
    result: str = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid AND revoked_at IS NULL",
        key_id,
    )
    return result.endswith(" 1")
