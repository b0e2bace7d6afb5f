"""Failovers heard as they happen: a multiplexer's connection to the sentinels.

In sentinel mode a multiplexer keeps, beside its data connections, one connection
to one sentinel at a time, subscribed to ``+switch-master``: the channel on which
a sentinel announces that it moved a master to a new address. It is a connection
like the others: a :class:`~redismpx_core.MultiplexerCore` (with the sentinel
credentials, RESP2, no ROLE check) run by a :class:`ConnectionRunner` over the
backend. The core does the protocol (handshake, subscription, health check,
backoff); this module chooses the sentinel and acts on what is heard.

* An announcement for the multiplexer's master (:class:`~redismpx_core.FailoverWatch`
  reads it) goes to ``on_switch``: the data connections then decide, each with its
  :class:`~redismpx_core.MasterTarget`, whether to end their connection (a loss
  their subscriptions are told of) and connect to the announced address at once.
* An announcement for another master changes nothing. One about this master that
  is malformed ends the connection to that sentinel (its ``ProtocolError`` is
  logged), and the next attempt goes to the next sentinel, after the backoff.
* The sentinels are tried in turn, each within ``connect_timeout``, from the one
  after the last one used: a lost connection (the sentinel died, or refused the
  credentials or the subscription) is made again to the next one, with the core's
  backoff between attempts. None of it touches the data connections.

Nothing is queued here: each announcement is acted on when the reader hands it over
(a handful per failover); the core bounds what it reads (``max_frame_size``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redismpx_core import (
    ConnectionLost,
    FailoverWatch,
    MasterSwitched,
    MultiplexerCore,
    ProtocolError,
    RedisMPXError,
    ServerError,
    SubscriptionKind,
)
from redismpx_core._sentinel import watch_core_options

from ._backend import Address, Stream
from ._connect import format_address, within
from ._delivery import Message
from ._engine import Core, Engine, Handle
from ._runner import ConnectionRunner

__all__ = ("SwitchListener",)

logger = logging.getLogger("redismpx")

#: What the listener hands on: the switch, and the sentinel (``host:port``) that announced it.
OnSwitch = Callable[[MasterSwitched, str], None]


class SwitchListener:
    """One connection to one sentinel at a time, subscribed to ``+switch-master``
    (see the module docstring). It is the owner of its core's one subscription:
    the core hands it the announcements, inline."""

    __slots__ = (
        "_current",
        "_engine",
        "_handle",
        "_next",
        "_on_switch",
        "_watch",
        "core",
        "runner",
    )

    #: The core delivers to :meth:`deliver`, on the reader's path (nothing queued).
    queued = False

    def __init__(self, engine: Engine, on_switch: OnSwitch) -> None:
        settings = engine.settings
        assert settings.master_name is not None  # sentinel mode: the settings checked it
        self._engine = engine
        self._on_switch = on_switch
        self._watch = FailoverWatch(settings.master_name)
        # The index of the sentinel connected to, and of the one to try first.
        self._current: int | None = None
        self._next = 0
        core: Core = MultiplexerCore(random=engine.backend.random, **watch_core_options(settings))
        self.core = core
        self._handle: Handle = core.open_subscription(SubscriptionKind.CHANNEL, self)
        core.add(self._handle, [self._watch.channel])
        self.runner = ConnectionRunner(
            engine.backend,
            core,
            self._connect,
            engine.dispatch,
            self._lost,
            role="sentinel listener",
            target=f"the sentinels of master {settings.master_name!r}",
        )

    def __repr__(self) -> str:
        return f"<SwitchListener {self._watch.master_name!r} on {self._where()}>"

    def start(self) -> None:
        self._engine.spawn(self.runner.run)

    def stop(self) -> None:
        self.runner.stop()

    def close(self) -> None:
        self.core.close()  # nothing of ours waits on it

    # ---- which sentinel

    async def _connect(self) -> Stream:
        """The next sentinel that accepts a connection, from the one after the last used."""
        engine = self._engine
        sentinels = engine.settings.sentinels
        failures = []
        for turn in range(len(sentinels)):
            index = (self._next + turn) % len(sentinels)
            host, port = sentinels[index]
            try:
                stream = await within(
                    engine.backend, engine.settings, engine.backend.connect(Address(host, port))
                )
            except ConnectionLost as exc:
                failures.append(f"{format_address(host, port)}: {exc}")
                continue
            self._current = index
            return stream
        raise ConnectionLost(f"no sentinel could be reached ({'; '.join(failures)})")

    def _lost(self) -> None:
        if self._current is not None:
            self._next = (self._current + 1) % len(self._engine.settings.sentinels)
            self._current = None

    def _where(self) -> str:
        if self._current is None:
            return "no sentinel"
        return format_address(*self._engine.settings.sentinels[self._current])

    # ---- what the core hands over (the Subscriber protocol)

    def deliver(self, channel: bytes, pattern: bytes | None, payloads: list[bytes]) -> None:
        where = self._where()
        for payload in payloads:
            try:
                switch = self._watch.announcement(payload)
            except ProtocolError as exc:
                logger.warning(
                    "redismpx sentinel listener: %s sent a malformed announcement (%s); "
                    "turning to the next sentinel",
                    where,
                    exc,
                )
                self.runner.reconnect(exc)
                return
            if switch is None:
                logger.debug("redismpx sentinel %s announces another master's switch", where)
                continue
            logger.info(
                "redismpx sentinel %s announces master %r moved from %s to %s",
                where,
                switch.master_name,
                format_address(*switch.old),
                format_address(*switch.new),
            )
            self._on_switch(switch, where)

    def enqueue(self, messages: list[Message]) -> None:
        pass  # never called: the listener is not queued

    def activated(self, names: list[bytes]) -> None:
        logger.info(
            "redismpx sentinel listener: hearing failovers of master %r from sentinel %s",
            self._watch.master_name,
            self._where(),
        )

    def disconnected(self, error: RedisMPXError) -> None:
        pass  # the runner logs the loss; the next attempt subscribes again

    def deactivated(self, name: bytes, error: RedisMPXError) -> None:
        pass  # the core subscribes it again

    def rejected(self, name: bytes, error: ServerError) -> None:
        # The sentinel refused the subscription (ACLs): the core dropped the name. Take
        # it back, and ask the next sentinel.
        logger.warning(
            "redismpx sentinel listener: %s refused the subscription to %s (%s); "
            "turning to the next sentinel",
            self._where(),
            name.decode("ascii", "replace"),
            error,
        )
        self.core.add(self._handle, [self._watch.channel])
        self.runner.reconnect(error)

    def multiplexer_closed(self) -> None:
        pass
