"""Schemathesis against the served app: the OpenAPI document cannot drift from the code.

The app runs in a real uvicorn server (a thread with its own event loop, the protocol class
``stockguard serve`` uses) on a scratch database and Redis prefix of its own, so generated
writes touch no other test's data. ``schemathesis run`` (the CLI, in a subprocess) reads
``/openapi.json`` from it and runs every phase (examples, coverage, fuzzing, stateful) with
**every check** (``--checks all``): among them ``not_a_server_error``,
``status_code_conformance``, ``content_type_conformance``,
``response_schema_conformance``, ``response_headers_conformance``,
``negative_data_rejection``, ``positive_data_acceptance``, ``missing_required_header``,
``unsupported_method``, ``ignored_auth``, ``use_after_free``; plus ours in
``tests/schemathesis_hooks.py`` (every 4xx is problem+json). Configuration:
``tests/schemathesis.toml``; what the hooks make valid and which refusals they accept, and
why, is in the hooks' docstring.

CI runs it bounded (``MAX_EXAMPLES`` per operation and phase, a fixed seed; about a minute
on 2 cores). The longer run (docs/OPENAPI.md, figures there) is the same command against
``stockguard serve`` with more examples and a random seed::

    STOCKGUARD_BOOTSTRAP_ADMIN_KEY=... STOCKGUARD_STRIPE_WEBHOOK_SECRET=... \\
    STOCKGUARD_RAZORPAY_WEBHOOK_SECRET=... PYTHONPATH=. \\
    .venv/bin/schemathesis --config-file tests/schemathesis.toml run \\
        http://127.0.0.1:8000/openapi.json --checks all --max-examples 300

A second test shows the run can fail: the same document with one declared status and one
declared field removed is refused by the same command.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from stockguard.api.app import build_app
from stockguard.api.headers import CappedHttpToolsProtocol
from stockguard.config import Settings
from tests.conftest import Servers, _with_database
from tests.test_cli import on_db

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "schemathesis.toml"
ADMIN_KEY = "sg_schemathesis_" + secrets.token_hex(16)
STRIPE_SECRET = "whsec_" + secrets.token_hex(16)
RAZORPAY_SECRET = secrets.token_hex(16)
MAX_EXAMPLES = int(os.environ.get("STOCKGUARD_ST_MAX_EXAMPLES", "10"))
SEED = os.environ.get("STOCKGUARD_ST_SEED", "20261126")
TIMEOUT_SECONDS = 300


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
            "stripe_webhook_secret": SecretStr(STRIPE_SECRET),
            "razorpay_webhook_secret": SecretStr(RAZORPAY_SECRET),
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


def schemathesis_run(location: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``schemathesis run location --checks all ...`` as docs/OPENAPI.md runs it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "STOCKGUARD_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "STOCKGUARD_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "STOCKGUARD_RAZORPAY_WEBHOOK_SECRET": RAZORPAY_SECRET,
    }
    command = [
        *[sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"],
        *[location, "--checks", "all", "--seed", SEED, "--no-color", *args],
    ]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )


def _figure(pattern: str, output: str) -> int:
    found = re.search(pattern, output)
    assert found, (pattern, output[-3000:])
    return int(found.group(1))


def test_every_operation_answers_as_the_document_says(live_url: str) -> None:
    operations = len(
        [
            op
            for path in httpx.get(f"{live_url}/openapi.json").json()["paths"].values()
            for op in path
        ]
    )
    started = time.monotonic()
    run = schemathesis_run(f"{live_url}/openapi.json", "--max-examples", str(MAX_EXAMPLES))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20000:]
    assert _figure(r"Tested: (\d+)", output) == operations >= 42
    generated = _figure(r"(\d+) generated, \d+ passed", output)
    passed = _figure(r"\d+ generated, (\d+) passed", output)
    assert generated == passed > 40 * MAX_EXAMPLES, output[-3000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}", output), (phase, output[-3000:])
    print(f"schemathesis: {generated} cases in {time.monotonic() - started:.0f} s")


def test_a_document_that_drifted_is_caught(live_url: str, tmp_path: Path) -> None:
    """The same run fails on a document that no longer says what the code answers: GET
    /v1/orders/{order_id} without its 404, a not_found problem whose ``detail`` would be
    an integer."""
    document: dict[str, Any] = httpx.get(f"{live_url}/openapi.json").json()
    del document["paths"]["/v1/orders/{order_id}"]["get"]["responses"]["404"]
    document["components"]["schemas"]["NotFoundProblem"]["properties"]["detail"] = {
        "type": "integer"
    }
    drifted = tmp_path / "drifted.json"
    drifted.write_text(json.dumps(document))
    run = schemathesis_run(
        str(drifted),
        *["--url", live_url, "--include-method", "GET", "--max-examples", "5"],
        *["--include-path-regex", r"^/v1/(orders/\{order_id\}|skus/\{sku\})$"],
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-5000:]
    assert "Undocumented status code" in output, output[-5000:]
    assert "Response violates schema" in output, output[-5000:]
