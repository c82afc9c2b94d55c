"""``dev.py``, the quick start's bootstrap: help without side effects, the coverage gate on
the full run only, and Debian's chromium installed (or asked for) when it is missing.

The commands dev.py would run are recorded instead of run (they are ruff, mypy, pytest,
pip and apt-get themselves); the help is checked on the real script in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dev
import pytest

ROOT = Path(dev.__file__).resolve().parent


def _dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("-h",),
        ("help",),
        ("test", "--help"),
        ("test", "-h"),
        ("test", "-k", "races", "--help"),
    ],
)
def test_help_prints_the_usage_and_runs_nothing(args: tuple[str, ...]) -> None:
    done = _dev(*args)
    assert done.returncode == 0, done.stderr
    assert "python3 dev.py test  [pytest options]" in done.stdout
    assert "partial run" in done.stdout
    assert "+ " not in done.stdout  # no command (ruff, mypy, pip...) was started


def test_an_unknown_command_prints_the_usage_and_fails() -> None:
    done = _dev("deploy")
    assert done.returncode == 2
    assert "python3 dev.py serve" in done.stdout


@pytest.mark.parametrize(
    ("args", "partial"),
    [
        ([], False),
        (["-v"], False),
        (["-x", "--tb=short", "-q"], False),
        (["-p", "no:cacheprovider", "--tb", "line"], False),
        (["-W", "error"], False),
        (["-k", "races"], True),
        (["-kraces"], True),
        (["-m", "race"], True),
        (["tests/test_races.py"], True),
        (["tests/test_cli.py::test_keys_create_needs_a_name"], True),
        (["-v", "--lf"], True),
        (["--deselect", "tests/test_faults.py"], True),
        (["-p", "no:cacheprovider", "-k", "orders"], True),
        (["--co"], True),
    ],
)
def test_which_runs_are_partial(args: list[str], partial: bool) -> None:
    assert dev.is_partial(args) is partial


def test_only_the_full_run_measures_coverage_against_the_gate() -> None:
    full = [str(a) for a in dev.pytest_command(["-v"])]
    assert full[1:] == [
        "-m", "pytest", "--cov=stockguard", "--cov=stockguard_client", "--cov-branch",
        "--cov-report=term-missing:skip-covered", "--cov-fail-under=95", "-v",
    ]  # fmt: skip
    partial = [str(a) for a in dev.pytest_command(["-k", "races"])]
    assert partial[1:] == ["-m", "pytest", "-k", "races"]


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """Record what dev.py would run; a fresh machine's venv is already there."""
    commands: list[list[str]] = []

    def record(*args: str | Path, env: dict[str, str] | None = None) -> None:
        commands.append([str(a) for a in args])

    monkeypatch.setattr(dev, "_run", record)
    monkeypatch.setattr(dev, "ensure_venv", lambda: None)
    monkeypatch.setenv("STOCKGUARD_CHROMIUM", "/usr/bin/chromium")
    monkeypatch.setattr(dev, "TS_CLIENT", tmp_path / "no-typescript-client")
    return commands


def _tools(commands: list[list[str]]) -> list[str]:
    return [" ".join(c[1:4]) if c[0] == str(dev.PYTHON) else c[0] for c in commands]


def test_the_full_run_gates_coverage_and_runs_the_benchmark(ran: list[list[str]]) -> None:
    dev.main(["dev.py", "test"])
    assert _tools(ran) == [
        "-m ruff check",
        "-m ruff format",
        "-m mypy",
        "-m pytest --cov=stockguard",
        "-m bench --smoke",
    ]
    assert "--cov-fail-under=95" in ran[3]


def test_a_partial_run_has_no_gate_and_no_benchmark(
    ran: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    dev.main(["dev.py", "test", "-k", "races"])
    assert _tools(ran) == ["-m ruff check", "-m ruff format", "-m mypy", "-m pytest -k"]
    assert ran[3][1:] == ["-m", "pytest", "-k", "races"]
    assert "partial run" in capsys.readouterr().out


def test_the_ci_entry_point_makes_the_full_run() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().endswith("exec python3 dev.py test")


# ---------------------------------------------------------------- chromium


def _machine(
    monkeypatch: pytest.MonkeyPatch, *, chromium: bool, root: bool, apt: bool
) -> list[list[str]]:
    commands: list[list[str]] = []

    def record(*args: str | Path, env: dict[str, str] | None = None) -> None:
        assert env is not None
        assert env["DEBIAN_FRONTEND"] == "noninteractive"
        commands.append([str(a) for a in args])

    def which(name: str) -> str | None:
        found = {"chromium": chromium, "apt-get": apt}.get(name, False)
        return f"/usr/bin/{name}" if found else None

    monkeypatch.delenv("STOCKGUARD_CHROMIUM", raising=False)
    monkeypatch.setattr(dev, "_run", record)
    monkeypatch.setattr(shutil, "which", which)
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    return commands


def test_chromium_present_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _machine(monkeypatch, chromium=True, root=True, apt=True)
    dev.ensure_chromium(required=True)
    assert commands == []


def test_chromium_named_by_the_environment_installs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands = _machine(monkeypatch, chromium=False, root=True, apt=True)
    monkeypatch.setenv("STOCKGUARD_CHROMIUM", "/opt/chromium/chrome")
    dev.ensure_chromium(required=True)
    assert commands == []


def test_chromium_missing_as_root_is_installed_with_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _machine(monkeypatch, chromium=False, root=True, apt=True)
    dev.ensure_chromium(required=True)
    assert commands == [
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium"],
    ]


@pytest.mark.parametrize(("root", "apt"), [(False, True), (True, False)])
def test_chromium_missing_without_root_or_apt_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root: bool, apt: bool
) -> None:
    commands = _machine(monkeypatch, chromium=False, root=root, apt=apt)
    with pytest.raises(SystemExit) as stopped:
        dev.ensure_chromium(required=True)
    assert stopped.value.code == 1
    assert commands == []
    said = capsys.readouterr()
    assert "sudo apt-get install chromium" in said.err
    assert "STOCKGUARD_CHROMIUM" in said.err

    dev.ensure_chromium(required=False)  # a partial run goes on, with a note
    assert "note:" in capsys.readouterr().out
    assert commands == []


@pytest.fixture
def ts_client(ran: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clients/typescript with its lock file, and a Node.js 20.3 with npm."""
    client = tmp_path / "typescript"
    client.mkdir()
    (client / "package.json").write_text("{}")
    (client / "package-lock.json").write_text('{"lockfileVersion": 3}')
    monkeypatch.setattr(dev, "TS_CLIENT", client)
    monkeypatch.setattr(dev, "node_version", lambda: (20, 3))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    return client


def test_the_full_run_ends_with_the_typescript_client(
    ran: list[list[str]], ts_client: Path
) -> None:
    dev.main(["dev.py", "test"])
    npm = [c[1:] for c in ran if c[0] == "/usr/bin/npm"]
    assert _tools(ran)[4] == "-m bench --smoke"  # after the Python suite and the benchmark
    assert npm == [
        ["ci", "--prefix", str(ts_client), "--no-audit", "--no-fund"],
        ["run", "--prefix", str(ts_client), "build"],
        ["run", "--prefix", str(ts_client), "check-generated"],
        ["test", "--prefix", str(ts_client)],
    ]
    ran.clear()
    dev.typescript_client()  # the lock file has not changed: no second npm ci
    assert [c[1] for c in ran] == ["run", "run", "test"]
    (ts_client / "package-lock.json").write_text('{"lockfileVersion": 3, "changed": true}')
    ran.clear()
    dev.typescript_client()
    assert ran[0][1] == "ci"


def test_a_partial_run_leaves_the_typescript_client_alone(
    ran: list[list[str]], ts_client: Path
) -> None:
    dev.main(["dev.py", "test", "-k", "races"])
    assert not [c for c in ran if c[0] == "/usr/bin/npm"]


@pytest.mark.parametrize("version", [None, (18, 19), (20, 2)])
def test_without_node_20_3_the_typescript_step_says_what_to_install(
    ran: list[list[str]],
    ts_client: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    version: tuple[int, int] | None,
) -> None:
    monkeypatch.setattr(dev, "node_version", lambda: version)
    with pytest.raises(SystemExit) as stop:
        dev.typescript_client()
    assert stop.value.code == 1
    assert "needs Node.js 20.3 or newer and npm" in capsys.readouterr().err
    assert ran == []


def test_node_version_reads_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "node"
    fake.write_text("#!/bin/sh\necho v20.19.2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake) if name == "node" else None)
    assert dev.node_version() == (20, 19)
    fake.write_text("#!/bin/sh\necho nonsense\n")
    assert dev.node_version() is None
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert dev.node_version() is None
