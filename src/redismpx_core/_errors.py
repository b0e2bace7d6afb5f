"""The one exception hierarchy of redismpx.

Every error the library raises on purpose derives from :class:`RedisMPXError`,
except promise expiry, which raises the builtin :class:`TimeoutError` so that
``except TimeoutError`` works the way it does for any other deadline.
Drivers re-export these names; they map their I/O library's exceptions to
:class:`ConnectionLost` at exactly one boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._topology import Node

__all__ = (
    "AuthenticationError",
    "ConnectionLost",
    "HealthCheckTimeout",
    "InactiveSubscription",
    "MasterNotFound",
    "NodeConnectionLost",
    "NodeLeft",
    "PromiseInterrupted",
    "ProtocolError",
    "RedisMPXError",
    "ServerError",
    "SubscriptionClosed",
    "SubscriptionOverflow",
)


class RedisMPXError(Exception):
    """Root of every redismpx error."""


class InactiveSubscription(RedisMPXError):
    """The subscription is not active yet (or no longer), so it cannot do this now."""


class SubscriptionClosed(RedisMPXError):
    """The subscription (or the multiplexer owning it) has been closed."""


class SubscriptionOverflow(SubscriptionClosed):
    """The subscription's buffer overflowed under the ``close`` policy, which closed it."""


class PromiseInterrupted(RedisMPXError):
    """The connection was lost before the promise was fulfilled."""


class ConnectionLost(RedisMPXError):
    """The connection to Redis ended or became unusable (or, told to a subscription, a
    name of it stopped being delivered until its next activation: see
    ``NameDeactivated``)."""


class NodeConnectionLost(ConnectionLost):
    """One cluster node's connection was lost, told to a node-wide subscription: what
    that node published (its keyspace notifications, say) until the name's next
    activation there may be missed. ``node`` is its address (a ``Node``: ``host`` and
    ``port``, ``str(node)`` is ``host:port``, as in :class:`NodeLeft`) and ``cause`` the
    connection's own error."""

    node: Node
    cause: RedisMPXError

    def __init__(self, node: Node, cause: RedisMPXError) -> None:
        super().__init__(f"node {node}: {cause}")
        self.node = node
        self.cause = cause

    def __reduce__(self) -> tuple[type[NodeConnectionLost], tuple[Node, RedisMPXError]]:
        return (NodeConnectionLost, (self.node, self.cause))


class HealthCheckTimeout(ConnectionLost):
    """A health-check PING got no answer within its deadline."""


class NodeLeft(ConnectionLost):
    """A cluster node that carried the subscription's names left the cluster while its
    connection stayed up (the other nodes forgot it): it no longer hears the cluster's
    publishes, so its names move to another node and are activated again there.

    ``node`` is the address of the node that left.
    """

    node: Node

    def __init__(self, message: str, node: Node) -> None:
        super().__init__(message)
        self.node = node

    def __reduce__(self) -> tuple[type[NodeLeft], tuple[str, Node]]:
        return (NodeLeft, (str(self), self.node))  # (args holds the message alone)


class ProtocolError(ConnectionLost):
    """The server sent bytes that are not valid RESP, or replies out of turn.

    The connection cannot be trusted after this; drivers close it and reconnect.
    """


class ServerError(RedisMPXError):
    """Redis answered with an error reply.

    ``code`` is the first word of the reply (``"ERR"``, ``"NOPERM"``, ``"WRONGPASS"``...).
    """

    code: str

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code if code is not None else (message.split(" ", 1)[0] if message else "ERR")


class AuthenticationError(ServerError):
    """The handshake was refused: wrong password, unknown user, or no password configured."""


class MasterNotFound(RedisMPXError):
    """A sentinel answered that it monitors no master of that name.

    Drivers try the next sentinel; when none gives an address, the connection
    attempt fails with :class:`ConnectionLost` and is retried with backoff.
    """


def describe_cause(exc: BaseException) -> str:
    """The most telling error in the chain, for a driver's ConnectionLost: a TLS stream's
    closed-resource error wraps the SSLError that says *why* (certificate verify
    failed, ...). Shared by the drivers' exception boundaries."""
    while exc.__cause__ is not None and not str(exc):
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"
