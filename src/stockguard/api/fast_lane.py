"""The flooded routes without FastAPI's request machinery.

A flash sale's requests are placements, cancels and the winners' payments. FastAPI's
routing, body handling, dependency solving and response rendering cost about what the bare
endpoint's whole request does (docs/PERFORMANCE.md "Where the time goes"), and a sold-out
buyer's answer is mostly that. A :class:`FastLane` is a route placed before every other one
of the app. It takes the ``POST`` of its path when the request is the plain case: a key
that :class:`~stockguard.api.auth.Authentication` found, a JSON body (``Content-Type:
application/json``) that ``strictjson`` parses and the route's own model accepts (for a
cancel also none at all), a path parameter the route accepts. Then it calls the function
the FastAPI route calls (:func:`stockguard.api.routes.placed`,
:func:`~stockguard.api.routes.cancelled`, :func:`~stockguard.api.routes.paid`) and sends
that response. Anything else goes on, with the body already read, to the FastAPI route,
which answers it exactly as without the lane: every refusal of input comes from there. An
exception raised in the lane meets the same handlers as the route's own, since the lane is
a route of the same router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.datastructures import State
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, compile_path
from starlette.types import Receive, Scope, Send

from stockguard import strictjson
from stockguard.api.auth import api_key_of
from stockguard.api.middleware import read_body, replay
from stockguard.api.routes import cancelled, is_order_id, paid, placed
from stockguard.api.schemas import CancelIn, OrderIn, PaymentIn
from stockguard.store import keys

__all__ = ["FastLane", "install_fast_lanes"]

# Set on a request the lane handed on: the router's second pass skips the lane.
_HANDED_ON: Final = "stockguard.fast_lane.handed_on"
_NO_BODY: Final = object()

# The request's answer, to be awaited; None: hand the request on.
Answer = Callable[[], Awaitable[Response]] | None
# (the app's state, path parameters, the parsed body or _NO_BODY, key) -> its answer
Handler = Callable[[State, dict[str, str], Any, keys.ApiKey], Answer]


def _model(model: type[BaseModel], data: Any) -> Any:
    """``data`` as ``model``, or None when the model refuses it."""
    try:
        return model.model_validate(data)
    except ValueError:  # pydantic's ValidationError is one
        return None


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = bytes(value).split(b";", 1)[0].strip().lower()
            return media == b"application/json"
    return False


class FastLane(BaseRoute):
    """``POST path`` through ``handler`` when the request is the plain case."""

    def __init__(self, path: str, handler: Handler, *, body_required: bool) -> None:
        self.path = path
        self.regex, _, _ = compile_path(path)
        self.handler = handler
        self.body_required = body_required
        self.router: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
        self.taken = 0  # requests answered here and handed on (tests)
        self.handed_on = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "POST" or _HANDED_ON in scope:
            return Match.NONE, {}
        found = self.regex.match(scope["path"])
        if found is None:
            return Match.NONE, {}
        return Match.FULL, {"path_params": found.groupdict()}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # the FastAPI route has the name

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, 1 << 62) or b""  # BodyLimit has bounded it
        answer = self._plain(scope, body)
        if answer is None:
            self.handed_on += 1
            scope[_HANDED_ON] = True
            assert self.router is not None
            await self.router(scope, replay(body), send)
            return
        self.taken += 1
        response = await answer()
        await response(scope, receive, send)

    def _plain(self, scope: Scope, body: bytes) -> Answer:
        """The answer when the request is the plain case, else None."""
        key = api_key_of(scope)
        if key is None:
            return None
        data: Any = _NO_BODY
        if body:
            if not _is_json(scope):
                return None
            try:
                data = strictjson.loads(body)
            except (ValueError, RecursionError):
                return None
        elif self.body_required:
            return None
        return self.handler(scope["app"].state, scope["path_params"], data, key)


def _place(state: State, _params: dict[str, str], data: Any, key: keys.ApiKey) -> Answer:
    body = _model(OrderIn, data)
    return None if body is None else partial(placed, state, body, key)


def _cancel(state: State, params: dict[str, str], data: Any, key: keys.ApiKey) -> Answer:
    order_id = params["order_id"]
    if not is_order_id(order_id):
        return None
    body = None if data is _NO_BODY else _model(CancelIn, data)
    if data is not _NO_BODY and body is None:
        return None
    return partial(cancelled, state, order_id, body, key)


def _pay(state: State, params: dict[str, str], data: Any, key: keys.ApiKey) -> Answer:
    order_id = params["order_id"]
    body = _model(PaymentIn, data)
    if not is_order_id(order_id) or body is None:
        return None
    return partial(paid, state, order_id, body, key)


def install_fast_lanes(app: FastAPI) -> list[FastLane]:
    """The lanes of ``POST /v1/orders``, ``POST /v1/orders/{order_id}/cancel`` and ``POST
    /v1/orders/{order_id}/payments``, first among the app's routes; what they hand on goes
    through the app's router again."""
    lanes = [
        FastLane("/v1/orders", _place, body_required=True),
        FastLane("/v1/orders/{order_id}/cancel", _cancel, body_required=False),
        FastLane("/v1/orders/{order_id}/payments", _pay, body_required=True),
    ]
    for lane in lanes:
        lane.router = app.router
    app.router.routes[0:0] = lanes
    return lanes
