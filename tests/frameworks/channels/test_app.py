"""A Channels consumer app under uvicorn (a process of its own, with its own Django
settings) and two WebSocket clients in one group, end to end, on each back end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from redis_servers import HOST, RedisServer, free_port
from redismpx_channels import RedisMPXChannelLayer

HERE = Path(__file__).parent
START_DEADLINE = 30.0


@contextlib.contextmanager
def chat_app(backend: str, redis_url: str) -> Iterator[str]:
    """Serve chatapp.py under uvicorn in a child process; yields its ws:// base URL."""
    port = free_port()
    env = {**os.environ, "CHATAPP_BACKEND": backend, "CHATAPP_REDIS": redis_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "chatapp:application", "--host", HOST,
         "--port", str(port), "--ws", "websockets-sansio", "--log-level", "warning",
         "--lifespan", "off"],
        cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            with contextlib.suppress(OSError), connect(f"ws://{HOST}:{port}/room/probe/"):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.poll() is not None else b""  # type: ignore[union-attr]
                raise RuntimeError(f"the chat app did not start: {output.decode()[-2000:]}")
            time.sleep(0.05)
        yield f"ws://{HOST}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def recv(client: ClientConnection) -> str:
    text = client.recv(timeout=10)
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize("backend", ["ours", "stock"])
def test_two_clients_in_one_group(redis_server: RedisServer, backend: str) -> None:
    with (
        chat_app(backend, redis_server.url) as base,
        connect(f"{base}/room/lobby/") as alice,
        connect(f"{base}/room/lobby/") as bob,
        connect(f"{base}/room/elsewhere/") as carol,
    ):
        alice.send("hello from alice")
        assert recv(alice) == "hello from alice"
        assert recv(bob) == "hello from alice"
        bob.send("hi alice")
        assert recv(alice) == "hi alice"
        assert recv(bob) == "hi alice"

        # a process outside the app (a Django view, a worker) publishes to the group
        async def publish() -> None:
            layer = RedisMPXChannelLayer(hosts=[redis_server.url])
            await layer.group_send("lobby", {"type": "chat.message", "text": "from outside"})
            await layer.close()

        asyncio.run(publish())
        assert recv(alice) == "from outside"
        assert recv(bob) == "from outside"
        # the other room heard none of it
        with pytest.raises(TimeoutError):
            carol.recv(timeout=0.3)
