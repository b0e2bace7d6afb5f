"""Checks of what callers hand the adapter, made before anything changes."""

from __future__ import annotations

__all__ = ("check_channel", "encode_message")


def check_channel(channel: object) -> str:
    """A broadcaster channel: a non-empty ``str`` (``Event.channel`` is a ``str``, and the
    broadcast finds a channel's subscribers by that ``str``)."""
    if not isinstance(channel, str):
        raise TypeError(f"a channel must be a str, not {type(channel).__name__}")
    if not channel:
        raise ValueError("a channel must not be empty")
    return channel


def encode_message(message: object) -> bytes:
    """The payload of a PUBLISH, as the stock back end's client encodes it: text as
    UTF-8, bytes as they are, and numbers as their decimal text (``bool`` is refused
    there too: ``True`` would arrive as ``"True"``, which nobody means)."""
    if isinstance(message, str):
        return message.encode("utf-8")
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    if isinstance(message, int | float) and not isinstance(message, bool):
        return repr(message).encode("ascii")
    raise TypeError(
        f"a message must be str, bytes, int or float, not {type(message).__name__} "
        "(serialize it first, e.g. with json.dumps)"
    )
