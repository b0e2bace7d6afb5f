"""Helpers shared by the conformance suite's test files (not tests themselves)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from drivers.conftest import wait_until
from redis_cluster import RedisCluster
from redis_servers import RedisServer

__all__ = (
    "CLUSTER_FAST",
    "Inbox",
    "AsyncLog",
    "Log",
    "b",
    "names_on",
    "clients_named",
    "numpat",
    "numsub",
    "round_trip",
    "shardnumsub",
    "uniq",
    "wait_server",
)


#: Short timers for the cluster tests: a lost node is noticed and routed around quickly.
CLUSTER_FAST: dict[str, Any] = {
    "health_check_interval": 0.5,
    "health_check_timeout": 0.5,
    "backoff_base": 0.02,
    "backoff_cap": 0.3,
}

def uniq(tag: str) -> str:
    """A channel name no other test uses (the shared server outlives every test)."""
    return f"t:{tag}:{uuid.uuid4().hex[:12]}"


def b(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode()


def numsub(server: RedisServer, name: str | bytes) -> int:
    flat = server.command("PUBSUB", "NUMSUB", name)
    return int(flat[1])


def shardnumsub(server: RedisServer, name: str | bytes) -> int:
    flat = server.command("PUBSUB", "SHARDNUMSUB", name)
    return int(flat[1])


def numpat(server: RedisServer) -> int:
    return int(server.command("PUBSUB", "NUMPAT"))


def clients_named(server: RedisServer, client_name: str) -> list[dict[str, str]]:
    """The server's CLIENT LIST entries whose name is ``client_name``."""
    listing = bytes(server.command("CLIENT", "LIST")).decode()
    found = []
    for line in listing.splitlines():
        fields = dict(part.partition("=")[::2] for part in line.split(" ") if "=" in part)
        if fields.get("name") == client_name:
            found.append(fields)
    return found


async def wait_server(condition: Callable[[], object], within: float = 5.0) -> None:
    """wait_until for conditions that query the server (each query opens a socket)."""
    await wait_until(condition, timeout=within, interval=0.02)


async def round_trip(mpx: Any, name: str | None = None) -> None:
    """A round trip on the subscription connection: a new name's confirmation comes
    back after every reply Redis sent before it, so nothing is left in flight (tests
    call this before leaving ``async with`` after removing names)."""
    active: list[bytes] = []
    sub = mpx.new_channel_subscription(lambda c, d: None, on_activation=active.append)
    sub.add(name or uniq("rt"))
    await wait_until(lambda: bool(active))


class Inbox:
    """A sync on_message callback that records (channel, data)."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.types: set[tuple[type, type]] = set()

    def __call__(self, channel: bytes, data: bytes) -> None:
        # (bytes == bytearray holds, so the types are recorded to be checked apart)
        self.types.add((type(channel), type(data)))
        self.messages.append((channel, data))

    def data(self, channel: str | bytes | None = None) -> list[bytes]:
        return [d for c, d in self.messages if channel is None or c == b(channel)]

    def has(self, channel: str | bytes, data: bytes) -> bool:
        return (b(channel), data) in self.messages


class Log:
    """The callbacks of one subscription, recorded as one ordered log.

    Entries: ``("msg", (channel, data))``, ``("disconnect", error)``,
    ``("activate", name)``, each with the time it was recorded in ``times``.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []
        self.times: list[float] = []

    def _record(self, kind: str, value: Any) -> None:
        self.entries.append((kind, value))
        self.times.append(anyio.current_time())

    def on_message(self, channel: bytes, data: bytes) -> None:
        self._record("msg", (channel, data))

    def on_disconnect(self, error: Exception) -> None:
        self._record("disconnect", error)

    def on_activation(self, name: bytes) -> None:
        self._record("activate", name)

    def callbacks(self) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        return self.on_message, self.on_disconnect, self.on_activation

    def since(self, start: int, kind: str) -> list[Any]:
        """The values of one kind recorded from entry ``start`` on."""
        return [value for k, value in self.entries[start:] if k == kind]

    def of(self, kind: str) -> list[Any]:
        return self.since(0, kind)

    def index(self, entry: tuple[str, Any]) -> int:
        return self.entries.index(entry)

    @property
    def messages(self) -> list[tuple[bytes, bytes]]:
        return self.of("msg")

    @property
    def disconnects(self) -> list[Exception]:
        return self.of("disconnect")

    @property
    def activations(self) -> list[bytes]:
        return self.of("activate")


class AsyncLog(Log):
    """The same log, written by async callbacks (delivered through the subscription's
    own queue and task rather than inline). ``gate``, when set to an unset
    ``anyio.Event``, holds every message callback until the event is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: anyio.Event | None = None

    async def on_message(self, channel: bytes, data: bytes) -> None:  # type: ignore[override]
        if self.gate is not None:
            await self.gate.wait()
        await anyio.lowlevel.checkpoint()
        super().on_message(channel, data)

    async def on_disconnect(self, error: Exception) -> None:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        super().on_disconnect(error)

    async def on_activation(self, name: bytes) -> None:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        super().on_activation(name)


def names_on(cluster: RedisCluster, master: RedisServer, count: int, tag: str) -> list[str]:
    """``count`` fresh shard channel names whose slots ``master`` owns, distinct slots."""
    found: list[str] = []
    slots: set[int] = set()
    base = uniq(tag)
    index = 0
    while len(found) < count:
        name = f"{base}:{index}"
        index += 1
        slot = cluster.key_slot(name)
        if slot not in slots and cluster.owner_of_slot(slot) is master:
            found.append(name)
            slots.add(slot)
    return found
