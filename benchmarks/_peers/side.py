"""asyncio helpers shared by the adapters whose libraries give no confirmations (or run in
another venv): a side connection that asks Redis what it has processed, a deadline on an
awaitable, and a prompt exit after the result line. Needs only asyncio and hiredis (in
the project's venv and in the original redismpx's venv alike)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import common
import hiredis

__all__ = ("Side", "finish", "within")

POLL_SECONDS = 0.001
T = TypeVar("T")


async def within(
    awaitable: Awaitable[T], seconds: float, what: str | Callable[[], str], library: str
) -> T:
    """``awaitable``, or SystemExit naming what did not come within ``seconds``."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        said = what if isinstance(what, str) else what()
        raise SystemExit(f"{library}: no {said} after {seconds:g} s") from None


def finish(**result: Any) -> None:
    """Emit the result line and leave at once: the process is discarded, unmeasured."""
    common.emit(**result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Side:
    """A plain RESP connection beside the library's, to ask Redis what it has processed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader()

    @classmethod
    async def open(cls, host: str, port: int) -> Side:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def command(self, *args: str) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.writer.write(b"".join(out))
        await self.writer.drain()
        while (reply := self.parser.gets()) is False:
            data = await self.reader.read(65536)
            if not data:
                raise RuntimeError("Redis closed the side connection")
            self.parser.feed(data)
        return reply

    async def subscriptions(self, key: str, value: str) -> int:
        """The ``sub=`` count of the one client whose CLIENT LIST field ``key`` is ``value``."""
        listing = await self.command("CLIENT", "LIST")
        for line in listing.decode().splitlines():
            fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
            if fields.get(key) == value:
                return int(fields["sub"])
        raise RuntimeError(f"no client with {key}={value} in CLIENT LIST")

    async def wait_subscriptions(self, key: str, value: str, count: int) -> None:
        while await self.subscriptions(key, value) != count:  # noqa: ASYNC110 - polls Redis
            await asyncio.sleep(POLL_SECONDS)
