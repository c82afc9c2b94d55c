"""`stockguard stock import` and `stockguard explain`: an operator syncs counts from a file
and asks where a number came from, with the CLI alone (sync tests, like test_cli_stock)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stockguard.cli import app
from stockguard.service import bulk
from stockguard.service.uow import Backends
from tests.conftest import Servers
from tests.helpers import assert_cache_parity, assert_invariants
from tests.test_cli_stock import _stocked, cli, with_backends

__all__ = ["cli"]  # the fixture, used by name


def _on_hand(servers: Servers, sku: str) -> dict[str, int]:
    async def read(b: Backends) -> dict[str, int]:
        await assert_cache_parity(b, [sku])
        await assert_invariants(b.pool)
        rows = await b.pool.fetch(
            "SELECT location, on_hand FROM inventory_levels WHERE sku = $1", sku
        )
        return {r["location"]: r["on_hand"] for r in rows}

    return with_backends(servers, read)


def _moves(servers: Servers, sku: str) -> int:
    async def count(b: Backends) -> int:
        return int(
            await b.pool.fetchval("SELECT count(*) FROM stock_movements WHERE sku = $1", sku)
        )

    return with_backends(servers, count)


def test_import_csv_applies_every_row(
    cli: CliRunner, servers: Servers, uid: str, tmp_path: Path
) -> None:
    sku, loc = f"I{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)
    path = tmp_path / "counts.csv"
    path.write_text(
        "sku,location,reason,delta,set_on_hand,unavailable_delta,from,expected_on_hand,reference\n"
        f"{sku},{loc},received,5,,,,,po-1\n"
        f"{sku},{loc},cycle_count,,12,,,15,\n"
        f"{sku},{loc},damaged,,,2,,,\n"
        f"{sku},{loc},shrinkage,-1,,,unavailable,,\n"
    )
    r = cli.invoke(app, ["stock", "import", str(path)])
    assert r.exit_code == 0, r.output
    assert "4 row(s) applied, 0 failed, of 4" in r.stdout
    assert _on_hand(servers, sku) == {loc: 11}


def test_import_all_or_nothing_reports_each_bad_row_and_applies_nothing(
    cli: CliRunner, servers: Servers, uid: str, tmp_path: Path
) -> None:
    sku, loc = f"I{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)
    moves = _moves(servers, sku)
    path = tmp_path / "bad.csv"
    path.write_text(
        f"sku,location,reason,delta\n{sku},{loc},received,5\n{sku},{loc},received,five\n"
        f"{sku},{loc},gift,1\n"
    )
    r = cli.invoke(app, ["stock", "import", str(path)])
    assert r.exit_code == 1
    assert "row 2: validation_error" in r.stderr
    assert "row 3: validation_error" in r.stderr
    assert "nothing was applied" in r.stderr
    refused = tmp_path / "refused.json"
    refused.write_text(
        json.dumps(
            {
                "items": [
                    {"sku": sku, "location": loc, "reason": "received", "delta": 5},
                    {"sku": sku, "location": loc, "reason": "shrinkage", "delta": -50},
                    {"sku": f"Z{uid}", "location": loc, "reason": "received", "delta": 1},
                ]
            }
        )
    )
    r = cli.invoke(app, ["stock", "import", str(refused)])
    assert r.exit_code == 1
    assert "row 2: insufficient_stock" in r.stderr
    assert "row 3: not_found" in r.stderr
    assert "rows 1 to 3: refused as a whole, none applied" in r.stderr
    assert _on_hand(servers, sku) == {loc: 10}
    assert _moves(servers, sku) == moves


def test_import_skip_failed_applies_the_good_rows_in_batches(
    cli: CliRunner,
    servers: Servers,
    uid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sku, loc = f"I{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)
    monkeypatch.setattr(bulk, "MAX_ITEMS", 2)  # three batches out of five rows
    rows = [
        {"sku": sku, "location": loc, "reason": "received", "delta": 1},
        {"sku": sku, "location": loc, "reason": "shrinkage", "delta": -100},
        [1, 2],
        {"sku": sku, "location": loc, "reason": "received", "delta": 2},
        {"sku": sku, "location": loc, "reason": "received"},
    ]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    r = cli.invoke(app, ["stock", "import", str(path), "--skip-failed"])
    assert r.exit_code == 1
    assert "2 row(s) applied, 3 failed, of 5" in r.stdout
    for n, code in ((2, "insufficient_stock"), (3, "validation_error"), (5, "validation_error")):
        assert f"row {n}: {code}" in r.stderr
    assert _on_hand(servers, sku) == {loc: 13}


def test_import_stops_at_the_first_refused_batch(
    cli: CliRunner,
    servers: Servers,
    uid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sku, loc = f"I{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)
    monkeypatch.setattr(bulk, "MAX_ITEMS", 2)
    good = f"{sku},{loc},received,1\n"
    path = tmp_path / "long.csv"
    path.write_text(
        "sku,location,reason,delta\n" + good * 2 + f"{sku},{loc},shrinkage,-99\n" + good * 3
    )
    r = cli.invoke(app, ["stock", "import", str(path)])
    assert r.exit_code == 1
    assert "rows 3 to 4: refused as a whole" in r.stderr
    assert "rows 1 to 2: applied" in r.stderr
    assert "rows 5 to 6: not tried" in r.stderr
    assert _on_hand(servers, sku) == {loc: 12}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.csv", None, "no such file"),
        ("empty.csv", "sku,location,reason,delta\n", "no rows"),
        ("cols.csv", "sku,where\nA,b\n", "unknown: where"),
        ("x.json", "{not json", "not JSON"),
        ("obj.json", '{"rows": []}', "JSON list"),
    ],
)
def test_import_refuses_an_unreadable_file(
    cli: CliRunner, tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    r = cli.invoke(app, ["stock", "import", str(path)])
    assert r.exit_code == 1
    assert message in r.stderr


def test_import_extra_cells_fail_the_row(
    cli: CliRunner, servers: Servers, uid: str, tmp_path: Path
) -> None:
    sku, loc = f"I{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)
    path = tmp_path / "extra.csv"
    path.write_text(f"sku,location,reason,delta\n{sku},{loc},received,1,oops\n")
    r = cli.invoke(app, ["stock", "import", str(path), "--skip-failed"])
    assert r.exit_code == 1
    assert "row 1: validation_error" in r.stderr
    assert _on_hand(servers, sku) == {loc: 10}


def test_explain_shows_levels_movements_and_the_check(
    cli: CliRunner, servers: Servers, uid: str
) -> None:
    sku, loc = f"I{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)
    r = cli.invoke(app, ["explain", sku, "--location", loc, "--limit", "1"])
    assert r.exit_code == 0, r.output
    assert "the ledger adds up to every level now" in r.stdout
    assert "received" in r.stdout
    assert "+10" in r.stdout
    assert "older movements: --before" in r.stdout  # one movement shown, --limit 1
    past = cli.invoke(app, ["explain", sku, "--at", "2000-01-01T00:00:00Z"])
    assert past.exit_code == 0, past.output
    assert "total" in past.stdout
    bad = cli.invoke(app, ["explain", sku, "--at", "noon"])
    assert bad.exit_code == 1
    assert "RFC 3339" in bad.stderr
    missing = cli.invoke(app, ["explain", f"Z{uid}"])
    assert missing.exit_code == 1
    assert "not_found" in missing.stderr


def test_explain_names_a_mismatch_and_exits_1(cli: CliRunner, servers: Servers, uid: str) -> None:
    sku, loc = f"I{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)

    async def shift(b: Backends, by: int) -> None:
        await b.pool.execute(
            "UPDATE inventory_levels SET on_hand = on_hand + $2 WHERE sku = $1", sku, by
        )

    with_backends(servers, lambda b: shift(b, 3))
    try:
        r = cli.invoke(app, ["explain", sku])
        assert r.exit_code == 1
        assert f"MISMATCH at {loc}: level now on_hand=13" in r.stderr
        assert "ledger says on_hand=10" in r.stderr
    finally:
        with_backends(servers, lambda b: shift(b, -3))
