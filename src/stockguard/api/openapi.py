"""The served OpenAPI document: what FastAPI derives from the routes, completed with what
the middleware decides for every route of a kind.

Each route declares its own success bodies and business refusals (``responses=`` built by
:func:`stockguard.api.responses.answers`). What a route answers because of the layers in
front of it is added here, from the same facts those layers act on, so the two cannot
disagree: the role :mod:`stockguard.api.auth` reads from the route's dependencies gives
the bearer security requirement and 401 ``unauthorized`` / 403 ``forbidden``; a body
method gives 413 ``payload_too_large`` (:class:`~stockguard.api.middleware.BodyLimit`); an
authenticated POST gives the ``Idempotency-Key`` header and its 422/409 answers
(:class:`~stockguard.api.middleware.Idempotency`); any input gives 422
``validation_error``; any key lookup 503 ``busy``. FastAPI's default 422
``HTTPValidationError`` never appears: ours is problem+json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from stockguard.api.auth import ADMIN, api_routes, role_of
from stockguard.api.refusals import PROBLEMS, REF, codes_of, problem_response, status_of
from stockguard.api.responses import RAW_BODIES

__all__ = ["IDEMPOTENCY_KEY", "SECURITY_SCHEME", "document", "install_openapi"]

SECURITY_SCHEME = "apiKey"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any 1 to 255 characters. The same key and the same request again "
    "answer the first answer again (status and body, with `Idempotent-Replayed: true`); "
    "the same key with another request is 422 `idempotency_key_reused`. Kept at least "
    "24 h, per API key.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}

DESCRIPTION = """Inventory service: never oversell, never lose a unit, never restore a unit twice.

Authentication: `Authorization: Bearer <api key>`. Routes marked with the role `service` take
service and admin keys; routes marked `admin` take admin keys only.

Every refusal is RFC 9457 `application/problem+json` with a `code` (each status below lists
the codes that route can answer), and changes nothing. Besides those, any request may be
answered 405 `method_not_allowed` (with `Allow`) or 400 `bad_request` (an HTTP request that
cannot be read). 431 `request_header_fields_too_large` answers a request line and headers
over 16 KiB (a long `?sku=` list counts). Text fields cannot hold U+0000 (422).
"""


def _codes(route: APIRoute, role: str | None) -> set[str]:
    """The codes this route answers because of the layers in front of it."""
    codes = {"request_header_fields_too_large"}  # any request head over the limit
    if role is not None:
        codes |= {"unauthorized", "busy"}  # the key is looked up in PostgreSQL
        if role == ADMIN:
            codes.add("forbidden")
    methods = route.methods or set()
    if methods & BODY_METHODS:
        codes.add("payload_too_large")
    if role is not None and "POST" in methods:
        # A bad key; a key reused with another request; a concurrent first use that
        # stored nothing after all (retry).
        codes |= {"validation_error", "idempotency_key_reused", "conflict"}
    if get_flat_params(route.dependant) or route.body_field is not None:
        codes.add("validation_error")
    return codes


def _complete(responses: dict[str, Any], codes: set[str]) -> dict[str, Any]:
    """``responses`` of one operation with the problem entries of ``codes`` merged in,
    FastAPI's default 422 replaced, sorted by status."""
    by_status: dict[str, set[str]] = {}
    for code in codes:
        by_status.setdefault(str(status_of(code)), set()).add(code)
    out = dict(responses)
    for status, added in by_status.items():
        declared = out.get(status, {})
        if "application/json" in declared.get("content", {}) and status != "422":
            raise AssertionError(f"{status} is both an answer and a problem")
        out[status] = problem_response(added | set(codes_of(declared)))
    return dict(sorted(out.items()))


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF + "{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


def document(app: FastAPI, build: Callable[[], dict[str, Any]], roles: dict[Any, str]) -> None:
    """Build FastAPI's document with ``build`` and complete it (the routes FastAPI
    serves may be copies of the declared ones: only the document is changed)."""
    schema = build()
    schema["info"]["description"] = DESCRIPTION
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    components.setdefault("schemas", {}).update(_schemas([*PROBLEMS.values(), *RAW_BODIES]))
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`stockguard keys create` or POST "
            "/v1/admin/api-keys). The requirement names the role a route needs: "
            "`service` (service or admin keys) or `admin`.",
        }
    }
    schema["webhooks"] = {"event": EVENT_DELIVERY}
    for route in api_routes(app.routes):
        if not route.include_in_schema:  # /docs, /redoc
            continue
        role = role_of(route.dependant, roles)
        for method in sorted(route.methods or ()):
            operation = schema["paths"][route.path_format][method.lower()]
            operation["responses"] = _complete(operation["responses"], _codes(route, role))
            if role is None:
                continue
            operation["security"] = [{SECURITY_SCHEME: [role]}]
            if method == "POST":
                operation.setdefault("parameters", []).append(dict(IDEMPOTENCY_KEY))


def _delivery(header: str, description: str) -> dict[str, Any]:
    return {
        "name": header,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


# Outgoing webhooks (API.md "Outgoing events", Standard Webhooks): what stockguard sends.
EVENT_DELIVERY: dict[str, Any] = {
    "post": {
        "summary": "An event delivered to a webhook endpoint",
        "description": "At least once, in `seq` order per endpoint; retried with backoff "
        "until a 2xx within 10 s. Verify `webhook-signature` = `v1,<base64 HMAC-SHA256(key, "
        '"{webhook-id}.{webhook-timestamp}.{body}")>` where `key` is the base64-decoding of '
        "the endpoint's secret after `whsec_`.",
        "operationId": "event_delivery",
        "tags": ["events"],
        "parameters": [
            _delivery("webhook-id", "the event id: the same on every attempt"),
            _delivery("webhook-timestamp", "unix seconds of this attempt"),
            _delivery("webhook-signature", "`v1,<base64 signature>`"),
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF + "Event"}}},
        },
        "responses": {"2XX": {"description": "Acknowledged; anything else is retried"}},
    }
}


def install_openapi(app: FastAPI, roles: dict[Any, str]) -> None:
    """Serve the completed document at ``/openapi.json`` (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document(app, build, roles)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
