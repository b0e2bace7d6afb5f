"""The connection lifecycle's table, pair by pair, and the per-name tables' coverage.

Every (state, input) pair listed in TRANSITIONS leads where the table says; every
pair not listed is the driver's misuse: RuntimeError, and the state is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from redismpx_core import ConnectionLost, ConnectionState, MultiplexerCore
from redismpx_core._backoff import Backoff
from redismpx_core._lifecycle import LIVE, TRANSITIONS, ConnectionInput, Lifecycle
from redismpx_core._state import (
    CONFIRMATIONS,
    FLUSH_ACTIONS,
    ON_CONNECTION_LOST,
    ON_SERVER_UNSUBSCRIBE,
    REJECTIONS,
    NameState,
)

DISCONNECTED = ConnectionState.DISCONNECTED
HANDSHAKING = ConnectionState.HANDSHAKING
READY = ConnectionState.READY
BROKEN = ConnectionState.BROKEN
CLOSED = ConnectionState.CLOSED


def new_lifecycle() -> Lifecycle:
    return Lifecycle(
        backoff=Backoff(base=0.5, cap=4.0, random=lambda: 1.0),
        health_check_interval=5.0,
        health_check_timeout=2.0,
        connect_timeout=3.0,
    )


def lifecycle_in(state: ConnectionState) -> Lifecycle:
    """A lifecycle brought to ``state`` by allowed inputs only."""
    lifecycle = new_lifecycle()
    if state is CLOSED:
        lifecycle.close()
    elif state is not DISCONNECTED:
        lifecycle.connection_made(10.0, replies_due=1)
        if state is not HANDSHAKING:
            assert lifecycle.handshake_reply(10.0)
            if state is BROKEN:
                lifecycle.input_failed()
    assert lifecycle.state is state
    return lifecycle


def apply(lifecycle: Lifecycle, event: ConnectionInput) -> None:
    """The lifecycle's method for each input."""
    calls: dict[ConnectionInput, Callable[[], object]] = {
        ConnectionInput.CONNECTION_MADE: lambda: lifecycle.connection_made(20.0, replies_due=1),
        ConnectionInput.HANDSHAKE_COMPLETED: lambda: lifecycle.handshake_reply(20.0),
        ConnectionInput.INPUT_FAILED: lifecycle.input_failed,
        ConnectionInput.CONNECTION_LOST: lifecycle.connection_lost,
        ConnectionInput.CLOSE: lifecycle.close,
    }
    lifecycle.handshake_pending = 1  # so that the next handshake reply is the last
    calls[event]()


@pytest.mark.parametrize("event", list(ConnectionInput), ids=lambda e: e.name)
@pytest.mark.parametrize("state", list(ConnectionState), ids=lambda s: s.name)
def test_every_pair_is_listed_or_refused(state: ConnectionState, event: ConnectionInput) -> None:
    lifecycle = lifecycle_in(state)
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(RuntimeError, match=f"while {state.value}"):
            apply(lifecycle, event)
        assert lifecycle.state is state
    else:
        apply(lifecycle, event)
        assert lifecycle.state is expected


def test_a_loss_counts_only_after_a_connection_and_never_after_close() -> None:
    lifecycle = new_lifecycle()
    assert lifecycle.connection_lost()  # a failed attempt: no connection lost
    assert (lifecycle.connections_made, lifecycle.connections_lost) == (0, 0)
    lifecycle.connection_made(0.0, replies_due=2)
    assert not lifecycle.handshake_reply(0.0)  # one of two
    lifecycle.input_failed()
    assert lifecycle.connection_lost()
    assert (lifecycle.connections_made, lifecycle.connections_lost) == (1, 1)
    assert lifecycle.close()
    assert not lifecycle.close()
    assert not lifecycle.connection_lost()
    assert lifecycle.connections_lost == 1


def test_timers_run_only_while_live() -> None:
    lifecycle = new_lifecycle()
    assert lifecycle.next_deadline() is None
    lifecycle.connection_made(0.0, replies_due=1)
    assert lifecycle.next_deadline() == 3.0  # the handshake deadline comes first
    assert lifecycle.handshake_reply(1.0)
    assert lifecycle.next_deadline() == 5.0  # the health check (the stable timer: 1 + 4)
    assert lifecycle.handle_timeout(5.0)  # a PING is due
    assert not lifecycle.handle_timeout(6.0)  # one PING at a time
    lifecycle.input_failed()
    assert lifecycle.state not in LIVE
    assert lifecycle.next_deadline() is None
    assert not lifecycle.handle_timeout(100.0)  # no HealthCheckTimeout while broken


@pytest.mark.parametrize("state", [DISCONNECTED, BROKEN, CLOSED], ids=lambda s: s.name)
def test_input_reaches_only_a_live_connection(state: ConnectionState) -> None:
    core: MultiplexerCore[None, None] = MultiplexerCore(random=lambda: 0.5)
    if state is not DISCONNECTED:
        core.connection_made(0.0)
        if state is BROKEN:
            with pytest.raises(ConnectionLost):
                core.handle_timeout(100.0)  # the handshake timed out
        else:
            core.close()
    assert core.state is state
    with pytest.raises(RuntimeError, match=f"receive_data\\(\\) while {state.value}"):
        core.receive_data(b"+PONG\r\n", 1.0)


def test_the_per_name_tables_cover_what_they_must() -> None:
    """A loss resets every state; only ACTIVE can be unsubscribed by the server; each
    confirmation, rejection and flush lands in a state the others know."""
    assert set(ON_CONNECTION_LOST) == set(NameState)
    assert set(ON_CONNECTION_LOST.values()) == {NameState.IDLE}
    assert set(ON_SERVER_UNSUBSCRIBE) == {NameState.ACTIVE}
    reachable = {NameState.IDLE}
    for table in (*CONFIRMATIONS.values(), REJECTIONS, ON_SERVER_UNSUBSCRIBE):
        reachable |= set(table.values())
    for actions in FLUSH_ACTIONS.values():
        reachable |= {state for _, state in actions.values()}
    assert reachable == set(NameState)
    # Every state with a command in flight is settled by some confirmation.
    in_flight = set(NameState) - {NameState.IDLE, NameState.ACTIVE}
    assert in_flight <= {s for table in CONFIRMATIONS.values() for s in table}
