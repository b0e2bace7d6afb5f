"""docs/compatibility.md backs every cell with a test: each test it names exists, every
server feature the matrix knows is in its table, and scripts/test runs the rows it says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from server_matrix import FEATURES

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "compatibility.md").read_text()
SCRIPT = (ROOT / "scripts" / "test").read_text()

_NAMED = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_the_page_names_exists() -> None:
    named = _NAMED.findall(PAGE)
    assert len(named) >= 15
    for file, function in named:
        path = ROOT / file
        assert path.is_file(), file
        if function:
            assert function in _functions(path), f"{file}::{function}"


def test_every_lacking_check_exists_and_is_marked() -> None:
    for name, feature in FEATURES.items():
        file, function = feature.lacking_check.split("::")
        assert function in _functions(ROOT / file), feature.lacking_check
        source = (ROOT / file).read_text()
        marked = f'server_lacks("{name}")' in source or f'server_feature("{name}")' in source
        assert marked or name == "client-list-resp", name  # that one is a replaced check


def test_the_pages_rows_are_the_scripts_rows() -> None:
    for row in ("valkey", "redis-6.2", "py3.12", "py3.13"):
        assert f"start_row {row} " in SCRIPT, row
    assert "--ignore=tests/drivers/test_sentinel.py" in SCRIPT
    assert "--ignore=tests/drivers/test_sentinel.py" in PAGE
    project = (ROOT / "pyproject.toml").read_text()
    for minor in ("3.11", "3.12", "3.13"):
        assert f"| {minor} |" in PAGE
        assert f'"Programming Language :: Python :: {minor}"' in project
