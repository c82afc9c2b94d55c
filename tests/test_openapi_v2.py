"""The served OpenAPI of the version-2 routes (issue 8): each operation declares its
request body, its success answers as named schemas and its problem+json refusals; and
real answers of each route validate against the schema it declares for their status."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from stockguard.api import refusals, responses, webhook_endpoints
from tests.conftest import Stocker
from tests.test_returns import ship

pytestmark = pytest.mark.usefixtures("backends")

PROBLEM = "application/problem+json"

# (method, path): (request body schema or None, {success status: schema}, problem statuses)
ROUTES: dict[tuple[str, str], tuple[str | None, dict[str, str], set[str]]] = {
    ("post", "/v1/orders/{order_id}/returns"): (
        "ReturnIn",
        {"201": "Return", "200": "Return"},
        {"401", "404", "409", "422", "503"},
    ),
    ("get", "/v1/orders/{order_id}/returns"): (
        None,
        {"200": "ReturnList"},
        {"401", "404", "422", "503"},
    ),
    ("post", "/v1/orders/{order_id}/extend"): (
        "ExtendIn",
        {"200": "Order"},
        {"401", "404", "409", "422", "503"},
    ),
    ("post", "/v1/transfers"): (
        "TransferIn",
        {"201": "Transfer", "200": "Transfer"},
        {"401", "403", "409", "422", "503"},
    ),
    ("get", "/v1/transfers"): (None, {"200": "TransferPage"}, {"401", "403", "422", "503"}),
    ("get", "/v1/transfers/{transfer_id}"): (
        None,
        {"200": "Transfer"},
        {"401", "403", "404", "422", "503"},
    ),
    ("post", "/v1/transfers/{transfer_id}/receipts"): (
        "ReceiptIn",
        {"201": "Transfer", "200": "Transfer"},
        {"401", "403", "404", "409", "422", "503"},
    ),
    ("post", "/v1/transfers/{transfer_id}/cancel"): (
        None,
        {"200": "Transfer"},
        {"401", "403", "404", "409", "422", "503"},
    ),
    ("post", "/v1/adjustments/batch"): (
        "BatchIn",
        {"200": "BatchResult"},
        {"401", "403", "409", "422", "503"},
    ),
    ("get", "/v1/admin/explain"): (None, {"200": "Explain"}, {"401", "403", "404", "422", "503"}),
    ("put", "/v1/skus/{sku}/levels/{location}"): (
        "LevelIn",
        {"200": "Level", "201": "Level"},
        {"401", "403", "404", "422", "503"},
    ),
    ("post", "/v1/skus/{sku}/adjustments"): (
        "AdjustmentIn",
        {"201": "AdjustmentResult"},
        {"401", "403", "404", "409", "422", "503"},
    ),
}

REF = "#/components/schemas/"


def statuses(method: str, declared: set[str]) -> set[str]:
    """``declared`` and what every route of its kind answers: 431 (a request head over the
    limit), 413 on a body method, 409 on a POST (an Idempotency-Key still in flight)."""
    added = {"431"} | ({"413"} if method in ("post", "put", "patch") else set())
    return declared | added | ({"409"} if method == "post" else set())


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def operation(doc: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    op: dict[str, Any] = doc["paths"][template][method]
    return op


def ref(content: dict[str, Any], media_type: str) -> str:
    schema_ref = content[media_type]["schema"]["$ref"]
    assert isinstance(schema_ref, str)
    assert schema_ref.startswith(REF), schema_ref
    return schema_ref.removeprefix(REF)


def problem_refs(content: dict[str, Any]) -> dict[str, str]:
    """code: schema name of a problem+json entry (one $ref, or a oneOf on ``code``)."""
    schema = content[PROBLEM]["schema"]
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        return {_code(name): name}
    mapping = schema["discriminator"]["mapping"]
    assert [s["$ref"] for s in schema["oneOf"]] == list(mapping.values())
    assert schema["discriminator"]["propertyName"] == "code"
    return {code: r.removeprefix(REF) for code, r in mapping.items()}


def _code(name: str) -> str:
    (code,) = [c for c, m in refusals.PROBLEMS.items() if m.__name__ == name]
    return code


@pytest.mark.parametrize(("method", "template"), list(ROUTES))
async def test_each_v2_operation_declares_bodies_and_problems(
    openapi: dict[str, Any], method: str, template: str
) -> None:
    body, successes, problems = ROUTES[(method, template)]
    op = operation(openapi, method, template)
    schemas = openapi["components"]["schemas"]
    if body is None:
        assert "requestBody" not in op
    else:
        assert ref(op["requestBody"]["content"], "application/json") == body
        assert body in schemas
    declared = op["responses"]
    # No undocumented default 200/422.
    assert set(declared) == set(successes) | statuses(method, problems)
    for status, name in successes.items():
        assert list(declared[status]["content"]) == ["application/json"]
        assert ref(declared[status]["content"], "application/json") == name
        assert schemas[name]["type"] == "object"
        assert schemas[name]["properties"]
    for status in statuses(method, problems):
        assert list(declared[status]["content"]) == [PROBLEM], (status, declared[status])
        for code, name in problem_refs(declared[status]["content"]).items():
            assert str(refusals.status_of(code)) == status
            assert schemas[name]["properties"]["code"]["const"] == code


async def test_the_problem_schema_has_the_rfc_9457_members_and_allows_extras(
    openapi: dict[str, Any],
) -> None:
    problem = openapi["components"]["schemas"]["Problem"]  # any code, e.g. in a batch
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    assert problem["properties"]["status"]["type"] == "integer"
    assert problem.get("additionalProperties", True) is not False
    # No route keeps FastAPI's default 422 schema.
    assert "HTTPValidationError" not in json.dumps(openapi)
    assert "ValidationError" not in openapi["components"]["schemas"]


def conforms(doc: dict[str, Any], method: str, template: str, answer: httpx.Response) -> Any:
    """``answer`` has a status the operation declares, that status's media type, and a body
    valid for the named schema declared for it; returns the body."""
    declared = operation(doc, method, template)["responses"]
    status = str(answer.status_code)
    assert status in declared, (method, template, status, answer.text)
    media_type = answer.headers["content-type"].split(";")[0]
    assert list(declared[status]["content"]) == [media_type], (status, media_type)
    body = answer.json()
    if media_type == PROBLEM:
        name = problem_refs(declared[status]["content"]).get(body["code"])
        assert name is not None, (status, body)  # the code is one the operation names
        model = refusals.PROBLEMS[body["code"]]
        assert model.__name__ == name
    else:
        name = ref(declared[status]["content"], media_type)
        # The answer models: api/responses.py, or beside the routes that answer them.
        model = getattr(responses, name, None) or getattr(webhook_endpoints, name)
    assert issubclass(model, BaseModel)
    model.model_validate(body)  # extra="forbid": an undeclared field fails too
    return body


async def test_real_answers_validate_against_the_declared_schemas(
    client: httpx.AsyncClient, openapi: dict[str, Any], stock: Stocker, uid: str
) -> None:
    sku, a, b = f"OA{uid}", f"oa{uid}", f"ob{uid}"
    await stock({sku: {a: 20}}, locations={a: 1, b: 2})
    seen: set[tuple[str, str, int]] = set()

    async def call(method: str, template: str, url: str, **kw: Any) -> Any:
        answer = await client.request(method.upper(), url, **kw)
        seen.add((method, template, answer.status_code))
        return conforms(openapi, method, template, answer)

    # Stock: levels, an adjustment, a batch, explain.
    levels = "/v1/skus/{sku}/levels/{location}"
    created = await call("put", levels, f"/v1/skus/{sku}/levels/{b}", json={"safety_stock": 1})
    assert (created["location"], created["safety_stock"], created["active"]) == (b, 1, True)
    again = await call("put", levels, f"/v1/skus/{sku}/levels/{b}", json={"safety_stock": 2})
    assert again["safety_stock"] == 2
    await call("put", levels, f"/v1/skus/NO{uid}/levels/{b}", json={"safety_stock": 1})
    adjust = "/v1/skus/{sku}/adjustments"
    adjusted = await call(
        "post",
        adjust,
        f"/v1/skus/{sku}/adjustments",
        json={"location": a, "reason": "received", "delta": 5},
    )
    assert (adjusted["on_hand"], adjusted["on_hand_delta"]) == (25, 5)
    await call(
        "post",
        adjust,
        f"/v1/skus/{sku}/adjustments",
        json={"location": a, "reason": "correction", "delta": -99},
    )
    batch = "/v1/adjustments/batch"
    items = [
        {"sku": sku, "location": a, "reason": "received", "delta": 1},
        {"sku": sku, "location": a, "reason": "received", "delta": 0},
    ]
    mixed = await call("post", batch, batch, json={"items": items, "error_policy": "skip_failed"})
    assert [r["status"] for r in mixed["results"]] == ["applied", "failed"]
    rejected = await call("post", batch, batch, json={"items": items})
    assert rejected["code"] == "batch_rejected"
    explain = "/v1/admin/explain"
    told = await call("get", explain, explain, params={"sku": sku, "limit": 2})
    assert told["consistent"] is True
    assert told["next"] is not None
    await call("get", explain, explain, params={"sku": f"NO{uid}"})

    # Transfers: create, replay, receive, read, list, cancel.
    transfer = {"id": f"t{uid}", "from": a, "to": b, "lines": [{"sku": sku, "quantity": 3}]}
    made = await call("post", "/v1/transfers", "/v1/transfers", json=transfer)
    assert (made["from"], made["status"]) == (a, "in_transit")
    replay = await call("post", "/v1/transfers", "/v1/transfers", json=transfer)
    assert replay == made
    other = await call("post", "/v1/transfers", "/v1/transfers", json={**transfer, "to": a})
    assert other["status"] == 422
    receipts = "/v1/transfers/{transfer_id}/receipts"
    received = await call(
        "post",
        receipts,
        f"/v1/transfers/t{uid}/receipts",
        json={"receipt_id": f"r{uid}", "lines": [{"sku": sku, "quantity": 1}]},
    )
    assert received["receipts"][0]["receipt_id"] == f"r{uid}"
    await call(
        "post",
        receipts,
        f"/v1/transfers/t{uid}/receipts",
        json={"receipt_id": f"x{uid}", "lines": [{"sku": sku, "quantity": 9}]},
    )
    one = "/v1/transfers/{transfer_id}"
    assert (await call("get", one, f"/v1/transfers/t{uid}")) == received
    await call("get", one, f"/v1/transfers/no{uid}")
    listed = await call("get", "/v1/transfers", "/v1/transfers", params={"limit": 1})
    assert len(listed["items"]) == 1
    cancel = "/v1/transfers/{transfer_id}/cancel"
    cancelled = await call("post", cancel, f"/v1/transfers/t{uid}/cancel")
    assert cancelled["status"] == "cancelled"
    assert (await call("post", cancel, f"/v1/transfers/t{uid}/cancel")) == cancelled  # replay
    done = {**transfer, "id": f"u{uid}", "lines": [{"sku": sku, "quantity": 1}]}
    await call("post", "/v1/transfers", "/v1/transfers", json=done)
    whole = {"receipt_id": f"w{uid}", "lines": [{"sku": sku, "quantity": 1}]}
    await call("post", receipts, f"/v1/transfers/u{uid}/receipts", json=whole)
    late = await call("post", cancel, f"/v1/transfers/u{uid}/cancel")
    assert late["code"] == "invalid_transition"

    # Orders: a return, the list of returns, extend.
    await ship(client, f"o{uid}", (sku, 2))
    returns_of = "/v1/orders/{order_id}/returns"
    ret = {
        "return_id": f"ret{uid}",
        "lines": [{"sku": sku, "quantity": 1, "disposition": "restock"}],
    }
    first = await call("post", returns_of, f"/v1/orders/o{uid}/returns", json=ret)
    assert first["lines"][0]["location"] == a
    assert (await call("post", returns_of, f"/v1/orders/o{uid}/returns", json=ret)) == first
    too_many = {**ret, "return_id": f"big{uid}"}
    too_many["lines"] = [{"sku": sku, "quantity": 5, "disposition": "damaged"}]
    await call("post", returns_of, f"/v1/orders/o{uid}/returns", json=too_many)
    assert (await call("get", returns_of, f"/v1/orders/o{uid}/returns")) == {"items": [first]}
    await call("get", returns_of, f"/v1/orders/no{uid}/returns")
    pending = {"id": f"p{uid}", "lines": [{"sku": sku, "quantity": 1}]}
    assert (await client.post("/v1/orders", json=pending)).status_code == 201
    extend = "/v1/orders/{order_id}/extend"
    held = await call(
        "post", extend, f"/v1/orders/p{uid}/extend", json={"reservation_ttl_seconds": 60}
    )
    assert (held["status"], held["reservations"][0]["status"]) == ("pending", "reserved")
    await call("post", extend, f"/v1/orders/o{uid}/extend", json={"reservation_ttl_seconds": 60})
    await call("post", extend, f"/v1/orders/p{uid}/extend", json={"reservation_ttl_seconds": 0})

    # Every route answered at least once, with a success and with a problem.
    for method, template in ROUTES:
        statuses = {s for m, t, s in seen if (m, t) == (method, template)}
        assert any(s < 300 for s in statuses), (method, template, statuses)
    expected_problems = {
        ("put", levels, 404),
        ("post", adjust, 409),
        ("post", batch, 409),
        ("get", explain, 404),
        ("post", "/v1/transfers", 422),
        ("post", receipts, 409),
        ("get", one, 404),
        ("post", cancel, 409),
        ("post", returns_of, 409),
        ("get", returns_of, 404),
        ("post", extend, 409),
        ("post", extend, 422),
    }
    assert expected_problems <= seen, expected_problems - seen


async def test_a_model_refuses_a_body_that_does_not_match() -> None:
    """The check above can fail: a missing or an undeclared field is refused."""
    good = {"sku": "s", "location": "l", "on_hand": 1, "reserved": 0, "unavailable": 0}
    good |= {"safety_stock": 0, "available": 1, "active": True}
    responses.Level.model_validate(good)
    with pytest.raises(ValueError, match="active"):
        responses.Level.model_validate({k: v for k, v in good.items() if k != "active"})
    with pytest.raises(ValueError, match="extra"):
        responses.Level.model_validate({**good, "surprise": 1})
