"""The event feed of API.md "Outgoing events": ``GET /v1/events`` in commit order."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from stockguard.api import responses as doc
from stockguard.api.routes import B, Service
from stockguard.api.strict import StrictJSONRoute
from stockguard.domain.errors import EventsExpired, ValidationFailed
from stockguard.metrics import EVENTS_SEQUENCED
from stockguard.store import events

__all__ = ["check_patterns", "router"]

router = APIRouter(tags=["events"], route_class=StrictJSONRoute)

_PREFIXES = {t.split(".", 1)[0] for t in events.EVENT_TYPES if "." in t}


def check_patterns(patterns: list[str], *, star: bool) -> list[str]:
    """Event type patterns: a type of the contract, ``prefix.*`` for a known prefix, or
    ``*`` (where ``star``). Anything else is a 422 naming it."""
    bad = [
        p
        for p in patterns
        if not (
            (p in events.EVENT_TYPES and p != "ping")
            or (p.endswith(".*") and p[:-2] in _PREFIXES)
            or (star and p == "*")
        )
    ]
    if bad:
        raise ValidationFailed(
            f"unknown event types: {', '.join(sorted(set(bad)))}",
            known=[t for t in events.EVENT_TYPES if t != "ping"],
        )
    return patterns


@router.get(
    "/v1/events",
    response_model=None,
    responses=doc.documented({200: doc.EventPage}, 410, 422),
)
async def feed(
    _key: Service,
    b: B,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    type_: Annotated[list[str] | None, Query(alias="type", max_length=20)] = None,
) -> Any:
    """Events after ``after`` in commit order (``seq``); ``next`` is the seq to pass as
    ``after`` next, ``null`` when there is nothing newer now."""
    patterns = check_patterns(type_ or [], star=False)
    # Number what has committed since the sequencer last ran, so a reader sees it now
    # rather than at the worker's next pass (a no-op when another process is at it).
    numbered = await events.sequence_events(b.pool)
    if numbered:
        EVENTS_SEQUENCED.inc(numbered)
    _, pruned_through = await events.horizon(b.pool)
    if after is not None and after < pruned_through:
        raise EventsExpired(
            f"events up to seq {pruned_through} were removed by retention; "
            f"start again from after={pruned_through}",
            pruned_through=pruned_through,
        )
    found = await events.read_feed(b.pool, after or 0, limit, patterns)
    return {
        "items": [events.event_json(e) for e in found],
        "next": found[-1].seq if len(found) == limit else None,
    }
