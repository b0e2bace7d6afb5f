"""TLS (``rediss://``) against a real redis-server with a TLS port (SPEC 2, 3.9, 3.10).

The server's certificate comes from a throwaway trustme CA. The server also keeps its
plain TCP port, which the fixture uses to check that it is ready and the tests use for
admin commands; the multiplexers connect to the TLS port only (see tls_certs.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

from drivers.conftest import Driver, wait_until
from drivers.helpers import Log
from drivers.tls_certs import TLSServer, client_context, start_tls_server
from redis_servers import RedisServerFactory

FAST: dict[str, Any] = {
    "health_check_interval": 0.3,
    "health_check_timeout": 0.3,
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(
    redis_server_factory: RedisServerFactory, ca: trustme.CA, tmp_path: Path
) -> TLSServer:
    """A TLS port whose certificate names 127.0.0.1 and localhost, signed by ``ca``."""
    return start_tls_server(redis_server_factory, ca, tmp_path, "127.0.0.1", "localhost")


def refused_handshakes(tls: TLSServer) -> int:
    """TLS handshakes the server failed. Redis does not count them in INFO stats
    (``total_connections_received`` counts clients it created), but logs each one."""
    text = tls.server.log_path.read_text(errors="replace")
    return text.count("Error accepting a client connection")


@pytest.mark.server_feature("tls")
def test_tls_with_a_trusted_ca_works_end_to_end(
    driver: Driver, tls_server: TLSServer, ca: trustme.CA
) -> None:
    m = driver.module
    server = tls_server.server

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(tls_server.url, ssl=client_context(ca), **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("tls:1")
            await wait_until(lambda: log.activations == [b"tls:1"])
            assert server.pubsub_numsub("tls:1") == {b"tls:1": 1}
            assert await mpx.publish("tls:1", b"sealed") == 1  # the publisher is TLS too
            server.command("PUBLISH", "tls:1", b"from-plain-port")
            await wait_until(
                lambda: log.messages == [(b"tls:1", b"sealed"), (b"tls:1", b"from-plain-port")]
            )
            async with mpx.subscribe("tls:it") as it:
                assert await mpx.publish("tls:it", b"iterated") == 1
                with anyio.fail_after(5):
                    msg = await it.__anext__()
                assert (msg.channel, msg.data) == (b"tls:it", b"iterated")

            # A loss on a TLS connection is repaired over TLS again.
            assert server.kill_clients("pubsub") == 1
            await wait_until(lambda: log.activations == [b"tls:1"] * 2)
            assert len(log.disconnects) == 1
            assert isinstance(log.disconnects[0], m.ConnectionLost)
            assert await mpx.publish("tls:1", b"again") == 1
            await wait_until(lambda: (b"tls:1", b"again") in log.messages)
            assert mpx.statistics().connections_lost == 1

    driver.run(body)


def _is_verification_failure(error: BaseException) -> bool:
    text = str(error).lower()
    return "certificate verify failed" in text or "certificate_verify_failed" in text


@pytest.mark.server_feature("tls")
def test_tls_untrusted_certificate_is_refused_and_retried_at_a_bounded_rate(
    driver: Driver, tls_server: TLSServer
) -> None:
    """No ``ssl=``: the default context does not trust the test CA. The failure reaches
    on_disconnect once, as a ConnectionLost naming the verification failure; the
    multiplexer keeps trying, at a bounded rate."""
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(tls_server.url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("tls:untrusted")
            await wait_until(lambda: log.disconnects)
            await wait_until(lambda: refused_handshakes(tls_server) >= 1)
            start = refused_handshakes(tls_server)
            await anyio.sleep(1.0)  # the measurement window
            attempts = refused_handshakes(tls_server) - start
            assert not mpx.connected
            assert mpx.statistics().reconnect_attempts >= 3
            assert 2 <= attempts < 60, attempts
            assert log.activations == []
            assert log.messages == []
            assert len(log.disconnects) == 1, log.disconnects
            error = log.disconnects[0]
            assert isinstance(error, m.ConnectionLost), repr(error)
            assert _is_verification_failure(error), repr(error)
            assert mpx.statistics().connections_made == 0  # no attempt got past TLS

    driver.run(body)


@pytest.mark.server_feature("tls")
def test_tls_certificate_for_another_host_is_refused(
    driver: Driver,
    redis_server_factory: RedisServerFactory,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    """The certificate is signed by the trusted CA but names another host."""
    m = driver.module
    other = start_tls_server(redis_server_factory, ca, tmp_path, "redis.example.org")

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(other.url, ssl=client_context(ca), **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("tls:wrong-host")
            await wait_until(lambda: log.disconnects)
            await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
            assert not mpx.connected
            assert log.activations == []
            assert len(log.disconnects) == 1, log.disconnects
            error = log.disconnects[0]
            assert isinstance(error, m.ConnectionLost), repr(error)
            assert _is_verification_failure(error), repr(error)
            assert "mismatch" in str(error).lower(), repr(error)
            assert other.server.pubsub_numsub("tls:wrong-host") == {b"tls:wrong-host": 0}

    driver.run(body)


def test_tls_to_a_plain_port_times_out_within_connect_timeout(
    driver: Driver, redis_server_factory: RedisServerFactory, ca: trustme.CA
) -> None:
    """``rediss://`` to a port that speaks plain RESP: Redis reads the ClientHello as the
    start of an inline command and waits for its end, so the TLS handshake never
    completes. ``connect_timeout`` bounds it: a ConnectionLost, once, then retries;
    no subscription reaches the server."""
    m = driver.module
    server = redis_server_factory()
    connect_timeout = 0.3

    async def body() -> None:
        log = Log()
        url = f"rediss://{server.host}:{server.port}"
        options = {**FAST, "connect_timeout": connect_timeout}
        async with m.Multiplexer(url, ssl=client_context(ca), **options) as mpx:
            started = anyio.current_time()
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("tls:plain")
            await wait_until(lambda: log.disconnects, timeout=connect_timeout + 2)
            assert anyio.current_time() - started < connect_timeout + 0.5
            await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
            assert not mpx.connected
            assert len(log.disconnects) == 1, log.disconnects
            assert isinstance(log.disconnects[0], m.ConnectionLost), repr(log.disconnects[0])
            assert server.pubsub_numsub("tls:plain") == {b"tls:plain": 0}

    driver.run(body)
