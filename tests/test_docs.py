"""The documentation site: it builds without a warning, its API reference lists every
public name, and the quickstarts' programs run as printed.

``scripts/test`` also runs ``mkdocs build --strict`` on its own; this test makes a plain
``pytest`` run catch a broken page too (the build takes a few seconds).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from redis_servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGES = ("redismpx_anyio", "redismpx_trio", "redismpx_frontend", "redismpx_core")
QUICKSTARTS = ("quickstart-asyncio.md", "quickstart-trio.md")
#: The URL the quickstarts' programs use; the test points them at its own server.
DOCS_URL = "redis://localhost:6379/0"


def test_mkdocs_build_is_strictly_clean(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the documentation tools (the `test` extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "api" / "anyio" / "index.html").is_file()
    assert (tmp_path / "chaos.png").is_file()


def _directives() -> dict[str, set[str]]:
    """``::: package.name`` directives of docs/api/, by package."""
    found: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for page in sorted((DOCS / "api").glob("*.md")):
        for match in re.finditer(r"^::: (\w+)\.(\w+)\s*$", page.read_text(), re.M):
            if match[1] in found:
                found[match[1]].add(match[2])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_api_reference_lists_exactly_the_public_names(package: str) -> None:
    module = __import__(package)
    documented = _directives()[package]
    public = set(module.__all__)
    assert public - documented == set(), f"not in docs/api/: {sorted(public - documented)}"
    assert documented - public == set(), f"not in __all__: {sorted(documented - public)}"


def _programs() -> list[tuple[str, str, str, str | None]]:
    """(page, title, code, printed output or None) of every ``python title="x.py"`` block;
    the output is the ``text`` block that follows the program, if one does before the
    next program."""
    programs = []
    for page in QUICKSTARTS:
        text = (DOCS / page).read_text()
        blocks = list(re.finditer(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', text, re.M | re.S))
        for index, block in enumerate(blocks):
            if block[1] != "python" or not (block[2] or "").endswith(".py"):
                continue
            output = None
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            if following is not None and following[1] == "text":
                output = following[3]
            programs.append((page, block[2], block[3], output))
    return programs


PROGRAMS = _programs()


def test_the_quickstarts_have_programs() -> None:
    assert {(page, title) for page, title, _, _ in PROGRAMS} >= {
        (page, title) for page in QUICKSTARTS for title in ("hello.py", "promises.py")
    }


@pytest.mark.parametrize(
    ("code", "output"),
    [pytest.param(code, output, id=f"{page}:{title}") for page, title, code, output in PROGRAMS],
)
def test_quickstart_program_runs(redis_server: RedisServer, code: str, output: str | None) -> None:
    assert DOCS_URL in code
    done = subprocess.run(
        [sys.executable, "-c", code.replace(DOCS_URL, redis_server.url)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip(), done.stderr
    if output is not None:
        # The page says the clients' lines may interleave differently: compare as sets.
        assert sorted(done.stdout.splitlines()) == sorted(output.splitlines()), done.stdout
