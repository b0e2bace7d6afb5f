"""redismpx_core stays sans-I/O: no sockets, no clock, no randomness, no event loop."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import redismpx_core

FORBIDDEN = {"socket", "select", "selectors", "asyncio", "anyio", "trio", "time", "random"}
CORE_DIR = Path(redismpx_core.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_no_core_module_imports_io_a_clock_or_randomness() -> None:
    modules = sorted(CORE_DIR.glob("*.py"))
    assert len(modules) >= 8
    for path in modules:
        assert imported_modules(path) & FORBIDDEN == set(), path.name


def test_exactly_one_module_imports_hiredis() -> None:
    users = [p.name for p in CORE_DIR.glob("*.py") if "hiredis" in imported_modules(p)]
    assert users == ["_resp.py"]


def test_importing_the_core_loads_none_of_them() -> None:
    # A fresh interpreter: the test runner itself has imported half the world.
    code = (
        "import sys, json; before = set(sys.modules); import redismpx_core; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    assert "redismpx_core" in loaded
    # ssl is named for type annotations only (an SSLContext passes through untouched).
    assert loaded & (FORBIDDEN | {"ssl"}) == set()


def test_public_names_are_exported_once_as_a_tuple() -> None:
    assert isinstance(redismpx_core.__all__, tuple)
    assert len(set(redismpx_core.__all__)) == len(redismpx_core.__all__)
    for name in redismpx_core.__all__:
        assert hasattr(redismpx_core, name), name


ASYNC_NODES = (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)


def test_no_core_module_holds_async_code() -> None:
    """The core is the state machine only: anything that needs an event loop (async
    functions, await, async for/with) belongs to the front end (redismpx_frontend)."""
    modules = sorted(CORE_DIR.glob("*.py"))
    found = [
        f"{path.name}:{node.lineno}"
        for path in modules
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ASYNC_NODES)
    ]
    assert found == []
    # and the check sees async code where there is some:
    frontend = Path(redismpx_core.__file__).parent.parent / "redismpx_frontend" / "_runner.py"
    tree = ast.parse(frontend.read_text())
    assert any(isinstance(node, ASYNC_NODES) for node in ast.walk(tree))
