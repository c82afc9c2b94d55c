"""The route class of every API router: request bodies are parsed by ``strictjson``.

FastAPI parses a JSON body with ``Request.json()``; the request it hands over here parses
with ``strictjson.loads``, so duplicate keys, lone surrogates, objects of more than
``MAX_KEYS`` keys and deep nesting are 422 ``validation_error`` before any model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from stockguard import strictjson

__all__ = ["StrictJSONRequest", "StrictJSONRoute"]


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        return strictjson.loads(await self.body())  # FastAPI asks once; body() is cached


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
