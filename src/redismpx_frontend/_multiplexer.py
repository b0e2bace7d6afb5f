"""The multiplexers: the public API, over a backend.

``Multiplexer(url, backend=...)`` serves one server (or the master that the
sentinels name), ``ClusterMultiplexer(startup_urls, backend=...)`` a Redis Cluster;
they differ only in their connection strategy (``_connections.py``). Each is an
async context manager that owns a task group: its connections and the consumers
of slow subscriptions run there, and leaving the block closes everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, ClassVar, Self

from redismpx_core import OverflowPolicy, Settings, Statistics, SubscriptionKind
from redismpx_core._cluster import ShardSubscriptions
from redismpx_core._names import check_publish, coerce_name

from ._backend import Backend, TaskGroup
from ._connections import ClusterConnections, ServerConnections, cluster_startup
from ._consumers import (
    ActivationCallback,
    CallbackConsumer,
    ChannelSubscription,
    DisconnectCallback,
    MessageCallback,
    PatternSubscription,
    ShardedSubscription,
)
from ._engine import Engine
from ._iterator import MessageIterator
from ._promises import PromiseSubscription

__all__ = ("ClusterMultiplexer", "Multiplexer", "MultiplexerAPI")


class MultiplexerAPI:
    """What both multiplexers offer (see :class:`Multiplexer`).

    A subclass may name its default backend: ``class Multiplexer(redismpx_frontend.
    Multiplexer, backend=...)`` is how a driver makes its own.
    """

    _default_backend: ClassVar[Backend | None] = None

    def __init_subclass__(cls, *, backend: Backend | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if backend is not None:
            cls._default_backend = backend

    @classmethod
    def _backend(cls, backend: Backend | None) -> Backend:
        chosen = backend if backend is not None else cls._default_backend
        if chosen is None:
            raise TypeError(
                f"{cls.__name__} needs a backend=, or use a driver's "
                f"(redismpx_anyio.{cls.__name__}, redismpx_trio.{cls.__name__})"
            )
        return chosen

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tasks: AbstractAsyncContextManager[TaskGroup] | None = None
        self._task_group: TaskGroup | None = None

    def __repr__(self) -> str:
        engine = self._engine
        if engine.closed:
            state = "closed"
        elif engine.connections.connected:
            state = "ready"
        else:
            state = "connecting" if engine.started else "not entered"
        return f"<{type(self).__name__} {self._where()} {state}>"

    def _where(self) -> str:
        return self._engine.settings.redacted_url()

    async def __aenter__(self) -> Self:
        engine = self._engine
        if engine.started or engine.closed:
            raise RuntimeError(f"a {type(self).__name__} can be entered only once")
        tasks = engine.backend.open_task_group()
        self._task_group = await tasks.__aenter__()
        self._tasks = tasks
        engine.start(self._task_group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._tasks is not None
        assert self._task_group is not None
        # Stop the connections and consumers first, so that no reader feeds a closed
        # core; then fail what is left (promises, waiters in other tasks).
        self._task_group.cancel_scope.cancel()
        try:
            # The body's exception is not handed to the task group, which would wrap it
            # in an ExceptionGroup; our tasks raise nothing of their own, so it
            # propagates from here as it is.
            await self._tasks.__aexit__(None, None, None)
        finally:
            self._engine.close()

    # ---- subscriptions

    def new_channel_subscription(
        self,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> ChannelSubscription:
        """A subscription to channels added and removed with ``add``/``remove``."""
        return ChannelSubscription(
            CallbackConsumer(
                self._engine,
                SubscriptionKind.CHANNEL,
                on_message,
                on_disconnect,
                on_activation,
                buffer_size,
                overflow,
            )
        )

    def new_sharded_subscription(
        self,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> ShardedSubscription:
        """A subscription to shard channels (SSUBSCRIBE, Redis 7+)."""
        return ShardedSubscription(
            CallbackConsumer(
                self._engine,
                SubscriptionKind.SHARD,
                on_message,
                on_disconnect,
                on_activation,
                buffer_size,
                overflow,
            )
        )

    def new_pattern_subscription(
        self,
        pattern: str | bytes,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> PatternSubscription:
        """A subscription to one glob-style pattern; ``on_message`` gets the concrete channel."""
        name = coerce_name(pattern, "pattern")
        consumer = CallbackConsumer(
            self._engine,
            SubscriptionKind.PATTERN,
            on_message,
            on_disconnect,
            on_activation,
            buffer_size,
            overflow,
        )
        return PatternSubscription(consumer, name)

    def new_node_wide_channel_subscription(
        self,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> ChannelSubscription:
        """A channel subscription held on every master of a cluster, for what each node
        publishes to its own subscribers only (``__keyevent@0__:expired``, say).

        ``on_activation(name)`` fires once per master that confirms a name, and
        ``on_disconnect`` once per master whose connection is lost, with a
        :class:`NodeConnectionLost` naming it: that node's notifications may have been
        missed until its next activation. On a :class:`Multiplexer` (one server) it is
        an ordinary channel subscription. See docs/cluster.md.
        """
        return ChannelSubscription(
            CallbackConsumer(
                self._engine,
                SubscriptionKind.CHANNEL,
                on_message,
                on_disconnect,
                on_activation,
                buffer_size,
                overflow,
                node_wide=True,
            )
        )

    def new_node_wide_pattern_subscription(
        self,
        pattern: str | bytes,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> PatternSubscription:
        """A pattern subscription held on every master of a cluster (``__keyspace@0__:*``,
        say): see :meth:`new_node_wide_channel_subscription`."""
        name = coerce_name(pattern, "pattern")
        consumer = CallbackConsumer(
            self._engine,
            SubscriptionKind.PATTERN,
            on_message,
            on_disconnect,
            on_activation,
            buffer_size,
            overflow,
            node_wide=True,
        )
        return PatternSubscription(consumer, name)

    def new_promise_subscription(self, prefix: str | bytes) -> PromiseSubscription:
        """Networked promises on channels that start with ``prefix``."""
        return PromiseSubscription(self._engine, prefix)

    def subscribe(
        self,
        *channels: str | bytes,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """``async with mpx.subscribe("a", "b") as it: async for msg in it: ...``

        The channels are subscribed when the block is entered, not before.
        """
        return MessageIterator(
            self._engine, SubscriptionKind.CHANNEL, channels, buffer_size, overflow
        )

    def psubscribe(
        self,
        pattern: str | bytes,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """``async with mpx.psubscribe("news:*") as it: ...``; ``msg.pattern`` is set."""
        return MessageIterator(
            self._engine, SubscriptionKind.PATTERN, [pattern], buffer_size, overflow
        )

    def ssubscribe(
        self,
        *channels: str | bytes,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """``async with mpx.ssubscribe("user:{42}") as it: ...`` (Redis 7+)."""
        return MessageIterator(
            self._engine, SubscriptionKind.SHARD, channels, buffer_size, overflow
        )

    def subscribe_node_wide(
        self,
        *channels: str | bytes,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """:meth:`subscribe` on every master of a cluster (see
        :meth:`new_node_wide_channel_subscription`); entering waits until every master
        has confirmed every channel."""
        return MessageIterator(
            self._engine, SubscriptionKind.CHANNEL, channels, buffer_size, overflow, node_wide=True
        )

    def psubscribe_node_wide(
        self,
        pattern: str | bytes,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """:meth:`psubscribe` on every master of a cluster; entering waits until every
        master has confirmed the pattern."""
        return MessageIterator(
            self._engine, SubscriptionKind.PATTERN, [pattern], buffer_size, overflow, node_wide=True
        )

    # ---- the connection

    async def wait_connected(self) -> None:
        """Wait until the subscription connection is up (handshake done)."""
        self._engine.check_usable()
        await self._engine.connections.wait_connected()

    async def publish(self, channel: str | bytes, data: bytes) -> int:
        """PUBLISH ``data`` on ``channel``; returns the number of receivers.

        Under RESP3 it shares the subscription connection; under RESP2 (where Redis
        refuses PUBLISH on a subscribed connection) it uses a second connection,
        opened on first use. Waits for a connection; raises :class:`ConnectionLost`
        if the connection drops before Redis answers (the message may or may not
        have been published), :class:`ServerError` if Redis refuses it.
        """
        name = check_publish(channel, data)
        self._engine.check_usable()
        return await self._engine.connections.publish(name, data, sharded=False)

    async def spublish(self, channel: str | bytes, data: bytes) -> int:
        """SPUBLISH (Redis 7+): like :meth:`publish`, for shard channels."""
        name = check_publish(channel, data)
        self._engine.check_usable()
        return await self._engine.connections.publish(name, data, sharded=True)

    def statistics(self) -> Statistics:
        """A frozen snapshot of this multiplexer's counters."""
        return self._engine.statistics()

    @property
    def connected(self) -> bool:
        return self._engine.connections.connected

    @property
    def settings(self) -> Settings:
        """The validated options (the password is left out of their ``repr``)."""
        return self._engine.settings


class Multiplexer(MultiplexerAPI):
    """Many Pub/Sub subscriptions over one Redis connection, on any backend.

    ``async with Multiplexer("redis://localhost:6379/0", backend=...) as mpx: ...``
    Leaving the block closes everything: sockets, subscriptions, pending promises
    and waiters. The drivers' ``Multiplexer`` classes are this one with their
    backend filled in.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        backend: Backend | None = None,
        **options: Any,
    ) -> None:
        settings = Settings.from_url(url, **options)
        super().__init__(Engine(self._backend(backend), settings, ServerConnections))


class ClusterMultiplexer(MultiplexerAPI):
    """The Multiplexer's API over a Redis Cluster, on any backend.

    Channel and pattern subscriptions ride one node's connection; shard channels ride
    the connection of the master owning their slot (``shard_subscriptions="masters"``,
    the default) or of one of its replicas (``"replicas"``), and follow it when the
    cluster changes. See docs/cluster.md.
    """

    def __init__(
        self,
        startup_urls: str | Sequence[str] = "redis://localhost:6379/0",
        *,
        backend: Backend | None = None,
        refresh_interval: float = 30.0,
        shard_subscriptions: ShardSubscriptions = "masters",
        **options: Any,
    ) -> None:
        nodes, settings = cluster_startup(startup_urls, options)
        self._startup_nodes = len(nodes)
        super().__init__(
            Engine(
                self._backend(backend),
                settings,
                lambda engine: ClusterConnections(
                    engine, nodes, refresh_interval, shard_subscriptions
                ),
            )
        )

    def _where(self) -> str:
        return f"{self._startup_nodes} startup nodes"
