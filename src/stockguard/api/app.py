"""The FastAPI application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from fastapi import FastAPI, Request
from starlette.responses import Response

from stockguard import __version__
from stockguard.api import (
    bulk,
    events,
    recovery,
    returns,
    transfers,
    webhook_endpoints,
    webhooks,
)
from stockguard.api.auth import ADMIN, SERVICE, Authentication, KnownKeys
from stockguard.api.docs import install_docs
from stockguard.api.fast_lane import install_fast_lanes
from stockguard.api.headers import HeaderLimit
from stockguard.api.middleware import BodyLimit, Idempotency, replay_answered
from stockguard.api.openapi import install_openapi
from stockguard.api.problems import install_handlers
from stockguard.api.routes import admin_role, router, service_role
from stockguard.config import Settings
from stockguard.runtime import Endpoints, open_backends, resolve_endpoints, settle_heap
from stockguard.service.batcher import PlacementBatcher
from stockguard.service.cancel_batcher import CancelBatcher
from stockguard.service.idempotency import KeyAnswered
from stockguard.service.payment_batcher import PaymentBatcher
from stockguard.service.uow import Backends
from stockguard.workers.loops import start_workers, stop_workers

__all__ = ["build_app", "create_app"]


def build_app(settings: Settings, backends: Backends | None = None) -> FastAPI:
    """The app; with ``backends`` given (tests) the lifespan opens nothing itself and runs
    no workers."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if backends is not None:
            app.state.backends = backends
            yield
            return
        endpoints: Endpoints = resolve_endpoints(settings)
        try:
            async with open_backends(settings, endpoints) as opened:
                app.state.backends = opened
                tasks = start_workers(opened, settings) if settings.run_workers else []
                settle_heap()
                try:
                    yield
                finally:
                    await stop_workers(tasks)
                    for batcher in (
                        app.state.batcher,
                        app.state.cancel_batcher,
                        app.state.payment_batcher,
                    ):
                        if batcher is not None:
                            await batcher.drain()
        finally:
            endpoints.close()

    app = FastAPI(
        title="stockguard",
        version=__version__,
        description="Inventory service: never oversell, never lose a unit, never restore "
        "a unit twice.",
        lifespan=lifespan,
        # operationId = the route function's name (place_order, get_order...): what a
        # generated client calls its methods.
        generate_unique_id_function=lambda route: route.name,
        docs_url=None,  # api/docs.py serves /docs and /redoc with the package's own assets
        redoc_url=None,
    )
    if backends is not None:
        app.state.backends = backends
    app.state.settings = settings

    def current_backends() -> Backends:
        b: Backends = app.state.backends
        return b

    app.state.known_keys = KnownKeys()
    # Group commit of placements, cancels and payments (DESIGN.md §10), or none.
    batching = {"max_batch": settings.order_batch_max, "lanes": settings.order_batch_lanes}
    batch = settings.order_batching
    app.state.batcher = PlacementBatcher(current_backends, **batching) if batch else None
    app.state.cancel_batcher = CancelBatcher(current_backends, **batching) if batch else None
    app.state.payment_batcher = PaymentBatcher(current_backends, **batching) if batch else None
    install_handlers(app)
    app.include_router(recovery.router)  # before routes: its paths are more specific
    app.include_router(router)
    app.include_router(webhooks.router)
    app.include_router(bulk.router)
    app.include_router(returns.router)
    app.include_router(transfers.router)
    app.include_router(events.router)
    app.include_router(webhook_endpoints.router)
    install_docs(app)
    # The flooded routes first, past FastAPI's request machinery when the input is plain.
    app.state.fast_lanes = install_fast_lanes(app)

    def pool() -> asyncpg.Pool:
        b: Backends = app.state.backends
        return b.pool

    async def on_key_answered(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KeyAnswered)
        return await replay_answered(pool(), exc.claim)

    app.add_exception_handler(KeyAnswered, on_key_answered)
    # Outermost last: the body limit, then authentication, then idempotency.
    app.add_middleware(Idempotency, pool=pool)
    roles = {service_role: SERVICE, admin_role: ADMIN}
    install_openapi(app, roles)  # the document reads the roles as Authentication does
    app.add_middleware(
        Authentication,
        routes=lambda: app.routes,
        roles=roles,
        pool=pool,
        known=app.state.known_keys,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderLimit)  # outermost: a huge head is refused before anything
    return app


def create_app() -> FastAPI:
    """Factory for ``uvicorn --factory`` (settings from the environment)."""
    from stockguard.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return build_app(settings)
