"""CHANGELOG.md follows Keep a Changelog, and its top version is the package's version.

The rule (stated at the top of CHANGELOG.md): an optional ``## [Unreleased]`` heading
may come first; the first ``## [X.Y.Z] - DATE`` heading is ``redismpx_core.__version__``
(the one version, from src/redismpx_core/_version.py), and DATE is ``YYYY-MM-DD`` or
``Unreleased``. Versions go down from top to bottom.
"""

from __future__ import annotations

import re
from pathlib import Path

import redismpx_core

CHANGELOG = Path(__file__).resolve().parent.parent / "CHANGELOG.md"
HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>.+))?$", re.M)
VERSION = re.compile(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}|Unreleased")


def headings() -> list[tuple[str, str | None]]:
    return [(m["version"], m["date"]) for m in HEADING.finditer(CHANGELOG.read_text())]


def test_the_top_version_is_the_package_version() -> None:
    entries = headings()
    assert entries, "CHANGELOG.md has no ## [version] heading"
    if entries[0][0] == "Unreleased":
        assert entries[0][1] is None, "## [Unreleased] takes no date"
        entries = entries[1:]
    assert entries, "CHANGELOG.md has no versioned entry"
    version, date = entries[0]
    assert version == redismpx_core.__version__
    assert date is not None
    assert DATE.fullmatch(date), date


def test_every_entry_is_a_version_with_a_date_newest_first() -> None:
    entries = [e for e in headings() if e[0] != "Unreleased"]
    for version, date in entries:
        assert VERSION.fullmatch(version), version
        assert date is not None, version
        assert DATE.fullmatch(date), (version, date)
    numbers = [tuple(int(part) for part in re.findall(r"\d+", v)[:3]) for v, _ in entries]
    assert numbers == sorted(numbers, reverse=True)
    assert len(set(numbers)) == len(numbers)
    assert [v for v, _ in headings()].count("Unreleased") <= 1
