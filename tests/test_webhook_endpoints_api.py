"""The admin routes of API.md "Webhook endpoints": create (secret once), read, change,
delete, ping, the delivery log and replay; strict bodies, problem+json refusals, SSRF
refusals at create and change, roles, and the served OpenAPI."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.service.uow import Backends
from tests.conftest import Keys
from tests.webhook_receiver import (
    Received,
    Receiver,
    add_events,
    delivering,
    eventually,
    hook_settings,
    numbered,
    statuses,
)

pytestmark = pytest.mark.usefixtures("no_endpoints_after")

BASE = "/v1/admin/webhook-endpoints"
SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")


@pytest.fixture
async def open_client(
    settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[httpx.AsyncClient]:
    """An app that allows private (loopback) URLs, as the tests' receivers need."""
    app = build_app(hook_settings(settings), backends)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://stockguard.test",
        headers={"Authorization": f"Bearer {api_keys.admin}"},
    ) as c:
        yield c


async def make(c: httpx.AsyncClient, url: str, **body: Any) -> dict[str, Any]:
    r = await c.post(BASE, json={"url": url, "events": ["*"], **body})
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


async def count(backends: Backends) -> int:
    return int(await backends.pool.fetchval("SELECT count(*) FROM webhook_endpoints"))


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    return body


async def test_create_shows_the_secret_once_and_reads_never_show_it(
    open_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    r = await open_client.post(
        BASE,
        json={
            "url": receiver.url("/x"),
            "events": ["stock.*", "order.paid", "stock.*"],
            "description": "ERP",
        },
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert set(made) == {
        "id", "url", "events", "description", "active", "secret", "created_at", "updated_at"
    }  # fmt: skip
    assert re.fullmatch(r"we_[0-9a-f]{32}", made["id"])
    assert made["url"] == receiver.url("/x")
    assert made["events"] == ["stock.*", "order.paid"]  # once each, in the given order
    assert (made["description"], made["active"]) == ("ERP", True)
    assert SECRET.fullmatch(made["secret"])
    assert len(base64.b64decode(made["secret"].removeprefix("whsec_"))) == 32
    one = await open_client.get(f"{BASE}/{made['id']}")
    assert one.status_code == 200
    assert one.json() == {k: v for k, v in made.items() if k != "secret"}
    listed = (await open_client.get(BASE)).json()
    assert {k: v for k, v in made.items() if k != "secret"} in listed["items"]
    assert all("secret" not in e for e in listed["items"])


async def test_a_create_replayed_by_idempotency_key_does_not_show_the_secret_again(
    open_client: httpx.AsyncClient, receiver: Receiver, backends: Backends, uid: str
) -> None:
    body = {"url": receiver.url("/idem"), "events": ["*"]}
    headers = {"Idempotency-Key": f"hook-{uid}"}
    first = await open_client.post(BASE, json=body, headers=headers)
    n = await count(backends)
    again = await open_client.post(BASE, json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == {**first.json(), "secret": None}
    assert await count(backends) == n


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"url": "http://127.0.0.1/", "events": ["*"], "extra": 1}, "extra"),
        ({"url": "http://127.0.0.1/", "events": []}, "events"),
        ({"url": "http://127.0.0.1/", "events": ["stock.nope"]}, "stock.nope"),
        ({"url": "http://127.0.0.1/", "events": ["stocks.*"]}, "stocks.*"),
        ({"url": "http://127.0.0.1/", "events": ["ping"]}, "ping"),
        ({"url": "http://127.0.0.1/", "events": "*"}, "events"),
        ({"url": "http://127.0.0.1/", "events": ["*"], "description": "d" * 501}, "description"),
        ({"url": "ftp://127.0.0.1/", "events": ["*"]}, "http or https"),
        ({"url": "http:///path", "events": ["*"]}, "must name a host"),
        ({"url": "http://u:p@127.0.0.1/", "events": ["*"]}, "user name"),
        ({"url": "http://127.0.0.1:99999/", "events": ["*"]}, "port"),
        ({"url": "http://127.0.0.1/a b", "events": ["*"]}, "spaces"),
        ({"url": "http://127.0.0.1/#x", "events": ["*"]}, "fragment"),
        ({"url": "http://no-such-host.invalid/", "events": ["*"]}, "does not resolve"),
        ({"url": "http://127.0.0.1/" + "a" * 2048, "events": ["*"]}, "url"),
    ],
)
async def test_bad_bodies_are_422_and_create_nothing(
    open_client: httpx.AsyncClient, backends: Backends, body: dict[str, Any], detail: str
) -> None:
    n = await count(backends)
    found = problem(await open_client.post(BASE, json=body), 422, "validation_error")
    assert detail in found["detail"]
    assert await count(backends) == n


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://10.1.2.3/hook",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://100.64.0.1/",
        "http://240.0.0.1/",
    ],
)
async def test_private_urls_are_refused_unless_allowed(
    client: httpx.AsyncClient,
    open_client: httpx.AsyncClient,
    backends: Backends,
    url: str,
) -> None:
    n = await count(backends)
    found = problem(
        await client.post(BASE, json={"url": url, "events": ["*"]}), 422, "validation_error"
    )
    assert "STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS" in found["detail"]
    assert await count(backends) == n
    made = await make(open_client, url)  # allowed by the setting
    refused = await client.patch(f"{BASE}/{made['id']}", json={"url": url})
    problem(refused, 422, "validation_error")
    delete = await client.delete(f"{BASE}/{made['id']}")
    assert delete.status_code == 204


async def test_a_public_address_is_accepted(client: httpx.AsyncClient) -> None:
    # Never sent to: no delivery loop runs in this test, and the endpoint goes at once.
    made = await make(client, "https://93.184.216.34/hook", events=["transfer.cancelled"])
    assert (await client.delete(f"{BASE}/{made['id']}")).status_code == 204


async def test_patch_changes_what_it_names(
    open_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    made = await make(open_client, receiver.url("/a"), description="first")
    path = f"{BASE}/{made['id']}"
    r = await open_client.patch(path, json={"events": ["order.*"], "active": False})
    assert r.status_code == 200, r.text
    assert (r.json()["events"], r.json()["active"], r.json()["description"]) == (
        ["order.*"], False, "first"
    )  # fmt: skip
    assert r.json()["updated_at"] >= made["updated_at"]
    r = await open_client.patch(path, json={"description": None, "url": receiver.url("/b")})
    assert (r.json()["description"], r.json()["url"]) == (None, receiver.url("/b"))
    assert "secret" not in r.json()
    problem(await open_client.patch(path, json={}), 422, "validation_error")
    for field in ("url", "events", "active"):
        problem(await open_client.patch(path, json={field: None}), 422, "validation_error")
    problem(await open_client.patch(path, json={"events": ["x.*"]}), 422, "validation_error")
    problem(await open_client.patch(path, json={"secret": "whsec_x"}), 422, "validation_error")
    assert (await open_client.get(path)).json() == r.json()  # the refusals changed nothing


async def test_unknown_endpoints_are_404_on_every_route(open_client: httpx.AsyncClient) -> None:
    for endpoint in ("we_" + "0" * 32, "nope", "we_" + "A" * 32):
        path = f"{BASE}/{endpoint}"
        for r in (
            await open_client.get(path),
            await open_client.patch(path, json={"active": False}),
            await open_client.delete(path),
            await open_client.post(f"{path}/test"),
            await open_client.get(f"{path}/deliveries"),
            await open_client.post(f"{path}/replay", json={"after_seq": 0}),
        ):
            problem(r, 404, "not_found")


async def test_delete_is_204_once_then_404(
    open_client: httpx.AsyncClient, receiver: Receiver, backends: Backends
) -> None:
    made = await make(open_client, receiver.url("/d"))
    path = f"{BASE}/{made['id']}"
    assert (await open_client.post(f"{path}/test")).status_code == 200
    r = await open_client.delete(path)
    assert (r.status_code, r.content) == (204, b"")
    pings = await backends.pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'ping' AND endpoint_id = $1", made["id"]
    )
    assert pings == 0  # its pings went with it
    problem(await open_client.get(path), 404, "not_found")
    problem(await open_client.delete(path), 404, "not_found")


async def test_only_admin_keys_manage_endpoints(
    open_client: httpx.AsyncClient, receiver: Receiver, api_keys: Keys
) -> None:
    made = await make(open_client, receiver.url("/r"))
    path = f"{BASE}/{made['id']}"
    for headers, status in (
        ({"Authorization": f"Bearer {api_keys.service}"}, 403),
        ({"Authorization": ""}, 401),
    ):
        for method, url, body in (
            ("POST", BASE, {"url": receiver.url("/r"), "events": ["*"]}),
            ("GET", BASE, None),
            ("GET", path, None),
            ("PATCH", path, {"active": False}),
            ("DELETE", path, None),
            ("POST", f"{path}/test", None),
            ("GET", f"{path}/deliveries", None),
            ("POST", f"{path}/replay", {"after_seq": 0}),
        ):
            r = await open_client.request(method, url, json=body, headers=headers)
            assert r.status_code == status, (method, url, r.text)
    assert receiver.received == []
    assert (await open_client.get(path)).json()["active"] is True


async def test_test_route_pings_now_and_answers_with_the_attempt(
    open_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    made = await make(open_client, receiver.url("/ping"), events=["order.paid"])
    r = await open_client.post(f"{BASE}/{made['id']}/test")
    assert r.status_code == 200, r.text
    attempt = r.json()
    assert attempt["type"] == "ping"
    assert (attempt["status"], attempt["attempts"], attempt["seq"]) == ("delivered", 1, None)
    assert (attempt["last_status_code"], attempt["last_error"]) == (200, None)
    assert attempt["delivered_at"] is not None
    assert attempt["next_attempt_at"] is None
    [got] = receiver.at("/ping")
    payload = Webhook(made["secret"]).verify(got.body, got.headers)
    assert payload == {
        "id": attempt["event_id"],
        "seq": None,
        "type": "ping",
        "occurred_at": payload["occurred_at"],
        "data": {"endpoint_id": made["id"]},
    }
    assert got.webhook_id == attempt["event_id"]
    log = (await open_client.get(f"{BASE}/{made['id']}/deliveries")).json()
    assert log["items"] == [attempt]


async def test_a_failed_ping_is_failed_at_once_and_not_retried(
    open_client: httpx.AsyncClient,
    receiver: Receiver,
    backends: Backends,
    settings: Settings,
) -> None:
    receiver.on("/down", lambda _r, _b: 503)
    made = await make(open_client, receiver.url("/down"))
    attempt = (await open_client.post(f"{BASE}/{made['id']}/test")).json()
    assert (attempt["status"], attempt["attempts"]) == ("failed", 1)
    assert (attempt["last_status_code"], attempt["last_error"]) == (503, "HTTP 503")
    # The delivery loops leave it alone: a later event is sent, the ping not again.
    ids = await add_events(backends.pool, 1)
    await numbered(backends, ids)
    receiver.on("/down", lambda _r, _b: 200)
    async with delivering(backends, hook_settings(settings)):

        async def sent() -> bool:
            return (await statuses(backends.pool, made["id"])).get(ids[0]) == "delivered"

        await eventually(sent, "the event after the ping")
    assert receiver.ids("/down").count(attempt["event_id"]) == 1


async def test_a_ping_to_a_private_address_is_refused_when_not_allowed(
    open_client: httpx.AsyncClient, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    made = await make(open_client, receiver.url("/sneaky"))
    attempt = (await client.post(f"{BASE}/{made['id']}/test")).json()
    assert (attempt["status"], attempt["last_status_code"]) == ("failed", None)
    assert attempt["last_error"].startswith("refused: ")
    assert receiver.at("/sneaky") == []


async def test_the_delivery_log_is_newest_first_filtered_and_paged(
    open_client: httpx.AsyncClient,
    receiver: Receiver,
    backends: Backends,
    settings: Settings,
    uid: str,
) -> None:
    ids = await add_events(backends.pool, 3, tag=uid)
    bad = ids[1]
    receiver.on("/log", lambda r, _b: 500 if r.webhook_id == bad else 200)
    made = await make(open_client, receiver.url("/log"))
    seqs = await numbered(backends, ids)
    path = f"{BASE}/{made['id']}/deliveries"
    pending = (await open_client.get(path, params={"status": "pending"})).json()
    assert [d["event_id"] for d in pending["items"]] == ids[::-1]
    assert all(d["next_attempt_at"] is not None for d in pending["items"])
    async with delivering(backends, hook_settings(settings, webhook_retry_schedule="0.05")):

        async def settled() -> bool:
            found = await statuses(backends.pool, made["id"])
            return found == {ids[0]: "delivered", bad: "failed", ids[2]: "delivered"}

        await eventually(settled, "two delivered and one failed")
    everything = (await open_client.get(path)).json()
    assert [d["event_id"] for d in everything["items"]] == ids[::-1]
    assert everything["next"] is None
    failed = (await open_client.get(path, params={"status": "failed"})).json()["items"]
    assert failed == [
        {
            "event_id": bad,
            "seq": seqs[bad],
            "type": "stock.changed",
            "status": "failed",
            "attempts": 2,
            "last_status_code": 500,
            "last_error": "HTTP 500",
            "next_attempt_at": None,
            "last_attempt_at": failed[0]["last_attempt_at"],
            "delivered_at": None,
            "created_at": failed[0]["created_at"],
        }
    ]
    assert failed[0]["last_attempt_at"] is not None
    first = (await open_client.get(path, params={"limit": 2})).json()
    assert [d["event_id"] for d in first["items"]] == [ids[2], ids[1]]
    rest = (await open_client.get(path, params={"limit": 2, "after": first["next"]})).json()
    assert ([d["event_id"] for d in rest["items"]], rest["next"]) == ([ids[0]], None)
    problem(await open_client.get(path, params={"status": "lost"}), 422, "validation_error")
    problem(await open_client.get(path, params={"limit": 0}), 422, "validation_error")
    for cursor in ("bm9wZQ", "WyJ4IiwgMV0", "WzEsIDJd", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgMV0"):
        problem(await open_client.get(path, params={"after": cursor}), 422, "validation_error")


async def test_replay_answers_202_with_how_many_it_queued(
    open_client: httpx.AsyncClient, receiver: Receiver, backends: Backends, uid: str
) -> None:
    made = await make(open_client, receiver.url("/replayed"), events=["order.*"])
    ids = await add_events(backends.pool, 3, type_="order.paid", tag=uid)
    seqs = await numbered(backends, ids)
    path = f"{BASE}/{made['id']}/replay"
    # Still pending: left as they are, nothing newly queued.
    r = await open_client.post(path, json={"after_seq": seqs[ids[0]]})
    assert (r.status_code, r.json()) == (202, {"queued": 0})
    await backends.pool.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now() "
        "WHERE endpoint_id = $1",
        made["id"],
    )
    r = await open_client.post(path, json={"after_seq": seqs[ids[0]]})
    assert r.json()["queued"] >= 2  # ids[1:] and any later order event still kept
    found = await statuses(backends.pool, made["id"])
    assert [found[i] for i in ids] == ["delivered", "pending", "pending"]
    for body in ({}, {"after_seq": -1}, {"after_seq": "1"}, {"after_seq": True}, {"x": 1}):
        problem(await open_client.post(path, json=body), 422, "validation_error")


async def test_the_served_openapi_names_the_webhook_schemas(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name in (
        "EndpointIn",
        "EndpointPatchIn",
        "ReplayIn",
        "WebhookEndpoint",
        "WebhookEndpointCreated",
        "WebhookEndpointPage",
        "WebhookDelivery",
        "WebhookDeliveryPage",
        "ReplayQueued",
    ):
        assert name in schemas, name
    ops = spec["paths"][f"{BASE}/{{endpoint_id}}"]
    assert set(ops) == {"get", "patch", "delete"}
    assert "204" in ops["delete"]["responses"]
    replay = spec["paths"][f"{BASE}/{{endpoint_id}}/replay"]["post"]["responses"]
    assert replay["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReplayQueued"
    }
    created = spec["paths"][BASE]["post"]["responses"]["201"]["content"]["application/json"]
    assert created["schema"] == {"$ref": "#/components/schemas/WebhookEndpointCreated"}
    assert set(spec["paths"][BASE]["post"]["responses"]) >= {"201", "401", "403", "422"}


async def test_the_endpoint_list_pages_oldest_first(
    open_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    made = [await make(open_client, receiver.url(f"/p{n}")) for n in range(3)]
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after is not None:
            params["after"] = after
        page = (await open_client.get(BASE, params=params)).json()
        seen += [e["id"] for e in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert [i for i in seen if i in {m["id"] for m in made}] == [m["id"] for m in made]
    problem(await open_client.get(BASE, params={"after": "WzEsIDJd"}), 422, "validation_error")


async def test_a_ping_to_an_endpoint_deleted_during_the_attempt_is_404(
    open_client: httpx.AsyncClient, receiver: Receiver, migrated: str
) -> None:
    def delete_then_answer(r: Received, _b: int) -> int:
        async def delete() -> None:
            conn = await asyncpg.connect(migrated)
            try:
                await conn.execute("DELETE FROM webhook_endpoints WHERE url = $1", url)
            finally:
                await conn.close()

        asyncio.run(delete())  # in the receiver's thread, while the ping waits for us
        return 200

    url = receiver.url("/vanishing")
    receiver.on("/vanishing", delete_then_answer)
    made = await make(open_client, url)
    problem(await open_client.post(f"{BASE}/{made['id']}/test"), 404, "not_found")
    assert len(receiver.at("/vanishing")) == 1


async def test_a_ping_to_a_closed_port_is_a_failed_attempt_naming_the_error(
    open_client: httpx.AsyncClient,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    made = await make(open_client, f"http://127.0.0.1:{port}/nobody")
    attempt = (await open_client.post(f"{BASE}/{made['id']}/test")).json()
    assert (attempt["status"], attempt["last_status_code"]) == ("failed", None)
    assert attempt["last_error"].startswith("ConnectError")
