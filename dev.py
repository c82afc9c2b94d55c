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


def _run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    code = subprocess.call([str(a) for a in args], cwd=ROOT)
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
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    # The Python client is its own package; its tests run in the same pytest run.
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", CLIENT)
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
        "--cov=stockguard", "--cov=stockguard_client",
        "--cov-branch", "--cov-report=term-missing:skip-covered",
        f"--cov-fail-under={COVERAGE_FAIL_UNDER}",
        *args,
    )  # fmt: skip
    # The benchmark runs only as a small smoke run here: it must work, its figures don't count.
    _run(PYTHON, "-m", "bench", "--smoke")


def main(argv: list[str]) -> None:
    commands = {"serve": serve, "test": test}
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[argv[1]](argv[2:])


if __name__ == "__main__":
    main(sys.argv)
