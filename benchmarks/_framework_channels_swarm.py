"""A swarm of WebSocket clients in one process, for the framework benchmarks.

    python benchmarks/_framework_channels_swarm.py URL N EXPECTED

Opens N connections to URL, prints ``READY`` once all are open, then counts the
text frames they receive until EXPECTED have arrived in total, or none came for
IDLE seconds; prints one JSON line: ``{"received": ..., "last": <time.time() of the
last frame>, "first": ...}``. Reusable by any framework whose app sends frames to
every connected client.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from websockets.asyncio.client import ClientConnection, connect

IDLE = 10.0


async def main(url: str, n: int, expected: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    clients: list[ClientConnection] = []
    for start in range(0, n, 100):
        clients += await asyncio.gather(
            *(connect(url, max_queue=None, open_timeout=60) for _ in range(min(100, n - start)))
        )
    received = 0
    first = last = 0.0
    done = asyncio.Event()

    async def read(client: ClientConnection) -> None:
        nonlocal received, first, last
        async for _frame in client:
            now = time.time()
            if not received:
                first = now
            received += 1
            last = now
            if received >= expected:
                done.set()

    readers = [asyncio.create_task(read(client)) for client in clients]
    print("READY", flush=True)
    seen = -1
    while not done.is_set() and seen != received:
        seen = received
        try:
            async with asyncio.timeout(IDLE):
                await done.wait()
        except TimeoutError:
            pass
    for task in readers:
        task.cancel()
    print(json.dumps({"received": received, "first": first, "last": last}), flush=True)
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
