"""TLS material for the driver tests: a trustme CA, server certificates, a TLS redis-server.

redis-server listens for TLS on ``--tls-port``. The ``redis_server_factory`` fixture
checks readiness with a plain-TCP PING on the server's ``port``, so a TLS server made
here keeps its plain port open as well and the tests connect to :attr:`TLSServer.tls_port`
only. The plain port is what the tests' own admin commands (``server.command``) use.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from redis_servers import RedisServer, RedisServerError, RedisServerFactory, free_port

__all__ = ("TLSServer", "client_context", "start_tls_server", "write_server_cert")

# A TLS port picked by free_port() can be taken by the time redis-server binds it;
# the factory then fails and a new port is tried.
_TLS_PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class TLSServer:
    server: RedisServer
    tls_port: int

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:TLS_PORT``."""
        return f"rediss://{self.server.host}:{self.tls_port}"


def write_server_cert(ca: trustme.CA, directory: Path, *identities: str) -> tuple[Path, Path]:
    """Issue a certificate for ``identities`` (host names or IP addresses) signed by ``ca``;
    write it and its key as PEM files in ``directory``; return ``(cert_path, key_path)``."""
    leaf = ca.issue_cert(*identities)
    directory.mkdir(parents=True, exist_ok=True)
    stem = "-".join(identities).replace(":", "_")
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_path.write_bytes(leaf.private_key_pem.bytes())
    return cert_path, key_path


def start_tls_server(
    factory: RedisServerFactory, ca: trustme.CA, directory: Path, *identities: str
) -> TLSServer:
    """A redis-server with a TLS port whose certificate names ``identities``.

    Clients are not asked for certificates (``--tls-auth-clients no``).
    """
    cert_path, key_path = write_server_cert(ca, directory, *identities)
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    last: RedisServerError | None = None
    for _ in range(_TLS_PORT_ATTEMPTS):
        tls_port = free_port()
        try:
            server = factory(
                "--tls-port", str(tls_port),
                "--tls-cert-file", str(cert_path),
                "--tls-key-file", str(key_path),
                "--tls-ca-cert-file", str(ca_path),
                "--tls-auth-clients", "no",
            )  # fmt: skip
        except RedisServerError as exc:
            last = exc
            continue
        return TLSServer(server, tls_port)
    assert last is not None
    raise last


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A default client context (verification and host name checks on) that trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context
