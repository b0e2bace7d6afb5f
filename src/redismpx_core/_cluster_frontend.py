"""The public ClusterMultiplexer, written once over the drivers' loop interface.

It is a :class:`MultiplexerBase` whose core is a :class:`ClusterCore`: the
subscriptions, iterators and promises are the same objects as on one server. What
differs is the connections: the router says which it wants (one per node and
role), and this front end keeps exactly those running, one driver runner each,
feeding what each produces back through the router. It also runs the router's
timer (periodic and throttled topology refreshes) and routes publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from ._cluster import ClusterCore, ConnectionKey
from ._errors import ServerError, SubscriptionClosed
from ._events import (
    ConnectionEstablished,
    Event,
    MessagesReceived,
    PublishCompleted,
    PublishFailed,
)
from ._frontend import (
    Loop,
    MultiplexerBase,
    Runner,
    Signal,
    SubscriptionRouter,
    _PublishWaiter,
    log_handshake,
)
from ._names import coerce_name
from ._settings import Settings
from ._statistics import Statistics
from ._topology import Node

__all__ = ("ClusterMultiplexerBase",)

#: A publish redirected (MOVED) is sent again on the new owner, this many times at most.
PUBLISH_ATTEMPTS = 5


class ClusterMultiplexerBase(MultiplexerBase):
    """Everything a ClusterMultiplexer does that does not depend on the I/O library."""

    def __init__(
        self,
        startup_urls: str | Sequence[str] = "redis://localhost:6379/0",
        *,
        refresh_interval: float = 30.0,
        **options: Any,
    ) -> None:
        urls = [startup_urls] if isinstance(startup_urls, str) else list(startup_urls)
        if not urls or not all(isinstance(url, str) for url in urls):
            raise TypeError("startup_urls must be a URL or a non-empty list of URLs")
        nodes = []
        for url in urls:
            settings = Settings.from_url(url, **options)
            if settings.scheme == "unix":
                raise ValueError("a cluster node is reached over TCP, not a unix socket")
            if settings.sentinels:
                raise ValueError("a cluster is found through its startup nodes, not sentinels")
            if settings.db != 0:
                raise ValueError("Redis Cluster has only database 0")
            assert settings.host is not None
            assert settings.port is not None
            nodes.append(Node(settings.host, settings.port))
        self._startup_nodes = nodes
        self._refresh_interval = refresh_interval
        super().__init__(urls[0], **options)
        self._runners: dict[ConnectionKey, Runner] = {}
        # Set after every input from a connection or the timer: publishers waiting for
        # a connection look again.
        self._changed: Signal | None = None
        self._timer_wake: Signal | None = None
        self._timer_deadline: float | None = None

    @property
    def _cluster(self) -> ClusterCore:
        assert isinstance(self._core, ClusterCore)
        return self._core

    def _new_router(self) -> SubscriptionRouter:
        return ClusterCore(
            self._startup_nodes,
            random=self._random,
            refresh_interval=self._refresh_interval,
            tls=self.settings.scheme == "rediss",
            **self.settings.core_options(),
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ready" if self.connected else "connecting")
        return f"<{type(self).__name__} {len(self._startup_nodes)} startup nodes {state}>"

    # ---- connections

    def _start(self, loop: Loop) -> None:
        self._loop = loop
        self._started = True
        self._ready = loop.new_signal()
        self._changed = loop.new_signal()
        self._timer_wake = loop.new_signal()
        loop.spawn(self._run_timer)
        self._reconcile()

    def _reconcile(self) -> None:
        """Keep a runner for exactly the connections the router wants; wake writers."""
        if self._closed or not self._started:
            return
        wanted = self._cluster.connections()
        runners = self._runners
        for key in [k for k, r in runners.items() if wanted.get(k) is not r.core]:
            runners.pop(key).stop()
        for key, core in wanted.items():
            runner = runners.get(key)
            if runner is None:
                runner = runners[key] = self._node_runner(key, core)
                self._loop.spawn(runner.run)
            elif core.wants_write:
                runner.wake()
        ready = self._ready
        assert ready is not None
        if self._cluster.connected:
            ready.set()
        elif ready.is_set():
            self._ready = self._loop.new_signal()
        deadline = self._cluster.next_deadline()
        waiting_until = self._timer_deadline
        if deadline is not None and (waiting_until is None or deadline < waiting_until):
            self._set(self._timer_wake)  # the timer sleeps too long: wake it to look again

    @staticmethod
    def _set(signal: Signal | None) -> None:
        if signal is not None and not signal.is_set():
            signal.set()

    def _node_runner(self, key: ConnectionKey, core: Any) -> Runner:
        role, node = key
        settings = replace(self.settings, host=node.host, port=node.port)
        return self._runner_type(
            core,
            settings,
            partial(self._dispatch_node, key),
            partial(self._node_lost, key),
            f"{role} {node}",
        )

    def _dispatch_node(self, key: ConnectionKey, events: list[Event]) -> None:
        cluster = self._cluster
        if not cluster.holds_events and all(e.__class__ is MessagesReceived for e in events):
            # The common read: messages only, which change nothing the router decides.
            self._dispatch(events)
            return
        events = cluster.handle_events(key, events, self._loop.now())
        self._dispatch([e for e in events if not self._took_reply(key, e)])
        self._reconcile()
        self._set(self._changed)

    def _took_reply(self, key: ConnectionKey, event: Event) -> bool:
        cls = event.__class__
        if cls is PublishCompleted or cls is PublishFailed:
            self._publish_reply(key, event)
            return True
        if cls is ConnectionEstablished:
            role, node = key
            target = replace(self.settings, host=node.host, port=node.port).redacted_url()
            log_handshake(f"{role} {node}", target, self._cluster.connections()[key])
            return True  # readiness is the router's, not one connection's
        return False

    def _node_lost(self, key: ConnectionKey) -> None:
        self._dispatch(self._cluster.connection_lost(key, self._loop.now()))
        self._reconcile()
        self._set(self._changed)

    async def _run_timer(self) -> None:
        while not self._closed:
            wake = self._timer_wake
            assert wake is not None
            if wake.is_set():
                self._timer_wake = wake = self._loop.new_signal()
            self._timer_deadline = self._cluster.next_deadline()
            await self._loop.wait(wake, self._timer_deadline)
            self._timer_deadline = None
            deadline = self._cluster.next_deadline()
            if deadline is not None and self._loop.now() >= deadline:
                self._dispatch(self._cluster.handle_timeout(self._loop.now()))
                self._reconcile()
                self._set(self._changed)

    def _wake_writer(self) -> None:
        self._reconcile()

    def _close(self) -> None:
        for runner in self._runners.values():
            runner.stop()
        self._runners.clear()
        super()._close()

    # ---- public API

    async def wait_connected(self) -> None:
        """Wait until the topology is known and the channel connection is up."""
        await super().wait_connected()

    async def _publish(self, channel: str | bytes, data: bytes, *, sharded: bool) -> int:
        name = coerce_name(channel, "channel")
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self._check_usable()
        error: ServerError | None = None
        for _ in range(PUBLISH_ATTEMPTS):
            key = await self._publish_target(name, sharded)
            core = self._cluster.connections()[key]
            token = core.publish(name, data, sharded=sharded)
            waiter = _PublishWaiter(self._loop.new_signal())
            self._publishes[key, token] = waiter
            self._runners[key].wake()
            try:
                await waiter.signal.wait()
            finally:
                self._publishes.pop((key, token), None)
            if waiter.error is None:
                return waiter.receivers
            if not (isinstance(waiter.error, ServerError) and waiter.error.code == "MOVED"):
                raise waiter.error
            error = waiter.error  # the slot moved: ask its new owner
            self._cluster.moved(error, key)
            self._reconcile()
        assert error is not None
        raise error

    async def _publish_target(self, name: bytes, sharded: bool) -> ConnectionKey:
        """The ready commands connection for ``name``, once there is one."""
        while True:
            if self._closed:
                raise SubscriptionClosed("the multiplexer is closed")
            key = self._cluster.publish_target(name, sharded=sharded)
            if key is not None and key in self._runners:
                return key
            changed = self._changed
            assert changed is not None
            if changed.is_set():
                self._changed = self._loop.new_signal()
                continue  # look again before sleeping: the change may be what we need
            self._reconcile()  # opens the connection publish_target asked for
            await changed.wait()

    def statistics(self) -> Statistics:
        return self._cluster.statistics(
            messages_delivered=self._delivered, messages_dropped=self._dropped
        )

    @property
    def connected(self) -> bool:
        return self._cluster.connected
