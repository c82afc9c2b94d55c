"""docs/INTEGRATION.md shows only code that runs: each ```python block is a whole file of
clients/python/examples (run by test_client_examples.py), each ```ts block a whole file
of clients/typescript/examples (run by the TypeScript client's tests), every Python
example is shown, and the shell blocks name only real settings and CLI commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from stockguard.config import Settings

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "INTEGRATION.md"
PY_EXAMPLES = ROOT / "clients" / "python" / "examples"
TS_EXAMPLES = ROOT / "clients" / "typescript" / "examples"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# What the shop's app itself reads (the examples' connect()), not stockguard settings.
APP_SETTINGS = {"STOCKGUARD_URL", "STOCKGUARD_API_KEY"}


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(DOC.read_text()) if lang == language]


def test_every_block_has_a_language_we_check() -> None:
    languages = {lang for lang, _ in FENCE.findall(DOC.read_text())}
    assert languages <= {"python", "ts", "sh"}
    assert blocks("python")


def test_each_python_block_is_an_example_file() -> None:
    files = {p.name: p.read_text() for p in PY_EXAMPLES.glob("*.py")}
    shown = []
    for body in blocks("python"):
        same = [name for name, text in files.items() if text == body]
        assert same, f"this block is no file of {PY_EXAMPLES}:\n{body[:300]}"
        shown.extend(same)
    assert sorted(shown) == sorted(files), "every example is shown once"


def test_each_ts_block_is_an_example_file() -> None:
    files = {p.name: p.read_text() for p in TS_EXAMPLES.glob("*.ts")}
    for body in blocks("ts"):
        assert body in files.values(), f"this block is no file of {TS_EXAMPLES}:\n{body[:300]}"


def _settings() -> set[str]:
    return {f"STOCKGUARD_{name.upper()}" for name in Settings.model_fields}


def test_shell_blocks_name_real_settings_and_commands() -> None:
    commands: list[list[str]] = []
    for body in blocks("sh"):
        for line in body.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            assignment = re.fullmatch(r"(?:export )?([A-Z_]+)=\S+", line)
            if assignment:
                assert assignment[1] in _settings() | APP_SETTINGS, line
                continue
            words = shlex.split(line)
            assert words[0] == "stockguard", line
            commands.append(words[1:])
    assert commands
    for args in commands:
        # --help after the documented options: click refuses an unknown option or
        # command before it prints the help.
        done = subprocess.run(
            [sys.executable, "-m", "stockguard", *args, "--help"],
            capture_output=True,
            env={**os.environ, "NO_COLOR": "1"},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (args, done.stderr.decode()[-1000:])


@pytest.mark.parametrize("wrong", [["serve", "--no-such-option", "1"], ["keys", "make"]])
def test_a_wrong_command_would_be_caught(wrong: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stockguard", *wrong, "--help"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0


def test_the_client_readme_python_blocks_compile() -> None:
    readme = ROOT / "clients" / "python" / "README.md"
    found = [body for lang, body in FENCE.findall(readme.read_text()) if lang == "python"]
    assert found
    for body in found:
        compile(body, str(readme), "exec")
