"""The two drivers expose the same public API, and the trio driver stands on trio alone."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import redismpx_anyio
import redismpx_trio


def test_both_drivers_export_the_same_names() -> None:
    assert isinstance(redismpx_anyio.__all__, tuple)
    assert isinstance(redismpx_trio.__all__, tuple)
    assert set(redismpx_anyio.__all__) == set(redismpx_trio.__all__)
    for module in (redismpx_anyio, redismpx_trio):
        assert len(set(module.__all__)) == len(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


def public_members(cls: type) -> dict[str, str]:
    """Public methods and properties with their signatures, as text."""
    members = {}
    for name in dir(cls):
        if name.startswith("_") and name not in ("__aenter__", "__aexit__", "__init__"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, property):
            members[name] = "property"
        elif callable(attr):
            try:
                members[name] = str(inspect.signature(getattr(cls, name)))
            except ValueError:  # a builtin without a signature (str.count, ...)
                members[name] = "builtin"
    return members


@pytest.mark.parametrize("name", redismpx_anyio.__all__)
def test_every_public_name_has_the_same_signature(name: str) -> None:
    ours, theirs = getattr(redismpx_anyio, name), getattr(redismpx_trio, name)
    if inspect.isclass(ours):
        assert public_members(ours) == public_members(theirs)
        if name == "Multiplexer":
            assert ours is not theirs  # two drivers, not one re-exported twice
            assert len(public_members(ours)) > 10
    else:
        assert ours == theirs


def test_public_classes_are_final() -> None:
    for module in (redismpx_anyio, redismpx_trio):
        for name in ("Multiplexer", "ChannelSubscription", "PatternSubscription",
                     "ShardedSubscription", "PromiseSubscription", "Promise",
                     "MessageIterator"):
            assert getattr(getattr(module, name), "__final__", False), (module.__name__, name)


def test_the_trio_driver_imports_no_anyio_module() -> None:
    code = (
        "import sys, json; import redismpx_trio; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'anyio')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    # and the check can see anyio when it is there:
    code = code.replace("redismpx_trio", "redismpx_anyio")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "anyio" in json.loads(out.stdout)
