"""The interpreter of the original RedisMPX 0.5.2, which runs in a venv of its own.

RedisMPX 0.5.2 (PyPI ``redismpx==0.5.2``, 2020) is built on aioredis 1.3.1, which cannot
share a venv with the project (aioredis 2 took the name, and redis-py absorbed it). So
``benchmarks/_peers/original.py`` runs under another Python: :func:`python_for_original`
builds that venv once, with ``sys.executable -m venv`` and the venv's own pip, under
``$XDG_CACHE_HOME/redismpx-bench/venv-original`` (``~/.cache/...`` without it), and
returns its ``python``. A stamp file records what was installed, for which interpreter;
when it matches, the call only reads it. A lock serializes concurrent builds.

    python benchmarks/_peers/original_venv.py      # builds if needed, prints the path

The pins are the versions tested on Python 3.11: aioredis 1.3.1 imports and connects
unchanged; the original's own connection class (``redismpx.internal.Conn``) takes only the
stream and hiredis's ``Reader`` from it. hiredis 3.5.0 is the parser the project's venv
has too, so both libraries parse with the same C code. async-timeout is a dependency of
aioredis 1.3.1 that nothing on the original's path calls (its ``timeout(loop=...)`` calls
elsewhere in aioredis would fail on async-timeout >= 4, but the multiplexer never reaches
them), so the newest is pinned rather than the 2019 one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ("REQUIREMENTS", "python_for_original", "venv_dir")

REQUIREMENTS = (
    "redismpx==0.5.2",
    "aioredis==1.3.1",
    "hiredis==3.5.0",
    "async-timeout==5.0.1",
)
#: What the built venv must import (checked once, after pip).
_CHECK = (
    "import aioredis, hiredis, redismpx; "
    "assert redismpx.__version__ == '0.5.2', redismpx.__version__; "
    "assert aioredis.__version__ == '1.3.1', aioredis.__version__"
)
_PIP_TIMEOUT = 900.0


def venv_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "redismpx-bench" / "venv-original"


def _stamp() -> str:
    """What the venv was built from: the pins and the base interpreter."""
    base = getattr(sys, "_base_executable", sys.executable)
    return "\n".join((*REQUIREMENTS, f"python {platform.python_version()} {base}")) + "\n"


def _is_built(root: Path) -> bool:
    stamp = root / ".built"
    try:
        return (root / "bin" / "python").exists() and stamp.read_text() == _stamp()
    except OSError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], what: str) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"original redismpx venv: {what} failed: {error}") from error
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"original redismpx venv: {what} failed (exit {done.returncode}):\n{tail}"
        )


def python_for_original() -> str:
    """The python of a venv with the original RedisMPX 0.5.2; built on the first call.

    Raises RuntimeError, with pip's last lines, when the venv cannot be built.
    """
    root = venv_dir()
    python = root / "bin" / "python"
    if _is_built(root):
        return str(python)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RuntimeError(
            f"original redismpx venv: cannot create {root.parent}: {error}"
        ) from error
    with _locked(root.parent / "venv-original.lock"):
        if _is_built(root):  # another process built it while we waited
            return str(python)
        shutil.rmtree(root, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(root)], "python -m venv")
        _run([str(python), "-m", "pip", "install", *REQUIREMENTS], "pip install")
        _run([str(python), "-c", _CHECK], "the import check")
        (root / ".built").write_text(_stamp())
    return str(python)


if __name__ == "__main__":
    print(python_for_original())
