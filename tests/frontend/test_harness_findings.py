"""Bugs the front end's state machine found (test_harness.py), each reduced to a few
steps on the fake loop: deterministic, no sockets, no real time.

Each test fails until its bug is fixed; the docstring says what the harness saw.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core.fake_cluster import FakeCluster
from core.fake_redis import FakeRedis
from frontend.fake_loop import FakeLoop, FakeSignal, NeverIdle, Task
from redismpx_core import Node, RedisMPXError, key_slot
from redismpx_frontend import Address, ClusterMultiplexer, Multiplexer

NODES = [Node("10.0.0.1", 7001), Node("10.0.0.2", 7002), Node("10.0.0.3", 7003)]
URLS = [f"redis://{node.host}:{node.port}" for node in NODES]


@pytest.fixture
def new_loop() -> Iterator[Callable[..., FakeLoop]]:
    """Fake loops for the test, each closed at its end (tasks left unwind there)."""
    made: list[FakeLoop] = []

    def make(**options: Any) -> FakeLoop:
        loop = FakeLoop(**options)
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.close()


class Running:
    """A multiplexer entered in a task of the fake loop, until ``close()``."""

    def __init__(self, loop: FakeLoop, mpx: Any) -> None:
        self.loop = loop
        self.mpx = mpx
        self._stop: FakeSignal = loop.new_signal()
        self.task: Task = loop.spawn(self._main, name="main")
        loop.run_until_idle()

    async def _main(self) -> None:
        async with self.mpx:
            await self._stop.wait()

    def settle(self, *, rounds: int = 40) -> None:
        """Deliver everything and let timers run until connected and quiet."""
        loop = self.loop
        for _ in range(rounds):
            loop.run_until_idle()
            while loop.deliver_all():
                loop.run_until_idle()
            deadline = loop.next_deadline()
            if self.mpx.connected or deadline is None:
                break
            loop.advance(deadline - loop.now())
        loop.run_until_idle()
        while loop.deliver_all():
            loop.run_until_idle()

    def close(self) -> None:
        self._stop.set()
        self.loop.run_until_idle()


def async_callbacks(told: list[object]) -> tuple[Any, Any, Any]:
    """Async on_message, on_disconnect and on_activation that note what they are told."""

    async def on_message(channel: bytes, data: bytes) -> None:
        pass

    async def on_disconnect(error: Exception) -> None:
        told.append(("disconnected", type(error).__name__))

    async def on_activation(name: bytes) -> None:
        told.append(("activated", name))

    return on_message, on_disconnect, on_activation


def cluster_on(loop: FakeLoop, **options: Any) -> tuple[FakeCluster, Running]:
    cluster = FakeCluster(NODES)
    for node in NODES:
        loop.listen((node.host, node.port), lambda node=node: cluster.connect(node))
    return cluster, Running(loop, ClusterMultiplexer(URLS, backend=loop, **options))


def server_on(loop: FakeLoop, **options: Any) -> tuple[FakeRedis, Running]:
    server = FakeRedis()
    loop.listen(("redis", 6379), server.connect)
    return server, Running(loop, Multiplexer("redis://redis:6379", backend=loop, **options))


def counting_connects(loop: FakeLoop) -> list[tuple[float, int]]:
    """Every connection attempt, as (virtual time, port)."""
    attempts: list[tuple[float, int]] = []
    connect: Callable[[Address], Any] = loop.connect

    async def counted(address: Address) -> Any:
        attempts.append((loop.now(), address.port))
        return await connect(address)

    loop.connect = counted  # type: ignore[method-assign]
    return attempts


def test_the_cluster_timer_waits_while_the_topology_cannot_be_asked(
    new_loop: Callable[..., FakeLoop],
) -> None:
    """Found by every ClusterMachine example, at its first step. Until the control's
    commands connection completes its handshake, ``ClusterCore.next_deadline()`` says a
    refresh is due at ``_refresh_not_before`` (0.0: long past), ``handle_timeout`` can
    send nothing, and ``ClusterConnections._run_timer`` wakes at once, again and again:
    a busy loop for as long as the control cannot connect (with anyio, about 5,000
    wake-ups a second while no node answers)."""
    loop = new_loop(max_steps=5_000)
    _, running = cluster_on(loop, health_check_interval=None)
    spun = None
    try:
        loop.run_until_idle()  # the server's replies not delivered: no handshake yet
    except NeverIdle as exc:
        spun = exc
    assert spun is None, f"the cluster's timer never waits: {spun}"
    running.settle()
    assert running.mpx.connected


def test_a_cluster_whose_nodes_all_refuse_backs_off(new_loop: Callable[..., FakeLoop]) -> None:
    """Found by ClusterMachine (refuse_connections; or two nodes killed and the third
    refusing). When a node's connection fails, the router turns to the next node for
    its control and its home, and each new node's connection is tried at once, with a
    fresh core and so no backoff: with every node refusing, the front end tries them in
    turn without ever waiting (about 400 attempts a second against closed local ports)."""
    loop = new_loop(max_steps=5_000)
    attempts = counting_connects(loop)
    for node in NODES:
        loop.down.add((node.host, node.port))
    spun = None
    try:
        cluster_on(loop, health_check_interval=None)
        loop.advance(1.0)
    except NeverIdle as exc:
        spun = exc
    at_once = sum(1 for when, _ in attempts if when == 0.0)
    assert spun is None, f"{len(attempts)} connection attempts, {at_once} of them at once"
    # One server's runner backs off from 0.1 s, doubling: a few attempts per node.
    assert len(attempts) <= 5 * len(NODES), attempts


def test_a_cluster_publish_is_not_left_waiting_on_a_connection_the_router_dropped(
    new_loop: Callable[..., FakeLoop],
) -> None:
    """Found by ClusterMachine (kill_node, publish, settle: "a publish never answered").
    A publish takes the control's commands connection while it is ready, and waits in
    ``Link.publish`` for it to be ready again when it is lost meanwhile; the router then
    turns to another node and drops that link (``Link.stop``), whose readiness is never
    set again: the publish waits forever, though the cluster takes publishes again at
    once. Which interleavings lose the race depends on the order tasks run in, so this
    tries the same steps under many seeded schedules (about one in ten hangs)."""
    hung = []
    for seed in range(30):
        loop = new_loop(schedule=random.Random(seed))
        cluster, running = cluster_on(loop, health_check_interval=None)
        cluster.kill(NODES[0])  # the first control, before it is even connected
        outcome: list[object] = []

        async def publish(running: Running = running, outcome: list[object] = outcome) -> None:
            try:
                outcome.append(await running.mpx.publish("news", b"hello"))
            except RedisMPXError as exc:
                outcome.append(exc)

        loop.spawn(publish)
        for _ in range(6):
            running.settle()
            loop.advance(1.0)
        if not outcome:
            hung.append(seed)
    assert not hung, f"the publish never answered under schedules {hung}"


def test_a_cluster_promise_expires_on_time(new_loop: Callable[..., FakeLoop]) -> None:
    """Found by ClusterMachine ("promise pending past its deadline"). A new promise
    changes no bytes to send, and ``ClusterConnections.changed()`` wakes a node's writer
    only when its core wants to write: the home connection's writer keeps sleeping
    towards its old deadline (the next health check, or none), and the promise expires
    that much late, or never while the connection stays idle."""
    loop = new_loop()
    _, running = cluster_on(loop, health_check_interval=None)
    promises = running.mpx.new_promise_subscription("reply:")
    running.settle()
    assert promises.active
    promise = promises.new_promise("1", 1.0)
    loop.advance(1.5)
    assert promise.done, "the promise is still pending, 0.5 s past its deadline"
    running.close()


def test_a_refusal_does_not_take_back_the_activation_of_another_name(
    new_loop: Callable[..., FakeLoop],
) -> None:
    """Found by ClusterMachine, and the same on one server ("active, on_activation never
    said so"). After a reconnect, a queued (async) subscription is told of ``a``'s
    activation; then Redis refuses ``b``, and ``rejected`` goes through ``disconnected``,
    whose notice supersedes the queued activations: ``a`` is active, and its holder
    was told only that it was disconnected."""
    loop = new_loop()
    server, running = server_on(loop, health_check_interval=None)
    told: list[object] = []

    on_message, on_disconnect, on_activation = async_callbacks(told)
    sub = running.mpx.new_channel_subscription(on_message, on_disconnect, on_activation)
    sub.add("a")
    running.settle()
    sub.add("b")
    running.settle()
    told.clear()
    server.deny(None, b"b")
    for stream in loop.open_streams():
        stream.drop()
    running.settle()
    assert server.channels() == {b"a"}
    assert told[0] == ("disconnected", "ConnectionLost"), told
    assert ("activated", b"a") in told, told


def test_a_small_buffer_never_shows_two_activations_in_a_row(
    new_loop: Callable[..., FakeLoop],
) -> None:
    """Found by both machines with a buffer of one or two ("on_activation twice, no
    on_disconnect between"). A consumer stuck in ``on_activation`` holds a full buffer;
    the reconnect's disconnect notice fills it, then the new activation makes room by
    dropping the oldest notice: the disconnect. Released, the consumer sees activation,
    activation, which _state.py promises never happens. (When the buffer must lose one
    of the two, losing both would keep the holder's picture right: it was active, and
    is again.)"""
    loop = new_loop()
    _, running = server_on(loop, health_check_interval=None)
    gate = loop.new_signal()
    told: list[object] = []

    async def on_message(channel: bytes, data: bytes) -> None:
        pass

    async def on_activation(name: bytes) -> None:
        told.append(("activated", name))
        await gate.wait()

    async def on_disconnect(error: Exception) -> None:
        told.append(("disconnected", type(error).__name__))

    sub = running.mpx.new_channel_subscription(
        on_message, on_disconnect, on_activation, buffer_size=1
    )
    sub.add("a")
    running.settle()  # the consumer is now stuck in its first on_activation
    for stream in loop.open_streams():
        stream.drop()
    running.settle()
    gate.set()
    loop.run_until_idle()
    pairs = list(itertools.pairwise(told))
    assert (("activated", b"a"), ("activated", b"a")) not in pairs, told
    running.close()


def test_a_slot_migration_is_told_by_one_activation_on_the_new_owner(
    new_loop: Callable[..., FakeLoop],
) -> None:
    """Found by ClusterMachine (migrate, settle: "on_activation twice, no on_disconnect
    between"), and kept as designed (docs/cluster.md): when a slot migrates, its old
    owner unsubscribes the slot's shard channels itself, the router places each on the
    new owner, and its holder hears on_activation there, the one notice of a move (no
    connection was lost, so no on_disconnect). What must hold is that the name is active
    on the new owner alone, told once, and that a queued holder gets the same."""
    loop = new_loop()
    cluster, running = cluster_on(loop, health_check_interval=None)
    told: dict[str, list[object]] = {"sync": [], "async": []}

    def callbacks(style: str) -> tuple[Any, Any, Any]:
        log = told[style]
        if style == "sync":
            return (
                lambda channel, data: None,
                lambda error: log.append(("disconnected", type(error).__name__)),
                lambda name: log.append(("activated", name)),
            )
        return async_callbacks(log)

    subs = [running.mpx.new_sharded_subscription(*callbacks(style)) for style in told]
    for sub in subs:
        sub.add("s0")
    running.settle()
    assert told == {style: [("activated", b"s0")] for style in told}
    owner = cluster.owner(b"s0")
    cluster.move_slot(key_slot(b"s0"), next(node for node in NODES if node != owner))
    for _ in range(3):
        running.settle()
        loop.advance(1.0)
    running.settle()
    assert cluster.shard_holders(b"s0") == [cluster.owner(b"s0")]
    assert told == {style: [("activated", b"s0")] * 2 for style in told}
    running.close()


def test_a_server_unsubscribe_does_not_take_back_the_activation_of_another_name(
    new_loop: Callable[..., FakeLoop],
) -> None:
    """Found by FrontEndMachine (server_unsubscribe: "active, on_activation never said
    so"); the same family as the refusal above. A queued subscription's activation of
    ``s0`` and ``s1`` waits in its queue when the server unsubscribes ``s1`` of its own
    accord: the stand-alone core tells the holder with a SubscriptionDisconnected (the
    event names no name), whose notice supersedes every queued activation. ``s1`` is
    announced again once resubscribed; ``s0``, active all along, never is."""
    loop = new_loop()
    server, running = server_on(loop, health_check_interval=None)
    running.settle()
    told: list[object] = []

    on_message, on_disconnect, on_activation = async_callbacks(told)
    sub = running.mpx.new_sharded_subscription(on_message, on_disconnect, on_activation)
    sub.add("s0", "s1")
    loop.run_until_idle()  # SSUBSCRIBE sent; the confirmations wait in the server
    (stream,) = loop.open_streams()
    stream.server.server_unsubscribe("shard", b"s1")  # queued after the confirmations
    running.settle()
    assert server.shard_channels() == {b"s0", b"s1"}
    assert ("activated", b"s0") in told, told
    running.close()
