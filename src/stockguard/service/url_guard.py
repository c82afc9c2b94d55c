"""Where a webhook may be sent (SSRF): ``http``/``https`` URLs whose host resolves only to
public addresses, unless ``STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS`` is set.

Checked when an endpoint is created or changed (422), and again before every attempt,
since DNS can change: the attempt then connects to the very address that was checked
(:mod:`stockguard.service.webhook_sender` pins it), so a name that resolves elsewhere a
moment later cannot slip through."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from stockguard.domain.delivery import is_refused_address

__all__ = ["Destination", "UrlRefused", "check_url", "resolve_destination"]

MAX_URL = 2048
RESOLVE_TIMEOUT = 5.0


class UrlRefused(Exception):
    """The URL may not be used; the message says why (shown to the admin)."""


@dataclass(frozen=True, slots=True)
class Destination:
    host: str  # as written in the URL (what Host and TLS SNI name)
    port: int
    address: str  # the checked address to connect to


def _host_and_port(url: str) -> tuple[str, int]:
    if len(url) > MAX_URL:
        raise UrlRefused(f"url: at most {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UrlRefused("url: must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("url: must be an http or https URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("url: the port is not a number from 0 to 65535") from exc
    host = parts.hostname
    if not host:
        raise UrlRefused("url: must name a host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("url: must not carry a user name or password")
    if parts.fragment:
        raise UrlRefused("url: must not have a #fragment")
    return host, port or (443 if parts.scheme == "https" else 80)


async def _addresses(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise UrlRefused(f"url: the host {host} does not resolve") from exc
    addresses: list[str] = []
    for *_, sockaddr in found:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused(f"url: the host {host} does not resolve")  # pragma: no cover
    return addresses


async def resolve_destination(url: str, allow_private: bool) -> Destination:
    """Resolve the URL's host now and choose the address to connect to; raises
    :class:`UrlRefused` when any address the name resolves to is loopback, private,
    link-local, multicast, unspecified or reserved (and such URLs are not allowed)."""
    host, port = _host_and_port(url)
    addresses = await _addresses(host, port)
    if not allow_private:
        refused = [a for a in addresses if is_refused_address(a)]
        if refused:
            raise UrlRefused(
                f"url: {host} resolves to a loopback, private, link-local, multicast or "
                f"reserved address ({refused[0]}); set STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS="
                "true to allow it"
            )
    return Destination(host, port, addresses[0])


async def check_url(url: str, allow_private: bool) -> None:
    """Raise :class:`UrlRefused` unless the URL may be an endpoint's."""
    await resolve_destination(url, allow_private)
