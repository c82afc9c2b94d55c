"""Schemathesis hooks for runs against a served stockguard (tests/schemathesis.toml loads
this module; tests/test_schemathesis.py and the longer run in docs/OPENAPI.md use it).

- ``problem_json_on_4xx``: every 4xx is RFC 9457 problem+json whose ``status`` is the
  response's and which names a ``code`` (a check of our own, beside schemathesis' own).
- Input the schema cannot describe is made valid in positive cases (those that must be
  accepted): a fresh ``Idempotency-Key`` per request (a generated key is often reused
  with another body: 422 ``idempotency_key_reused``, rightly), no ``after`` cursor (an
  opaque cursor this API never gave out is 422), integral floats as integers (JSON Schema
  counts ``1.0`` as an integer; our contract wants JSON integers), no U+0000 in strings
  (PostgreSQL text cannot hold it: 422, as the document's description says).
- A positive case refused with 422 for a rule across values or for a code that names
  nothing stored (``unknown location 'x'``, ``from`` = ``to``) is not a failure of
  ``positive_data_acceptance``: such data is not valid, the schema just cannot say so.
  Only the details listed in ``NOT_IN_SCHEMA`` are accepted.
- Payment webhooks are signed when the case is meant to be valid (positive generation),
  with the secrets in ``STOCKGUARD_STRIPE_WEBHOOK_SECRET`` / ``..._RAZORPAY_...``: so the
  generated events reach the payment code, and a valid event is accepted. A negative case
  keeps its generated (wrong) signature, which must be refused with 400.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
import uuid
from typing import Any

import schemathesis
from schemathesis import Case, Response
from schemathesis.checks import CheckContext
from schemathesis.core.failures import Failure
from schemathesis.hooks import HookContext
from schemathesis.openapi.checks import RejectedPositiveData

__all__ = ["NOT_IN_SCHEMA", "problem_json_on_4xx", "sign_webhooks"]

# 422 details of rules no JSON schema of one request can state.
NOT_IN_SCHEMA = re.compile(
    r"^(?:\w+: )?unknown (?:location|locations|channel|skus|SKU|SKUs)\b"
    r"|^from and to must be two different locations$"
    r"|^lines: sku \S+ is listed twice$"
    # A webhook endpoint's URL: its form, that its host resolves, to a public address.
    r"|^url: "
)


@schemathesis.check
def problem_json_on_4xx(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])[0]
        if not content_type.startswith("application/problem+json"):
            raise Failure(
                operation=case.operation.label,
                title="4xx is not problem+json",
                message=f"{response.status_code} with content-type {content_type!r}",
            )
        body = response.json()
        if body.get("status") != response.status_code or not body.get("code"):
            raise Failure(
                operation=case.operation.label,
                title="problem+json body disagrees",
                message=f"{response.status_code}: {body!r}"[:500],
            )
    return True


def _positive(case: Case[Any]) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


def _valid(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_valid(v) for v in value]
    if isinstance(value, dict):
        return {_valid(k): _valid(v) for k, v in value.items()}
    return value


@schemathesis.hook
def before_call(context: HookContext, case: Case[Any], kwargs: dict[str, Any]) -> None:
    if _positive(case):
        if "Idempotency-Key" in case.headers:
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
        if case.query:
            case.query.pop("after", None)
        if isinstance(case.body, dict | list | str):
            case.body = _valid(case.body)
        if case.query:
            case.query = _valid(case.query)
    sign_webhooks(case, kwargs)


@schemathesis.hook
def filter_failure(
    context: HookContext, failure: Failure, case: Case[Any], response: Response
) -> bool:
    """False (drop the failure) only for a positive case refused for a rule of
    ``NOT_IN_SCHEMA``."""
    if isinstance(failure, RejectedPositiveData) and response.status_code == 422:
        detail = str(response.json().get("detail", ""))
        if os.environ.get("STOCKGUARD_ST_LOG"):
            with open(os.environ["STOCKGUARD_ST_LOG"], "a") as log:
                print(case.operation.label, detail, file=log)
        return NOT_IN_SCHEMA.search(detail) is None
    return True


def sign_webhooks(case: Case[Any], kwargs: dict[str, Any]) -> None:
    path = case.operation.path
    if path not in ("/v1/webhooks/stripe", "/v1/webhooks/razorpay") or not _positive(case):
        return
    body = json.dumps(case.body).encode()
    kwargs["data"] = body  # the exact bytes signed
    headers = case.headers
    if path == "/v1/webhooks/stripe":
        secret = os.environ["STOCKGUARD_STRIPE_WEBHOOK_SECRET"].encode()
        t = str(int(time.time()))
        mac = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers["Stripe-Signature"] = f"t={t},v1={mac}"
    else:
        secret = os.environ["STOCKGUARD_RAZORPAY_WEBHOOK_SECRET"].encode()
        headers["X-Razorpay-Signature"] = hmac.new(secret, body, hashlib.sha256).hexdigest()
