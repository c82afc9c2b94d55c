"""``stockguard``: run the service and operate it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stockguard.config import Settings
from stockguard.logging import configure_logging, get_logger
from stockguard.runtime import Endpoints, open_backends, resolve_endpoints
from stockguard.service.uow import Backends
from stockguard.store.migrate import upgrade

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


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return settings


def _with_backends(fn: Callable[[Backends], Awaitable[T]], *, migrate: bool = True) -> T:
    settings = _settings()
    endpoints = resolve_endpoints(settings)

    async def go() -> T:
        async with open_backends(settings, endpoints, migrate=migrate) as backends:
            return await fn(backends)

    try:
        return asyncio.run(go())
    finally:
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
    """Apply migrations, then serve the HTTP API (with the worker loops unless told not)."""
    import uvicorn

    settings = _settings()
    endpoints = resolve_endpoints(settings)
    try:
        upgrade(endpoints.database_url)
        _export(endpoints)
        os.environ["STOCKGUARD_RUN_WORKERS"] = "true" if run_workers else "false"
        log.info("serving", host=host, port=port, workers=workers)
        uvicorn.run(
            "stockguard.api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    finally:
        endpoints.close()


@app.command()
def migrate() -> None:
    """Apply the database migrations and exit."""
    settings = _settings()
    endpoints = resolve_endpoints(settings)
    try:
        upgrade(endpoints.database_url)
    finally:
        endpoints.close()
    console.print("migrations applied")


@app.command()
def worker() -> None:
    """Run only the worker loops (expiry, cache reconciler, housekeeping) until stopped."""
    from stockguard.workers.loops import start_workers, stop_workers

    settings = _settings()

    async def run(backends: Backends) -> None:
        tasks = start_workers(backends, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("workers_started", count=len(tasks))
        await stop.wait()
        await stop_workers(tasks)

    _with_backends(run)


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


def main() -> None:
    app()
