"""The release artifacts: what `python -m build` makes of this tree.

One build per run (a module fixture): the sdist, then the wheel built from that sdist,
exactly as a release does it, with build isolation (hatchling comes from the package
index). The tests open both archives: every package is in them with its ``py.typed``
marker, and the version is the one in ``src/redismpx_core/_version.py`` everywhere.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import redismpx_anyio
import redismpx_core
import redismpx_trio

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "redismpx_core",
    "redismpx_frontend",
    "redismpx_anyio",
    "redismpx_trio",
    "redismpx_broadcaster",
    "redismpx_socketio",
    "redismpx_channels",
)


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    wheels = sorted(out.glob("*.whl"))
    sdists = sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1, wheels
    assert len(sdists) == 1, sdists
    return Dists(wheels[0], sdists[0])


def _metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def test_the_wheel_holds_every_package_with_its_py_typed(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, package
        assert f"{package}/py.typed" in names, package
    top_level = {name.split("/")[0] for name in names}
    dist_info = {t for t in top_level if t.endswith(".dist-info")}
    assert top_level - dist_info == set(PACKAGES), "the wheel installs only its packages"


def test_the_sdist_holds_every_package_with_its_py_typed(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = set(sdist.getnames())
    root = dists.sdist.name.removesuffix(".tar.gz")
    for package in PACKAGES:
        assert f"{root}/src/{package}/__init__.py" in names, package
        assert f"{root}/src/{package}/py.typed" in names, package
    for path in ("pyproject.toml", "README.md", "CHANGELOG.md", "PKG-INFO"):
        assert f"{root}/{path}" in names, path


def test_the_version_comes_from_one_place(dists: Dists) -> None:
    version = redismpx_core.__version__
    assert redismpx_anyio.__version__ == version
    assert redismpx_trio.__version__ == version

    # pyproject.toml names no version of its own: hatch reads _version.py.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/redismpx_core/_version.py"
    assignments = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "src").rglob("*.py"))
        if "__version__ =" in path.read_text()
    ]
    assert assignments == ["src/redismpx_core/_version.py"]

    with zipfile.ZipFile(dists.wheel) as wheel:
        [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        wheel_meta = _metadata(wheel.read(metadata).decode())
    with tarfile.open(dists.sdist) as sdist:
        root = dists.sdist.name.removesuffix(".tar.gz")
        member = sdist.extractfile(f"{root}/PKG-INFO")
        assert member is not None
        sdist_meta = _metadata(member.read().decode())

    assert wheel_meta["Name"] == sdist_meta["Name"] == "redismpx"
    assert wheel_meta["Version"] == sdist_meta["Version"] == version
    assert dists.wheel.name.startswith(f"redismpx-{version}-")
    assert dists.sdist.name == f"redismpx-{version}.tar.gz"
