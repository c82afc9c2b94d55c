"""`stockguard transfers …`: an operator sends stock from one location to another, books
what arrives in parts, cancels the rest and looks transfers up, with the CLI alone.

The CLI runs its own event loop, so these tests are synchronous and set up and check
through backends of their own (the shared pool belongs to the session's loop)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stockguard.cli import app
from stockguard.service import catalogue
from stockguard.service.uow import Backends
from tests.conftest import Servers
from tests.helpers import assert_cache_parity, assert_invariants
from tests.test_cli_stock import with_backends


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, servers: Servers, migrated: str) -> CliRunner:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    monkeypatch.setenv("COLUMNS", "400")
    return CliRunner()


def _stocked(servers: Servers, sku: str, src: str, dst: str, on_hand: int) -> None:
    async def make(b: Backends) -> None:
        for loc in (src, dst):
            await catalogue.put_location(b, loc, loc, 1, True, "t")
        await catalogue.put_sku(b, sku, sku)
        await catalogue.adjust_stock(
            b, catalogue.Adjustment(sku, src, "received", delta=on_hand), "t"
        )

    with_backends(servers, make)


def _units(servers: Servers, sku: str) -> tuple[dict[str, int], int]:
    """(on_hand per location, units in transit), with the cache and invariants checked."""

    async def check(b: Backends) -> tuple[dict[str, int], int]:
        await assert_cache_parity(b, [sku])
        await assert_invariants(b.pool)
        rows = await b.pool.fetch(
            "SELECT location, on_hand FROM inventory_levels WHERE sku = $1", sku
        )
        transit = await b.pool.fetchval(
            "SELECT coalesce(sum(in_transit), 0) FROM transfer_lines WHERE sku = $1", sku
        )
        return {r["location"]: r["on_hand"] for r in rows}, int(transit)

    return with_backends(servers, check)


def test_operator_creates_receives_in_parts_and_cancels_the_rest(
    cli: CliRunner, servers: Servers, uid: str
) -> None:
    sku, src, dst, tid = f"X{uid}", f"s{uid}", f"d{uid}", f"T{uid}"
    _stocked(servers, sku, src, dst, 10)
    create = ["transfers", "create", tid, "--from", src, "--to", dst, "--line", f"{sku}=6"]
    made = cli.invoke(app, [*create, "--note", "van 2"])
    assert made.exit_code == 0, made.output
    assert f"{src} -> {dst}, in_transit (van 2)" in made.output
    assert _units(servers, sku) == ({src: 4}, 6)
    again = cli.invoke(app, [*create, "--note", "van 2"])
    assert again.exit_code == 0, again.output
    assert "exists already" in again.output

    got = cli.invoke(app, ["transfers", "receive", tid, "R1", "--line", f"{sku}=2"])
    assert got.exit_code == 0, got.output
    row = next(line for line in got.output.splitlines() if sku in line and "│" in line)
    assert [c.strip() for c in row.split("│")[2:6]] == ["6", "2", "0", "4"]
    assert "receipt R1 at " in got.output
    assert f"{sku}=2" in got.output
    replay = cli.invoke(app, ["transfers", "receive", tid, "R1", "--line", f"{sku}=2"])
    assert replay.exit_code == 0
    assert "applied already" in replay.output
    assert _units(servers, sku) == ({src: 4, dst: 2}, 4)

    shown = cli.invoke(app, ["transfers", "show", tid])
    assert shown.exit_code == 0
    assert f"{tid}: {src} -> {dst}, in_transit" in shown.output
    listed = cli.invoke(app, ["transfers", "list", "--status", "in_transit", "--limit", "500"])
    assert listed.exit_code == 0
    assert tid in listed.output

    cancelled = cli.invoke(app, ["transfers", "cancel", tid])
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled" in cancelled.output
    assert _units(servers, sku) == ({src: 8, dst: 2}, 0)
    listed = cli.invoke(app, ["transfers", "list", "--status", "cancelled", "--limit", "500"])
    assert tid in listed.output


def test_refusals_exit_1_and_change_nothing(cli: CliRunner, servers: Servers, uid: str) -> None:
    sku, src, dst, tid = f"Y{uid}", f"s{uid}", f"d{uid}", f"T{uid}"
    _stocked(servers, sku, src, dst, 3)
    base = ["transfers", "create", tid, "--from", src, "--to", dst]
    for args in (
        [*base, "--line", f"{sku}=4"],
        [*base, "--line", f"{sku}=0"],
        [*base, "--line", f"{sku}=1", "--line", f"{sku}=1"],
        ["transfers", "create", tid, "--from", src, "--to", src, "--line", f"{sku}=1"],
        ["transfers", "show", f"N{uid}"],
        ["transfers", "cancel", f"N{uid}"],
        ["transfers", "receive", f"N{uid}", "R", "--line", f"{sku}=1"],
    ):
        result = cli.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
    assert "insufficient_stock" in cli.invoke(app, [*base, "--line", f"{sku}=4"]).output
    for args in (
        [*base, "--line", f"{sku}"],
        [*base, "--line", f"{sku}=x"],
        ["transfers", "list", "--status", "lost"],
    ):
        result = cli.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
    assert _units(servers, sku) == ({src: 3}, 0)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ((), ["create", "receive", "cancel", "show", "list"]),
        (("create",), ["--from", "--to", "--line", "SKU=QUANTITY", "--note"]),
        (("receive",), ["applied once", "--line"]),
        (("cancel",), ["back on hand"]),
        (("show",), ["receipts"]),
        (("list",), ["--status", "--limit"]),
    ],
)
def test_help_of_every_transfers_command(
    cli: CliRunner, command: tuple[str, ...], expected: list[str]
) -> None:
    result = cli.invoke(app, ["transfers", *command, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for snippet in expected:
        assert snippet in text, (snippet, result.output)
