"""`stockguard events tail`: follow the event feed from a terminal or a script, one JSON
line per event, in commit order (the same reads as ``GET /v1/events``)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from stockguard.domain.errors import StockguardError
from stockguard.store import events

if TYPE_CHECKING:
    from stockguard.service.uow import Backends

__all__ = ["events_app"]

events_app = typer.Typer(help="The event feed: follow it as JSON lines.", no_args_is_help=True)


@events_app.command()
def tail(
    type_: Annotated[
        list[str] | None,
        typer.Option(
            "--type", help="an event type or prefix.* (repeat for more); default: every type"
        ),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(min=0, help="start after this seq (0: from the oldest kept); default: now"),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="keep waiting for new events")
    ] = True,
    interval: Annotated[
        float, typer.Option(min=0.05, max=60, help="seconds between polls when idle")
    ] = 0.5,
) -> None:
    """Print events as JSON lines (`{id, seq, type, occurred_at, data}`), oldest first.
    Ctrl-C stops; pass the last seq printed as --after to continue later."""
    from stockguard.api.events import check_patterns
    from stockguard.cli import _with_backends

    try:
        patterns = check_patterns(type_ or [], star=False)
    except StockguardError as exc:
        raise typer.BadParameter(exc.detail, param_hint="--type") from exc

    async def go(b: Backends) -> None:
        last, pruned = await events.horizon(b.pool)
        cursor = last if after is None else after
        if cursor < pruned:
            typer.echo(
                f"events_expired: events up to seq {pruned} were removed by retention; "
                f"use --after {pruned} or later",
                err=True,
            )
            raise typer.Exit(1)
        while True:
            await events.sequence_events(b.pool)
            found = await events.read_feed(b.pool, cursor, 500, patterns)
            for e in found:
                sys.stdout.write(json.dumps(events.event_json(e), separators=(",", ":")) + "\n")
            sys.stdout.flush()
            if found:
                cursor = found[-1].seq
                continue
            if not follow:
                return
            await asyncio.sleep(interval)

    try:
        _with_backends(go)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
