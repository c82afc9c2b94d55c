"""A newcomer's first run: ``stockguard serve`` says what it is doing and, once it answers,
where it listens, what it uses and what to run next; ``--version``; operator commands log
only warnings unless asked; logs are readable at a terminal and JSON lines elsewhere.

The CLI runs ``asyncio.run`` itself, so these tests are plain ``def`` tests.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
from typer.testing import CliRunner, Result

from stockguard import cli as cli_module
from stockguard.announce import Ready, announce_when_ready, local_address, ready_text, redact
from stockguard.cli import app
from stockguard.config import Settings
from stockguard.logging import configure_logging, get_logger, wants_json
from tests.conftest import Servers


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, servers: Servers, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("STOCKGUARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    monkeypatch.setenv("STOCKGUARD_DATA_DIR", str(tmp_path / "data"))
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- --version


def test_version_prints_the_installed_version(cli_env: None) -> None:
    result = cli("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"stockguard {version('stockguard')}\n"
    assert re.fullmatch(r"stockguard \d+\.\d+\.\d+\S*\n", result.stdout)


# ---------------------------------------------------------------- how much a command logs


def test_an_operator_command_logs_only_warnings_unless_asked(
    cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the embedded Redis, a command starts and stops a server: four info events.
    By default none is printed; STOCKGUARD_LOG_LEVEL=INFO brings them back."""
    monkeypatch.delenv("STOCKGUARD_REDIS_URL")
    quiet = cli("migrate")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == "migrations applied\n"
    assert [line for line in quiet.stderr.splitlines() if line.startswith("{")] == []
    assert quiet.stderr.startswith("stockguard: data directory ")  # the one line for a person

    monkeypatch.setenv("STOCKGUARD_LOG_LEVEL", "INFO")
    monkeypatch.setenv("STOCKGUARD_LOG_JSON", "true")
    loud = cli("migrate")
    assert loud.exit_code == 0, loud.output
    events = [json.loads(line)["event"] for line in loud.stderr.splitlines() if line[:1] == "{"]
    assert {"embedded_redis_started", "using_embedded_servers"} <= set(events), loud.stderr


def _plain(text: str) -> str:
    """Without the terminal's colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_logs_are_console_lines_at_a_terminal_and_json_elsewhere(
    monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    terminal, pipe = _Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert (wants_json(None), wants_json(True), wants_json(False)) == (True, True, False)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert (wants_json(None), wants_json(True), wants_json(False)) == (False, True, False)

    configure_logging("INFO", None)
    get_logger("t").info("order_placed", order_id="o-1", api_key="sg_secret")
    line = _plain(terminal.getvalue())
    assert not line.startswith("{")
    assert "order_placed" in line
    assert "order_id=o-1" in line
    assert "sg_secret" not in line  # secrets are masked in either format

    configure_logging("INFO", True)  # STOCKGUARD_LOG_JSON=true wins over the terminal
    get_logger("t").info("order_paid", order_id="o-2")
    assert json.loads(terminal.getvalue().splitlines()[-1])["order_id"] == "o-2"

    monkeypatch.setattr(sys, "stderr", pipe)
    configure_logging("INFO", None)
    get_logger("t").info("order_shipped", order_id="o-3")
    assert json.loads(pipe.getvalue())["event"] == "order_shipped"


def _env(servers: Servers, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKGUARD_")}
    env.update(
        STOCKGUARD_DATABASE_URL=servers.database_url,
        STOCKGUARD_REDIS_PREFIX=servers.redis_prefix,
        STOCKGUARD_DATA_DIR=str(tmp_path / "data"),
        **extra,
    )
    return env


def test_a_real_terminal_gets_readable_log_lines(servers: Servers, tmp_path: Path) -> None:
    """The command's stderr is a pseudo-terminal: no JSON, the console renderer."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stockguard", "migrate"],
            env=_env(servers, tmp_path, STOCKGUARD_LOG_LEVEL="INFO"),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    text = _plain(seen.decode())
    assert proc.returncode == 0, text
    assert "embedded_redis_started" in text
    assert '"event"' not in text
    assert re.search(r"\[info\s*\] embedded_redis_started\s+data=", text), text


# ---------------------------------------------------------------- what serve says


def _ready(**changes: object) -> Ready:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 8000,
        "workers": 1,
        "run_workers": True,
        "database_url": "postgresql://stock:s3cret@db.internal:5432/shop",
        "redis_url": "redis://:r3dis@cache.internal:6379/0",
        "data_dir": None,
        "embedded_postgres": False,
        "embedded_redis": False,
        "bootstrap_key": False,
        "command": "stockguard",
        "version": "9.9.9",
    }
    base.update(changes)
    return Ready(**base)  # type: ignore[arg-type]


def test_the_ready_lines_name_the_servers_without_their_passwords() -> None:
    text = ready_text(_ready(host="0.0.0.0", workers=4, run_workers=False))  # noqa: S104
    assert "s3cret" not in text
    assert "r3dis" not in text
    lines = text.splitlines()
    assert lines[0] == (
        "stockguard 9.9.9 is listening on http://127.0.0.1:8000 (on every address): "
        "4 API processes, no worker loops (run `stockguard worker`)"
    )
    assert 'database "shop" at postgresql://stock:***@db.internal:5432/shop' in text
    assert "redis:         redis://:***@cache.internal:6379/0" in text
    assert "data directory" not in text
    assert "  next, in another terminal: stockguard keys create --role admin --name me" in text

    with_key = ready_text(_ready(bootstrap_key=True, host="::"))
    assert "http://[::1]:8000" in with_key
    assert '-H "Authorization: Bearer $STOCKGUARD_BOOTSTRAP_ADMIN_KEY"' in with_key
    assert "keys create" not in with_key

    embedded = ready_text(_ready(embedded_postgres=True, data_dir=Path("/srv/sg")))
    assert 'database:      embedded PostgreSQL, database "stockguard", in /srv/sg/pg' in embedded
    assert "  data directory: /srv/sg (set STOCKGUARD_DATA_DIR" in embedded

    assert redact("redis://cache:6379/0") == "redis://cache:6379/0"
    assert (local_address(""), local_address("10.1.2.3")) == ("127.0.0.1", "10.1.2.3")


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_ready_lines_are_printed_once_the_service_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = _free_port()
    watcher = announce_when_ready("127.0.0.1", port, "READY LINES", wait=30)
    assert watcher is not None
    time.sleep(0.5)  # nothing listens yet: nothing may be printed
    assert "READY LINES" not in capsys.readouterr().err
    server = http.server.HTTPServer(("127.0.0.1", port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        watcher.join(timeout=20)
        assert not watcher.is_alive()
        assert capsys.readouterr().err == "READY LINES\n"
        # Something answers there already: the server about to start cannot bind the port,
        # so nothing is announced.
        assert announce_when_ready("127.0.0.1", port, "NOT OURS") is None
    finally:
        server.shutdown()
        server.server_close()
    # Nothing ever answers: the watcher gives up after its wait, silently.
    silent = announce_when_ready("127.0.0.1", _free_port(), "NEVER", wait=0.5)
    assert silent is not None
    silent.join(timeout=10)
    assert not silent.is_alive()
    assert "NEVER" not in capsys.readouterr().err


def test_serve_says_what_it_starts_and_names_what_it_uses(
    cli_env: None,
    servers: Servers,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """serve's own steps, in this process: the embedded Redis (PostgreSQL configured) is
    announced before it starts, and the ready lines name it, the data directory and the
    configured database."""
    monkeypatch.delenv("STOCKGUARD_REDIS_URL")
    data = tmp_path / "data"
    settings = Settings()
    endpoints = cli_module._resolve(settings, progress=True)
    try:
        said = capsys.readouterr().err.splitlines()
        assert said == [
            f"stockguard: starting the embedded Redis in {data}",
            f"stockguard: data directory {data}: embedded Redis only",
        ]
        ready = cli_module._ready(settings, endpoints, "127.0.0.1", 8123, 2, True)
        assert (ready.data_dir, ready.embedded_postgres, ready.embedded_redis) == (
            data,
            False,
            True,
        )
        assert ready.database_url == servers.database_url
        text = ready_text(ready)
    finally:
        endpoints.close()
    name = urlsplit(servers.database_url).path.lstrip("/")  # the test servers' database
    assert f'database:      database "{name}" at ' in text
    assert re.search(r"redis:\s+embedded redis-server at redis://127\.0\.0\.1:\d+/0", text)
    assert f"  data directory: {data} (set STOCKGUARD_DATA_DIR" in text
    assert "2 API processes, worker loops inside" in text
    assert "next, in another terminal from this directory: " in text


def test_the_next_command_names_the_stockguard_beside_this_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert cli_module._command() == "stockguard"  # no script there: the one on PATH
    (bin_dir / "stockguard").touch()
    assert cli_module._command() == ".venv/bin/stockguard"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli_module._command() == str(bin_dir / "stockguard")


def test_first_serve_on_embedded_servers_shows_progress_then_where_it_listens(
    outside_tmp: Path,
) -> None:
    """No configuration at all, a new directory: every step is said before it is taken,
    then, once it answers, the address, the database, the data directory and the next
    command."""
    port = _free_port()
    log = outside_tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKGUARD_")}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stockguard", "serve", "--port", str(port), "--no-run-workers"],
            env=env,
            cwd=outside_tmp,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while "is listening on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)  # the ready lines come from a thread once /healthz answers
        time.sleep(0.3)  # the remaining ready lines
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5)
        assert docs.status_code == 200
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text
    data = outside_tmp / ".stockguard"
    said = [line for line in text.splitlines() if line.startswith("stockguard")]
    assert said[:5] == [
        f"stockguard: starting the embedded PostgreSQL and Redis in {data} "
        "(first start: initialising its database)",
        f"stockguard: data directory {data}: created a new, empty database "
        "(STOCKGUARD_DATA_DIR chooses another)",
        "stockguard: applying the database migrations",
        f"stockguard: starting the HTTP server on 127.0.0.1:{port}",
        f"stockguard {version('stockguard')} is listening on http://127.0.0.1:{port}: "
        "1 API process, no worker loops (run `stockguard worker`)",
    ], text
    assert f'database:      embedded PostgreSQL, database "stockguard", in {data}/pg' in text
    assert re.search(r"redis:\s+embedded redis-server at redis://127\.0\.0\.1:\d+/0", text)
    assert f"data directory: {data} (set STOCKGUARD_DATA_DIR" in text
    assert re.search(
        r"next, in another terminal from this directory: \S*stockguard keys create "
        r"--role admin --name me",
        text,
    ), text
    assert f"http://127.0.0.1:{port}/docs" in text
