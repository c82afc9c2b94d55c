"""What ``stockguard serve`` tells the person who started it, on stderr: each step while it
starts (the embedded servers, the migrations, the HTTP server), and, once the service
answers ``/healthz``, where it listens, which database and data directory it uses and
the command to run next. Logs stay what they are (JSON lines when not at a terminal);
these lines are for a person and start with ``stockguard:``."""

from __future__ import annotations

import http.client
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Ready", "announce_when_ready", "local_address", "ready_text", "redact", "say"]

READY_WAIT_SECONDS = 300.0


def say(message: str) -> None:
    print(f"stockguard: {message}", file=sys.stderr, flush=True)


def redact(url: str) -> str:
    """The URL without its password (``user:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def local_address(host: str) -> str:
    """Where this machine reaches a server bound to ``host``."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a bind address, compared, not bound
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url(host: str, port: int) -> str:
    address = local_address(host)
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


@dataclass(frozen=True, slots=True)
class Ready:
    """What the closing lines name."""

    host: str
    port: int
    workers: int
    run_workers: bool
    database_url: str
    redis_url: str
    data_dir: Path | None  # the embedded servers' directory, when they are used
    embedded_postgres: bool
    embedded_redis: bool
    bootstrap_key: bool  # STOCKGUARD_BOOTSTRAP_ADMIN_KEY is set
    command: str  # how to run stockguard from here (e.g. ``.venv/bin/stockguard``)
    version: str


def ready_text(r: Ready) -> str:
    url = _url(r.host, r.port)
    everywhere = " (on every address)" if r.host in ("", "0.0.0.0", "::") else ""  # noqa: S104
    if r.embedded_postgres:
        database = f'embedded PostgreSQL, database "stockguard", in {r.data_dir}/pg'
    else:
        name = urlsplit(r.database_url).path.lstrip("/") or "(the server's default)"
        database = f'database "{name}" at {redact(r.database_url)}'
    redis = f"embedded redis-server at {r.redis_url}" if r.embedded_redis else redact(r.redis_url)
    processes = f"{r.workers} API process{'es' if r.workers > 1 else ''}, " + (
        "worker loops inside" if r.run_workers else "no worker loops (run `stockguard worker`)"
    )
    if r.bootstrap_key:
        first = f'curl -H "Authorization: Bearer $STOCKGUARD_BOOTSTRAP_ADMIN_KEY" {url}/v1/skus'
    else:
        first = f"{r.command} keys create --role admin --name me   (prints an admin API key)"
    lines = [
        f"stockguard {r.version} is listening on {url}{everywhere}: {processes}",
        f"  API reference: {url}/docs (also {url}/redoc); OpenAPI at {url}/openapi.json",
        f"  database:      {database}",
        f"  redis:         {redis}",
    ]
    if r.data_dir is not None:
        lines.append(
            f"  data directory: {r.data_dir} (set STOCKGUARD_DATA_DIR to use another; "
            "commands run from another directory use another one)"
        )
    here = " from this directory" if r.data_dir is not None else ""
    lines += [
        f"  next, in another terminal{here}: {first}",
        "  then try the requests under 'To try the API' in README.md. Ctrl-C stops the service.",
    ]
    return "\n".join(lines)


def _answers(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(local_address(host), port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def announce_when_ready(
    host: str, port: int, text: str, *, wait: float = READY_WAIT_SECONDS
) -> threading.Thread | None:
    """Print ``text`` once the service answers on ``host:port``, from a daemon thread.
    Nothing is started when something answers there already: the server about to start
    cannot bind that port, and the answer would not be its own."""
    if _answers(host, port):
        return None

    def watch() -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _answers(host, port):
                print(text, file=sys.stderr, flush=True)
                return
            time.sleep(0.2)  # not listening yet: ask again

    thread = threading.Thread(target=watch, name="stockguard-ready", daemon=True)
    thread.start()
    return thread
