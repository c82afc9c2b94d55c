"""The project's own documents: every link points inside the repository (to a file and
heading that exist), every setting is documented for operators, the licence is stated
once and the changelog has the current version."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from stockguard.config import Settings

ROOT = Path(__file__).resolve().parent.parent
STATIC_README = ROOT / "src" / "stockguard" / "api" / "static" / "README.md"
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", STATIC_README, *(ROOT / "docs").glob("*.md")]
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
# md5 of the Apache License 2.0 as the ASF publishes it (LICENSE-2.0.txt)
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to '-'."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_points_to_a_file_in_the_repository(document: Path) -> None:
    text = document.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not a file
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.is_relative_to(ROOT), f"{document.name}: {target} leaves the repository"
        assert resolved.exists(), f"{document.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved.read_text()), f"{document.name}: {target}"


def test_the_readme_names_no_path_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme
    assert "shared/" not in readme
    assert "](docs/API.md)" in readme  # the API reference is ours


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented_for_operators(name: str) -> None:
    variable = f"`STOCKGUARD_{name.upper()}`"
    assert variable in (ROOT / "README.md").read_text(), f"{variable} missing in README.md"
    assert variable in (ROOT / "docs" / "DEPLOY.md").read_text(), f"{variable} missing in DEPLOY"


def test_the_licence_is_apache_2_and_stated_in_the_package_metadata() -> None:
    licence = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(licence, usedforsecurity=False).hexdigest() == APACHE_2_MD5
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_the_changelog_has_a_section_for_the_current_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    release = re.match(r"\d+\.\d+\.\d+", version)
    assert release is not None
    changelog = (ROOT / "CHANGELOG.md").read_text()
    if version == release.group():  # a release: its own section
        assert re.search(rf"^## {re.escape(version)}: \d{{4}}-\d\d-\d\d", changelog, re.M)
    else:  # a development version: the section of what is not released yet
        assert f"## Unreleased: {release.group()}" in changelog
        assert f"`{version}`" in changelog
    assert re.search(r"^## 0\.1\.0: 2026-11-21", changelog, re.M)
