"""``stockguard``: run the service and operate it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stockguard import __version__
from stockguard.announce import Ready, announce_when_ready, ready_text, say
from stockguard.cli_events import events_app
from stockguard.cli_transfers import transfers_app
from stockguard.cli_webhooks import webhooks_app
from stockguard.config import Settings
from stockguard.domain.errors import StockguardError
from stockguard.embedded import postgres_initialised
from stockguard.logging import configure_logging, get_logger
from stockguard.runtime import Endpoints, open_backends, resolve_endpoints
from stockguard.service.uow import Backends
from stockguard.store.migrate import upgrade
from stockguard.store.orders import OrderRecord

if TYPE_CHECKING:
    from stockguard.service.catalogue import SkuView

__all__ = ["app", "main"]

T = TypeVar("T")
log = get_logger(__name__)
console = Console()
err = Console(stderr=True)

app = typer.Typer(
    help="stockguard: an inventory service that never oversells, never loses a unit and "
    "never restores a unit twice.\n\nWith no STOCKGUARD_DATABASE_URL / STOCKGUARD_REDIS_URL "
    "it starts embedded PostgreSQL and Redis under ./.stockguard/.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
orders_app = typer.Typer(
    help="Orders that need an operator: needs-review, paid-uncommitted, logs, recover, "
    "resolve (docs/RUNBOOK.md); returns lists an order's returns.",
    no_args_is_help=True,
)
app.add_typer(orders_app, name="orders")
stock_app = typer.Typer(
    help="Stock levels: show a SKU, adjust a level (sellable or unavailable units), set a "
    "level's safety stock, import many adjustments from a CSV or JSON file.",
    no_args_is_help=True,
)
app.add_typer(stock_app, name="stock")
app.add_typer(transfers_app, name="transfers")
app.add_typer(events_app, name="events")
app.add_typer(webhooks_app, name="webhooks")


def _settings(*, quiet: bool = True) -> Settings:
    """The settings, with logging configured. ``quiet`` (operator commands): only warnings
    and errors are logged unless ``STOCKGUARD_LOG_LEVEL`` is set; serve and worker log at
    the configured level (INFO by default)."""
    settings = Settings()
    level = settings.log_level
    if quiet and "log_level" not in settings.model_fields_set:
        level = "WARNING"
    configure_logging(level, settings.log_json)
    return settings


def _print_version(value: bool) -> None:
    if value:
        console.print(f"stockguard {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Options that come before the command."""


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (kill, systemd, container runtimes) stops a command the way Ctrl-C does:
    uvicorn drains, then ``finally`` blocks run and the embedded servers are left."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resolve(settings: Settings, *, progress: bool = False) -> Endpoints:
    """``resolve_endpoints``, saying on stderr which data directory the embedded servers
    use: it is relative to the current directory, and a new one means an empty database.
    With ``progress``, also say what is being started before it starts."""
    if progress and (settings.database_url is None or settings.redis_url is None):
        kinds = " and ".join(
            kind
            for kind, url in (("PostgreSQL", settings.database_url), ("Redis", settings.redis_url))
            if url is None
        )
        initdb = settings.database_url is None and not postgres_initialised(settings.data_dir)
        first = " (first start: initialising its database)" if initdb else ""
        say(f"starting the embedded {kinds} in {settings.data_dir.resolve()}{first}")
    endpoints = resolve_endpoints(settings)
    emb = endpoints.embedded
    if emb is not None:
        if emb.database_url is None:
            what = "embedded Redis only"
        elif emb.new_database:
            what = "created a new, empty database (STOCKGUARD_DATA_DIR chooses another)"
        else:
            what = "existing database"
        if emb.others:
            what += f"; joined the servers of {emb.others} other running process(es)"
        print(f"stockguard: data directory {emb.data_dir}: {what}", file=sys.stderr, flush=True)
    return endpoints


def _with_backends(
    fn: Callable[[Backends], Awaitable[T]],
    *,
    migrate: bool = True,
    settings: Settings | None = None,
) -> T:
    settings = settings or _settings()
    with _sigterm_as_ctrl_c():
        endpoints = _resolve(settings)

        async def go() -> T:
            async with open_backends(settings, endpoints, migrate=migrate) as backends:
                return await fn(backends)

        try:
            return asyncio.run(go())
        finally:
            # The loop's own SIGTERM handler (worker) is gone: a second SIGTERM is Ctrl-C again.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            endpoints.close()


def _export(endpoints: Endpoints) -> None:
    """Hand the resolved servers to child processes (uvicorn workers)."""
    os.environ["STOCKGUARD_DATABASE_URL"] = endpoints.database_url
    os.environ["STOCKGUARD_REDIS_URL"] = endpoints.redis_url


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="API processes")] = 1,
    run_workers: Annotated[
        bool, typer.Option("--run-workers/--no-run-workers", help="run worker loops inside")
    ] = True,
) -> None:
    """Apply migrations, then serve the HTTP API (with the worker loops unless told not).
    SIGTERM or Ctrl-C: finish the requests in flight, then stop."""
    import uvicorn

    settings = _settings(quiet=False)
    with _sigterm_as_ctrl_c():
        endpoints = _resolve(settings, progress=True)
        try:
            say("applying the database migrations")
            upgrade(endpoints.database_url)
            _export(endpoints)
            os.environ["STOCKGUARD_RUN_WORKERS"] = "true" if run_workers else "false"
            say(f"starting the HTTP server on {host}:{port}")
            log.info("serving", host=host, port=port, workers=workers)
            ready = _ready(settings, endpoints, host, port, workers, run_workers)
            announce_when_ready(host, port, ready_text(ready))
            # uvicorn catches SIGTERM itself, shuts down gracefully, then raises it again:
            # our handler turns that into KeyboardInterrupt, which uvicorn.run swallows.
            uvicorn.run(
                "stockguard.api.app:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                # httptools, with a cap on the request head (uvicorn's own has none)
                http="stockguard.api.headers:CappedHttpToolsProtocol",
                log_level=settings.log_level.lower(),
                access_log=False,
            )
        finally:
            endpoints.close()


def _command() -> str:
    """How the person who started this runs stockguard: the script beside this Python
    (relative when under the current directory, as ``.venv/bin/stockguard``)."""
    script = Path(sys.executable).parent / "stockguard"
    if not script.exists():
        return "stockguard"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _ready(
    settings: Settings,
    endpoints: Endpoints,
    host: str,
    port: int,
    workers: int,
    run_workers: bool,
) -> Ready:
    emb = endpoints.embedded
    return Ready(
        host=host,
        port=port,
        workers=workers,
        run_workers=run_workers,
        database_url=endpoints.database_url,
        redis_url=endpoints.redis_url,
        data_dir=emb.data_dir if emb is not None else None,
        embedded_postgres=emb is not None and emb.database_url is not None,
        embedded_redis=emb is not None and emb.redis is not None,
        bootstrap_key=settings.bootstrap_admin_key is not None,
        command=_command(),
        version=__version__,
    )


@app.command()
def migrate() -> None:
    """Apply the database migrations and exit."""
    settings = _settings()
    with _sigterm_as_ctrl_c():
        endpoints = _resolve(settings)
        try:
            upgrade(endpoints.database_url)
        finally:
            endpoints.close()
    console.print("migrations applied")


@app.command()
def worker() -> None:
    """Run only the worker loops (expiry, recovery, cache reconciler, housekeeping, event
    sequencer, webhook delivery) until stopped."""
    from stockguard.workers.loops import start_workers, stop_workers

    settings = _settings(quiet=False)

    async def run(backends: Backends) -> None:
        tasks = start_workers(backends, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("workers_started", count=len(tasks))
        await stop.wait()
        await stop_workers(tasks)

    _with_backends(run, settings=settings)


class Role(StrEnum):
    admin = "admin"
    service = "service"


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="admin or service")],
    name: Annotated[str, typer.Option(help="who the key is for")],
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from stockguard.store import keys

    async def run(backends: Backends) -> str:
        async with backends.pool.acquire() as conn:
            made, clear = await keys.create_key(conn, role.value, name)
        err.print(f"created {made.role} key {made.id} for {made.name!r}; it is shown only once:")
        return clear

    console.print(_with_backends(run), highlight=False)


@app.command()
def verify(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check the invariants of DESIGN.md §3 over the whole database; exit 1 on a violation."""
    from stockguard.service.verify import CHECKS
    from stockguard.service.verify import verify as run_verify

    async def run(backends: Backends) -> list[tuple[int, str, dict[str, object]]]:
        async with backends.pool.acquire() as conn:
            found = await run_verify(conn)
        return [(v.invariant, v.check, v.detail) for v in found]

    found = _with_backends(run)
    if as_json:
        print(json.dumps({"ok": not found, "violations": [
            {"invariant": i, "check": c, "detail": d} for i, c, d in found
        ]}))  # fmt: skip
    else:
        table = Table(title="stockguard verify")
        table.add_column("invariant")
        table.add_column("check")
        table.add_column("violations", justify="right")
        for invariant, name, _sql in CHECKS:
            n = sum(1 for i, c, _ in found if (i, c) == (invariant, name))
            table.add_row(str(invariant), name, f"[red]{n}[/red]" if n else "[green]0[/green]")
        console.print(table)
        for invariant, name, detail in found[:50]:
            console.print(f"[red]invariant {invariant}[/red] {name}: {detail}")
    if found:
        raise typer.Exit(1)


@app.command()
def reconcile(
    repair: Annotated[bool, typer.Option("--repair", help="rewrite drifted SKUs")] = False,
    sku: Annotated[list[str] | None, typer.Option("--sku", help="only these SKUs")] = None,
) -> None:
    """Compare Redis with PostgreSQL for every SKU (or --sku S ...) and report drift."""
    from stockguard.service.reconcile import ReconcileReport
    from stockguard.service.reconcile import reconcile as run_reconcile

    async def run(backends: Backends) -> ReconcileReport:
        with Progress(
            TextColumn("reconciling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err,
        ) as progress:  # fmt: skip
            task = progress.add_task("skus", total=None)

            def tick(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await run_reconcile(backends, repair=repair, skus=sku, progress=tick)

    report = _with_backends(run)
    table = Table(title="cache drift (Redis vs PostgreSQL)")
    table.add_column("sku")
    table.add_column("redis", justify="right")
    table.add_column("postgres", justify="right")
    for d in report.drifted[:200]:
        table.add_row(d.sku, "missing" if d.redis is None else str(d.redis), str(d.postgres))
    if report.drifted:
        console.print(table)
    console.print(
        f"checked {report.checked} SKUs, {len(report.drifted)} drifted, {report.repaired} repaired"
    )
    if report.drifted and not repair:
        raise typer.Exit(1)


def _orders_table(title: str, found: list[OrderRecord]) -> Table:
    table = Table(title=title)
    for column in ("order", "status", "payment", "lines", "reservations", "updated"):
        table.add_column(column)
    for o in found:
        table.add_row(
            o.id,
            o.status.value,
            f"{o.payment_provider}:{o.payment_id}" if o.payment_id else "-",
            ", ".join(f"{sku}x{q}" for _, sku, q in o.lines),
            ", ".join(f"{r.id}:{r.sku}@{r.location}x{r.quantity}={r.status.value}"
                      for r in o.reservations),
            str(o.updated_at)[:19],
        )  # fmt: skip
    return table


@orders_app.command("needs-review")
def orders_needs_review(
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 100,
) -> None:
    """Orders in needs_review, oldest first."""
    from stockguard.service.recovery import list_needs_review

    found = _with_backends(lambda b: list_needs_review(b, limit))
    console.print(_orders_table(f"needs_review: {len(found)} order(s)", found))


@orders_app.command("paid-uncommitted")
def orders_paid_uncommitted(
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 100,
) -> None:
    """Paid orders with reservations still reserved, or none committed."""
    from stockguard.service.recovery import list_paid_uncommitted

    found = _with_backends(lambda b: list_paid_uncommitted(b, limit))
    console.print(_orders_table(f"paid, stock uncommitted: {len(found)} order(s)", found))


@orders_app.command("logs")
def orders_logs(order_id: Annotated[str, typer.Argument(help="the order's id")]) -> None:
    """The order's inventory log (order_inventory_logs), oldest first."""

    async def run(backends: Backends) -> list[dict[str, object]]:
        rows = await backends.pool.fetch(
            "SELECT id, created_at, actor, action, reservation_ids, error_reason, context "
            "FROM order_inventory_logs WHERE order_id = $1 ORDER BY id",
            order_id,
        )
        return [dict(r.items()) for r in rows]

    rows = _with_backends(run)
    table = Table(title=f"inventory log of {order_id}")
    for column in ("id", "at", "actor", "action", "reservations", "error", "context"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["id"]), str(r["created_at"])[:19], str(r["actor"]), str(r["action"]),
            ",".join(str(i) for i in r["reservation_ids"]),  # type: ignore[attr-defined]
            str(r["error_reason"] or ""), json.dumps(r["context"]),
        )  # fmt: skip
    console.print(table)
    if not rows:
        err.print(f"no log entries for order {order_id}")
        raise typer.Exit(1)


@orders_app.command("recover")
def orders_recover(order_id: Annotated[str, typer.Argument(help="the order's id")]) -> None:
    """Commit a paid order's reserved stock and reserve again what expired (never releases
    stock). Exit 0 on success or already committed, 1 otherwise."""
    from stockguard.service.recovery import Outcome, recover_order

    async def run(backends: Backends) -> tuple[str, str | None, int | None]:
        result = await recover_order(backends, order_id, "cli:operator")
        assert result is not None
        status = result.order.status.value if result.order else None
        return result.outcome.value, status, result.log_id

    try:
        outcome, status, log_id = _with_backends(run)
    except StockguardError as exc:
        err.print(f"[red]{exc.code}[/red]: {exc.detail}")
        raise typer.Exit(1) from exc
    console.print(f"outcome: {outcome}  status: {status}  log id: {log_id}")
    if outcome not in (Outcome.SUCCESS, Outcome.SKIPPED_ALREADY_COMMITTED):
        raise typer.Exit(1)


class ResolveTo(StrEnum):
    paid = "paid"
    processing = "processing"


@orders_app.command("resolve")
def orders_resolve(
    order_id: Annotated[str, typer.Argument(help="the order's id")],
    to: Annotated[ResolveTo, typer.Option("--to", help="paid or processing")],
    note: Annotated[str | None, typer.Option(help="why, for the log")] = None,
) -> None:
    """Close a review: set the order to paid or processing, only when every reservation
    is committed."""
    from stockguard.domain.model import OrderStatus
    from stockguard.service.recovery import resolve_order

    try:
        order = _with_backends(
            lambda b: resolve_order(b, order_id, OrderStatus(to.value), "cli:operator", note)
        )
    except StockguardError as exc:
        err.print(f"[red]{exc.code}[/red]: {exc.detail}")
        raise typer.Exit(1) from exc
    console.print(f"order {order.id} is now {order.status.value}")


def _levels_table(view: SkuView) -> Table:
    table = Table(title=f"{view.sku}: {view.name}")
    for column in ("location", "on_hand", "reserved", "unavailable", "safety_stock", "available"):
        table.add_column(column, justify="left" if column == "location" else "right")
    table.add_column("active")
    for lv in view.levels:
        table.add_row(
            lv.location,
            *(str(n) for n in (lv.on_hand, lv.reserved, lv.unavailable, lv.safety_stock)),
            str(lv.available),
            "yes" if lv.active else "no",
        )
    table.add_row(
        "total (active)",
        *(str(n) for n in (view.on_hand, view.reserved, view.unavailable, view.safety_stock)),
        str(view.available),
        "",
    )
    return table


def _fail(exc: StockguardError) -> NoReturn:
    err.print(f"[red]{exc.code}[/red]: {exc.detail}")
    raise typer.Exit(1) from exc


@stock_app.command("show")
def stock_show(sku: Annotated[str, typer.Argument(help="the SKU code")]) -> None:
    """Every level of a SKU: on hand, reserved, unavailable, safety stock, available."""
    from stockguard.service.catalogue import get_sku

    try:
        view = _with_backends(lambda b: get_sku(b, sku))
    except StockguardError as exc:
        _fail(exc)
    console.print(_levels_table(view))


class AdjustReason(StrEnum):
    received = "received"
    correction = "correction"
    cycle_count = "cycle_count"
    damaged = "damaged"
    shrinkage = "shrinkage"
    restock = "restock"
    other = "other"
    quality_control = "quality_control"


@stock_app.command("adjust")
def stock_adjust(
    sku: Annotated[str, typer.Argument(help="the SKU code")],
    location: Annotated[str, typer.Argument(help="the location code")],
    reason: Annotated[AdjustReason, typer.Option(help="why the stock changes")],
    delta: Annotated[int | None, typer.Option(help="sellable units in (+) or out (-)")] = None,
    set_on_hand: Annotated[int | None, typer.Option(help="the counted on_hand")] = None,
    unavailable: Annotated[
        int | None,
        typer.Option(
            help="units made unavailable (+, reason damaged or quality_control) or sellable "
            "again (-, reason restock or correction); on_hand unchanged"
        ),
    ] = None,
    from_unavailable: Annotated[
        bool, typer.Option(help="with --delta < 0: write the units off from the unavailable")
    ] = False,
    expected_on_hand: Annotated[
        int | None, typer.Option(help="refuse unless on_hand is this now (compare-and-set)")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="e.g. a count sheet or RMA")] = None,
) -> None:
    """Adjust one level, as POST /v1/skus/{sku}/adjustments does. Exit 1 when refused
    (nothing changed)."""
    from stockguard.service.catalogue import Adjustment, adjust_stock

    adj = Adjustment(
        sku,
        location,
        reason.value,
        delta=delta,
        set_on_hand=set_on_hand,
        expected_on_hand=expected_on_hand,
        reference=reference,
        unavailable_delta=unavailable,
        from_unavailable=from_unavailable,
    )
    try:
        done = _with_backends(lambda b: adjust_stock(b, adj, "cli:operator"))
    except StockguardError as exc:
        _fail(exc)
    console.print(
        f"{sku} at {location}: on_hand {done.on_hand}, reserved {done.reserved}, "
        f"unavailable {done.unavailable}, available {done.available}"
    )


@stock_app.command("set-safety")
def stock_set_safety(
    sku: Annotated[str, typer.Argument(help="the SKU code")],
    location: Annotated[str, typer.Argument(help="the location code")],
    safety_stock: Annotated[
        int, typer.Argument(help="units kept back from sale there (0 to 1000000000)")
    ],
) -> None:
    """Keep units of one level back from online sale (they stay on hand, reservations
    never take them)."""
    from stockguard.service.catalogue import set_safety_stock

    try:
        level, _ = _with_backends(
            lambda b: set_safety_stock(b, sku, location, safety_stock, "cli:operator")
        )
    except StockguardError as exc:
        _fail(exc)
    console.print(
        f"{sku} at {location}: safety stock {level.safety_stock}, available {level.available}"
    )


def _register_parts() -> None:
    """Commands that live in modules of their own (issue 8's parts)."""
    from stockguard.cli_returns import orders_returns

    orders_app.command("returns")(orders_returns)


_register_parts()


def main() -> None:
    app()


from stockguard import cli_bulk  # noqa: E402  (it uses the helpers above)

cli_bulk.register(app, stock_app)
