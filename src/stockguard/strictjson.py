"""Strict parsing of untrusted JSON text (request bodies, signed webhook bodies).

``json.loads`` lets the last of two equal keys win, builds objects of any size, raises
``RecursionError`` (not ``ValueError``) on deep nesting and returns lone UTF-16 surrogates
that no UTF-8 store can hold. ``loads`` refuses all of these with ``RefusedJSON``, a
``json.JSONDecodeError``, so every caller that handles bad JSON handles them too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

__all__ = ["MAX_KEYS", "RefusedJSON", "loads"]

MAX_KEYS = 256  # per object: far above any request model, far below what 1 MiB can hold

# A \uD800-\uDFFF escape: only then can the parsed value hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class RefusedJSON(json.JSONDecodeError):
    """Well-formed or not, JSON text this service does not accept; ``msg`` says why."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, "", 0)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_KEYS:
        raise RefusedJSON(f"an object has more than {MAX_KEYS} keys")
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would let the last one win
        counts = Counter(key for key, _ in pairs)
        key = next(key for key, n in counts.items() if n > 1)
        raise RefusedJSON(f"duplicate key {key[:64]!r}")
    return obj


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(text: bytes) -> Any:
    """The JSON value of ``text``; ``RefusedJSON`` (or ``json.JSONDecodeError``) if bad."""
    try:
        value = json.loads(text, object_pairs_hook=_object)
    except RecursionError as exc:
        raise RefusedJSON("the JSON is nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise RefusedJSON("the body is not UTF-8") from exc
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise RefusedJSON("a string holds a lone UTF-16 surrogate")
    return value
