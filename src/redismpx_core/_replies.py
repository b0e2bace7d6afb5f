"""The replies a connection waits for, in wire order, and what an error reply means.

Redis answers a connection's commands in the order they were sent. Every command
the core writes appends what it expects to the :class:`ReplyQueue`; every reply
that is not a Pub/Sub message settles the oldest entry. A SUBSCRIBE-family command
is settled name by name, by one confirmation per name (``index`` counts those in).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final, Generic

from ._errors import AuthenticationError, ConnectionLost, ProtocolError, ServerError
from ._events import CommandCompleted, CommandFailed, Event, P, PublishCompleted, PublishFailed, S
from ._policy import REDIRECT_CODES
from ._state import Command, IdentityEnum, NameKind, Reply

if TYPE_CHECKING:
    from ._table import NameRecord

__all__ = (
    "COMMAND_VERBS",
    "CONFIRMATION_WORDS",
    "CONNECTION_ERROR_CODES",
    "Expected",
    "ReplyFor",
    "ReplyQueue",
    "check_role",
    "server_error",
)

#: Error codes that say the connection, not a name, is the problem: reconnect.
CONNECTION_ERROR_CODES: Final = frozenset(
    {
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "NOAUTH",
        "WRONGPASS",
        "MISCONF",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MOVED",
        "ASK",
        "READONLY",
    }
)
_AUTH_ERROR_CODES: Final = frozenset({"WRONGPASS", "NOAUTH"})

#: The command that a SUBSCRIBE-family entry of the queue stands for.
COMMAND_VERBS: Final = {
    (NameKind.CHANNEL, Command.SUBSCRIBE): b"SUBSCRIBE",
    (NameKind.CHANNEL, Command.UNSUBSCRIBE): b"UNSUBSCRIBE",
    (NameKind.PATTERN, Command.SUBSCRIBE): b"PSUBSCRIBE",
    (NameKind.PATTERN, Command.UNSUBSCRIBE): b"PUNSUBSCRIBE",
    (NameKind.SHARD, Command.SUBSCRIBE): b"SSUBSCRIBE",
    (NameKind.SHARD, Command.UNSUBSCRIBE): b"SUNSUBSCRIBE",
}

_SUBSCRIBED: Final = (Command.SUBSCRIBE, Reply.SUBSCRIBE_CONFIRMED)
_UNSUBSCRIBED: Final = (Command.UNSUBSCRIBE, Reply.UNSUBSCRIBE_CONFIRMED)

#: First element of a confirmation frame -> (name space, command confirmed, reply).
CONFIRMATION_WORDS: Final = {
    b"subscribe": (NameKind.CHANNEL, *_SUBSCRIBED),
    b"unsubscribe": (NameKind.CHANNEL, *_UNSUBSCRIBED),
    b"psubscribe": (NameKind.PATTERN, *_SUBSCRIBED),
    b"punsubscribe": (NameKind.PATTERN, *_UNSUBSCRIBED),
    b"ssubscribe": (NameKind.SHARD, *_SUBSCRIBED),
    b"sunsubscribe": (NameKind.SHARD, *_UNSUBSCRIBED),
}


def server_error(reply: Any, password: str | None, *, handshake: bool = False) -> ServerError:
    """The typed error for an error reply; secrets are scrubbed from its text."""
    message = str(reply)
    if password:
        # Redis does not echo passwords, but a proxy or a future version might.
        message = message.replace(password, "***")
    code = message.split(" ", 1)[0] if message else "ERR"
    # Old servers answer a bad AUTH with "ERR invalid password", newer ones with
    # "ERR AUTH <password> called without any password configured".
    if code in _AUTH_ERROR_CODES or (handshake and ("AUTH" in message or "password" in message)):
        return AuthenticationError(message, code)
    return ServerError(message, code)


def check_role(reply: Any) -> None:
    """Sentinel mode: a sentinel's answer may lag a failover, so the node it named must
    say "master" itself; anything else drops the connection, and the next attempt asks
    the sentinels again."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
        raise ProtocolError("ROLE answered with something other than a role")
    if reply[0] != b"master":
        role = reply[0][:16].decode("ascii", "replace")
        raise ConnectionLost(
            f"the node the sentinels named is a {role!r}, not the master (a failover?)"
        )


class ReplyFor(IdentityEnum):
    """What a reply answers."""

    NAMES = "names"  # a SUBSCRIBE-family command: one confirmation per name
    HANDSHAKE = "handshake"
    ROLE = "role"  # sentinel mode's last handshake command: only a master will do
    PING = "ping"  # the health check
    FENCE = "fence"  # the PING after a cluster node's SUNSUBSCRIBE (see _policy)
    PUBLISH = "publish"
    REQUEST = "request"


_NAMES: Final = ReplyFor.NAMES
_PING: Final = ReplyFor.PING
_FENCE: Final = ReplyFor.FENCE
_PUBLISH: Final = ReplyFor.PUBLISH
_REQUEST: Final = ReplyFor.REQUEST


class Expected(Generic[S, P]):
    """One command whose replies are still due."""

    __slots__ = ("command", "index", "kind", "label", "records", "token")

    def __init__(
        self,
        label: ReplyFor,
        *,
        kind: NameKind | None = None,
        command: Command | None = None,
        records: list[NameRecord[S, P]] | None = None,
        token: int = 0,
    ) -> None:
        self.label = label
        self.kind = kind
        self.command = command
        # The records of the names sent, in order: a record stays the current one for
        # its name while a command for it is in flight (only an IDLE record is dropped).
        self.records: list[NameRecord[S, P]] = records or []
        self.index = 0
        self.token = token


class ReplyQueue(deque[Expected[S, P]], Generic[S, P]):
    """The commands in flight, oldest first (a deque: the input loop peeks at its head
    once per frame)."""

    __slots__ = ()

    def confirm(self, kind: NameKind, command: Command, name: bytes) -> NameRecord[S, P] | None:
        """The record a confirmation settles, if it is the next one due; else ``None``."""
        if not self:
            return None
        expected = self[0]
        if expected.kind is not kind or expected.command is not command:
            return None
        record = expected.records[expected.index]
        if record.name != name:
            return None
        expected.index += 1
        if expected.index == len(expected.records):
            self.popleft()
        return record

    def settle(
        self, reply: Any, error: ServerError | None, events: list[Event[S, P]]
    ) -> Expected[S, P] | None:
        """Settle the oldest command with a plain reply (``error`` if it is an error reply).

        Returns the command if its settling is the caller's (a SUBSCRIBE-family command
        refused, a handshake reply); raises what breaks the connection.
        """
        expected = self[0]
        label = expected.label
        if label is _FENCE:
            if error is None:
                self.popleft()
            elif error.code not in REDIRECT_CODES:
                raise error
            # else: the SUNSUBSCRIBE before the fence, refused after the server's own
            return None
        if label is _NAMES:
            if error is None:
                raise ProtocolError("a plain reply where a subscription confirmation was due")
            self.popleft()
            return expected
        self.popleft()
        if label is _PUBLISH:
            if error is not None:
                events.append(PublishFailed(expected.token, error))
            elif isinstance(reply, int):
                events.append(PublishCompleted(expected.token, reply))
            else:
                raise ProtocolError("PUBLISH answered with something other than an integer")
            return None
        if label is _REQUEST:
            if error is not None:
                events.append(CommandFailed(expected.token, error))
            else:
                events.append(CommandCompleted(expected.token, reply))
            return None
        if error is not None:
            raise error
        # A PING reply needs nothing more: any data already proved the server alive.
        return None if label is _PING else expected

    def fail_pending(self, error: ServerError | ConnectionLost) -> list[Event[S, P]]:
        """Forget every command in flight; PUBLISH and request() callers hear of theirs."""
        events: list[Event[S, P]] = []
        for expected in self:
            if expected.label is _PUBLISH:
                events.append(PublishFailed(expected.token, error))
            elif expected.label is _REQUEST:
                events.append(CommandFailed(expected.token, error))
        self.clear()
        return events
