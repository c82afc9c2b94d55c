"""The life of ``stockguard serve`` / ``worker`` on the embedded servers, as real processes
with no ``STOCKGUARD_DATABASE_URL`` / ``STOCKGUARD_REDIS_URL``: SIGTERM stops them like
Ctrl-C (and stops what they started), several of them share one data directory (the last
one out stops the servers, one killed with SIGKILL neither keeps them nor blocks), and each
says which data directory it uses.

Embedded PostgreSQL is slow to start, so each test starts it once and runs a scenario.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import outside_pytest_tmp

STOP_WITHIN = 20  # seconds: a graceful stop of an idle service takes about one


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with outside_pytest_tmp("stockguard-lifecycle-") as path:
        yield path


def answers(port: int) -> bool:
    """One PING over a plain socket (redis-py would retry a refused connection)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux: /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def gone(pid: int, within: float = 10) -> bool:
    """The process ends within ``within`` seconds (it may take a moment after its server
    stopped answering)."""
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # poll the process table again
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A stockguard command running in the background, its output in ``log``."""

    popen: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    def text(self) -> str:
        return self.log.read_text()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(x) for x in self.text().splitlines() if x.startswith("{")]

    def wait_for(self, event: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while not any(e.get("event") == event for e in self.events()):
            assert self.popen.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.1)  # read the log again

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_healthy(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            assert self.popen.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            try:
                if httpx.get(self.url("/healthz"), timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # not listening yet: poll again

    def ready(self) -> httpx.Response:
        return httpx.get(self.url("/readyz"), timeout=5)

    def stop(self, sig: signal.Signals) -> tuple[int, float]:
        """Send ``sig``; the exit code and how long the process took to exit."""
        started = time.monotonic()
        self.popen.send_signal(sig)
        try:
            code = self.popen.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"{sig.name} did not stop the process in {STOP_WITHIN} s:\n{self.text()}")
        return code, time.monotonic() - started


Spawn = Callable[..., Proc]


def _env(data_dir: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKGUARD_")}
    env["STOCKGUARD_LOG_JSON"] = "true"
    env.update({f"STOCKGUARD_{k.upper()}": v for k, v in extra.items()})
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if data_dir is not None:
        env["STOCKGUARD_DATA_DIR"] = str(data_dir)
    return env


@pytest.fixture
def spawn(base: Path) -> Iterator[Spawn]:
    started: list[Proc] = []

    def run(*args: str, cwd: Path, data_dir: Path | None = None, name: str, **extra: str) -> Proc:
        log = base / f"{name}.log"
        port = None
        if args[0] == "serve":
            port = _free_port()
            args = (*args, "--port", str(port), "--no-run-workers")
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [sys.executable, "-m", "stockguard", *args],
                env=_env(data_dir, **extra),
                cwd=cwd,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(popen, log, port)
        started.append(proc)
        return proc

    yield run
    for proc in started:  # a failed test must not leave its processes behind
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGINT)
            try:
                proc.popen.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


def _server_pids(data: Path) -> tuple[int, int, int]:
    """The embedded PostgreSQL's and Redis's process ids, and Redis's port."""
    pg = int((data / "pg" / "postmaster.pid").read_text().split()[0])
    port = int((data / "redis" / "port").read_text())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO server\r\n")
        info = b""
        while b"process_id:" not in info:
            info += s.recv(65536)
    redis_pid = int(info.split(b"process_id:")[1].split()[0])
    return pg, redis_pid, port


def _assert_all_stopped(data: Path, pg: int, redis_pid: int, port: int) -> None:
    assert gone(pg), f"embedded PostgreSQL {pg} still runs"
    assert not (data / "pg" / "postmaster.pid").exists()
    assert gone(redis_pid), f"embedded redis-server {redis_pid} still runs"
    assert not answers(port)
    assert list((data / "users").iterdir()) == []


class Psql:
    """An interactive psql session on the embedded PostgreSQL (one result per line)."""

    def __init__(self, data: Path) -> None:
        # Not imported: pgserver fixes its runtime directory at import (stockguard sets it).
        spec = importlib.util.find_spec("pgserver")
        assert spec is not None
        assert spec.submodule_search_locations is not None
        bin_path = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
        socket_dir = (data / "pg" / "postmaster.pid").read_text().splitlines()[4]
        self.popen = subprocess.Popen(
            [str(bin_path / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             f"postgresql://postgres@/stockguard?host={socket_dir}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def ask(self, sql: str) -> str:
        assert self.popen.stdin is not None
        assert self.popen.stdout is not None
        self.popen.stdin.write(sql + "\n")
        self.popen.stdin.flush()
        return self.popen.stdout.readline().strip()

    def close(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        self.popen.wait(timeout=10)
        assert self.popen.stdout is not None
        self.popen.stdout.close()


def test_sigterm_drains_the_request_in_flight_then_stops_the_embedded_servers(
    base: Path, spawn: Spawn
) -> None:
    """SIGTERM, what kill, systemd and container runtimes send: the request in flight
    still gets its answer, then the service exits 0 and its embedded servers are gone."""
    alone = base / "alone"
    alone.mkdir()
    data = alone / ".stockguard"
    key = "sg_lifecycle_" + "k" * 32
    service = spawn(
        "serve", cwd=alone, name="alone", bootstrap_admin_key=key, db_lock_timeout_ms="60000"
    )
    service.wait_healthy()
    pg, redis_pid, port = _server_pids(data)

    psql = Psql(data)
    try:
        assert psql.ask("BEGIN; LOCK TABLE locations; SELECT 'locked';") == "locked"
        answer: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: answer.append(
                httpx.put(
                    service.url("/v1/locations/main"),
                    json={"name": "Main"},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=STOP_WITHIN,
                )
            )
        )
        request.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock';"
        deadline = time.monotonic() + 30
        while psql.ask(waiting) != "1":  # the request waits for our lock
            assert time.monotonic() < deadline, service.text()
            time.sleep(0.05)
        service.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "Shutting down" not in service.text():
            assert time.monotonic() < deadline, service.text()
            time.sleep(0.05)  # read the log again
        assert service.popen.poll() is None  # waiting for the request in flight
        assert request.is_alive()
        assert psql.ask("COMMIT; SELECT 'released';") == "released"
    finally:
        psql.close()
    request.join(timeout=STOP_WITHIN)
    assert [r.status_code for r in answer] == [201], service.text()
    code = service.popen.wait(timeout=STOP_WITHIN)
    assert code == 0, service.text()
    assert "Application shutdown complete" in service.text()
    _assert_all_stopped(data, pg, redis_pid, port)
    said = f"stockguard: data directory {data}: created a new, empty database"
    assert said in service.text(), service.text()


def test_sigterm_stops_serve_and_worker_and_the_last_one_stops_the_servers(
    base: Path, spawn: Spawn
) -> None:
    """A worker starts the servers, a service joins them; SIGTERM to the worker (the one
    that started them) leaves the service working; ``keys create`` joins and leaves
    without stopping anything; SIGTERM to the service, the last user, stops both servers.
    Every SIGTERM ends in exit code 0 after a graceful stop."""
    run = spawn
    project = base / "project"
    project.mkdir()
    data = project / ".stockguard"  # the default, relative to the current directory

    worker = run("worker", cwd=project, name="worker")
    worker.wait_for("workers_started")
    service = run("serve", cwd=project, name="serve")
    service.wait_healthy()
    pg, redis_pid, port = _server_pids(data)

    code, took = worker.stop(signal.SIGTERM)
    assert code == 0, worker.text()
    assert alive(pg)
    assert alive(redis_pid)
    ready = service.ready()  # the service still has its database and its cache
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": True, "redis": True}

    made = subprocess.run(
        [sys.executable, "-m", "stockguard", "keys", "create", "--role", "admin", "--name", "t"],
        env=_env(None),
        cwd=project,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr.decode()
    key = made.stdout.decode().strip()
    listed = httpx.get(
        service.url("/v1/skus"), headers={"Authorization": f"Bearer {key}"}, timeout=5
    )
    assert listed.status_code == 200, listed.text  # the same database as the service
    assert service.ready().status_code == 200
    assert (alive(pg), alive(redis_pid), answers(port)) == (True, True, True)

    code, took = service.stop(signal.SIGTERM)
    assert code == 0, service.text()
    assert took < STOP_WITHIN
    assert "Application shutdown complete" in service.text()
    _assert_all_stopped(data, pg, redis_pid, port)

    # Each said which data directory it used (relative to its working directory).
    said = f"stockguard: data directory {data}: "
    assert f"{said}created a new, empty database" in worker.text(), worker.text()
    joined = "existing database; joined the servers of 1 other running process(es)"
    assert said + joined in service.text(), service.text()
    assert said + joined in made.stderr.decode()


def test_ctrl_c_after_a_sigkilled_peer_still_stops_the_servers(base: Path, spawn: Spawn) -> None:
    """One of two services is killed with SIGKILL (no cleanup at all): the other keeps
    working, and when it is stopped with Ctrl-C nothing of the killed one keeps the
    servers running."""
    run = spawn
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    data = base / "shared-data"
    first = run("serve", cwd=elsewhere, data_dir=data, name="first")
    first.wait_healthy()
    second = run("serve", cwd=elsewhere, data_dir=data, name="second")
    second.wait_healthy()
    pg, redis_pid, port = _server_pids(data)

    first.popen.kill()
    assert first.popen.wait(timeout=STOP_WITHIN) == -signal.SIGKILL
    ready = second.ready()
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": True, "redis": True}

    code, _ = second.stop(signal.SIGINT)
    assert code == 0, second.text()
    _assert_all_stopped(data, pg, redis_pid, port)
    assert any(e.get("event") == "embedded_stale_user_removed" for e in second.events())
    assert f"stockguard: data directory {data}: " in first.text(), first.text()
