"""`stockguard events tail`: the feed as JSON lines, in seq order, filtered by type."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stockguard.cli import app
from stockguard.service import catalogue
from stockguard.service.uow import Backends
from tests.conftest import Servers
from tests.test_cli_stock import with_backends


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, servers: Servers, migrated: str) -> CliRunner:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    return CliRunner()


def _last_seq(servers: Servers) -> int:
    async def read(b: Backends) -> int:
        await b.pool.fetchval("SELECT stockguard_sequence_events(100000)")
        return int(await b.pool.fetchval("SELECT last_seq FROM event_counter"))

    return with_backends(servers, read)


def test_tail_prints_new_events_as_json_lines(cli: CliRunner, servers: Servers, uid: str) -> None:
    start = _last_seq(servers)
    sku, loc = f"CT{uid}", f"w{uid}"

    async def make(b: Backends) -> None:
        await catalogue.put_location(b, loc, loc, 1, True, "t")
        await catalogue.put_sku(b, sku, sku)
        await catalogue.adjust_stock(b, catalogue.Adjustment(sku, loc, "received", delta=4), "t")

    with_backends(servers, make)
    out = cli.invoke(app, ["events", "tail", "--after", str(start), "--no-follow"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    mine = [e for e in lines if e["data"].get("sku") == sku]
    assert [e["type"] for e in mine] == ["stock.changed", "stock.back_in_stock"]
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    assert all(e["seq"] > start for e in lines)

    only = cli.invoke(
        app,
        ["events", "tail", "--after", str(start), "--no-follow", "--type", "stock.back_in_stock"],
    )
    assert only.exit_code == 0, only.output
    assert {json.loads(line)["type"] for line in only.stdout.splitlines()} == {
        "stock.back_in_stock"
    }
    # Default: from now on, so nothing old is printed.
    now = cli.invoke(app, ["events", "tail", "--no-follow"])
    assert now.exit_code == 0, now.output
    assert now.stdout == ""


def test_tail_refuses_an_unknown_type(cli: CliRunner) -> None:
    out = cli.invoke(app, ["events", "tail", "--no-follow", "--type", "stock.nope"])
    assert out.exit_code == 2
    assert "unknown event types: stock.nope" in out.output


def test_tail_below_the_retention_horizon_says_so(cli: CliRunner, servers: Servers) -> None:
    async def prune(b: Backends) -> int:
        await b.pool.execute("UPDATE event_counter SET last_seq = GREATEST(last_seq, 1)")
        old = int(await b.pool.fetchval("SELECT pruned_through FROM event_counter"))
        await b.pool.execute(
            "UPDATE event_counter SET pruned_through = GREATEST(old_p, 1) "
            "FROM (SELECT pruned_through AS old_p FROM event_counter) o"
        )
        return old

    old = with_backends(servers, prune)
    try:
        out = cli.invoke(app, ["events", "tail", "--no-follow", "--after", "0"])
        assert out.exit_code == 1
        assert "events_expired" in out.output
    finally:

        async def restore(b: Backends) -> None:
            await b.pool.execute("UPDATE event_counter SET pruned_through = $1", old)

        with_backends(servers, restore)


def test_tail_follows_new_events_until_interrupted(
    servers: Servers, migrated: str, uid: str
) -> None:
    """Following: a change made after tail started comes out as a line; Ctrl-C stops it
    cleanly (exit 0)."""
    import asyncio
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time

    env = {
        **os.environ,
        "STOCKGUARD_DATABASE_URL": servers.database_url,
        "STOCKGUARD_REDIS_URL": servers.redis_url,
        "STOCKGUARD_REDIS_PREFIX": servers.redis_prefix,
    }
    sku, loc = f"CF{uid}", f"w{uid}"
    args = ["events", "tail", "--type", "stock.changed", "--interval", "0.05"]
    # Ctrl-C as a terminal gives it: whatever an earlier test left this process's SIGINT
    # handler as (a child inherits an ignored signal), the child starts with the default.
    inherited = signal.getsignal(signal.SIGINT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockguard", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    stop = threading.Event()

    async def make(b: Backends) -> None:
        await catalogue.put_location(b, loc, loc, 1, True, "t")
        await catalogue.put_sku(b, sku, sku)
        # Changes keep coming until tail has surely started (it begins "from now").
        while not stop.is_set():
            await catalogue.adjust_stock(
                b, catalogue.Adjustment(sku, loc, "received", delta=1), "t"
            )
            await asyncio.sleep(0.2)

    changer = threading.Thread(target=with_backends, args=(servers, make))
    changer.start()
    # Read every line as it comes: tail also prints the stock changes of earlier tests
    # that nothing had numbered yet, and a full pipe would block it.
    lines: queue.Queue[str] = queue.Queue()
    out = proc.stdout
    assert out is not None

    def read() -> None:
        for line in out:
            lines.put(line)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "tail printed no change of this test's SKU in 60 s"
            event = json.loads(lines.get(timeout=remaining))
            assert event["type"] == "stock.changed"
            if event["data"]["sku"] == sku:
                break
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tail ignored Ctrl-C for 20 s (this process's SIGINT: {inherited})")
        assert code == 0
    finally:
        stop.set()
        changer.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
        out.close()
