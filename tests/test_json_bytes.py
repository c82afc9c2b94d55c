"""The bytes of the answers: orjson's, identical to what Starlette's JSONResponse sends."""

from __future__ import annotations

import json
from typing import Any

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
