"""The ``redismpx`` logger (docs/logging.md): what a user who switches it on sees.

One life of a multiplexer per driver and protocol: connect, subscribe, deliver a
message, the server is SIGKILLed, refused attempts, the server comes back, the names
are resubscribed. The log must tell each step, with the delay before every retry,
and must never contain the password, a payload or a channel name.
"""

from __future__ import annotations

import logging
import re
import traceback

import anyio
import anyio.to_thread
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import Log
from redis_servers import RedisServerFactory

PASSWORD = "L0g-s3cret-pa55-b81f"
PAYLOAD = b"payload-never-logged-5e2a"
CHANNEL = "log:room-never-logged"
PATTERN = "log:pattern-never-logged:*"
PROMISE_PREFIX = "log:job-never-logged-"
BACKOFF_CAP = 0.2


def _logged_text(records: list[logging.LogRecord]) -> str:
    """Everything a handler could print of these records: messages, args, tracebacks."""
    parts: list[str] = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_log_tells_connections_retries_handshakes_and_resubscriptions(
    driver: Driver,
    redis_server_factory: RedisServerFactory,
    caplog: pytest.LogCaptureFixture,
    protocol: int,
) -> None:
    server = redis_server_factory(password=PASSWORD)
    m = driver.module
    caplog.set_level(logging.DEBUG, logger="redismpx")
    url = f"redis://:{PASSWORD}@{server.host}:{server.port}/0"
    shown = f"redis://:***@{server.host}:{server.port}/0" + ("?protocol=3" if protocol == 3 else "")
    marks: dict[str, int] = {}

    async def body() -> None:
        log, plog = Log(), Log()
        async with m.Multiplexer(
            url,
            protocol=protocol,
            health_check_interval=0.3,
            health_check_timeout=0.3,
            backoff_base=0.02,
            backoff_cap=BACKOFF_CAP,
        ) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add(CHANNEL)
            mpx.new_pattern_subscription(PATTERN, *plog.callbacks())
            promises = mpx.new_promise_subscription(PROMISE_PREFIX)
            await wait_until(lambda: len(log.activations) == 1 and len(plog.activations) == 1)
            await promises.wait_for_activation()
            assert await mpx.publish(CHANNEL, PAYLOAD) == 1
            await wait_until(lambda: log.messages == [(CHANNEL.encode(), PAYLOAD)])

            marks["kill"] = len(caplog.records)
            server.kill()
            await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
            marks["restart"] = len(caplog.records)
            await anyio.to_thread.run_sync(server.restart)
            await wait_until(lambda: len(log.activations) == 2 and len(plog.activations) == 2)
            await promises.wait_for_activation()
            assert await mpx.publish(CHANNEL, PAYLOAD) == 1
            await wait_until(lambda: len(log.messages) == 2)

    driver.run(body)

    records = [r for r in caplog.records if r.name == "redismpx"]
    assert records
    logged = _logged_text(records)
    # Never a secret, a payload or a name: the URL is shown redacted, names are counted.
    assert PASSWORD not in logged
    assert PAYLOAD.decode() not in logged
    for name in (CHANNEL, PATTERN, PROMISE_PREFIX):
        assert name not in logged
    assert shown in logged

    def lines(level: int, pattern: str, start: int = 0, end: int | None = None) -> list[str]:
        found = re.compile(pattern)
        return [
            r.getMessage()
            for r in caplog.records[start:end]
            if r.name == "redismpx" and r.levelno == level and found.fullmatch(r.getMessage())
        ]

    url_re = re.escape(shown)
    before, after = marks["kill"], marks["restart"]
    # DEBUG: every attempt as it starts.
    assert lines(logging.DEBUG, rf"redismpx subscriber connecting to {url_re}", before, after)
    # INFO: the connection, then its handshake with what it subscribes (one channel; the
    # pattern and the promise prefix are both patterns).
    names = "1 channel, 2 patterns, 0 shard channels"
    handshake = rf"redismpx subscriber handshake completed with {url_re} \(RESP{protocol}\)"
    assert lines(logging.INFO, rf"redismpx subscriber connected to {url_re}", 0, before)
    first = lines(logging.INFO, handshake + r"(; .*)?", 0, before)
    assert len(first) == 1, first
    # The loss, then refused attempts, each with the delay before the next one.
    retry = r" \(.+\); retrying in (\d+\.\d{3}) s"
    lost = lines(logging.INFO, rf"redismpx subscriber connection lost to {url_re}" + retry, before)
    assert len(lost) == 1, lost
    refused = lines(
        logging.INFO, rf"redismpx subscriber could not connect to {url_re}" + retry, before
    )
    assert len(refused) >= 2, refused
    for line in lost + refused:
        delay = float(re.findall(r"retrying in (\d+\.\d{3}) s", line)[0])
        assert 0 <= delay <= BACKOFF_CAP, line
    # Back: connected again, and the handshake says what it resubscribes.
    assert lines(logging.INFO, rf"redismpx subscriber connected to {url_re}", after)
    resubscribed = lines(logging.INFO, handshake + f"; resubscribing {names}", after)
    assert len(resubscribed) == 1, resubscribed
    if protocol == 2:  # publishing has its own connection, logged under its own role
        publisher = rf"redismpx publisher handshake completed with {url_re} \(RESP2\)"
        assert lines(logging.INFO, publisher)
    else:
        assert not lines(logging.INFO, r"redismpx publisher .*")
    # Nothing at WARNING or above in a life without errors.
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_at_info_the_attempts_are_gone_and_the_handshake_stays(
    driver: Driver, redis_server_factory: RedisServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """At INFO the attempts' DEBUG lines are gone; the handshake line is still there."""
    server = redis_server_factory()
    m = driver.module
    caplog.set_level(logging.INFO, logger="redismpx")

    async def body() -> None:
        async with m.Multiplexer(server.url, protocol=3) as mpx:
            mpx.new_channel_subscription(lambda channel, data: None).add("a", "b")
            with anyio.fail_after(5):
                await mpx.wait_connected()

    driver.run(body)
    messages = [r.getMessage() for r in caplog.records if r.name == "redismpx"]
    assert not [r for r in caplog.records if r.levelno < logging.INFO]
    assert any(
        re.fullmatch(r"redismpx subscriber handshake completed with .* \(RESP3\)(; .*)?", text)
        for text in messages
    ), messages
