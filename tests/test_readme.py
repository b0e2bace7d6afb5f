"""The README's quick start, run as written, from a clean install.

What "as written" means here (the convention the README's code blocks keep):

* The ``python -m pip install ...`` line of the README's ```sh blocks is run as it
  stands (``shlex``, its ``#`` comment dropped), from the repository root, with the
  ``python`` of a fresh virtual environment: ``python -m venv``, without
  ``--system-site-packages``, so nothing of the test environment leaks in. pip builds
  the project from this tree and fetches its dependencies from the package index.
* Every ```python block of the README is a complete program. Each is run, unchanged but
  for one substitution, by that venv's ``python`` in an empty directory: the URL
  ``redis://localhost:6379/0`` becomes the URL of a ``redis-server`` this test starts
  (a block that names no such URL is run as it is).
* The quick start's comments offer trio instead of anyio (``'.[trio]'``,
  ``from redismpx_trio import Multiplexer``, ``trio.run(main)``): that variant is run
  too, with exactly those replacements.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import redismpx_core
from redis_servers import RedisServer, RedisServerFactory

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The URL the README's programs connect to; the test puts its own server's URL there.
README_URL = "redis://localhost:6379/0"
#: How long one step (venv, install, one program) may take.
STEP_TIMEOUT = 120


def code_blocks(language: str) -> list[str]:
    """The bodies of the README's fenced code blocks in ``language``, in order."""
    fence = re.compile(r"^```" + re.escape(language) + r"[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
    return fence.findall(README.read_text())


def install_command() -> list[str]:
    """The README's ``python -m pip install`` line, as argv."""
    commands = [
        shlex.split(line, comments=True)
        for block in code_blocks("sh")
        for line in block.splitlines()
        if line.strip().startswith("python -m pip install")
    ]
    assert len(commands) == 1, f"expected one install line in the README, got {commands}"
    return commands[0]


def quick_start() -> str:
    blocks = code_blocks("python")
    assert blocks, "the README has no ```python block"
    return blocks[0]


def clean_env(venv: Path) -> dict[str, str]:
    """This process' environment (pip's index settings included) without the test venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(argv: list[str], venv: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=clean_env(venv),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{shlex.join(argv)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed by the README's own command."""
    path = tmp_path_factory.mktemp("readme") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(path)], check=True, timeout=STEP_TIMEOUT
    )
    argv = install_command()
    assert argv[:4] == ["python", "-m", "pip", "install"], argv
    run([str(path / "bin" / "python"), *argv[1:]], path, ROOT)
    return path


@pytest.fixture
def server(redis_server_factory: RedisServerFactory) -> RedisServer:
    return redis_server_factory()


def run_program(
    source: str, venv: Path, server: RedisServer, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "readme_block.py"
    program.write_text(source.replace(README_URL, f"{server.url}/0"))
    return run([str(venv / "bin" / "python"), str(program)], venv, tmp_path)


def test_the_readme_install_is_clean_and_is_this_version(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json, redismpx_anyio, redismpx_core; print(json.dumps(["
        "redismpx_anyio.__file__, redismpx_core.__version__, "
        "importlib.util.find_spec('pytest') is None]))"
    )
    out = run([str(venv / "bin" / "python"), "-c", probe], venv, tmp_path).stdout
    location, version, no_pytest = json.loads(out)
    assert Path(location).is_relative_to(venv), location  # the installed copy, not src/
    assert version == redismpx_core.__version__
    assert no_pytest, "the venv sees the test environment's packages"


def test_every_python_block_of_the_readme_runs_as_written(
    venv: Path, server: RedisServer, tmp_path: Path
) -> None:
    blocks = code_blocks("python")
    assert README_URL in quick_start()
    for index, block in enumerate(blocks):
        result = run_program(block, venv, server, tmp_path)
        if index == 0:
            lines = result.stdout.splitlines()
            # The iterator's message, then the promise's publish (1 receiver) and payload.
            assert "b'news' b'hello'" in lines, result.stdout
            assert "1 b'done'" in lines, result.stdout
            assert "active: b'chan1'" in lines, result.stdout


def test_the_readme_quick_start_runs_on_trio_as_its_comments_say(
    venv: Path, server: RedisServer, tmp_path: Path
) -> None:
    argv = install_command()
    assert ".[anyio]" in argv, argv
    assert "'.[trio]'" in README.read_text()
    trio_argv = [".[trio]" if arg == ".[anyio]" else arg for arg in argv]
    run([str(venv / "bin" / "python"), *trio_argv[1:]], venv, ROOT)
    source = quick_start()
    replacements = {
        "import anyio\n": "import trio\n",
        "from redismpx_anyio import Multiplexer": "from redismpx_trio import Multiplexer",
        "anyio.run(main)": "trio.run(main)",
    }
    for old, new in replacements.items():
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    assert "anyio" not in re.sub(r"#.*", "", source)
    result = run_program(source, venv, server, tmp_path)
    assert "1 b'done'" in result.stdout.splitlines(), result.stdout
