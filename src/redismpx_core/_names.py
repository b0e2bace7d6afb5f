"""Validation of the names users give us (channels, patterns, prefixes), and of what
they publish on them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

__all__ = ("channel_names", "check_publish", "coerce_name", "coerce_names", "escape_glob")


def coerce_name(name: object, what: str = "name") -> bytes:
    """Return *name* as bytes: ``str`` is encoded as UTF-8, ``bytes`` kept as is.

    Raises :class:`TypeError` for any other type and :class:`ValueError` for an empty name.
    """
    if isinstance(name, bytes):
        encoded = bytes(name)
    elif isinstance(name, str):
        encoded = name.encode("utf-8")
    else:
        raise TypeError(f"a {what} must be str or bytes, not {type(name).__name__}")
    if not encoded:
        raise ValueError(f"a {what} must not be empty")
    return encoded


def coerce_names(names: Iterable[object], what: str = "name") -> list[bytes]:
    """Coerce every name first, so that a bad one leaves nothing half-changed.

    Duplicates are dropped, keeping the first occurrence's order. A single ``str`` or
    ``bytes`` is refused: iterating it would give its letters, not one name.
    """
    if isinstance(names, str | bytes | bytearray | memoryview):
        raise TypeError(
            f"expected an iterable of {what}s, not a single {type(names).__name__} "
            f"(wrap it in a list)"
        )
    return list(dict.fromkeys(coerce_name(n, what) for n in names))


_ONLY_BYTES: Final = {bytes}


def channel_names(names: Iterable[object]) -> Iterable[bytes]:
    """``coerce_names(names, "channel")``, without a call per name when all are bytes.

    Every name is checked before any is used, as there; duplicates may be left in
    (the core skips a name a subscription holds already).
    """
    if (
        isinstance(names, tuple | list)
        and set(map(type, names)) == _ONLY_BYTES
        and b"" not in names
    ):
        return cast("tuple[bytes, ...] | list[bytes]", names)
    return coerce_names(names, "channel")


def check_publish(channel: object, data: object) -> bytes:
    """The channel of a PUBLISH as bytes, once it and the payload are both checked.

    The payload must be ``bytes``: encoding text (or anything else) is the caller's
    choice, not ours to guess.
    """
    name = coerce_name(channel, "channel")
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    return name


_GLOB_SPECIALS = frozenset(b"*?[]\\")


def escape_glob(prefix: bytes) -> bytes:
    """Escape Redis glob characters so that *prefix* matches itself literally."""
    if not _GLOB_SPECIALS.intersection(prefix):
        return prefix
    out = bytearray()
    for byte in prefix:
        if byte in _GLOB_SPECIALS:
            out.append(0x5C)  # backslash
        out.append(byte)
    return bytes(out)
