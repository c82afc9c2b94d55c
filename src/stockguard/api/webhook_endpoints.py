"""Routes of API.md "Webhook endpoints" (admin): create, list, read, change and delete
endpoints, ping one, read its delivery log and replay events to it. The rules live in
:mod:`stockguard.service.webhook_endpoints`; delivery itself runs in the workers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field, StringConstraints
from starlette.responses import Response

from stockguard.api import responses as doc
from stockguard.api.answers import answered
from stockguard.api.routes import Admin, After, B, Limit, actor
from stockguard.api.schemas import Strict, decode_cursor, page, ts
from stockguard.api.strict import StrictJSONRoute
from stockguard.config import Settings
from stockguard.domain.errors import NotFound, ValidationFailed
from stockguard.service import webhook_endpoints as hooks
from stockguard.store.webhook_endpoints import DeliveryRecord, EndpointRecord

__all__ = ["delivery_json", "endpoint_json", "router"]

router = APIRouter(tags=["webhooks"], route_class=StrictJSONRoute)

Url = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Patterns = Annotated[list[Pattern], Field(min_length=1, max_length=100)]
Description = Annotated[str, StringConstraints(max_length=500)]


class EndpointIn(Strict):
    url: Url
    events: Patterns
    description: Description | None = None


class EndpointPatchIn(Strict):
    url: Url | None = None
    events: Patterns | None = None
    description: Description | None = None
    active: bool | None = None


class ReplayIn(Strict):
    after_seq: int = Field(ge=0, le=2**63 - 1)


# ------------------------------------------------------------ answers (OpenAPI)


class WebhookEndpoint(doc.Answer):
    """An endpoint; ``secret`` only in the answer that created it (null in a replay of
    that answer under the same Idempotency-Key)."""

    id: str
    url: str
    events: list[str]
    description: str | None
    active: bool
    created_at: doc.Timestamp
    updated_at: doc.Timestamp


class WebhookEndpointCreated(WebhookEndpoint):
    secret: str | None = Field(description="whsec_<base64 of 32 bytes>, shown only here")


class WebhookEndpointPage(doc.Answer):
    items: list[WebhookEndpoint]
    next: doc.Cursor


class WebhookDelivery(doc.Answer):
    event_id: str
    seq: int | None = Field(description="null for a ping")
    type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: doc.Timestamp | None = Field(description="only while pending")
    last_attempt_at: doc.Timestamp | None
    delivered_at: doc.Timestamp | None
    created_at: doc.Timestamp


class WebhookDeliveryPage(doc.Answer):
    items: list[WebhookDelivery]
    next: doc.Cursor


class ReplayQueued(doc.Answer):
    queued: int


# ------------------------------------------------------------ rendering


def endpoint_json(e: EndpointRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "url": e.url,
        "events": e.events,
        "description": e.description,
        "active": e.active,
        "created_at": ts(e.created_at),
        "updated_at": ts(e.updated_at),
    }


def delivery_json(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "event_id": d.event_id,
        "seq": d.seq,
        "type": d.type,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "next_attempt_at": ts(d.next_attempt_at),
        "last_attempt_at": ts(d.last_attempt_at),
        "delivered_at": ts(d.delivered_at),
        "created_at": ts(d.created_at),
    }


_ID = re.compile(r"we_[0-9a-f]{32}")


def _endpoint_path(endpoint_id: str) -> str:
    if not _ID.fullmatch(endpoint_id):
        raise NotFound(f"webhook endpoint {endpoint_id[:64]} not found")
    return endpoint_id


EndpointPath = Annotated[str, Depends(_endpoint_path)]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Config = Annotated[Settings, Depends(_settings)]
BAD_CURSOR = "after: not a cursor this API gave out"


def _endpoint_cursor(after: str | None) -> str | None:
    cursor = decode_cursor(after)
    if cursor is not None and not isinstance(cursor, str):
        raise ValidationFailed(BAD_CURSOR)
    return cursor


def _delivery_cursor(after: str | None) -> tuple[datetime, int] | None:
    cursor = decode_cursor(after)
    if cursor is None:
        return None
    if not (
        isinstance(cursor, list)
        and len(cursor) == 2
        and isinstance(cursor[0], str)
        and isinstance(cursor[1], int)
        and not isinstance(cursor[1], bool)
        and 0 <= cursor[1] < 2**63
    ):
        raise ValidationFailed(BAD_CURSOR)
    try:
        at = datetime.fromisoformat(cursor[0])
    except ValueError as exc:
        raise ValidationFailed(BAD_CURSOR) from exc
    if at.tzinfo is None:
        raise ValidationFailed(BAD_CURSOR)
    return at.astimezone(UTC), cursor[1]


# ------------------------------------------------------------ routes

BASE = "/v1/admin/webhook-endpoints"


@router.post(
    BASE,
    status_code=201,
    response_model=None,
    responses=doc.documented({201: WebhookEndpointCreated}, 403, 422),
)
async def create_webhook_endpoint(key: Admin, body: EndpointIn, b: B, config: Config) -> Response:
    new = hooks.NewEndpoint(url=body.url, events=body.events, description=body.description)
    return await answered(
        lambda: hooks.create_endpoint(
            b, new, actor(key), allow_private=config.webhook_allow_private_urls
        ),
        lambda made: (201, {**endpoint_json(made.endpoint), "secret": made.secret}),
        # The secret is shown once: a replay answers without it.
        replay=lambda made: {**endpoint_json(made.endpoint), "secret": None},
    )


@router.get(
    BASE, response_model=None, responses=doc.documented({200: WebhookEndpointPage}, 403, 422)
)
async def list_webhook_endpoints(_key: Admin, b: B, limit: Limit = 50, after: After = None) -> Any:
    found = await hooks.list_endpoints(b, limit, _endpoint_cursor(after))
    return page([endpoint_json(e) for e in found], limit, found[-1].id if found else None)


@router.get(
    BASE + "/{endpoint_id}",
    response_model=None,
    responses=doc.documented({200: WebhookEndpoint}, 403, 404),
)
async def get_webhook_endpoint(_key: Admin, endpoint_id: EndpointPath, b: B) -> Any:
    return endpoint_json(await hooks.get_endpoint(b, endpoint_id))


@router.patch(
    BASE + "/{endpoint_id}",
    response_model=None,
    responses=doc.documented({200: WebhookEndpoint}, 403, 404, 422),
)
async def update_webhook_endpoint(
    key: Admin, endpoint_id: EndpointPath, body: EndpointPatchIn, b: B, config: Config
) -> Any:
    named = body.model_fields_set
    if not named:
        raise ValidationFailed("name at least one of url, events, description, active")
    for field in ("url", "events", "active"):
        if field in named and getattr(body, field) is None:
            raise ValidationFailed(f"{field}: must not be null")
    changes = hooks.EndpointChanges(
        url=body.url,
        events=body.events,
        description=body.description,
        set_description="description" in named,
        active=body.active,
    )
    found = await hooks.update_endpoint(
        b, endpoint_id, changes, actor(key), allow_private=config.webhook_allow_private_urls
    )
    return endpoint_json(found)


@router.delete(
    BASE + "/{endpoint_id}",
    status_code=204,
    response_model=None,
    responses={
        204: {"description": "Deleted: nothing more is sent to it"},
        **doc.documented({}, 403, 404),
    },
)
async def delete_webhook_endpoint(key: Admin, endpoint_id: EndpointPath, b: B) -> Response:
    await hooks.delete_endpoint(b, endpoint_id, actor(key))
    return Response(status_code=204)


@router.post(
    BASE + "/{endpoint_id}/test",
    response_model=None,
    responses=doc.documented({200: WebhookDelivery}, 403, 404),
)
async def test_webhook_endpoint(
    key: Admin, endpoint_id: EndpointPath, b: B, config: Config
) -> Response:
    return await answered(
        lambda: hooks.ping_endpoint(
            b,
            endpoint_id,
            actor(key),
            allow_private=config.webhook_allow_private_urls,
            timeout_seconds=config.webhook_timeout_seconds,
        ),
        lambda attempt: (200, delivery_json(attempt)),
    )


@router.get(
    BASE + "/{endpoint_id}/deliveries",
    response_model=None,
    responses=doc.documented({200: WebhookDeliveryPage}, 403, 404, 422),
)
async def list_webhook_deliveries(
    _key: Admin,
    endpoint_id: EndpointPath,
    b: B,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Limit = 50,
    after: After = None,
) -> Any:
    found = await hooks.list_deliveries(b, endpoint_id, status, limit, _delivery_cursor(after))
    last = [found[-1].created_at.isoformat(), found[-1].position] if found else None
    return page([delivery_json(d) for d in found], limit, last)


@router.post(
    BASE + "/{endpoint_id}/replay",
    status_code=202,
    response_model=None,
    responses={
        202: {"model": ReplayQueued, "description": "Queued for the delivery workers"},
        **doc.documented({}, 403, 404, 422),
    },
)
async def replay_webhook_endpoint(
    key: Admin, endpoint_id: EndpointPath, body: ReplayIn, b: B
) -> Response:
    return await answered(
        lambda: hooks.replay(b, endpoint_id, body.after_seq, actor(key)),
        lambda queued: (202, {"queued": queued}),
    )
