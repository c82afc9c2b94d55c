"""The served OpenAPI document, operation by operation (issue 11): request and answer bodies
are named schemas, refusals are problem+json with their codes, the security requirement is
the role the middleware enforces, POSTs take an Idempotency-Key, payment webhooks their
signature header. Whether the code answers as the document says is tests/test_schemathesis.py.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import httpx
import pytest

from stockguard.api import refusals
from stockguard.api.app import build_app
from stockguard.api.auth import ADMIN, SERVICE, api_routes, role_of
from stockguard.api.openapi import SECURITY_SCHEME, _complete
from stockguard.api.routes import admin_role, service_role
from stockguard.config import Settings
from stockguard.domain import errors

pytestmark = pytest.mark.usefixtures("backends")

REF = "#/components/schemas/"
PROBLEM = "application/problem+json"
UNAUTHENTICATED = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/webhooks/stripe",
    "/v1/webhooks/razorpay",
}


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


def refs(schema: dict[str, Any]) -> list[str]:
    """The component names a schema points at directly (a $ref or a union of them)."""
    if "$ref" in schema:
        return [schema["$ref"].removeprefix(REF)]
    union = schema.get("oneOf", schema.get("anyOf", []))
    return [s["$ref"].removeprefix(REF) for s in union if s != {"type": "null"}]


async def test_every_answer_is_a_named_schema_and_every_refusal_problem_json(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    seen = 0
    for method, path, op in operations(document):
        for status, answer in op["responses"].items():
            content = answer.get("content", {})
            where = (method, path, status)
            if status == "204":
                assert not content, where
                continue
            if path == "/metrics" and status == "200":
                assert list(content) == ["text/plain"], where
                continue
            if status.startswith("4") or (status == "503" and path not in ("/healthz", "/readyz")):
                assert list(content) == [PROBLEM], where
                names = refs(content[PROBLEM]["schema"])
                codes = [schemas[n]["properties"]["code"]["const"] for n in names]
                assert all(str(refusals.status_of(c)) == status for c in codes), where
                assert all(f"`{c}`" in answer["description"] for c in codes), where
            else:
                assert list(content) == ["application/json"], where
                names = refs(content["application/json"]["schema"])
            assert names, where
            assert all(schemas[n].get("type") == "object" or refs(schemas[n]) for n in names)
            seen += 1
        body = op.get("requestBody")
        if body is not None:
            assert refs(body["content"]["application/json"]["schema"]), (method, path)
    assert seen > 280


async def test_fastapis_default_validation_error_is_gone(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(document)
    assert "ValidationError" not in document["components"]["schemas"]
    for method, path, op in operations(document):
        if op.get("parameters") or op.get("requestBody"):
            assert "validation_error" in op["responses"]["422"]["description"], (method, path)


async def test_security_is_the_role_the_middleware_enforces(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"][SECURITY_SCHEME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    app = build_app(Settings())
    roles = {service_role: SERVICE, admin_role: ADMIN}
    checked = 0
    for route in api_routes(app.routes):
        if not route.include_in_schema:
            continue
        role = role_of(route.dependant, roles)
        for method in route.methods or ():
            op = document["paths"][route.path_format][method.lower()]
            where = (method, route.path_format)
            if route.path_format in UNAUTHENTICATED:
                assert role is None, where
                assert "security" not in op, where
                assert "401" not in op["responses"], where
                continue
            assert op["security"] == [{SECURITY_SCHEME: [role]}], where
            assert "`unauthorized`" in op["responses"]["401"]["description"], where
            assert ("403" in op["responses"]) is (role == ADMIN), where
            checked += 1
    assert checked >= 38


async def test_the_headers_routes_read_are_declared(document: dict[str, Any]) -> None:
    for method, path, op in operations(document):
        names = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "header"}
        if method == "post" and path not in UNAUTHENTICATED:
            assert names["Idempotency-Key"]["schema"]["maxLength"] == 255, path
            assert "`idempotency_key_reused`" in op["responses"]["422"]["description"]
        else:
            assert "Idempotency-Key" not in names, (method, path)
        if method in ("post", "put", "patch"):
            assert "`payload_too_large`" in op["responses"]["413"]["description"], path
    stripe = document["paths"]["/v1/webhooks/stripe"]["post"]
    razorpay = document["paths"]["/v1/webhooks/razorpay"]["post"]
    assert [p["name"] for p in stripe["parameters"] if p["required"]] == ["Stripe-Signature"]
    assert [p["name"] for p in razorpay["parameters"] if p["required"]] == ["X-Razorpay-Signature"]
    assert refs(stripe["requestBody"]["content"]["application/json"]["schema"]) == ["StripeEvent"]
    assert "`invalid_signature`" in stripe["responses"]["400"]["description"]


async def test_creating_puts_declare_201_and_200(document: dict[str, Any]) -> None:
    for path, ops in document["paths"].items():
        if "put" in ops:
            assert {"200", "201"} <= set(ops["put"]["responses"]), path
    assert set(document["paths"]["/v1/orders"]["post"]["responses"]) >= {"200", "201"}
    assert "200" not in document["paths"]["/v1/skus/{sku}/adjustments"]["post"]["responses"]


async def test_events_are_documented_by_type(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    mapping = schemas["Event"]["discriminator"]["mapping"]
    assert {"stock.changed", "order.paid", "payment.inconsistency", "ping"} <= set(mapping)
    assert mapping["stock.low"] == REF + "StockEdgeEvent"
    delivery = document["webhooks"]["event"]["post"]
    assert {p["name"] for p in delivery["parameters"]} == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }


def test_every_error_code_has_a_problem_schema_with_its_status() -> None:
    """domain/errors.py and the document's problem schemas cannot disagree."""
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.StockguardError) and c is not errors.StockguardError
    ]
    assert len(classes) >= 18
    for cls in classes:
        assert refusals.status_of(cls.code) == cls.status, cls
        model = refusals.PROBLEMS[cls.code]
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        if required <= set(refusals.ProblemBody.model_fields):  # no members of its own
            body = {"type": "t", "title": cls.title, "status": cls.status, "detail": "d"}
            model.model_validate({**body, "code": cls.code})


def test_a_status_cannot_be_both_an_answer_and_a_problem() -> None:
    declared: dict[str, Any] = {"409": {"content": {"application/json": {"schema": {}}}}}
    with pytest.raises(AssertionError, match="both an answer and a problem"):
        _complete(declared, {"conflict"})
    merged = _complete({"404": refusals.problem_response(["not_found"])}, {"busy"})
    assert list(merged) == ["404", "503"]
    assert refusals.codes_of(merged["404"]) == ["not_found"]


async def test_operation_ids_are_the_names_a_client_calls(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", i) for i in ids), ids
    assert {"place_order", "get_order", "cancel_order", "pay_order", "list_events"} <= set(ids)
