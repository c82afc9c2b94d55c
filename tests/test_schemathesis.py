"""Schemathesis against the served OpenAPI: every operation, generated input, bounded.

The app runs in a real uvicorn server (a thread with its own event loop, the protocol class
``stockguard serve`` uses) on a scratch database and Redis prefix of its own, so generated
writes touch no other test's data. Requests carry an admin key.

Checks on:
- ``not_a_server_error``: no 5xx, whatever the input;
- ``negative_data_rejection``: input the schema forbids is refused with a 4xx (our size
  limits' 413 and 431 count as refusals);
- our own: every 4xx is RFC 9457 problem+json with the status in its body.

Checks off, and why: outside the version-2 routes (tests/test_openapi_v2.py) the served
OpenAPI declares no response schemas and only FastAPI's default statuses (200/201 and a
422 of ``application/json``), so ``status_code_conformance``,
``content_type_conformance``, ``response_schema_conformance`` and
``response_headers_conformance`` would fail on every documented 401/404/409 and on our
problem+json 422; ``positive_data_acceptance`` would fail on every unknown id (404);
``ignored_auth`` needs security schemes, which the OpenAPI does not declare yet. All of these
come with the response-schema issue.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import Case, CheckFunction, GenerationMode, Response
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import negative_data_rejection

from stockguard.api.app import build_app
from stockguard.api.headers import CappedHttpToolsProtocol
from stockguard.config import Settings
from tests.conftest import Servers, _with_database
from tests.test_cli import on_db

ADMIN_KEY = "sg_schemathesis_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def live_url(servers: Servers, settings: Settings) -> Iterator[str]:
    name = f"stockguard_st_{secrets.token_hex(4)}"

    async def create(conn: asyncpg.Connection) -> None:
        await conn.execute(f'CREATE DATABASE "{name}"')

    async def drop(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

    on_db(servers.admin_url, create)
    configured = settings.model_copy(
        update={
            "database_url": SecretStr(_with_database(servers.admin_url, name)),
            "redis_prefix": f"{servers.redis_prefix}st:",
            "bootstrap_admin_key": SecretStr(ADMIN_KEY),
            "run_workers": False,
            "db_pool_min": 1,
            "db_pool_max": 4,
        }
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(configured),  # its lifespan migrates and opens its own backends
            host="127.0.0.1",
            port=0,
            http=CappedHttpToolsProtocol,
            log_level="critical",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:  # startup, not a race: uvicorn offers no event to wait on
            assert thread.is_alive(), "the server stopped while starting"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        on_db(servers.admin_url, drop)


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


@schemathesis.check
def negative_data_rejected(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """``negative_data_rejection``, with our size limits' 413 and 431 as refusals too."""
    if response.status_code in (413, 431):
        return True
    return negative_data_rejection(ctx, response, case)


CHECKS: list[CheckFunction] = [not_a_server_error, negative_data_rejected, problem_json_on_4xx]


def test_generated_requests_are_never_a_5xx_and_4xx_are_problem_json(live_url: str) -> None:
    # schemathesis.pytest.from_fixture reads request.node._nodeid, which pytest 9 no longer
    # has: each operation gets a hypothesis test of its own here instead.
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the served OpenAPI loads whole
        operations.append(result.ok())
    assert len(operations) >= 25, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=10,
                deadline=2000,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Case[Any]) -> None:
                response = case.call(base_url=live_url, headers=headers, timeout=10)
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                run()
            except Unsatisfiable:  # no parameter or body to break: no negative case exists
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (AssertionError, FailureGroup) as exc:  # one failure, or several
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:4000])
    assert not failures, "\n\n".join(failures)
