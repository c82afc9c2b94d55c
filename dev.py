#!/usr/bin/env python3
"""Bootstrap for the two quick-start commands.

    python3 dev.py serve [stockguard serve options]   run the service
    python3 dev.py test  [pytest options]   ruff, mypy --strict, tests with coverage, bench smoke

Creates ./.venv on first use (and again whenever pyproject.toml changes) and installs
stockguard with its development tools into it; needs only Python 3.11+.
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
COVERAGE_FAIL_UNDER = "95"
TS_CLIENT = ROOT / "clients" / "typescript"


def _run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    code = subprocess.call([str(a) for a in args], cwd=ROOT)
    if code != 0:
        sys.exit(code)


def ensure_venv() -> None:
    """Create the venv and (re)install when pyproject.toml has changed since the last install."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(wanted)


def serve(args: list[str]) -> None:
    ensure_venv()
    os.execv(
        str(PYTHON),
        [str(PYTHON), "-m", "stockguard", "serve", *args],
    )


def test(args: list[str]) -> None:
    ensure_venv()
    _run(PYTHON, "-m", "ruff", "check", ".")
    _run(PYTHON, "-m", "ruff", "format", "--check", ".")
    _run(PYTHON, "-m", "mypy")
    _run(
        PYTHON, "-m", "pytest",
        "--cov=stockguard", "--cov-branch", "--cov-report=term-missing:skip-covered",
        f"--cov-fail-under={COVERAGE_FAIL_UNDER}",
        *args,
    )  # fmt: skip
    # The benchmark runs only as a small smoke run here: it must work, its figures don't count.
    _run(PYTHON, "-m", "bench", "--smoke")
    typescript_client()


def typescript_client() -> None:
    """Build and test clients/typescript: `npm ci` when its lock file changed, `tsc`, the
    check that its generated types match the served OpenAPI document, and its tests
    against a real stockguard server (started by the tests). Needs Node.js 20+ and npm."""
    if not (TS_CLIENT / "package.json").exists():
        return
    node, npm = shutil.which("node"), shutil.which("npm")
    version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout if node else ""
    )
    parts = version.strip().lstrip("v").split(".")
    if npm is None or not all(p.isdigit() for p in parts[:2]) or [*map(int, parts[:2])] < [20, 3]:
        print(
            "dev.py: the TypeScript client (clients/typescript) needs Node.js 20.3 or newer and "
            f"npm, found node {version.strip() or 'none'} and npm {npm or 'none'}: install them "
            "(Debian: apt-get install nodejs npm) or see https://nodejs.org",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    lock = TS_CLIENT / "package-lock.json"
    stamp = TS_CLIENT / "node_modules" / ".stockguard-installed"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == wanted):
        _run(npm, "ci", "--prefix", TS_CLIENT, "--no-audit", "--no-fund")
        stamp.write_text(wanted)
    os.environ["STOCKGUARD_PYTHON"] = str(PYTHON)  # the tests' server and the OpenAPI dump
    _run(npm, "run", "--prefix", TS_CLIENT, "build")
    _run(npm, "run", "--prefix", TS_CLIENT, "check-generated")
    _run(npm, "test", "--prefix", TS_CLIENT)


def main(argv: list[str]) -> None:
    commands = {"serve": serve, "test": test}
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[argv[1]](argv[2:])


if __name__ == "__main__":
    main(sys.argv)
