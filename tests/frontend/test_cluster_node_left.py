"""ClusterMultiplexer on the fake loop when its home node leaves the cluster with the
connection up: the front end hands the router's notice to the subscription's callbacks
(``on_disconnect(NodeLeft)``, then ``on_activation`` on the new home), fails a pending
promise, and closes every stream to the node that left. Deterministic: no sockets, no
real time."""

from __future__ import annotations

from collections.abc import Callable

from frontend.fake_loop import FakeLoop
from frontend.test_harness_findings import NODES, cluster_on, new_loop
from redismpx_frontend import NodeLeft, PromiseInterrupted

__all__ = ("new_loop",)  # the fixture, shared with the findings


def test_the_home_leaves_and_its_subscriptions_move(new_loop: Callable[..., FakeLoop]) -> None:
    loop = new_loop()
    cluster, running = cluster_on(loop, health_check_interval=None, refresh_interval=2.0)
    told: list[tuple[str, object]] = []
    sub = running.mpx.new_channel_subscription(
        lambda channel, data: told.append(("message", data)),
        lambda error: told.append(("disconnected", error)),
        lambda name: told.append(("activated", name)),
    )
    sub.add("news")
    promises = running.mpx.new_promise_subscription("reply:")
    running.settle()
    assert told == [("activated", b"news")]
    assert promises.active
    pending = promises.new_promise("1", 60.0)
    home = NODES[0]  # the first startup node
    cluster.empty(home, NODES[1])
    cluster.remove(home)
    for _ in range(6):  # past one periodic refresh, and the queries that confirm the departure
        loop.advance(1.0)
        running.settle()
    kinds = [kind for kind, _ in told]
    assert kinds == ["activated", "disconnected", "activated"], told
    error = told[1][1]
    assert isinstance(error, NodeLeft)
    assert error.node == home
    assert pending.done
    assert PromiseInterrupted.__name__ in repr(pending)
    assert promises.active
    assert not [s for s in loop.open_streams() if s.key == (home.host, home.port)]
    assert cluster.publish(b"news", b"heard") == 1
    running.settle()
    assert told[-1] == ("message", b"heard")
    running.close()
