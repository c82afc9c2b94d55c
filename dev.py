#!/usr/bin/env python3
"""Bootstrap for the two quick-start commands.

    python3 dev.py serve [stockguard serve options]   run the service
    python3 dev.py test  [pytest options]   ruff, mypy --strict, tests with coverage, bench smoke
    python3 dev.py test --help | python3 dev.py --help   this help

Creates ./.venv on first use (and again whenever pyproject.toml changes) and installs
stockguard with its development tools into it; needs only Python 3.11+.

`test` with no pytest options is the full run, the one CI makes (.ci/run): ruff check,
ruff format --check, mypy, every test with branch coverage (it fails under 95 %), then
`python -m bench --smoke`. Pytest options that select a subset of the tests (a path or
test id, -k, -m, --lf, --deselect, ...) make a partial run: the same linters, only the
selected tests, no coverage gate (coverage is not measured) and no benchmark, e.g.
`python3 dev.py test -k races`. Options that select nothing (-v, -x, --tb=short, ...)
keep the full run. Pytest's own options: .venv/bin/python -m pytest --help.

The browser test of the offline /docs needs Debian's chromium (or STOCKGUARD_CHROMIUM
naming a Chromium binary): when it is missing, `test` installs it with apt-get if run as
root, and otherwise says what to install.

After the benchmark, the full run builds and tests the TypeScript client
(clients/typescript): `npm ci` when its package-lock.json changed, `tsc`, the check that
its generated types match the OpenAPI document the code serves, and `npm test` against a
real server. It needs Node.js 20.3 or newer and npm, and says so when they are missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".stockguard-installed"
CLIENT = ROOT / "clients" / "python"
COVERAGE_FAIL_UNDER = "95"
TS_CLIENT = ROOT / "clients" / "typescript"

# Pytest options that choose which tests run: with any of them the run is partial. (-x
# only stops at a failure, and a failed run fails anyway.) Then the options that take a
# value selecting nothing, so that value is not taken for a test path.
SELECTING = frozenset(
    {"-k", "-m", "--lf", "--last-failed", "--deselect", "--ignore", "--ignore-glob", "--sw",
     "--stepwise", "--sw-skip", "--co", "--collect-only"}
)  # fmt: skip
VALUE_OPTIONS = frozenset(
    {"-p", "--tb", "-W", "-o", "--durations", "--log-level", "--basetemp", "-c", "--rootdir",
     "--override-ini", "--pythonwarnings", "--log-cli-level"}
)  # fmt: skip
CHROMIUM_PACKAGE = "chromium"  # Debian's


def _run(*args: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    code = subprocess.call([str(a) for a in args], cwd=ROOT, env=env)
    if code != 0:
        sys.exit(code)


def ensure_venv() -> None:
    """Create the venv and (re)install when pyproject.toml has changed since the last install."""
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (CLIENT / "pyproject.toml").read_bytes()
    ).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"dev.py: creating the virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(
        "dev.py: installing stockguard and its development tools into .venv (the first time "
        "takes a minute or two; again whenever pyproject.toml changes)",
        flush=True,
    )
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    # The Python client is its own package; its tests run in the same pytest run.
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", CLIENT)
    STAMP.write_text(wanted)
    print("dev.py: installed", flush=True)


def chromium() -> str | None:
    """The Chromium the browser test drives: $STOCKGUARD_CHROMIUM, else ``chromium``."""
    return os.environ.get("STOCKGUARD_CHROMIUM") or shutil.which("chromium")


def ensure_chromium(*, required: bool) -> None:
    """Install Debian's chromium when it is missing (apt-get, as root; once: afterwards it
    is found). Not root or no apt-get: say what to install, and stop if ``required``."""
    if chromium() is not None:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(
            f"dev.py: installing Debian's {CHROMIUM_PACKAGE} for the offline /docs test (once)",
            flush=True,
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run("apt-get", "update", "-q", env=env)
        _run("apt-get", "install", "-y", "-q", CHROMIUM_PACKAGE, env=env)
        return
    message = (
        "the offline /docs test (tests/test_docs_offline.py) needs Chromium, which is not "
        f"installed: install Debian's {CHROMIUM_PACKAGE} package "
        f"(sudo apt-get install {CHROMIUM_PACKAGE}), or set STOCKGUARD_CHROMIUM to a "
        "Chromium binary"
    )
    if required:
        print(f"dev.py: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"dev.py: note: {message}", flush=True)


def is_partial(args: list[str]) -> bool:
    """Whether pytest ``args`` select a subset of the tests (see the module's help)."""
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if not arg.startswith("-"):
            return True  # a path or test id
        if name in SELECTING or (len(arg) > 2 and arg[:2] in ("-k", "-m")):
            return True
        if name in VALUE_OPTIONS and "=" not in arg:
            skip_value = True
    return False


def pytest_command(args: list[str]) -> list[str | Path]:
    """The full run measures branch coverage and fails under the gate; a partial run
    measures nothing, so a subset that passes exits 0."""
    if is_partial(args):
        return [PYTHON, "-m", "pytest", *args]
    return [
        PYTHON, "-m", "pytest",
        "--cov=stockguard", "--cov=stockguard_client",
        "--cov-branch", "--cov-report=term-missing:skip-covered",
        f"--cov-fail-under={COVERAGE_FAIL_UNDER}",
        *args,
    ]  # fmt: skip


def serve(args: list[str]) -> None:
    ensure_venv()
    os.execv(
        str(PYTHON),
        [str(PYTHON), "-m", "stockguard", "serve", *args],
    )


def test(args: list[str]) -> None:
    if "-h" in args or "--help" in args:
        print(__doc__)
        return
    partial = is_partial(args)
    ensure_venv()
    ensure_chromium(required=not partial)
    _run(PYTHON, "-m", "ruff", "check", ".")
    _run(PYTHON, "-m", "ruff", "format", "--check", ".")
    _run(PYTHON, "-m", "mypy")
    _run(*pytest_command(args))
    if partial:
        print(
            "dev.py: partial run: the selected tests passed (no coverage gate, no benchmark: "
            "they belong to the full run, `python3 dev.py test`)",
            flush=True,
        )
        return
    # The benchmark runs only as a small smoke run here: it must work, its figures don't count.
    _run(PYTHON, "-m", "bench", "--smoke")
    typescript_client()


def node_version() -> tuple[int, int] | None:
    """Node.js's (major, minor), or None when there is no usable ``node``."""
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    parts = out.strip().lstrip("v").split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def typescript_client() -> None:
    """Build and test clients/typescript: `npm ci` when its lock file changed, `tsc`, the
    check that its generated types match the served OpenAPI document, and its tests
    against a real stockguard server (started by the tests). Needs Node.js 20.3+ and npm."""
    if not (TS_CLIENT / "package.json").exists():
        return
    npm, version = shutil.which("npm"), node_version()
    if npm is None or version is None or version < (20, 3):
        found = "none" if version is None else ".".join(map(str, version))
        print(
            "dev.py: the TypeScript client (clients/typescript) needs Node.js 20.3 or newer and "
            f"npm; found node {found} and npm {npm or 'none'}: install them (Debian: apt-get "
            "install nodejs npm, or https://nodejs.org)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    stamp = TS_CLIENT / "node_modules" / ".stockguard-installed"
    wanted = hashlib.sha256((TS_CLIENT / "package-lock.json").read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == wanted):
        _run(npm, "ci", "--prefix", TS_CLIENT, "--no-audit", "--no-fund")
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(wanted)
    env = {**os.environ, "STOCKGUARD_PYTHON": str(PYTHON)}  # the tests' server, the dump
    _run(npm, "run", "--prefix", TS_CLIENT, "build", env=env)
    _run(npm, "run", "--prefix", TS_CLIENT, "check-generated", env=env)
    _run(npm, "test", "--prefix", TS_CLIENT, env=env)


def main(argv: list[str]) -> None:
    commands = {"serve": serve, "test": test}
    if len(argv) >= 2 and argv[1] in ("-h", "--help", "help"):
        print(__doc__)
        return
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[argv[1]](argv[2:])


if __name__ == "__main__":
    main(sys.argv)
