"""The interactive API documentation: ``/docs`` (Swagger UI) and ``/redoc`` (Redoc).

Both pages load their scripts and styles from this package (``api/static/``, mounted at
``/docs/assets``), never from a CDN, so they render on a machine without internet access.
Swagger UI's online validator is off, no web fonts are asked for, and a
Content-Security-Policy keeps the browser from asking any other host for anything.
``api/static/README.md`` says which versions are vendored, under which licences, and how
to update them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from stockguard.api.strict import StrictJSONRoute

__all__ = ["ASSETS_PATH", "CSP", "STATIC_DIR", "install_docs"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_PATH = "/docs/assets"
TITLE = "stockguard API"

router = APIRouter(route_class=StrictJSONRoute, include_in_schema=False)

# The pages may load only from this server (a Content-Security-Policy): Redoc's sidebar
# asks for a logo from its vendor's CDN, which the browser then never requests. The inline
# scripts and styles are the pages' own (FastAPI's Swagger UI page starts it inline).
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


def _root(request: Request) -> str:
    """The prefix a reverse proxy serves us under (``--root-path``), or ``""``."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _openapi_url(request: Request) -> str:
    app: FastAPI = request.app
    return _root(request) + (app.openapi_url or "/openapi.json")


def _self_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    assets = _root(request) + ASSETS_PATH
    return _self_only(
        get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=f"{TITLE} (Swagger UI)",
            swagger_js_url=f"{assets}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{assets}/swagger-ui/favicon-32x32.png",
            # No badge from the online validator: that would be a request to another host.
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    assets = _root(request) + ASSETS_PATH
    return _self_only(
        get_redoc_html(
            openapi_url=_openapi_url(request),
            title=f"{TITLE} (reference)",
            redoc_js_url=f"{assets}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
    )


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets (build the app with ``docs_url=None,
    redoc_url=None`` so FastAPI's CDN pages are not there)."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="docs-assets")
