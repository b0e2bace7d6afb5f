"""MultiplexerCore as one node of a cluster: per-slot batches, redirects handed back,
server-sent unsubscribes, and request() for the router's own commands."""

from __future__ import annotations

import pytest

from core.replay import arr, frame
from core.test_core import ready_core
from redismpx_core import (
    CommandCompleted,
    CommandFailed,
    ConnectionLost,
    NameDeactivated,
    NameRejected,
    NamesActivated,
    SubscriptionKind,
)
from redismpx_core._policy import CLUSTER_NODE, STAND_ALONE
from redismpx_core._slots import key_slot

SHARD = SubscriptionKind.SHARD
# Three names, two of them in one slot (hash tag), the third elsewhere.
TAGGED = [b"{user:1}:a", b"{user:1}:b"]
OTHER = b"elsewhere"


def test_shard_batches_never_mix_slots() -> None:
    assert key_slot(TAGGED[0]) == key_slot(TAGGED[1]) != key_slot(OTHER)
    for cluster in (False, True):
        core = ready_core(policy=CLUSTER_NODE if cluster else STAND_ALONE)
        sub = core.open_subscription(SHARD, None)
        core.add(sub, [TAGGED[0], OTHER, TAGGED[1]])
        assert core.data_to_send() == arr("SSUBSCRIBE", *TAGGED) + arr("SSUBSCRIBE", OTHER)


def test_a_redirected_ssubscribe_is_handed_back_in_cluster_mode() -> None:
    core = ready_core(policy=CLUSTER_NODE)
    sub = core.open_subscription(SHARD, owner="owner")
    core.add(sub, TAGGED)
    core.data_to_send()
    events = core.receive_data(b"-MOVED 1234 10.0.0.2:7002\r\n", 0.0)
    assert [(type(e), e.name, e.error.code) for e in events] == [  # type: ignore[union-attr]
        (NameRejected, TAGGED[0], "MOVED"),
        (NameRejected, TAGGED[1], "MOVED"),
    ]
    assert sub.names == {}
    assert core.data_to_send() == b""  # not sent here again
    assert core.statistics(messages_delivered=0, messages_dropped=0).active_shard_channels == 0


def test_a_redirect_breaks_the_connection_of_a_stand_alone_core() -> None:
    core = ready_core()
    sub = core.open_subscription(SHARD, None)
    core.add(sub, [OTHER])
    core.data_to_send()
    with pytest.raises(Exception, match="MOVED"):
        core.receive_data(b"-MOVED 1234 10.0.0.2:7002\r\n", 0.0)


def test_a_redirected_sunsubscribe_counts_as_done() -> None:
    core = ready_core(policy=CLUSTER_NODE)
    sub = core.open_subscription(SHARD, owner="owner")
    core.add(sub, [OTHER])
    core.data_to_send()
    assert core.receive_data(frame(2, "ssubscribe", OTHER, 1), 0.0) == [
        NamesActivated("owner", [OTHER])
    ]
    core.remove(sub, [OTHER])
    assert core.data_to_send() == arr("SUNSUBSCRIBE", OTHER) + arr("PING")
    assert core.receive_data(b"-MOVED 1234 10.0.0.2:7002\r\n+PONG\r\n", 0.0) == []
    assert core.is_active(sub, OTHER) is False
    core.add(sub, [OTHER])  # and it can be wanted again, from scratch
    assert core.data_to_send() == arr("SSUBSCRIBE", OTHER)


def test_the_servers_own_sunsubscribe_crossing_ours() -> None:
    """The slot moves just as we unsubscribe: the server's frame looks like our
    confirmation, and our SUNSUBSCRIBE is then refused: nothing is lost or confused."""
    core = ready_core(policy=CLUSTER_NODE)
    sub = core.open_subscription(SHARD, owner="owner")
    core.add(sub, [*TAGGED, OTHER])
    core.data_to_send()
    core.receive_data(
        frame(2, "ssubscribe", TAGGED[0], 1)
        + frame(2, "ssubscribe", TAGGED[1], 2)
        + frame(2, "ssubscribe", OTHER, 3),
        0.0,
    )
    core.remove(sub, TAGGED)
    assert core.data_to_send() == arr("SUNSUBSCRIBE", *TAGGED) + arr("PING")
    core.add(sub, [TAGGED[0]])  # wanted again while the SUNSUBSCRIBE is out
    assert core.data_to_send() == arr("SSUBSCRIBE", TAGGED[0])
    events = core.receive_data(
        frame(2, "sunsubscribe", TAGGED[0], 2)  # the server's own, for the moved slot
        + frame(2, "sunsubscribe", TAGGED[1], 1)
        + b"-MOVED 1234 10.0.0.2:7002\r\n"  # our SUNSUBSCRIBE, refused
        + frame(2, "pong", "")  # the fence
        + b"-MOVED 1234 10.0.0.2:7002\r\n",  # our SSUBSCRIBE again, refused
        0.0,
    )
    assert [(type(e), e.name) for e in events] == [(NameRejected, TAGGED[0])]  # type: ignore[union-attr]
    assert sub.names == {OTHER: None}
    assert core.is_active(sub, OTHER)
    assert core.data_to_send() == b""
    # The connection is still in step: OTHER's messages and commands go on.
    assert core.receive_data(frame(2, "smessage", OTHER, "hi"), 0.0)[0].payloads == [b"hi"]  # type: ignore[union-attr]


@pytest.mark.parametrize("cluster", [False, True])
def test_a_server_sent_sunsubscribe(cluster: bool) -> None:
    core = ready_core(policy=CLUSTER_NODE if cluster else STAND_ALONE)
    sub = core.open_subscription(SHARD, owner="owner")
    core.add(sub, [OTHER])
    core.data_to_send()
    core.receive_data(frame(2, "ssubscribe", OTHER, 1), 0.0)
    events = core.receive_data(frame(2, "sunsubscribe", OTHER, 0), 0.0)
    if cluster:
        # Handed back to the router, which knows where the slot went.
        assert [(type(e), e.name) for e in events] == [(NameRejected, OTHER)]  # type: ignore[union-attr]
        assert sub.names == {}
        assert core.data_to_send() == b""
    else:
        # Told (the messages in between are lost), then subscribed again.
        assert [(type(e), e.subscriber) for e in events] == [  # type: ignore[union-attr]
            (NameDeactivated, "owner")
        ]
        assert sub.names == {OTHER: None}
        assert core.data_to_send() == arr("SSUBSCRIBE", OTHER)  # again, here


@pytest.mark.parametrize("protocol", [2, 3])
def test_request_replies_come_back_whole(protocol: int) -> None:
    core = ready_core(protocol=protocol)
    token = core.request(b"CLUSTER", b"SHARDS")
    assert core.data_to_send() == arr("CLUSTER", "SHARDS")
    # Under RESP2 an array reply looks like a push: it is the request's reply.
    reply = b"*1\r\n*2\r\n$5\r\nslots\r\n*0\r\n"
    assert core.receive_data(reply, 0.0) == [CommandCompleted(token, [[b"slots", []]])]
    second = core.request(b"CLUSTER", b"NOPE")
    core.data_to_send()
    [failed] = core.receive_data(b"-ERR unknown subcommand 'NOPE'\r\n", 0.0)
    assert isinstance(failed, CommandFailed)
    assert failed.token == second
    assert failed.error.code == "ERR"


def test_a_request_in_flight_fails_with_the_connection() -> None:
    core = ready_core()
    token = core.request(b"CLUSTER", b"SHARDS")
    core.data_to_send()
    [failed] = core.connection_lost(ConnectionLost("reset"))
    assert isinstance(failed, CommandFailed)
    assert failed.token == token
    assert isinstance(failed.error, ConnectionLost)


def test_request_checks_its_arguments() -> None:
    core = ready_core()
    with pytest.raises(TypeError):
        core.request()
    with pytest.raises(TypeError):
        core.request("CLUSTER")  # type: ignore[arg-type]
    assert core.data_to_send() == b""

