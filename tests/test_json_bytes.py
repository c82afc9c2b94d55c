"""The bytes of the answers: orjson's, identical to what Starlette's JSONResponse sends."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from starlette.responses import JSONResponse

from stockguard.api.answers import json_bytes


@pytest.mark.parametrize(
    "body",
    [
        {"id": "ord-1", "lines": [{"sku": "ÉTÉ-✓", "quantity": 3}], "paid_at": None},
        {"ok": True, "items": [], "next": 'a"b\\c\n'},
        [1, -9_223_372_036_854_775_808, 9_223_372_036_854_775_807],
    ],
)
def test_the_same_bytes_as_starlette(body: Any) -> None:
    assert json_bytes(body) == JSONResponse(body).body


def test_an_integer_beyond_64_bits_is_rendered_by_the_standard_library() -> None:
    body = {"units": 2**70}
    assert json_bytes(body) == JSONResponse(body).body
    assert json.loads(json_bytes(body)) == body


async def test_jsonb_parameters_are_stored_as_given(pool: asyncpg.Pool) -> None:
    for value in ({"sku": "ÉTÉ", "units": [1, 2]}, {"big": 2**70}, [None, True, "x"]):
        assert await pool.fetchval("SELECT $1::jsonb", value) == value
