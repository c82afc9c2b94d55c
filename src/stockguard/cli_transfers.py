"""`stockguard transfers …`: an operator sends stock between locations, books what
arrives, cancels what will not arrive and looks transfers up, as the API's transfer
routes do (same rules, same transactions: :mod:`stockguard.service.transfers`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stockguard.domain.errors import StockguardError

if TYPE_CHECKING:
    from stockguard.service.transfers import TransferRecord
    from stockguard.service.uow import Backends

__all__ = ["transfers_app"]

T = TypeVar("T")
ACTOR = "cli:operator"
console = Console()
err = Console(stderr=True)

transfers_app = typer.Typer(
    help="Transfers between locations: create, receive, cancel, show, list.",
    no_args_is_help=True,
)

LineOption = Annotated[
    list[str],
    typer.Option("--line", help="SKU=QUANTITY, once per SKU (repeat the option for more lines)"),
]


def _run(fn: Callable[[Backends], Awaitable[T]]) -> T:
    # Imported here: cli imports this module to register the sub-app.
    from stockguard.cli import _with_backends

    try:
        return _with_backends(fn)
    except StockguardError as exc:
        _fail(exc)


def _fail(exc: StockguardError) -> NoReturn:
    err.print(f"[red]{exc.code}[/red]: {exc.detail}")
    raise typer.Exit(1) from exc


def _lines(raw: list[str]) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for item in raw:
        sku, sep, quantity = item.rpartition("=")
        if not sep or not sku or not quantity.isdigit():
            raise typer.BadParameter(f"{item!r}: expected SKU=QUANTITY", param_hint="--line")
        out.append((sku, int(quantity)))
    return tuple(out)


def _table(t: TransferRecord) -> Table:
    table = Table()
    for column in ("sku", "quantity", "received", "cancelled", "in_transit"):
        table.add_column(column, justify="left" if column == "sku" else "right")
    for ln in t.lines:
        table.add_row(
            ln.sku, *(str(n) for n in (ln.quantity, ln.received, ln.cancelled, ln.in_transit))
        )
    return table


def _show(t: TransferRecord) -> None:
    note = f" ({t.note})" if t.note else ""
    console.print(
        f"transfer {t.id}: {t.from_location} -> {t.to_location}, {t.status.value}{note}",
        soft_wrap=True,
        markup=False,
    )
    console.print(_table(t))
    for r in t.receipts:
        lines = ", ".join(f"{sku}={q}" for sku, q in r.lines)
        console.print(
            f"receipt {r.receipt_id} at {str(r.created_at)[:19]} by {r.actor}: {lines}",
            soft_wrap=True,
            markup=False,
        )


@transfers_app.command("create")
def transfers_create(
    transfer_id: Annotated[str, typer.Argument(help="the transfer's id (yours to choose)")],
    from_: Annotated[str, typer.Option("--from", help="the location the units leave")],
    to: Annotated[str, typer.Option("--to", help="the location the units go to")],
    line: LineOption,
    note: Annotated[str | None, typer.Option(help="free text, e.g. a carrier reference")] = None,
) -> None:
    """Take the units off --from now (refused whole if any of them is reserved,
    unavailable or missing there); they are in transit until received or cancelled.
    Running it again with the same content shows the transfer; exit 1 when refused."""
    from stockguard.service.transfers import CreateTransfer, create_transfer

    req = CreateTransfer(transfer_id, from_, to, _lines(line), note)
    written = _run(lambda b: create_transfer(b, req, ACTOR))
    if not written.created:
        console.print(f"transfer {transfer_id} exists already with this content")
    _show(written.transfer)


@transfers_app.command("receive")
def transfers_receive(
    transfer_id: Annotated[str, typer.Argument(help="the transfer's id")],
    receipt_id: Annotated[str, typer.Argument(help="this receipt's id (applied once)")],
    line: LineOption,
) -> None:
    """Put units that arrived on hand at the transfer's --to location (part of a transfer
    may arrive at a time). Exit 1 when refused (nothing changed)."""
    from stockguard.service.transfers import Receipt, receive_transfer

    receipt = Receipt(receipt_id, _lines(line))
    written = _run(lambda b: receive_transfer(b, transfer_id, receipt, ACTOR))
    if not written.created:
        console.print(f"receipt {receipt_id} was applied already")
    _show(written.transfer)


@transfers_app.command("cancel")
def transfers_cancel(transfer_id: Annotated[str, typer.Argument(help="the transfer's id")]) -> None:
    """Put what is still in transit back on hand at the transfer's --from location."""
    from stockguard.service.transfers import cancel_transfer

    _show(_run(lambda b: cancel_transfer(b, transfer_id, ACTOR)))


@transfers_app.command("show")
def transfers_show(transfer_id: Annotated[str, typer.Argument(help="the transfer's id")]) -> None:
    """A transfer's lines (quantity, received, cancelled, in transit) and receipts."""
    from stockguard.service.transfers import get_transfer

    _show(_run(lambda b: get_transfer(b, transfer_id)))


@transfers_app.command("list")
def transfers_list(
    status: Annotated[str | None, typer.Option(help="in_transit, received or cancelled")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 50,
) -> None:
    """Transfers, oldest first."""
    from stockguard.service.transfers import TransferStatus, list_transfers

    try:
        wanted = TransferStatus(status) if status else None
    except ValueError as exc:
        raise typer.BadParameter(
            "in_transit, received or cancelled", param_hint="--status"
        ) from exc
    found = _run(lambda b: list_transfers(b, wanted, limit, None))
    table = Table(title="transfers")
    for column in ("id", "from", "to", "status", "lines", "in_transit", "created"):
        table.add_column(column)
    for t in found:
        table.add_row(
            t.id, t.from_location, t.to_location, t.status.value, str(len(t.lines)),
            str(sum(ln.in_transit for ln in t.lines)), str(t.created_at)[:19],
        )  # fmt: skip
    console.print(table)
