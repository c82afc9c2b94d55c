"""`stockguard webhooks …`: an operator adds an endpoint (secret printed once), pings it,
lists endpoints with their backlog, reads the delivery log and replays, with the CLI
alone, against a real loopback receiver.

The CLI runs its own event loop, so these tests are synchronous and set up and check
through backends of their own (the shared pool belongs to the session's loop)."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook
from typer.testing import CliRunner

from stockguard.cli import app
from stockguard.service.uow import Backends
from tests.conftest import Servers
from tests.test_cli_stock import with_backends
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.usefixtures("no_endpoints_after")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, servers: Servers, migrated: str) -> CliRunner:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    monkeypatch.setenv("STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("COLUMNS", "400")
    return CliRunner()


def _add(cli: CliRunner, url: str, *events: str) -> tuple[str, str]:
    args = ["webhooks", "add", url]
    for e in events or ("*",):
        args += ["--event", e]
    made = cli.invoke(app, args)
    assert made.exit_code == 0, made.output
    endpoint_id, secret = made.stdout.split()
    return endpoint_id, secret


def _events(servers: Servers, count: int, endpoint_id: str, status: str) -> list[int]:
    """``count`` numbered events queued for the endpoint with this delivery status; their
    seqs."""

    async def make(b: Backends) -> list[int]:
        ids = await b.pool.fetch(
            "INSERT INTO events (type, data) SELECT 'order.paid', '{}'::jsonb "
            "FROM generate_series(1, $1) RETURNING id",
            count,
        )
        await b.pool.fetchval("SELECT stockguard_sequence_events(100000)")
        await b.pool.execute(
            "UPDATE webhook_deliveries SET status = $2 WHERE endpoint_id = $1 "
            "AND event_id = ANY($3::bigint[])",
            endpoint_id,
            status,
            [r["id"] for r in ids],
        )
        rows = await b.pool.fetch(
            "SELECT seq FROM events WHERE id = ANY($1::bigint[]) ORDER BY seq",
            [r["id"] for r in ids],
        )
        return [r["seq"] for r in rows]

    return with_backends(servers, make)


def test_add_prints_the_secret_once_and_test_pings_with_it(
    cli: CliRunner, receiver: Receiver
) -> None:
    endpoint_id, secret = _add(cli, receiver.url("/cli"), "stock.*", "order.paid")
    assert endpoint_id.startswith("we_")
    assert secret.startswith("whsec_")
    pinged = cli.invoke(app, ["webhooks", "test", endpoint_id])
    assert pinged.exit_code == 0, pinged.output
    assert ": delivered after 1 attempt(s) HTTP 200" in pinged.output
    [got] = receiver.at("/cli")
    assert Webhook(secret).verify(got.body, got.headers)["type"] == "ping"
    listed = cli.invoke(app, ["webhooks", "list"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if endpoint_id in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:6] == [endpoint_id, receiver.url("/cli"), "stock.*,order.paid", "yes", "0", "0"]
    assert secret not in listed.output


def test_a_failed_ping_exits_1_and_shows_why(cli: CliRunner, receiver: Receiver) -> None:
    receiver.on("/down", lambda _r, _b: 502)
    endpoint_id, _ = _add(cli, receiver.url("/down"))
    pinged = cli.invoke(app, ["webhooks", "test", endpoint_id])
    assert pinged.exit_code == 1
    assert ": failed after 1 attempt(s) HTTP 502" in pinged.output


def test_add_refuses_private_urls_unless_allowed(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> None:
    monkeypatch.setenv("STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS", "false")
    refused = cli.invoke(app, ["webhooks", "add", "http://127.0.0.1:9/x", "--event", "*"])
    assert refused.exit_code == 1
    assert "validation_error" in refused.output
    assert "STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS" in refused.output
    bad = cli.invoke(app, ["webhooks", "add", "https://93.184.216.34/x", "--event", "nope"])
    assert bad.exit_code == 1
    assert "'nope' is not" in bad.output

    async def count(b: Backends) -> int:
        return int(await b.pool.fetchval("SELECT count(*) FROM webhook_endpoints"))

    assert with_backends(servers, count) == 0


def test_deliveries_list_shows_the_log_and_replay_queues_again(
    cli: CliRunner, receiver: Receiver, servers: Servers
) -> None:
    endpoint_id, _ = _add(cli, receiver.url("/log"), "order.*")
    delivered = _events(servers, 2, endpoint_id, "delivered")
    failed = _events(servers, 1, endpoint_id, "failed")
    log = cli.invoke(app, ["webhooks", "deliveries", endpoint_id])
    assert log.exit_code == 0, log.output
    rows = [line for line in log.output.splitlines() if "order.paid" in line]
    assert [int(r.split("│")[2]) for r in rows] == [*failed, *delivered[::-1]]
    only = cli.invoke(app, ["webhooks", "deliveries", endpoint_id, "--status", "failed"])
    only_rows = [line for line in only.output.splitlines() if "order.paid" in line]
    cells = [[c.strip() for c in r.split("│")[1:5]] for r in only_rows]
    assert cells == [[rows[0].split("│")[1].strip(), str(failed[0]), "order.paid", "failed"]]
    listed = cli.invoke(app, ["webhooks", "list"])
    row = next(line for line in listed.output.splitlines() if endpoint_id in line)
    assert [c.strip() for c in row.split("│")[5:7]] == ["0", "1"]

    replay = ["webhooks", "replay", endpoint_id, "--after-seq", str(delivered[0])]
    replayed = cli.invoke(app, replay)
    assert replayed.exit_code == 0, replayed.output
    assert f"queued 2 event(s) for {endpoint_id}" in replayed.output
    listed = cli.invoke(app, ["webhooks", "list"])
    row = next(line for line in listed.output.splitlines() if endpoint_id in line)
    assert [c.strip() for c in row.split("│")[5:7]] == ["2", "0"]


@pytest.mark.parametrize(
    "args",
    [
        ["test", "we_" + "0" * 32],
        ["deliveries", "we_" + "0" * 32],
        ["replay", "we_" + "0" * 32, "--after-seq", "0"],
    ],
)
def test_an_unknown_endpoint_exits_1(cli: CliRunner, args: list[str]) -> None:
    found = cli.invoke(app, ["webhooks", *args])
    assert found.exit_code == 1
    assert "not_found" in found.output
