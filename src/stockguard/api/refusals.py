"""The problem+json answers in the OpenAPI document: one named schema per ``code``.

Each model is the exact body :func:`stockguard.api.problems.problem` sends for that code
(RFC 9457 members, the ``code``, and the members that code adds: ``shortages`` of
``out_of_stock``, ``from``/``to`` of ``invalid_transition``...); an undeclared member fails
schemathesis' response-schema check. :func:`problem_response` builds the ``responses=``
entry of one status from the codes a route can answer with it: one schema, or a ``oneOf``
with ``code`` as discriminator. Documentation only: nothing here validates an answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PROBLEMS",
    "PROBLEM_MEDIA_TYPE",
    "Problem",
    "ProblemBody",
    "codes_of",
    "problem_response",
    "status_of",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
REF = "#/components/schemas/"


class Problem(BaseModel):
    """RFC 9457 problem details of any code (e.g. a failed item inside a batch's answer)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str


class ProblemBody(BaseModel):
    """A problem of one code: exactly these members."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str = Field(description="https://stockguard.dev/problems/<code>")
    title: str
    status: int
    detail: str
    code: str


# ------------------------------------------------------------ members some codes add


class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loc: list[str]
    msg: str
    type: str


class Shortage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str
    requested: int
    available: int


class TransferShortage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str
    requested: int
    movable: int


class ReturnOverrun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str
    requested: int
    returnable: int


class ReceiptOverrun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str
    received: int
    in_transit: int


class FailedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    problem: Problem


# ------------------------------------------------------------ one model per code


class BadRequestProblem(ProblemBody):
    """The HTTP request could not be read (malformed head)."""

    code: Literal["bad_request"]
    status: Literal[400]


class InvalidSignatureProblem(ProblemBody):
    """A payment webhook whose signature does not match its body; nothing changed."""

    code: Literal["invalid_signature"]
    status: Literal[400]


class UnauthorizedProblem(ProblemBody):
    """No API key, or an unknown or revoked one."""

    code: Literal["unauthorized"]
    status: Literal[401]


class ForbiddenProblem(ProblemBody):
    """The key's role may not do this (an admin key is needed)."""

    code: Literal["forbidden"]
    status: Literal[403]


class NotFoundProblem(ProblemBody):
    code: Literal["not_found"]
    status: Literal[404]


class MethodNotAllowedProblem(ProblemBody):
    code: Literal["method_not_allowed"]
    status: Literal[405]


class OutOfStockProblem(ProblemBody):
    """Not enough stock for every line; nothing was reserved and no order stored."""

    code: Literal["out_of_stock"]
    status: Literal[409]
    shortages: list[Shortage]


class InvalidTransitionProblem(ProblemBody):
    """The current status does not allow this; ``from`` is the status, ``to`` the goal."""

    code: Literal["invalid_transition"]
    status: Literal[409]
    from_: str = Field(alias="from")
    to: str


class OrderNotDeletableProblem(ProblemBody):
    code: Literal["order_not_deletable"]
    status: Literal[409]


class InsufficientStockProblem(ProblemBody):
    """An adjustment would leave less on hand than is reserved or unavailable (with the
    level's counts), or a transfer needs units that are not movable (with ``location`` and
    ``shortages``)."""

    code: Literal["insufficient_stock"]
    status: Literal[409]
    on_hand: int | None = None
    reserved: int | None = None
    unavailable: int | None = None
    location: str | None = None
    shortages: list[TransferShortage] | None = None


class StaleQuantityProblem(ProblemBody):
    """``expected_on_hand`` differs from the level's ``on_hand`` (compare-and-set)."""

    code: Literal["stale_quantity"]
    status: Literal[409]
    expected_on_hand: int
    on_hand: int


class ReturnExceedsFulfilledProblem(ProblemBody):
    code: Literal["return_exceeds_fulfilled"]
    status: Literal[409]
    lines: list[ReturnOverrun]


class ReceiptExceedsInTransitProblem(ProblemBody):
    code: Literal["receipt_exceeds_in_transit"]
    status: Literal[409]
    lines: list[ReceiptOverrun]


class ReservationExpiredProblem(ProblemBody):
    code: Literal["reservation_expired"]
    status: Literal[409]
    reservation_ids: list[int]


class ConflictProblem(ProblemBody):
    """The id is taken by other content, the payment already paid another order
    (``paid_order_id``), or a request with this Idempotency-Key is still in flight."""

    code: Literal["conflict"]
    status: Literal[409]
    paid_order_id: str | None = None


class BatchRejectedProblem(ProblemBody):
    """An ``all_or_nothing`` batch with failed items: nothing of it was applied."""

    code: Literal["batch_rejected"]
    status: Literal[409]
    items: list[FailedItem]


class EventsExpiredProblem(ProblemBody):
    """``after`` is older than retention kept: start again from ``pruned_through``."""

    code: Literal["events_expired"]
    status: Literal[410]
    pruned_through: int


class PayloadTooLargeProblem(ProblemBody):
    code: Literal["payload_too_large"]
    status: Literal[413]


class ValidationErrorProblem(ProblemBody):
    """Invalid input; ``errors`` (the first 20 of ``error_count``) when a schema refused it."""

    code: Literal["validation_error"]
    status: Literal[422]
    errors: list[FieldError] | None = None
    error_count: int | None = None
    known: list[str] | None = Field(default=None, description="the values allowed")


class IdempotencyKeyReusedProblem(ProblemBody):
    """This Idempotency-Key was used with a different request."""

    code: Literal["idempotency_key_reused"]
    status: Literal[422]


class UnknownSkuProblem(ProblemBody):
    """The order names SKUs never created (``skus``, every one); nothing was reserved."""

    code: Literal["unknown_sku"]
    status: Literal[422]
    skus: list[str]


class RequestHeaderFieldsTooLargeProblem(ProblemBody):
    code: Literal["request_header_fields_too_large"]
    status: Literal[431]


class InternalErrorProblem(ProblemBody):
    code: Literal["internal_error"]
    status: Literal[500]


class BusyProblem(ProblemBody):
    """A lock or statement timeout, or the database connection was lost: retry after
    ``Retry-After`` with the same id or Idempotency-Key."""

    code: Literal["busy"]
    status: Literal[503]


class CacheUnavailableProblem(ProblemBody):
    """Strict cache mode and Redis could not be updated; nothing changed."""

    code: Literal["cache_unavailable"]
    status: Literal[503]


def _literal(model: type[ProblemBody], name: str) -> Any:
    (value,) = get_args(model.model_fields[name].annotation)
    return value


PROBLEMS: dict[str, type[ProblemBody]] = {
    _literal(m, "code"): m
    for m in (
        BadRequestProblem,
        InvalidSignatureProblem,
        UnauthorizedProblem,
        ForbiddenProblem,
        NotFoundProblem,
        MethodNotAllowedProblem,
        OutOfStockProblem,
        InvalidTransitionProblem,
        OrderNotDeletableProblem,
        InsufficientStockProblem,
        StaleQuantityProblem,
        ReturnExceedsFulfilledProblem,
        ReceiptExceedsInTransitProblem,
        ReservationExpiredProblem,
        ConflictProblem,
        BatchRejectedProblem,
        EventsExpiredProblem,
        PayloadTooLargeProblem,
        ValidationErrorProblem,
        IdempotencyKeyReusedProblem,
        UnknownSkuProblem,
        RequestHeaderFieldsTooLargeProblem,
        InternalErrorProblem,
        BusyProblem,
        CacheUnavailableProblem,
    )
}


def status_of(code: str) -> int:
    status: int = _literal(PROBLEMS[code], "status")
    return status


_WHY = {
    400: "Bad request",
    401: "No valid API key",
    403: "The key's role may not do this",
    404: "Not found",
    409: "Refused: the current state does not allow it; nothing changed",
    410: "Gone: the events after this seq were removed by retention",
    413: "The request body is too large",
    422: "Invalid request; nothing changed",
    431: "The request line and headers are too large",
    503: "Busy or unavailable; nothing changed, retry",
}


def problem_response(codes: Iterable[str]) -> dict[str, Any]:
    """The ``responses=`` entry of one status: problem+json of exactly these codes."""
    names = sorted(set(codes))
    refs = {code: REF + PROBLEMS[code].__name__ for code in names}
    schema: dict[str, Any]
    if len(names) == 1:
        schema = {"$ref": refs[names[0]]}
    else:
        schema = {
            "oneOf": [{"$ref": refs[code]} for code in names],
            "discriminator": {"propertyName": "code", "mapping": refs},
        }
    (status,) = {status_of(code) for code in names}
    entry: dict[str, Any] = {
        "description": f"{_WHY.get(status, 'Refused')}: " + ", ".join(f"`{c}`" for c in names),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
    }
    if status == 401:
        entry["headers"] = {"WWW-Authenticate": _header("`Bearer`", required=True)}
    if status == 503:
        # Only `busy` says when to retry; `cache_unavailable` does not.
        entry["headers"] = {"Retry-After": _header("seconds", required=names == ["busy"])}
    return entry


def _header(description: str, *, required: bool) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def codes_of(entry: dict[str, Any]) -> list[str]:
    """The codes a problem entry built by :func:`problem_response` names."""
    schema = entry.get("content", {}).get(PROBLEM_MEDIA_TYPE, {}).get("schema", {})
    refs = [s["$ref"] for s in schema.get("oneOf", [schema]) if "$ref" in s]
    by_name = {m.__name__: code for code, m in PROBLEMS.items()}
    return [by_name[r.removeprefix(REF)] for r in refs if r.removeprefix(REF) in by_name]
