"""Where a multiplexer's traffic goes: the connection strategies of one front end.

:class:`ServerConnections` serves one server (or the master the sentinels name):
one link carries the subscriptions; publishes share it under RESP3 and take a
second link, opened on first use, under RESP2 (where Redis refuses PUBLISH on a
subscribed connection). :class:`ClusterConnections` serves a Redis Cluster: a
:class:`~redismpx_core.ClusterCore` says which node connections it wants, and this
strategy keeps exactly those links running, runs the router's timer, and routes
publishes. Subscriptions, iterators and promises are the same objects over both:
they talk to the strategy's ``router``.

In sentinel mode, :class:`ServerConnections` also runs a :class:`SwitchListener`
(``_sentinel.py``): when a sentinel announces that the master moved, every link
that is not at the new address ends its connection and connects there at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Protocol

from redismpx_core import (
    ClusterCore,
    ConnectionLost,
    MasterSwitched,
    MasterTarget,
    MessagesReceived,
    Node,
    ServerError,
    Settings,
    Statistics,
    SubscriptionClosed,
)
from redismpx_core._cluster import ConnectionKey, ShardSubscriptions

from ._backend import Signal
from ._connect import format_address, open_stream
from ._engine import Core, Engine, Events, PromiseOwner, Router, Subscriber
from ._link import Link, LinkDropped
from ._sentinel import SwitchListener

__all__ = ("ClusterConnections", "Connections", "ServerConnections")

#: A publish redirected (MOVED) is sent again on the new owner, this many times at most.
PUBLISH_ATTEMPTS = 5


class Connections(Protocol):
    """A connection strategy, as the engine and the multiplexer use it."""

    @property
    def router(self) -> Router: ...
    @property
    def connected(self) -> bool: ...
    def start(self) -> None: ...
    def changed(self) -> None:
        """Subscriptions changed (the core queued bytes, or a new deadline): wake writers."""
        ...

    def stop(self) -> None:
        """The multiplexer is closing: stop every connection (before the cores close)."""
        ...

    def close(self) -> None:
        """Close the cores, fail what waits on them (after :meth:`stop`)."""
        ...

    async def wait_connected(self) -> None: ...
    async def publish(self, channel: bytes, data: bytes, *, sharded: bool) -> int: ...
    def statistics(self, delivered: int, dropped: int) -> Statistics: ...


class ServerConnections:
    """One server: a subscriber link, and a publisher link under RESP2; in sentinel
    mode, a listener for announced failovers too.

    The links (their runners and signals) are made when the multiplexer starts, in
    its event loop: constructing a multiplexer needs none.
    """

    __slots__ = ("_engine", "_listener", "_publisher", "_subscriber", "_targets", "router")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.router: Core = engine.new_core()
        self._subscriber: Link | None = None
        self._publisher: Link | None = None
        self._listener: SwitchListener | None = None
        #: Sentinel mode: each link with where its connection goes.
        self._targets: list[tuple[Link, MasterTarget]] = []

    @property
    def connected(self) -> bool:
        return self._subscriber is not None and self._subscriber.ready

    def start(self) -> None:
        engine = self._engine
        self._subscriber = self._new_link(self.router, "subscriber")
        self._subscriber.start()
        if engine.settings.sentinels:
            self._listener = SwitchListener(engine, self._master_switched)
            self._listener.start()

    def _new_link(self, core: Core, role: str) -> Link:
        engine = self._engine
        settings = engine.settings
        if not settings.sentinels:
            return Link(engine, core, settings, role)
        target = MasterTarget()
        link = Link(
            engine,
            core,
            settings,
            role,
            on_lost=target.lost,
            connect=partial(open_stream, engine.backend, settings, target),
        )
        self._targets.append((link, target))
        return link

    def _master_switched(self, switch: MasterSwitched, sentinel: str) -> None:
        """A sentinel announced that the master moved: every link not there already
        ends its connection (its subscriptions hear of the loss) and connects there."""
        for link, target in self._targets:
            if target.switched(switch):
                error = ConnectionLost(
                    f"sentinel {sentinel} announced a failover: master "
                    f"{switch.master_name!r} moved to {format_address(*switch.new)}"
                )
                link.runner.reconnect(error, at_once=True)

    def changed(self) -> None:
        if self._subscriber is not None:
            self._subscriber.wake()

    def stop(self) -> None:
        for link in self._links():
            link.stop()
        if self._listener is not None:
            self._listener.stop()

    def close(self) -> None:
        for link in self._links():
            self._engine.dispatch(link.core.close(), link.take_reply)
            link.close()
        if self._listener is not None:
            self._listener.close()

    def _links(self) -> list[Link]:
        return [link for link in (self._subscriber, self._publisher) if link is not None]

    async def wait_connected(self) -> None:
        assert self._subscriber is not None  # the engine checked it was started
        await self._subscriber.wait_ready()

    async def publish(self, channel: bytes, data: bytes, *, sharded: bool) -> int:
        return await self._publishing_link().publish(channel, data, sharded=sharded)

    def _publishing_link(self) -> Link:
        assert self._subscriber is not None  # the engine checked it was started
        if self._engine.settings.protocol == 3:
            return self._subscriber
        if self._publisher is None:
            self._publisher = self._new_link(self._engine.new_core(), "publisher")
            self._publisher.start()
        return self._publisher

    def statistics(self, delivered: int, dropped: int) -> Statistics:
        return self.router.statistics(messages_delivered=delivered, messages_dropped=dropped)


class ClusterConnections:
    """A Redis Cluster: one link per node connection the router wants."""

    __slots__ = (
        "_changed",
        "_engine",
        "_links",
        "_ready",
        "_router",
        "_timer_deadline",
        "_timer_wake",
    )

    def __init__(
        self,
        engine: Engine,
        startup: Sequence[Node],
        refresh_interval: float,
        shard_subscriptions: ShardSubscriptions = "masters",
    ) -> None:
        self._engine = engine
        settings = engine.settings
        self._router: ClusterCore[Subscriber, PromiseOwner] = ClusterCore(
            startup,
            random=engine.backend.random,
            refresh_interval=refresh_interval,
            shard_subscriptions=shard_subscriptions,
            tls=settings.scheme == "rediss",
            **settings.core_options(),
        )
        self._links: dict[ConnectionKey, Link] = {}
        # The loop's signals replace these in start().
        self._ready: Signal = _NOT_STARTED
        # Set after every input from a connection or the timer: publishers waiting for
        # a connection look again.
        self._changed: Signal = _NOT_STARTED
        self._timer_wake: Signal = _NOT_STARTED
        self._timer_deadline: float | None = None

    @property
    def router(self) -> ClusterCore[Subscriber, PromiseOwner]:
        return self._router

    @property
    def connected(self) -> bool:
        return self._router.connected

    def start(self) -> None:
        backend = self._engine.backend
        self._ready = backend.new_signal()
        self._changed = backend.new_signal()
        self._timer_wake = backend.new_signal()
        self._engine.spawn(self._run_timer)
        self._reconcile()

    def changed(self) -> None:
        # A subscription or a promise changed: a node core may have a new deadline (a
        # promise's) without bytes to send, so every link's writer looks again.
        self._reconcile(wake_all=True)

    def stop(self) -> None:
        for link in self._links.values():
            link.stop()

    def close(self) -> None:
        # The router closes every node's core; a publish still waiting hears of the close.
        self._engine.dispatch(self._router.close())
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._ready.set()
        self._changed.set()
        self._timer_wake.set()

    # ---- the links the router wants

    def _reconcile(self, *, wake_all: bool = False) -> None:
        """Keep a link for exactly the connections the router wants; wake writers (those
        with bytes to send, or all of them)."""
        engine = self._engine
        if engine.closed or not engine.started:
            return
        wanted = self._router.connections()
        links = self._links
        for key in [k for k, link in links.items() if wanted.get(k) is not link.core]:
            links.pop(key).drop()
        for key, core in wanted.items():
            link = links.get(key)
            if link is None:
                link = links[key] = self._node_link(key, core)
                link.start()
            elif wake_all or core.wants_write:
                link.wake()
        if self._router.connected:
            self._ready.set()
        elif self._ready.is_set():
            self._ready = engine.backend.new_signal()
        deadline = self._router.next_deadline()
        waiting_until = self._timer_deadline
        if deadline is not None and (waiting_until is None or deadline < waiting_until):
            _set(self._timer_wake)  # the timer sleeps too long: wake it to look again

    def _node_link(self, key: ConnectionKey, core: Core) -> Link:
        role, node = key
        settings = replace(self._engine.settings, host=node.host, port=node.port)
        return Link(
            self._engine,
            core,
            settings,
            f"{role} {node}",
            on_events=lambda link, events: self._node_events(key, link, events),
            on_lost=lambda: self._node_lost(key),
        )

    def _node_events(self, key: ConnectionKey, link: Link, events: Events) -> None:
        router = self._router
        engine = self._engine
        if not router.holds_events and all(type(e) is MessagesReceived for e in events):
            # The common read: messages only, which change nothing the router decides.
            engine.dispatch(events)
            return
        events = router.handle_events(key, events, engine.backend.now())
        # The link's own readiness serves its publishes; the multiplexer's is the router's
        # (the topology known and the home connection up), set in _reconcile.
        engine.dispatch(events, link.take_reply)
        self._after_input()

    def _node_lost(self, key: ConnectionKey) -> None:
        self._engine.dispatch(self._router.connection_lost(key, self._engine.backend.now()))
        self._after_input()

    def _after_input(self) -> None:
        self._reconcile()
        _set(self._changed)

    async def _run_timer(self) -> None:
        engine = self._engine
        backend = engine.backend
        router = self._router
        while not engine.closed:
            wake = self._timer_wake
            if wake.is_set():
                self._timer_wake = wake = backend.new_signal()
            self._timer_deadline = deadline = router.next_deadline()
            with backend.cancel_scope(deadline=_forever if deadline is None else deadline):
                await wake.wait()
            self._timer_deadline = None
            deadline = router.next_deadline()
            now = backend.now()
            if deadline is not None and now >= deadline:
                engine.dispatch(router.handle_timeout(now))
                self._after_input()

    # ---- waiting and publishing

    async def wait_connected(self) -> None:
        """Until the topology is known and the channel connection is up."""
        engine = self._engine
        while True:
            ready = self._ready
            await ready.wait()
            if engine.closed:
                raise SubscriptionClosed("the multiplexer is closed")
            if ready is self._ready:
                return

    async def publish(self, channel: bytes, data: bytes, *, sharded: bool) -> int:
        error: ServerError | LinkDropped | None = None
        for _ in range(PUBLISH_ATTEMPTS):
            key = await self._publish_target(channel, sharded)
            try:
                return await self._links[key].publish(channel, data, sharded=sharded)
            except LinkDropped as exc:
                error = exc  # not sent: the router turned elsewhere, ask it again
                continue
            except ServerError as exc:
                if exc.code != "MOVED":
                    raise
                error = exc  # the slot moved: ask its new owner
            self._router.moved(error, key)
            self._reconcile()
        assert error is not None
        raise error

    async def _publish_target(self, channel: bytes, sharded: bool) -> ConnectionKey:
        """The ready commands connection for ``channel``, once there is one."""
        engine = self._engine
        while True:
            if engine.closed:
                raise SubscriptionClosed("the multiplexer is closed")
            key = self._router.publish_target(channel, sharded=sharded)
            if key is not None and key in self._links:
                return key
            changed = self._changed
            if changed.is_set():
                self._changed = engine.backend.new_signal()
                continue  # look again before sleeping: the change may be what we need
            self._reconcile()  # opens the connection publish_target asked for
            await changed.wait()

    def statistics(self, delivered: int, dropped: int) -> Statistics:
        return self._router.statistics(messages_delivered=delivered, messages_dropped=dropped)


_forever = float("inf")


class _NotStarted:
    """A signal before the event loop runs: setting it is harmless, waiting a bug."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def is_set(self) -> bool:
        return False

    async def wait(self) -> None:
        raise RuntimeError("the multiplexer has not started")


_NOT_STARTED = _NotStarted()


def _set(signal: Signal) -> None:
    if not signal.is_set():
        signal.set()


def cluster_startup(
    urls: str | Sequence[str], options: dict[str, object]
) -> tuple[list[Node], Settings]:
    """The startup nodes of ``ClusterMultiplexer(urls, **options)``, and the settings of
    every node connection (those of the first URL), checked."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    if not listed or not all(isinstance(url, str) for url in listed):
        raise TypeError("startup_urls must be a URL or a non-empty list of URLs")
    nodes = []
    first: Settings | None = None
    for url in listed:
        settings = Settings.from_url(url, **options)  # type: ignore[arg-type]
        if settings.scheme == "unix":
            raise ValueError("a cluster node is reached over TCP, not a unix socket")
        if settings.sentinels:
            raise ValueError("a cluster is found through its startup nodes, not sentinels")
        if settings.db != 0:
            raise ValueError("Redis Cluster has only database 0")
        assert settings.host is not None
        assert settings.port is not None
        nodes.append(Node(settings.host, settings.port))
        first = first or settings
    assert first is not None
    return nodes, first
