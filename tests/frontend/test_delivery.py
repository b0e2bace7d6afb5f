"""DeliveryQueue: bound, overflow policies, notices in order and within the bound,
removed names filtered at hand-off."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redismpx_core import OverflowPolicy, Settings
from redismpx_frontend._consumers import buffer_options
from redismpx_frontend._delivery import DeliveryQueue, Item, Notice, NoticeKind, messages_of

HELD = {b"a", b"p*"}
ACTIVATED, DISCONNECTED = NoticeKind.ACTIVATED, NoticeKind.DISCONNECTED
DROP_OLDEST, DROP_NEWEST, CLOSE = (
    OverflowPolicy.DROP_OLDEST,
    OverflowPolicy.DROP_NEWEST,
    OverflowPolicy.CLOSE,
)


def take(queue: DeliveryQueue) -> list[object]:
    """Everything a consumer would get, in order: payloads, and notices as (kind, value)."""
    got: list[object] = []
    while (item := queue.pop(HELD)) is not None:
        got.append((item.kind, item.value) if isinstance(item, Notice) else item[1])
    return got


def test_within_the_bound_everything_is_kept_in_order() -> None:
    queue = DeliveryQueue(5, DROP_OLDEST)
    assert queue.push(messages_of(b"a", None, [b"1", b"2"]))
    assert queue.push_notice(ACTIVATED, [b"a"])
    assert queue.push(messages_of(b"a", None, [b"3"]))
    assert len(queue) == 4
    assert take(queue) == [b"1", b"2", (ACTIVATED, [b"a"]), b"3"]
    assert queue.dropped == 0
    assert len(queue) == 0


def test_drop_oldest_keeps_the_newest_and_the_notices() -> None:
    queue = DeliveryQueue(4, DROP_OLDEST)
    queue.push(messages_of(b"a", None, [b"1", b"2"]))
    queue.push_notice(DISCONNECTED, None)
    queue.push(messages_of(b"a", None, [b"3", b"4"]))
    # Notices count against the bound; the oldest messages make room, not the notice.
    assert queue.dropped == 1
    assert take(queue) == [b"2", (DISCONNECTED, None), b"3", b"4"]


def test_drop_oldest_with_a_run_larger_than_the_bound() -> None:
    queue = DeliveryQueue(3, DROP_OLDEST)
    queue.push(messages_of(b"a", None, [b"1"]))
    queue.push(messages_of(b"a", None, [b"2", b"3", b"4", b"5", b"6"]))
    assert take(queue) == [b"4", b"5", b"6"]
    assert queue.dropped == 3


def test_drop_newest_keeps_the_oldest() -> None:
    queue = DeliveryQueue(3, DROP_NEWEST)
    queue.push(messages_of(b"a", None, [b"1", b"2"]))
    queue.push(messages_of(b"a", None, [b"3", b"4", b"5"]))
    assert take(queue) == [b"1", b"2", b"3"]
    assert queue.dropped == 2


def test_close_policy_refuses_everything_after_the_first_overflow() -> None:
    queue = DeliveryQueue(2, CLOSE)
    assert queue.push(messages_of(b"a", None, [b"1", b"2"]))
    assert not queue.push(messages_of(b"a", None, [b"3"]))
    assert queue.overflowed
    assert not queue.push(messages_of(b"a", None, [b"4"]))
    assert not queue.push_notice(DISCONNECTED, None)
    assert queue.dropped == 2
    assert take(queue) == [b"1", b"2"]


def test_messages_of_names_no_longer_held_are_filtered_at_hand_off() -> None:
    queue = DeliveryQueue(10, DROP_OLDEST)
    queue.push(messages_of(b"a", None, [b"1"]))
    queue.push(messages_of(b"gone", None, [b"2"]))
    queue.push(messages_of(b"p1", b"p*", [b"3"]))
    queue.push(messages_of(b"p1", b"other*", [b"4"]))
    assert take(queue) == [b"1", b"3"]
    queue.push(messages_of(b"gone", None, [b"5"]))
    queue.push(messages_of(b"a", None, [b"6"]))
    assert queue.pop(HELD) == (b"a", b"6", None)
    assert queue.pop(HELD) is None
    assert len(queue) == 0


# ---------------------------------------------------------------- notices in the bound


def test_a_disconnect_supersedes_the_activations_before_it() -> None:
    queue = DeliveryQueue(10, DROP_OLDEST)
    queue.push_notice(ACTIVATED, [b"a", b"b"])
    queue.push(messages_of(b"a", None, [b"1"]))
    queue.push_notice(ACTIVATED, [b"c"])
    queue.push_notice(DISCONNECTED, "lost")
    queue.push_notice(ACTIVATED, [b"a", b"b", b"c"])
    assert take(queue) == [b"1", (DISCONNECTED, "lost"), (ACTIVATED, [b"a", b"b", b"c"])]


def test_a_stuck_consumer_through_many_reconnects_holds_a_bounded_queue() -> None:
    """Defect 4 of issue 14: a consumer stuck through reconnects, holding 2,000 names,
    used to hold one notice per name per activation (2,001 after one reconnect, 10,005
    after five). Now a batch is one notice and each disconnect supersedes them."""
    queue = DeliveryQueue(16, DROP_OLDEST)
    names = [b"n%d" % i for i in range(2000)]
    queue.push_notice(ACTIVATED, names)
    for reconnect in range(1, 6):
        queue.push_notice(DISCONNECTED, reconnect)
        queue.push_notice(ACTIVATED, names)
        assert len(queue) == reconnect + 1 <= queue.bound
    assert [kind for kind, _ in take(queue)] == [DISCONNECTED] * 5 + [ACTIVATED]  # type: ignore[misc]


def test_a_notice_makes_room_by_dropping_the_oldest_message_under_any_policy() -> None:
    for policy in (DROP_OLDEST, DROP_NEWEST):
        queue = DeliveryQueue(2, policy)
        queue.push(messages_of(b"a", None, [b"1", b"2"]))
        assert queue.push_notice(DISCONNECTED, "lost")
        assert queue.dropped == 1
        assert take(queue) == [b"2", (DISCONNECTED, "lost")]


def test_when_only_notices_are_left_the_oldest_notice_goes() -> None:
    queue = DeliveryQueue(2, DROP_NEWEST)
    for n in range(4):
        queue.push_notice(DISCONNECTED, n)
    assert queue.dropped == 0  # notices are not messages: nothing counted as dropped
    assert take(queue) == [(DISCONNECTED, 2), (DISCONNECTED, 3)]


def test_a_notice_overflows_a_full_close_queue() -> None:
    queue = DeliveryQueue(1, CLOSE)
    assert queue.push(messages_of(b"a", None, [b"1"]))
    assert not queue.push_notice(ACTIVATED, [b"a"])
    assert queue.overflowed
    queue.discard_messages()
    queue.push_final(DISCONNECTED, "overflow")  # the closed subscription's last word
    assert queue.dropped == 1
    assert take(queue) == [(DISCONNECTED, "overflow")]


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("bound", [0, -1, True, 1.5])
def test_a_bad_bound_is_refused(bound: object) -> None:
    settings = Settings.from_url("redis://localhost")
    with pytest.raises((ValueError, TypeError), match="buffer_size"):
        buffer_options(settings, bound, None)  # type: ignore[arg-type]


def test_an_unknown_policy_is_refused() -> None:
    settings = Settings.from_url("redis://localhost")
    with pytest.raises(ValueError, match="drop-sideways"):
        buffer_options(settings, 1, "drop-sideways")
    assert buffer_options(settings, None, None) == (settings.buffer_size, settings.overflow)


# ---------------------------------------------------------------- a reference model

pushes = st.lists(
    st.one_of(
        st.lists(st.integers(0, 999), min_size=1, max_size=8),  # a run of messages
        st.sampled_from([ACTIVATED, DISCONNECTED]),  # a notice
    ),
    max_size=30,
)


@given(bound=st.integers(1, 6), pushes=pushes, policy=st.sampled_from(list(OverflowPolicy)))
def test_matches_a_plain_reference_model(
    bound: int, pushes: list[list[int] | NoticeKind], policy: OverflowPolicy
) -> None:
    """The whole policy as a list: ints are messages, kinds are notices."""
    queue = DeliveryQueue(bound, policy)
    model: list[int | NoticeKind] = []
    dropped = 0
    closed = False

    def evict(count: int) -> None:
        nonlocal dropped
        for _ in range(count):
            message = next((m for m in model if isinstance(m, int)), None)
            if message is not None:
                model.remove(message)
                dropped += 1
            else:
                model.pop(0)

    for push in pushes:
        if isinstance(push, NoticeKind):
            accepted = queue.push_notice(push, None)
            if closed:
                assert not accepted
                continue
            if push is DISCONNECTED:
                model[:] = [m for m in model if m is not ACTIVATED]
            if len(model) >= bound:
                if policy is CLOSE:
                    closed = True
                    assert not accepted
                    continue
                evict(1)
            assert accepted
            model.append(push)
            continue
        accepted = queue.push(messages_of(b"a", None, [str(i).encode() for i in push]))
        if closed:
            assert not accepted
            dropped += len(push)
            continue
        room = bound - len(model)
        if len(push) <= room:
            model += push
        elif policy is DROP_NEWEST:
            model += push[:room]
            dropped += len(push) - room
        elif policy is DROP_OLDEST:
            if len(push) > bound:
                dropped += len(push) - bound
                push = push[len(push) - bound :]
            evict(len(push) - room)
            model += push
        else:
            closed = True
            dropped += len(push)
            assert not accepted
        assert len(queue) == len(model) <= bound
    assert queue.dropped == dropped
    got: list[Item | None] = []
    while (item := queue.pop(HELD)) is not None:
        got.append(item)
    assert [i.kind if isinstance(i, Notice) else int(i[1]) for i in got] == model  # type: ignore[union-attr, index]


def test_one_run_shared_by_several_queues_is_never_changed() -> None:
    shared = messages_of(b"a", None, [b"1", b"2", b"3"])
    snapshot = list(shared)
    oldest, newest = DeliveryQueue(2, DROP_OLDEST), DeliveryQueue(2, DROP_NEWEST)
    oldest.push(messages_of(b"a", None, [b"0"]))
    assert oldest.push(shared)
    assert newest.push(shared)
    assert shared == snapshot
    assert take(oldest) == [b"2", b"3"]
    assert take(newest) == [b"1", b"2"]
    assert (oldest.dropped, newest.dropped) == (2, 1)
