"""Messages on the wire: msgpack, as the stock Redis layers write them by default, so
that processes on the stock layer and on this one can share a Redis during a move."""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ("decode", "encode")


def encode(message: object) -> bytes:
    """The message's bytes; ``TypeError`` for anything msgpack cannot carry."""
    if not isinstance(message, dict):
        raise TypeError(f"a message must be a dict, not {type(message).__name__}")
    packed: bytes = msgpack.packb(message)
    return packed


def decode(data: bytes) -> dict[str, Any] | None:
    """The message, or None for bytes that are not a msgpack-encoded dict (someone
    else's publish on one of our names: it must not kill the consumer)."""
    try:
        message = msgpack.unpackb(data)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    return message if isinstance(message, dict) else None
