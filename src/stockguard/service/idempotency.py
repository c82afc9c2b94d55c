"""``Idempotency-Key`` answers stored in the same transaction as their effect (DESIGN.md
§10, invariant 15).

The API layer opens a :class:`Claim` for an authenticated POST with a key and says how
to turn the use case's result into the answer (``render``). The unit of work then, inside
the use case's own transaction, first inserts the key (a concurrent request with the same
key waits here for the first one's COMMIT and then finds it answered) and, just before
COMMIT, stores the answer. A crash can therefore never leave an effect whose key is free
to run it again: either both committed, or neither did. A refusal rolls back both; its
answer is stored afterwards, as it changed nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from stockguard.store.db import Conn

__all__ = [
    "Answer",
    "Claim",
    "KeyAnswered",
    "claim_key",
    "claim_keys",
    "close_claim",
    "current_claim",
    "load_answer",
    "open_claim",
    "store_answer",
    "store_answer_after",
    "store_answers",
]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    stored_body: bytes | None = None  # what a replay shows, when it must differ (secrets)


@dataclass
class Claim:
    owner: str  # the API key's id: a key's answers are its own
    key: str
    fingerprint: str
    render: Callable[[Any], Answer] | None = None
    answer: Answer | None = None  # stored in the effect's transaction
    done: bool = False  # a transaction took the claim (stored, or found it answered)


class KeyAnswered(Exception):
    """A concurrent request with the same key committed first: replay its answer."""

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.key)
        self.claim = claim


_current: contextvars.ContextVar[Claim | None] = contextvars.ContextVar(
    "stockguard_idempotency_claim", default=None
)


def current_claim() -> Claim | None:
    return _current.get()


def open_claim(claim: Claim | None) -> contextvars.Token[Claim | None]:
    return _current.set(claim)


def close_claim(token: contextvars.Token[Claim | None]) -> None:
    _current.reset(token)


async def claim_key(conn: Conn, claim: Claim) -> None:
    """First statement of the effect's transaction: take the key, or learn that another
    request took it (its transaction committed) and raise KeyAnswered."""
    taken = await conn.fetchval(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING true",
        claim.owner,
        claim.key,
        claim.fingerprint,
    )
    if not taken:
        claim.done = True
        raise KeyAnswered(claim)


async def claim_keys(conn: Conn, claims: list[Claim]) -> list[bool]:
    """:func:`claim_key` for a batch of requests in one statement (keys in one sorted
    order, so two batches cannot wait on each other): whether each key was taken here.
    The caller must not pass the same (owner, key) twice."""
    if not claims:
        return []
    rows = await conn.fetch(
        "INSERT INTO idempotency_keys (scope, key, request_hash) "
        "SELECT s, k, h FROM unnest($1::text[], $2::text[], $3::text[]) AS c(s, k, h) "
        "ORDER BY s, k ON CONFLICT DO NOTHING RETURNING scope, key",
        [c.owner for c in claims],
        [c.key for c in claims],
        [c.fingerprint for c in claims],
    )
    taken = {(r["scope"], r["key"]) for r in rows}
    return [(c.owner, c.key) in taken for c in claims]


async def store_answers(conn: Conn, answered: list[tuple[Claim, Answer]]) -> None:
    """:func:`store_answer` for a batch, in one statement."""
    if not answered:
        return
    await conn.execute(
        "UPDATE idempotency_keys i SET status_code = a.status, content_type = a.ct, "
        "body = a.body FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], "
        "$5::bytea[]) AS a(s, k, status, ct, body) WHERE i.scope = a.s AND i.key = a.k",
        [c.owner for c, _ in answered],
        [c.key for c, _ in answered],
        [a.status for _, a in answered],
        [a.content_type for _, a in answered],
        [a.stored_body if a.stored_body is not None else a.body for _, a in answered],
    )


async def store_answer(conn: Conn, claim: Claim, answer: Answer) -> None:
    """Last statement before COMMIT: the answer, with the effect it describes."""
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, content_type = $4, body = $5 "
        "WHERE scope = $1 AND key = $2",
        claim.owner,
        claim.key,
        answer.status,
        answer.content_type,
        answer.stored_body if answer.stored_body is not None else answer.body,
    )


async def store_answer_after(pool: asyncpg.Pool, claim: Claim, answer: Answer) -> None:
    """An answer that changed nothing (a refusal, a read): stored on its own, unless a
    concurrent request with the same key stored one first."""
    await pool.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, content_type, "
        "body) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        claim.owner,
        claim.key,
        claim.fingerprint,
        answer.status,
        answer.content_type,
        answer.body,
    )


async def load_answer(pool: asyncpg.Pool, owner: str, key: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT request_hash, status_code, content_type, body FROM idempotency_keys "
        "WHERE scope = $1 AND key = $2",
        owner,
        key,
    )
    return row
