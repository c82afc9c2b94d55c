"""``/docs`` (Swagger UI) and ``/redoc`` render in a real browser that can reach nothing
but the test server: their scripts and styles come from the package, not a CDN.

Headless Chromium is Debian's ``chromium`` (``dev.py test`` installs it when missing),
driven by Playwright's Python package with ``executable_path``; Playwright's own browser
download is never used. Every request the page makes to another host is aborted and
recorded, and the test fails if there was one.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Route, sync_playwright

from stockguard.api.app import build_app
from stockguard.api.docs import CSP, STATIC_DIR
from stockguard.config import Settings

RENDER_TIMEOUT_MS = 60_000


def _chromium() -> str:
    found = os.environ.get("STOCKGUARD_CHROMIUM") or shutil.which("chromium")
    assert found, (
        "the offline docs test needs Debian's chromium: apt-get install chromium "
        "(python3 dev.py test installs it when run as root)"
    )
    return found


@pytest.fixture(scope="module")
def docs_server(settings: Settings) -> Iterator[str]:
    """The real app on a real socket, in a thread. The docs and /openapi.json need no
    database: the lifespan (which would open one and start workers) is off."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(settings), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="docs-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the docs server did not start"
        assert time.monotonic() < deadline
        time.sleep(0.05)  # uvicorn binds in its thread
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # A second wall besides the routes: no host name resolves, so nothing but the
        # loopback address is reachable even for a request the routes would not see.
        launched = p.chromium.launch(
            executable_path=_chromium(),
            headless=True,
            args=["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Visit:
    page: Page
    requested: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def offline(browser: Browser, docs_server: str) -> Iterator[Visit]:
    """A page whose every request to anything but the test server is aborted."""
    context = browser.new_context(service_workers="block")
    page = context.new_page()
    visit = Visit(page)

    def route(r: Route) -> None:
        url = r.request.url
        if url.startswith(f"{docs_server}/"):
            visit.requested.append(url.removeprefix(docs_server))
            r.continue_()
        else:
            visit.blocked.append(url)
            r.abort()

    context.route("**/*", route)
    page.on("pageerror", lambda exc: visit.errors.append(str(exc)))
    try:
        yield visit
    finally:
        context.close()


def _operation(docs_server: str, path: str, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = httpx.get(f"{docs_server}/openapi.json").json()["paths"][path][
        method
    ]
    return operation


def test_swagger_ui_renders_the_operations_offline(offline: Visit, docs_server: str) -> None:
    page = offline.page
    answer = page.goto(f"{docs_server}/docs")
    assert answer is not None
    assert answer.status == 200
    assert answer.headers["content-security-policy"] == CSP
    place = page.locator(".opblock.opblock-post").filter(
        has=page.locator(".opblock-summary-path[data-path='/v1/orders']")
    )
    place.wait_for(state="visible", timeout=RENDER_TIMEOUT_MS)
    summary = _operation(docs_server, "/v1/orders", "post").get("summary")
    assert place.locator(".opblock-summary-method").inner_text() == "POST"
    if summary:
        assert place.locator(".opblock-summary-description").inner_text() == summary
    # Rendered from the served document: many operations, of every area.
    assert page.locator(".opblock").count() >= 40
    for tag in ("orders", "catalogue", "admin", "transfers"):
        assert page.locator(f".opblock-tag[data-tag='{tag}']").count() == 1, tag
    assert offline.blocked == []
    assert offline.errors == []
    assert {
        "/docs",
        "/docs/assets/swagger-ui/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui/swagger-ui.css",
        "/openapi.json",
    } <= set(offline.requested)


def test_redoc_renders_the_reference_offline(offline: Visit, docs_server: str) -> None:
    page = offline.page
    answer = page.goto(f"{docs_server}/redoc")
    assert answer is not None
    assert answer.status == 200
    assert answer.headers["content-security-policy"] == CSP
    operation = _operation(docs_server, "/v1/orders", "post")
    section = page.locator(f"[data-section-id='operation/{operation['operationId']}']")
    section.wait_for(state="visible", timeout=RENDER_TIMEOUT_MS)
    assert section.locator("h2").first.inner_text().strip() == operation["summary"]
    verb = section.locator(".http-verb").first
    assert verb.inner_text().strip().lower() == "post"  # shown upper-case by its CSS
    assert section.get_by_text("/v1/orders", exact=False).count() >= 1
    # The vendor's logo is refused by the page's own policy: never even requested.
    assert offline.blocked == []
    assert offline.errors == []
    assert {"/redoc", "/docs/assets/redoc/redoc.standalone.js", "/openapi.json"} <= set(
        offline.requested
    )


def test_the_assets_are_package_data_with_their_licences(docs_server: str) -> None:
    """What the pages load is in the package, with its licence and the record of where it
    came from; the server sends it as it is on disk."""
    for asset in (
        "swagger-ui/swagger-ui-bundle.js",
        "swagger-ui/swagger-ui.css",
        "swagger-ui/LICENSE",
        "swagger-ui/NOTICE",
        "redoc/redoc.standalone.js",
        "redoc/LICENSE",
    ):
        assert (STATIC_DIR / asset).is_file(), asset
    served = httpx.get(f"{docs_server}/docs/assets/swagger-ui/swagger-ui.css")
    assert served.status_code == 200
    assert served.content == (STATIC_DIR / "swagger-ui" / "swagger-ui.css").read_bytes()
    record = (STATIC_DIR / "README.md").read_text()
    assert "swagger-ui-dist 5.35.0" in record
    assert "redoc 2.5.4" in record
    assert "Apache-2.0" in record
    assert "MIT" in record
