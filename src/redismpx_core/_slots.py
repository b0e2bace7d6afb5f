"""Redis Cluster hash slots: which slot a channel (or key) name belongs to.

The slot is CRC16/XMODEM of the name modulo 16384, where a non-empty hash tag
(from the first ``{`` to the first ``}`` after it) stands in for the whole name,
so that names sharing a tag land on the same node.
"""

from __future__ import annotations

from binascii import crc_hqx
from typing import Final

__all__ = ("SLOTS", "key_slot")

#: Number of hash slots in a Redis Cluster; slots are ``0 .. SLOTS - 1``.
SLOTS: Final = 16384

# A power of two, so the modulo is a mask.
_SLOT_MASK: Final = SLOTS - 1


def key_slot(name: bytes) -> int:
    """The hash slot of *name*, as ``CLUSTER KEYSLOT`` computes it.

    Only the hash tag is hashed when the name has one: the bytes between the first
    ``{`` and the first ``}`` after it, if there are any. ``{}`` (an empty tag) or a
    ``{`` never closed leaves the whole name hashed.
    """
    # crc_hqx is the CCITT CRC16 Redis uses (polynomial 0x1021, not reflected);
    # started at 0 it is XMODEM. It runs in C: a table-driven loop in Python costs
    # about 20 times as much per name, and this runs once per sharded name.
    start = name.find(b"{")
    if start >= 0:
        end = name.find(b"}", start + 1)
        if end > start + 1:
            return crc_hqx(name[start + 1 : end], 0) & _SLOT_MASK
    return crc_hqx(name, 0) & _SLOT_MASK

