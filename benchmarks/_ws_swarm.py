"""A swarm of bare WebSocket clients that count what they receive, for the framework benchmarks.

``python benchmarks/_ws_swarm.py --url ws://127.0.0.1:PORT/ws/ROOM
--clients N --payload S --expect M`` opens N connections (the HTTP upgrade by hand,
no compression asked), waits until each has received the app's first frame (its
"subscribed" notice, of any size up to 125 bytes), prints ``ready``, then counts the
frames that follow and prints one JSON line: ``{"received": frames, "last": time}``
(``time.time()`` of the last byte), once every client has M frames or nothing has
arrived for ``--idle`` seconds.

The clients do not parse frames: every message of the benchmark is a text frame of
``S`` bytes (S < 126), so a client's count is its bytes divided by ``S + 2``. That
keeps the client side cheap, so that the process measured is the app's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from urllib.parse import urlsplit

sys.path.append(os.path.join(os.path.dirname(__file__), "_peers"))
from common import raise_file_limit


class Client(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.head = bytearray()
        self.upgraded = False
        self.joined = asyncio.get_running_loop().create_future()
        self.notice_left = -1  # bytes of the first frame still to skip (-1: unknown yet)
        self.bytes = 0
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.notice_left != 0:  # the upgrade response, then the app's first frame
            head = self.head
            head += data
            if not self.upgraded:
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    return
                if not head.startswith(b"HTTP/1.1 101"):
                    self.joined.set_exception(RuntimeError(bytes(head[:80]).decode()))
                    return
                self.upgraded = True
                del head[: end + 4]
            if self.notice_left < 0:
                if len(head) < 2:
                    return
                self.notice_left = 2 + (head[1] & 0x7F)
            if len(head) < self.notice_left:
                return
            data = bytes(head[self.notice_left :])
            self.notice_left = 0
            head.clear()
            self.joined.set_result(None)
        if data:
            self.bytes += len(data)
            self.last = time.time()


async def run(url: str, clients: int, payload: int, expect: int, idle: float) -> None:
    raise_file_limit(clients + 256)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    swarm: list[Client] = []
    transports = []
    # The first client alone, the others once it is in: broadcaster's stock Broadcast
    # keeps only one of the subscribers that arrive together on a new channel (and no
    # framework is slowed by it: joining is not measured).
    for start, size in [(0, 1), *((s, 100) for s in range(1, clients, 100))]:
        batch = [
            loop.create_connection(lambda: Client(request), host, port)
            for _ in range(min(size, clients - start))
        ]
        for transport, client in await asyncio.gather(*batch):
            transports.append(transport)
            swarm.append(client)
        async with asyncio.timeout(60):
            await asyncio.gather(*(client.joined for client in swarm))
    async with asyncio.timeout(60):
        await asyncio.gather(*(client.joined for client in swarm))
    print("ready", flush=True)
    frame = payload + 2
    wanted = clients * expect * frame
    last_change, seen = time.monotonic(), -1
    while True:
        total = sum(client.bytes for client in swarm)
        if total >= wanted:
            break
        if total != seen:
            seen, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > idle:
            break
        await asyncio.sleep(0.02)
    received = sum(client.bytes for client in swarm) // frame
    last = max(client.last for client in swarm)
    print(json.dumps({"received": received, "last": last}), flush=True)
    for transport in transports:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--payload", type=int, required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args()
    if not 0 < args.payload < 126:
        parser.error("--payload must be 1 to 125 bytes (a 2-byte frame header)")
    asyncio.run(run(args.url, args.clients, args.payload, args.expect, args.idle))


if __name__ == "__main__":
    main()
