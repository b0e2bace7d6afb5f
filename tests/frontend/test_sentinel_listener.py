"""Failovers heard as they happen, on the fake loop: a multiplexer in sentinel mode
listens to ``+switch-master`` on one sentinel, and moves its connections on an
announcement for its master. Deterministic: no sockets, no real time; each step
runs until every task waits, so "at once" means "before the virtual clock moved".

The fakes: data nodes that answer ROLE, and sentinels that answer
GET-MASTER-ADDR-BY-NAME with the world's current master and publish announcements
(both over the in-memory FakeRedis).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core.fake_redis import FakeConnection, FakeRedis, RespError
from frontend.fake_loop import FakeLoop, FakeSignal, FakeStream, Task
from redismpx_core import ConnectionLost
from redismpx_frontend import Multiplexer

S1, S2 = ("s1", 26379), ("s2", 26379)
A, B = ("10.0.0.1", 6379), ("10.0.0.2", 6379)
URL = "redis+sentinel://s1:26379,s2:26379/mymaster"
CHANNEL = b"+switch-master"


class _NodeConnection(FakeConnection):
    server: FakeNode

    def _execute(self, command: list[bytes]) -> None:
        if command[0].lower() == b"role":
            self._reply([self.server.role.encode(), 0, []])
            return
        super()._execute(command)


class FakeNode(FakeRedis):
    """A data node: a FakeRedis that answers ROLE with ``role``."""

    def __init__(self) -> None:
        super().__init__()
        self.role = "master"

    def connect(self) -> FakeConnection:
        conn = _NodeConnection(self, next(self._ids))
        self.connections.append(conn)
        return conn


class _SentinelConnection(FakeConnection):
    server: FakeSentinel

    def _execute(self, command: list[bytes]) -> None:
        if command[0].lower() == b"sentinel":
            self.server.queries += 1
            if command[1:] != [b"GET-MASTER-ADDR-BY-NAME", b"mymaster"]:
                self._reply(RespError("ERR unexpected sentinel command in this test"))
                return
            host, port = self.server.world.master
            self._reply([host, str(port)])
            return
        super()._execute(command)


class FakeSentinel(FakeRedis):
    """A sentinel: GET-MASTER-ADDR-BY-NAME answers the world's master; Pub/Sub is a
    FakeRedis's, so :meth:`announce` reaches whoever subscribed to +switch-master."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.queries = 0

    def connect(self) -> FakeConnection:
        conn = _SentinelConnection(self, next(self._ids))
        self.connections.append(conn)
        return conn

    def announce(self, payload: bytes) -> int:
        return self.publish(CHANNEL, payload)

    def listeners(self) -> int:
        return self.numsub(CHANNEL)


class World:
    """Two data nodes, two sentinels and a multiplexer over them, on one fake loop."""

    def __init__(
        self, loop: FakeLoop, before: Callable[[World], None] | None = None, **options: Any
    ) -> None:
        self.loop = loop
        self.master = A
        self.nodes = {A: FakeNode(), B: FakeNode()}
        self.sentinels = {S1: FakeSentinel(self), S2: FakeSentinel(self)}
        for address, server in [*self.nodes.items(), *self.sentinels.items()]:
            loop.listen(address, server.connect)
        if before is not None:
            before(self)  # changes to the fakes before the multiplexer starts
        options = {"health_check_interval": None, "backoff_base": 1.0, **options}
        self.mpx = Multiplexer(URL, backend=loop, **options)
        self.told: list[tuple[str, object]] = []
        self._stop: FakeSignal = loop.new_signal()
        self.task: Task = loop.spawn(self._main, name="main")
        self.settle()
        assert self.mpx.connected
        self.sub = self.mpx.new_channel_subscription(
            lambda channel, data: self.told.append(("message", data)),
            lambda error: self.told.append(("disconnected", error)),
            lambda name: self.told.append(("activated", name)),
        )
        self.sub.add("a")
        self.settle()
        assert self.told == [("activated", b"a")]

    async def _main(self) -> None:
        async with self.mpx:
            await self._stop.wait()

    def settle(self) -> None:
        """Deliver everything, until nothing moves; the clock stays where it is."""
        loop = self.loop
        loop.run_until_idle()
        while loop.deliver_all():
            loop.run_until_idle()

    def wait(self, seconds: float) -> None:
        self.loop.advance(seconds)
        self.settle()

    def close(self) -> None:
        self._stop.set()
        self.settle()

    def data_streams(self) -> list[FakeStream]:
        return [s for s in self.loop.open_streams() if s.key in self.nodes]

    def listener_stream(self) -> FakeStream | None:
        """The open connection to a sentinel with a subscription on it."""
        found = [
            s for s in self.loop.open_streams() if s.key in self.sentinels and s.server.channels
        ]
        assert len(found) <= 1
        return found[0] if found else None

    def queries(self) -> int:
        return sum(sentinel.queries for sentinel in self.sentinels.values())

    def publish(self) -> int:
        """``await mpx.publish("a", ...)`` in a task of its own; its receiver count."""
        results: list[int] = []

        async def publish() -> None:
            results.append(await self.mpx.publish("a", b"published"))

        self.loop.spawn(publish)
        self.settle()
        (result,) = results
        return result


@pytest.fixture
def new_world() -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(before: Callable[[World], None] | None = None, **options: Any) -> World:
        world = World(FakeLoop(), before, **options)
        made.append(world)
        return world

    yield make
    for world in made:
        world.loop.close()


def switch(old: tuple[str, int], new: tuple[str, int], name: str = "mymaster") -> bytes:
    return f"{name} {old[0]} {old[1]} {new[0]} {new[1]}".encode()


def test_the_listener_subscribes_on_the_first_sentinel(new_world: Callable[..., World]) -> None:
    world = new_world()
    listener = world.listener_stream()
    assert listener is not None
    assert listener.key == S1
    assert world.sentinels[S1].listeners() == 1
    assert world.sentinels[S2].listeners() == 0
    assert [s.key for s in world.data_streams()] == [A]


def test_an_announced_failover_moves_every_connection_at_once(
    new_world: Callable[..., World],
) -> None:
    """The subscriber and (RESP2) the publisher leave A for B before the clock moves:
    no backoff, no question to the sentinels; one on_disconnect, then the name is
    activated again on B. A still says it is the master: not demoted yet."""
    world = new_world()
    assert world.publish() == 1
    assert world.told.pop() == ("message", b"published")
    assert sorted(s.key for s in world.data_streams()) == [A, A]
    queries, now = world.queries(), world.loop.now()

    world.master = B
    assert world.sentinels[S1].announce(switch(A, B)) == 1
    world.settle()

    assert world.loop.now() == now
    assert world.queries() == queries
    assert world.nodes[A].role == "master"
    assert [kind for kind, _ in world.told] == ["activated", "disconnected", "activated"]
    error = world.told[1][1]
    assert type(error) is ConnectionLost
    assert str(error) == (
        "sentinel s1:26379 announced a failover: master 'mymaster' moved to 10.0.0.2:6379"
    )
    assert world.nodes[A].numsub(b"a") == 0
    assert world.nodes[B].numsub(b"a") == 1
    assert world.publish() == 1  # the publisher moved too
    assert sorted(s.key for s in world.data_streams()) == [B, B]
    assert world.nodes[B].publish(b"a", b"on B") == 1
    world.settle()
    assert world.told[-1] == ("message", b"on B")


@pytest.mark.parametrize(
    "payload",
    [
        switch(A, B, name="othermaster"),
        switch(A, B, name="mymaster2"),
        switch(B, A),  # where it is already
    ],
    ids=["other-master", "prefixed-name", "same-address"],
)
def test_an_announcement_that_does_not_move_it_changes_nothing(
    new_world: Callable[..., World], payload: bytes
) -> None:
    world = new_world()
    streams = world.data_streams()
    listener = world.listener_stream()
    world.sentinels[S1].announce(payload)
    world.settle()
    world.wait(60)
    assert world.data_streams() == streams
    assert world.listener_stream() is listener
    assert world.told == [("activated", b"a")]


def test_an_announcement_ends_a_backoff_wait(new_world: Callable[..., World]) -> None:
    """A dies; the sentinels still name it, so every attempt is refused, with backoff.
    The announcement ends the wait: the next attempt goes to B at once."""
    world = new_world(backoff_base=5.0, backoff_cap=60.0)
    world.loop.down.add(A)
    (stream,) = world.data_streams()
    stream.drop()
    world.settle()
    world.wait(20)  # attempts at A, refused; now waiting a while
    assert world.told == [("activated", b"a"), ("disconnected", world.told[1][1])]
    assert not world.mpx.connected
    now = world.loop.now()

    world.master = B
    world.sentinels[S1].announce(switch(A, B))
    world.settle()
    assert world.loop.now() == now
    assert world.mpx.connected
    assert [kind for kind, _ in world.told] == ["activated", "disconnected", "activated"]
    assert world.nodes[B].numsub(b"a") == 1


def test_if_the_announced_master_fails_the_sentinels_are_asked(
    new_world: Callable[..., World],
) -> None:
    """The announced address is tried once: if it cannot be reached, the next attempt
    (after the backoff) asks the sentinels, as every attempt did before."""
    world = new_world()
    world.loop.down.add(B)
    queries = world.queries()
    world.sentinels[S1].announce(switch(A, B))
    world.settle()
    assert not world.mpx.connected
    assert world.queries() == queries  # the announced address was not asked for
    world.wait(5)
    assert world.queries() > queries
    assert world.mpx.connected  # the sentinels (their view lagging) still name A
    assert [s.key for s in world.data_streams()] == [A]
    assert [kind for kind, _ in world.told] == ["activated", "disconnected", "activated"]


def test_losing_the_sentinel_connection_never_disturbs_the_data_connection(
    new_world: Callable[..., World],
) -> None:
    """S1 dies: the listener turns to S2, after the backoff; the data connection never
    notices. The next announcement, from S2, is heard."""
    world = new_world()
    streams = world.data_streams()
    listener = world.listener_stream()
    assert listener is not None
    world.loop.down.add(S1)
    listener.drop()
    world.settle()
    assert world.listener_stream() is None
    world.wait(5)
    listener = world.listener_stream()
    assert listener is not None
    assert listener.key == S2
    assert world.data_streams() == streams
    assert world.told == [("activated", b"a")]

    world.master = B
    world.sentinels[S2].announce(switch(A, B))
    world.settle()
    assert [s.key for s in world.data_streams()] == [B]
    assert [kind for kind, _ in world.told] == ["activated", "disconnected", "activated"]


def test_the_listener_turns_to_the_next_sentinel_even_when_its_own_is_back(
    new_world: Callable[..., World],
) -> None:
    """A lost sentinel connection is made again from the next sentinel in the list."""
    world = new_world()
    listener = world.listener_stream()
    assert listener is not None
    listener.drop()  # S1 stays up
    world.wait(5)
    again = world.listener_stream()
    assert again is not None
    assert again.key == S2
    again.drop()
    world.wait(5)
    third = world.listener_stream()
    assert third is not None
    assert third.key == S1


def test_a_malformed_announcement_turns_the_listener_to_the_next_sentinel(
    new_world: Callable[..., World],
) -> None:
    world = new_world()
    streams = world.data_streams()
    listener = world.listener_stream()
    assert listener is not None
    world.sentinels[S1].announce(b"mymaster 10.0.0.1 6379 10.0.0.2 0")
    world.settle()
    assert not listener.open
    assert world.listener_stream() is None  # after the backoff, not at once
    world.wait(5)
    listener = world.listener_stream()
    assert listener is not None
    assert listener.key == S2
    assert world.data_streams() == streams
    assert world.told == [("activated", b"a")]


def test_a_refused_subscription_turns_the_listener_to_the_next_sentinel(
    new_world: Callable[..., World],
) -> None:
    """A sentinel whose ACLs refuse +switch-master: the listener asks the next one."""
    world = new_world(before=lambda world: world.sentinels[S1].deny(None, CHANNEL))
    assert world.listener_stream() is None
    world.wait(5)
    listener = world.listener_stream()
    assert listener is not None
    assert listener.key == S2
    assert world.told == [("activated", b"a")]


def test_closing_closes_the_sentinel_connection(new_world: Callable[..., World]) -> None:
    world = new_world()
    assert world.listener_stream() is not None
    world.close()
    assert world.loop.open_streams() == []
    assert world.task.done
    assert world.task.exception is None
    assert world.loop.tasks() == []
