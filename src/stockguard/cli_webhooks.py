"""`stockguard webhooks …`: an operator lists endpoints with their backlog, adds one (the
secret is printed once), pings one, reads its delivery log and replays events to it, as
the admin routes do (same rules: :mod:`stockguard.service.webhook_endpoints`). Deleting,
pausing and changing an endpoint are the API's ``DELETE`` and ``PATCH``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stockguard.config import Settings
from stockguard.domain.errors import StockguardError

if TYPE_CHECKING:
    from stockguard.service.uow import Backends
    from stockguard.store.webhook_endpoints import DeliveryRecord, DeliveryStatus, EndpointRecord

__all__ = ["webhooks_app"]

T = TypeVar("T")
ACTOR = "cli:operator"
console = Console()
err = Console(stderr=True)

webhooks_app = typer.Typer(
    help="Webhook endpoints: list, add, test (ping), deliveries (the log), replay.",
    no_args_is_help=True,
)


class Status(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


_STATUSES: dict[Status, DeliveryStatus] = {
    Status.pending: "pending",
    Status.delivered: "delivered",
    Status.failed: "failed",
}


def _run(fn: Callable[[Backends], Awaitable[T]]) -> T:
    # Imported here: cli imports this module to register the sub-app.
    from stockguard.cli import _with_backends

    try:
        return _with_backends(fn)
    except StockguardError as exc:
        _fail(exc)


def _fail(exc: StockguardError) -> NoReturn:
    err.print(f"[red]{exc.code}[/red]: {exc.detail}", markup=True, highlight=False)
    raise typer.Exit(1) from exc


def _when(value: object) -> str:
    return "" if value is None else str(value)[:19]


@webhooks_app.command("list")
def webhooks_list() -> None:
    """Every endpoint with its deliveries still pending and those that failed."""
    from stockguard.store.webhook_endpoints import backlog, list_endpoints

    async def read(b: Backends) -> tuple[list[EndpointRecord], dict[str, tuple[int, int]]]:
        async with b.pool.acquire() as conn:
            return await list_endpoints(conn, 10_000, None), await backlog(conn)

    found, counts = _run(read)
    table = Table(title="webhook endpoints")
    for column in ("id", "url", "events", "active", "pending", "failed", "description"):
        table.add_column(column)
    for e in found:
        pending, failed = counts.get(e.id, (0, 0))
        table.add_row(
            e.id, e.url, ",".join(e.events), "yes" if e.active else "no",
            str(pending), str(failed), e.description or "",
        )  # fmt: skip
    console.print(table)


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="http(s) URL that will receive the events")],
    event: Annotated[
        list[str],
        typer.Option("--event", help="'*', an event type or 'prefix.*' (repeat for more)"),
    ],
    description: Annotated[str | None, typer.Option(help="who or what this is for")] = None,
) -> None:
    """Add an endpoint and print its signing secret once (store it at the receiver).
    Refused (exit 1) for a URL that is not http(s) or whose host resolves to a private
    address, unless STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS=true."""
    from stockguard.service.webhook_endpoints import NewEndpoint, create_endpoint

    allow = Settings().webhook_allow_private_urls
    new = NewEndpoint(url, event, description)
    made = _run(lambda b: create_endpoint(b, new, ACTOR, allow_private=allow))
    err.print(f"created webhook endpoint {made.endpoint.id}; its secret is shown only once:")
    console.print(made.endpoint.id, highlight=False)
    console.print(made.secret, highlight=False)


def _show(d: DeliveryRecord) -> str:
    code = "" if d.last_status_code is None else f" HTTP {d.last_status_code}"
    why = f" ({d.last_error})" if d.last_error and not d.last_error.startswith("HTTP") else ""
    return f"{d.event_id} {d.type}: {d.status} after {d.attempts} attempt(s){code}{why}"


@webhooks_app.command("test")
def webhooks_test(endpoint_id: Annotated[str, typer.Argument(help="the endpoint's id")]) -> None:
    """Send a signed `ping` event now and print the outcome (exit 1 unless delivered).
    A failed ping is not retried."""
    from stockguard.service.webhook_endpoints import ping_endpoint

    settings = Settings()
    attempt = _run(
        lambda b: ping_endpoint(
            b,
            endpoint_id,
            ACTOR,
            allow_private=settings.webhook_allow_private_urls,
            timeout_seconds=settings.webhook_timeout_seconds,
        )
    )
    console.print(_show(attempt), highlight=False, markup=False, soft_wrap=True)
    if attempt.status != "delivered":
        raise typer.Exit(1)


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    endpoint_id: Annotated[str, typer.Argument(help="the endpoint's id")],
    status: Annotated[Status | None, typer.Option(help="only these")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 50,
) -> None:
    """The endpoint's delivery log, newest first."""
    from stockguard.service.webhook_endpoints import list_deliveries

    wanted = None if status is None else _STATUSES[status]
    found = _run(lambda b: list_deliveries(b, endpoint_id, wanted, limit, None))
    table = Table(title=f"deliveries to {endpoint_id}")
    for column in (
        "event_id", "seq", "type", "status", "attempts", "last_status_code", "last_error",
        "next_attempt_at", "delivered_at",
    ):  # fmt: skip
        table.add_column(column)
    for d in found:
        table.add_row(
            d.event_id, "" if d.seq is None else str(d.seq), d.type, d.status, str(d.attempts),
            "" if d.last_status_code is None else str(d.last_status_code), d.last_error or "",
            _when(d.next_attempt_at), _when(d.delivered_at),
        )  # fmt: skip
    console.print(table)


@webhooks_app.command("replay")
def webhooks_replay(
    endpoint_id: Annotated[str, typer.Argument(help="the endpoint's id")],
    after_seq: Annotated[int, typer.Option("--after-seq", min=0, help="send events after this")],
) -> None:
    """Queue every kept event of the endpoint's types with seq > --after-seq to be sent
    again, in order (the workers send them)."""
    from stockguard.service.webhook_endpoints import replay

    queued = _run(lambda b: replay(b, endpoint_id, after_seq, ACTOR))
    console.print(f"queued {queued} event(s) for {endpoint_id}", highlight=False)
