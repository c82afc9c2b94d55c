"""The client's models against the live server's OpenAPI document: every property an
answer schema declares is a field of the model that reads it, and every field the model
requires is declared, so a field added to (or dropped from) the API fails here first.
Schemas the served document does not name yet are checked once it does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from conftest import Server
from stockguard_client import ReturnableLine, Shortage, _calls
from stockguard_client import models as m

# client model ← the answer schemas (components) that it reads
READS: dict[type[BaseModel], tuple[str, ...]] = {
    m.Order: ("Order",),
    m.OrderLine: ("OrderLine", "ReceiptLine"),
    m.Reservation: ("Reservation",),
    m.Payment: ("Payment",),
    m.Return: ("Return",),
    m.ReturnLine: ("ReturnLine",),
    m.Transfer: ("Transfer",),
    m.TransferLine: ("TransferLine",),
    m.Receipt: ("Receipt",),
    m.AdjustmentResult: ("AdjustmentResult",),
    m.Level: ("Level",),
    m.SkuLevel: ("SkuLevel",),
    m.Sku: ("Sku",),
    m.Location: ("Location",),
    m.Channel: ("Channel",),
    m.Availability: ("SkuAvailability",),
    m.ApiKey: ("ApiKey", "ApiKeyCreated"),
    m.VerifyReport: ("Verification",),
    m.Violation: ("Violation",),
    m.RecoveryResult: ("RecoveryResult",),
    m.ReconcileReport: ("ReconcileReport",),
    m.Drift: ("Drift",),
    m.Readiness: ("Readiness",),
    m.InventoryLog: ("InventoryLog",),
    m.Movement: ("Movement", "LedgerRow"),
    m.Explanation: ("Explain",),
    m.ExplainLevel: ("ExplainLevel",),
    m.Counts: ("Counts",),
    m.StockChanged: ("StockChangedData",),
    m.StockEdge: ("StockEdgeData",),
    m.OrderEventData: ("OrderEventData",),
    m.PaymentInconsistency: ("PaymentInconsistencyData",),
    m.TransferEventData: ("TransferEventData",),
    m.PingData: ("PingData",),
    m.WebhookEndpoint: ("WebhookEndpoint", "WebhookEndpointCreated"),
    m.WebhookDelivery: ("WebhookDelivery",),
    Shortage: ("Shortage",),
    ReturnableLine: ("ReturnOverrun",),
}
# What today's main serves at least: these must be there and agree.
ALWAYS = {"Order", "Reservation", "Return", "Transfer", "AdjustmentResult", "Level", "Event"}


@pytest.fixture(scope="module")
def schemas(server: Server) -> dict[str, Any]:
    document = httpx.get(f"{server.url}/openapi.json").json()
    found: dict[str, Any] = document["components"]["schemas"]
    return found


def _fields(model: type[BaseModel]) -> tuple[set[str], set[str]]:
    names = {f.alias or name for name, f in model.model_fields.items()}
    required = {f.alias or name for name, f in model.model_fields.items() if f.is_required()}
    return names, required


def test_the_core_answers_are_described(schemas: dict[str, Any]) -> None:
    assert set(schemas) >= ALWAYS


@pytest.mark.parametrize("model", list(READS), ids=lambda model: model.__name__)
def test_models_read_what_the_api_declares(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    names, required = _fields(model)
    for schema in READS[model]:
        if schema not in schemas:
            continue
        declared = set(schemas[schema].get("properties", {}))
        assert declared <= names, f"{schema} has fields {model.__name__} lacks"
        assert required <= declared, f"{model.__name__} requires fields {schema} lacks"


def test_event_kinds_are_the_documented_ones(schemas: dict[str, Any]) -> None:
    event = schemas["Event"]
    names, _ = _fields(m.OrderEvent)
    if "properties" in event:  # one schema with a union of data
        assert set(event["properties"]) <= names
    assert {"id", "seq", "type", "occurred_at", "data"} == names


# Routes a shop's backend never calls: the payment providers call these.
NOT_WRAPPED = {"/v1/webhooks/stripe", "/v1/webhooks/razorpay"}


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_of_the_served_api_has_a_method(server: Server) -> None:
    served = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    source = Path(_calls.__file__).read_text().replace("{_HOOKS}", _calls._HOOKS)
    wrapped = {_template(p) for p in re.findall(r"f?\"(/[a-z0-9/{}_().-]*)\"", source)}
    wanted = {_template(p) for p in served if p.startswith("/v1/") or p == "/readyz"}
    assert wanted - wrapped - NOT_WRAPPED == set()
