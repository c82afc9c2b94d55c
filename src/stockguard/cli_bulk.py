"""``stockguard stock import`` (bulk stock writes from a CSV or JSON file) and
``stockguard explain`` (a SKU's levels rebuilt from the ledger, as of a time)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stockguard.domain.errors import BatchRejected, StockguardError, ValidationFailed
from stockguard.service.uow import Backends

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")


def _fail(exc: StockguardError) -> NoReturn:
    from stockguard.cli import _fail as fail  # cli.py registers this module: import late

    fail(exc)


def _with_backends(fn: Callable[[Backends], Awaitable[T]]) -> T:
    from stockguard.cli import _with_backends as with_backends

    return with_backends(fn)


console = Console()
err = Console(stderr=True)

__all__ = ["explain_command", "import_command", "register"]

COLUMNS = (
    "sku",
    "location",
    "reason",
    "delta",
    "set_on_hand",
    "unavailable_delta",
    "from",
    "expected_on_hand",
    "reference",
)
_INTEGERS = frozenset({"delta", "set_on_hand", "unavailable_delta", "expected_on_hand"})


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        unknown = [h for h in header if h not in COLUMNS]
        if unknown or "sku" not in header:
            raise ValidationFailed(
                f"{path}: the header must name columns of {', '.join(COLUMNS)} (with sku); "
                f"unknown: {', '.join(unknown) or 'none'}"
            )
        rows: list[dict[str, Any]] = []
        for raw in reader:
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key is None:  # more cells than columns
                    row["extra cells"] = value
                    continue
                text = (value or "").strip()
                if not text:  # an empty cell is an absent field
                    continue
                name = key.strip()
                row[name] = _integer(text) if name in _INTEGERS else text
            rows.append(row)
    return rows


def _integer(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text  # the row fails with "should be a valid integer"


def _json_rows(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"{path}: not JSON ({exc})") from exc
    if isinstance(data, dict) and set(data) == {"items"}:
        data = data["items"]
    if not isinstance(data, list):
        raise ValidationFailed(f'{path}: give a JSON list of adjustments (or {{"items": [...]}})')
    return data


def read_rows(path: Path) -> list[Any]:
    """The file's rows as batch items (dicts), CSV or JSON by the file's suffix."""
    if not path.is_file():
        raise ValidationFailed(f"{path}: no such file")
    rows = _json_rows(path) if path.suffix.lower() == ".json" else _csv_rows(path)
    if not rows:
        raise ValidationFailed(f"{path}: no rows")
    return rows


def _item(row: Any) -> Any:
    from stockguard.api.bulk import adjustment_of

    if not isinstance(row, dict):
        return ValidationFailed("a row must be an object of adjustment fields")
    return adjustment_of(row)


def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="a .csv file with a header row (sku, location, reason, and one of delta, "
            "set_on_hand, unavailable_delta; optional from, expected_on_hand, reference), "
            'or a .json list of the same objects (or {"items": [...]})'
        ),
    ],
    skip_failed: Annotated[
        bool,
        typer.Option(
            "--skip-failed",
            help="apply every row that can be applied and report the others (default: all or "
            "nothing per batch of 2,000 rows)",
        ),
    ] = False,
) -> None:
    """Apply many adjustments from a file, as POST /v1/adjustments/batch does, in batches
    of 2,000 rows (each batch one transaction). Rows are numbered from 1 (the first row
    after a CSV header). Without --skip-failed a row that is malformed stops the import
    before anything is applied, and a batch with a refused row applies nothing and stops
    the import (earlier batches stay applied). Exit 1 when any row failed."""
    from stockguard.service import bulk
    from stockguard.service.catalogue import _check_form

    try:
        rows = read_rows(file)
    except StockguardError as exc:
        _fail(exc)
    items = [_item(row) for row in rows]
    malformed: list[tuple[int, StockguardError]] = []
    for i, item in enumerate(items):
        if isinstance(item, StockguardError):
            malformed.append((i, item))
            continue
        try:
            _check_form(item)
        except ValidationFailed as exc:
            malformed.append((i, exc))
    if malformed and not skip_failed:
        _report(malformed)
        err.print(f"[red]{len(malformed)} malformed row(s): nothing was applied[/red]")
        raise typer.Exit(1)
    policy = bulk.ErrorPolicy.SKIP_FAILED if skip_failed else bulk.ErrorPolicy.ALL_OR_NOTHING

    async def go(backends: Backends) -> tuple[int, list[tuple[int, StockguardError]], int]:
        applied, failed = 0, []
        with Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err,
        ) as progress:  # fmt: skip
            task = progress.add_task("rows", total=len(items))
            for start in range(0, len(items), bulk.MAX_ITEMS):
                chunk = items[start : start + bulk.MAX_ITEMS]
                try:
                    results = await bulk.apply_batch(backends, chunk, policy, "cli:import")
                except BatchRejected as exc:
                    failed += [(start + i, e) for i, e in exc.failed]
                    return applied, failed, start
                applied += sum(1 for r in results if r.applied)
                failed += [(start + r.index, r.error) for r in results if r.error is not None]
                progress.update(task, advance=len(chunk))
        return applied, failed, len(items)

    try:
        applied, failed, reached = _with_backends(go)
    except StockguardError as exc:
        _fail(exc)
    _report(failed)
    if reached < len(items):
        end = min(reached + bulk.MAX_ITEMS, len(items))
        err.print(f"[red]rows {reached + 1} to {end}: refused as a whole, none applied[/red]")
        if reached:
            err.print(f"rows 1 to {reached}: applied (earlier batches)")
        if end < len(items):
            err.print(f"rows {end + 1} to {len(items)}: not tried")
    console.print(f"{applied} row(s) applied, {len(failed)} failed, of {len(items)}")
    if failed:
        raise typer.Exit(1)


def _report(failed: list[tuple[int, StockguardError]]) -> None:
    for index, exc in sorted(failed, key=lambda f: f[0]):
        err.print(f"row {index + 1}: [red]{exc.code}[/red]: {exc.detail}")


def explain_command(
    sku: Annotated[str, typer.Argument(help="the SKU code")],
    location: Annotated[
        str | None, typer.Option(help="one location only (default: every location)")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="RFC 3339 time, e.g. 2026-11-26T15:00:00Z (default: now; a future time is now)"
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=500, help="how many movements to show (newest first)")
    ] = 50,
    before: Annotated[
        int | None, typer.Option(help="show movements older than this movement id (paging)")
    ] = None,
) -> None:
    """Explain a number: the SKU's on_hand, reserved and unavailable per location as of a
    time, rebuilt from the ledger, with the movements that made them, and whether the
    whole ledger adds up to the levels now. Exit 1 when it does not."""
    from stockguard.api.bulk import parse_at
    from stockguard.service.explain import explain

    try:
        when = parse_at(at)
        found = _with_backends(lambda b: explain(b.pool, sku, location, when, limit, before))
    except StockguardError as exc:
        _fail(exc)
    table = Table(title=f"{sku} as of {found.at.isoformat()} (rebuilt from the ledger)")
    for column in ("location", "on_hand", "reserved", "unavailable"):
        table.add_column(column, justify="left" if column == "location" else "right")
    for loc, c in found.levels.items():
        table.add_row(loc, str(c.on_hand), str(c.reserved), str(c.unavailable))
    t = found.totals
    table.add_row("total", str(t.on_hand), str(t.reserved), str(t.unavailable))
    console.print(table)
    moves = Table(title=f"movements up to then (newest first, at most {limit})")
    for column in ("id", "created_at", "location", "on_hand", "reserved", "unavailable"):
        moves.add_column(column)
    for column in ("reason", "order", "actor", "reference"):
        moves.add_column(column)
    for m in found.movements:
        moves.add_row(
            str(m["id"]),
            m["created_at"].isoformat(),
            m["location"],
            f"{m['on_hand_delta']:+d}",
            f"{m['reserved_delta']:+d}",
            f"{m['unavailable_delta']:+d}",
            m["reason"],
            m["order_id"] or "",
            m["actor"],
            m["reference"] or "",
        )
    console.print(moves)
    if len(found.movements) == limit:
        console.print(f"older movements: --before {found.movements[-1]['id']}")
    if found.consistent:
        console.print("[green]check: the ledger adds up to every level now[/green]")
        return
    for mm in found.mismatches:
        err.print(
            f"[red]MISMATCH at {mm.location}: level now on_hand={mm.level.on_hand} "
            f"reserved={mm.level.reserved} unavailable={mm.level.unavailable}, ledger says "
            f"on_hand={mm.ledger.on_hand} reserved={mm.ledger.reserved} "
            f"unavailable={mm.ledger.unavailable}[/red] (run stockguard verify)"
        )
    raise typer.Exit(1)


def register(app: typer.Typer, stock_app: typer.Typer) -> None:
    stock_app.command("import")(import_command)
    app.command("explain")(explain_command)
