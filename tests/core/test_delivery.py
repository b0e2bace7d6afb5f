"""DeliveryQueue: bound, overflow policies, notices kept in order, removed names filtered."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redismpx_core import OverflowPolicy
from redismpx_core._delivery import DeliveryQueue, Notice, messages_of

HELD = {b"a", b"p*"}


def payloads(queue: DeliveryQueue) -> list[bytes]:
    return [item[1] for item in queue.take(HELD) if not isinstance(item, Notice)]


def test_within_the_bound_everything_is_kept_in_order() -> None:
    queue = DeliveryQueue(5, "drop-oldest")
    assert queue.push(messages_of(b"a", None, [b"1", b"2"]))
    queue.push_notice(Notice("activated", b"a"))
    assert queue.push(messages_of(b"a", None, [b"3"]))
    assert queue.messages == 3
    assert queue.take(HELD) == [
        (b"a", b"1", None),
        (b"a", b"2", None),
        Notice("activated", b"a"),
        (b"a", b"3", None),
    ]
    assert queue.dropped == 0
    assert len(queue) == 0


def test_drop_oldest_keeps_the_newest_and_every_notice() -> None:
    queue = DeliveryQueue(3, OverflowPolicy.DROP_OLDEST)
    queue.push(messages_of(b"a", None, [b"1", b"2"]))
    queue.push_notice(Notice("disconnected", None))
    queue.push(messages_of(b"a", None, [b"3", b"4"]))
    assert queue.dropped == 1
    items = queue.take(HELD)
    assert items == [
        (b"a", b"2", None),
        Notice("disconnected", None),
        (b"a", b"3", None),
        (b"a", b"4", None),
    ]


def test_drop_oldest_with_a_run_larger_than_the_bound() -> None:
    queue = DeliveryQueue(3, "drop-oldest")
    queue.push(messages_of(b"a", None, [b"1"]))
    queue.push(messages_of(b"a", None, [b"2", b"3", b"4", b"5", b"6"]))
    assert payloads(queue) == [b"4", b"5", b"6"]
    assert queue.dropped == 3


def test_drop_newest_keeps_the_oldest() -> None:
    queue = DeliveryQueue(3, "drop-newest")
    queue.push(messages_of(b"a", None, [b"1", b"2"]))
    queue.push(messages_of(b"a", None, [b"3", b"4", b"5"]))
    assert payloads(queue) == [b"1", b"2", b"3"]
    assert queue.dropped == 2


def test_close_policy_refuses_everything_after_the_first_overflow() -> None:
    queue = DeliveryQueue(2, "close")
    assert queue.push(messages_of(b"a", None, [b"1", b"2"]))
    assert not queue.push(messages_of(b"a", None, [b"3"]))
    assert queue.overflowed
    assert not queue.push(messages_of(b"a", None, [b"4"]))
    assert queue.dropped == 2
    assert payloads(queue) == [b"1", b"2"]


def test_messages_of_names_no_longer_held_are_filtered_at_hand_off() -> None:
    queue = DeliveryQueue(10, "drop-oldest")
    queue.push(messages_of(b"a", None, [b"1"]))
    queue.push(messages_of(b"gone", None, [b"2"]))
    queue.push(messages_of(b"p1", b"p*", [b"3"]))
    queue.push(messages_of(b"p1", b"other*", [b"4"]))
    assert payloads(queue) == [b"1", b"3"]
    queue.push(messages_of(b"gone", None, [b"5"]))
    queue.push(messages_of(b"a", None, [b"6"]))
    assert queue.take_one(HELD) == (b"a", b"6", None)
    assert queue.take_one(HELD) is None
    assert queue.messages == 0


@pytest.mark.parametrize("bound", [0, -1, True, 1.5])
def test_a_bad_bound_is_refused(bound: object) -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        DeliveryQueue(bound, "drop-oldest")  # type: ignore[arg-type]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="drop-sideways"):
        DeliveryQueue(1, "drop-sideways")


runs = st.lists(
    st.one_of(st.lists(st.integers(0, 999), min_size=1, max_size=8), st.none()), max_size=30
)


@given(bound=st.integers(1, 6), runs=runs, policy=st.sampled_from(list(OverflowPolicy)))
def test_matches_a_plain_reference_model(
    bound: int, runs: list[list[int] | None], policy: OverflowPolicy
) -> None:
    queue = DeliveryQueue(bound, policy)
    model: list[object] = []  # ints are messages, None a notice
    dropped = 0
    closed = False
    for run in runs:
        if run is None:
            queue.push_notice(Notice("activated", None))
            model.append(None)
            continue
        accepted = queue.push(messages_of(b"a", None, [str(i).encode() for i in run]))
        held = sum(1 for m in model if m is not None)
        if closed:
            assert not accepted
            dropped += len(run)
            continue
        if held + len(run) <= bound:
            model += run
        elif policy is OverflowPolicy.DROP_NEWEST:
            model += run[: bound - held]
            dropped += held + len(run) - bound
        elif policy is OverflowPolicy.DROP_OLDEST:
            model += run
            excess = held + len(run) - bound
            dropped += excess
            for _ in range(excess):
                model.remove(next(m for m in model if m is not None))
        else:
            closed = True
            dropped += len(run)
            assert not accepted
        assert queue.messages == sum(1 for m in model if m is not None) <= bound
    assert queue.dropped == dropped
    got = [None if isinstance(i, Notice) else int(i[1]) for i in queue.take(HELD)]
    assert got == model


def test_one_run_shared_by_several_queues_is_never_changed() -> None:
    shared = messages_of(b"a", None, [b"1", b"2", b"3"])
    snapshot = list(shared)
    oldest, newest = DeliveryQueue(2, "drop-oldest"), DeliveryQueue(2, "drop-newest")
    oldest.push(messages_of(b"a", None, [b"0"]))
    assert oldest.push(shared)
    assert newest.push(shared)
    assert shared == snapshot
    assert payloads(oldest) == [b"2", b"3"]
    assert payloads(newest) == [b"1", b"2"]
    assert (oldest.dropped, newest.dropped) == (2, 1)
