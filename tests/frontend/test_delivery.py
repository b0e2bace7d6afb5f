"""DeliveryQueue: bound, overflow policies, notices in order and within the bound,
removed names filtered at hand-off."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redismpx_core import ConnectionLost, OverflowPolicy, Settings
from redismpx_frontend._consumers import buffer_options
from redismpx_frontend._delivery import DeliveryQueue, Notice, messages_of

HELD = {b"a", b"p*"}
DROP_OLDEST, DROP_NEWEST, CLOSE = (
    OverflowPolicy.DROP_OLDEST,
    OverflowPolicy.DROP_NEWEST,
    OverflowPolicy.CLOSE,
)
LOST = ConnectionLost("lost")


def take(queue: DeliveryQueue) -> list[object]:
    """Everything a consumer would get, in order: payloads, and notices as
    ("disconnected", error), ("stopped", error) and ("activated", names) in the order
    they are told."""
    got: list[object] = []
    while (item := queue.pop(HELD)) is not None:
        if isinstance(item, Notice):
            if item.error is not None:
                got.append(("disconnected", item.error))
            for error in (item.named or {}).values():
                got.append(("stopped", error))
            if item.names is not None:
                got.append(("activated", item.names))
        else:
            got.append(item[1])
    return got


def test_within_the_bound_everything_is_kept_in_order() -> None:
    queue = DeliveryQueue(5, DROP_OLDEST)
    assert queue.push(messages_of(b"a", None, [b"1", b"2"]))
    assert queue.push_activated([b"a"])
    assert queue.push(messages_of(b"a", None, [b"3"]))
    assert len(queue) == 4
    assert take(queue) == [b"1", b"2", ("activated", [b"a"]), b"3"]
    assert queue.dropped == 0
    assert len(queue) == 0


def test_drop_oldest_keeps_the_newest_and_the_notices() -> None:
    queue = DeliveryQueue(4, DROP_OLDEST)
    queue.push(messages_of(b"a", None, [b"1", b"2"]))
    queue.push_disconnected(LOST)
    queue.push(messages_of(b"a", None, [b"3", b"4"]))
    # Notices count against the bound; the oldest messages make room, not the notice.
    assert queue.dropped == 1
    assert take(queue) == [b"2", ("disconnected", LOST), b"3", b"4"]


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
    assert not queue.push_disconnected(LOST)
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


def test_activations_in_a_row_are_one_notice() -> None:
    queue = DeliveryQueue(10, DROP_OLDEST)
    queue.push_activated([b"a"])
    queue.push_activated([b"b", b"c"])
    queue.push(messages_of(b"a", None, [b"1"]))
    queue.push_activated([b"d"])
    assert len(queue) == 3
    assert take(queue) == [("activated", [b"a", b"b", b"c"]), b"1", ("activated", [b"d"])]


def test_a_disconnect_supersedes_the_activations_before_it() -> None:
    queue = DeliveryQueue(10, DROP_OLDEST)
    queue.push_activated([b"a", b"b"])
    queue.push(messages_of(b"a", None, [b"1"]))
    queue.push_activated([b"c"])
    queue.push_disconnected(LOST)
    queue.push_activated([b"a", b"b", b"c"])  # rides on the disconnect's notice
    assert len(queue) == 2
    assert take(queue) == [b"1", ("disconnected", LOST), ("activated", [b"a", b"b", b"c"])]


def test_a_stuck_consumer_through_many_reconnects_holds_a_bounded_queue() -> None:
    """Defect 4 of issue 14: a consumer stuck through reconnects, holding 2,000 names,
    used to hold one notice per name per activation (2,001 after one reconnect, 10,005
    after five). Now a batch is one notice, and each disconnect supersedes them."""
    queue = DeliveryQueue(16, DROP_OLDEST)
    names = [b"n%d" % i for i in range(2000)]
    queue.push_activated(names)
    errors = [ConnectionLost(f"loss {n}") for n in range(5)]
    for reconnect, error in enumerate(errors, start=1):
        queue.push_disconnected(error)
        queue.push_activated(names[:1024])  # a resubscription: two batches
        queue.push_activated(names[1024:])
        assert len(queue) == reconnect <= queue.bound
    told = take(queue)
    assert told == [*(("disconnected", e) for e in errors), ("activated", names)]


def test_a_notice_makes_room_by_dropping_the_oldest_message_under_any_policy() -> None:
    for policy in (DROP_OLDEST, DROP_NEWEST):
        queue = DeliveryQueue(2, policy)
        queue.push(messages_of(b"a", None, [b"1", b"2"]))
        assert queue.push_disconnected(LOST)
        assert queue.dropped == 1
        assert take(queue) == [b"2", ("disconnected", LOST)]


def test_a_full_buffer_of_notices_merges_them_and_drops_messages() -> None:
    """A notice never displaces a notice, and a message never does either: with the
    buffer full, a second outage joins the newest disconnect (told once, the later
    error), and a message is dropped."""
    later = ConnectionLost("later")
    for policy in (DROP_OLDEST, DROP_NEWEST):
        queue = DeliveryQueue(1, policy)
        queue.push_activated([b"a"])
        queue.push_disconnected(LOST)  # supersedes the activation: room again
        queue.push_activated([b"a"])  # joins the disconnect
        queue.push_disconnected(later)  # the buffer is full: joins it, and supersedes
        queue.push_activated([b"a"])
        assert not queue.overflowed
        assert queue.push(messages_of(b"a", None, [b"1"]))
        assert queue.dropped == 1
        assert take(queue) == [("disconnected", later), ("activated", [b"a"])]


def test_a_notice_overflows_a_full_close_queue() -> None:
    queue = DeliveryQueue(1, CLOSE)
    assert queue.push(messages_of(b"a", None, [b"1"]))
    assert not queue.push_activated([b"a"])
    assert queue.overflowed
    queue.discard_messages()
    queue.push_final(LOST)  # the closed subscription's last word
    assert queue.dropped == 1
    assert take(queue) == [("disconnected", LOST)]


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
        st.sampled_from(["activated", "disconnected"]),  # a notice
    ),
    max_size=30,
)


@given(bound=st.integers(1, 6), pushes=pushes, policy=st.sampled_from(list(OverflowPolicy)))
def test_matches_a_plain_reference_model(
    bound: int, pushes: list[list[int] | str], policy: OverflowPolicy
) -> None:
    """The policy as lists: ints are messages, ["D", "A"] lists are notices."""
    queue = DeliveryQueue(bound, policy)
    model: list[int | list[str]] = []
    dropped = 0
    closed = False

    def drop_oldest_message() -> None:
        nonlocal dropped
        model.remove(next(m for m in model if isinstance(m, int)))
        dropped += 1

    for push in pushes:
        if isinstance(push, str):
            newest = model[-1] if model else None
            if push == "disconnected":
                accepted = queue.push_disconnected(LOST)
                if closed:
                    assert not accepted
                    continue
                for item in [m for m in model if isinstance(m, list)]:
                    if item == ["A"]:
                        model.remove(item)
                    elif item == ["D", "A"]:
                        item[:] = ["D"]
                newest = model[-1] if model else None
                if len(model) >= bound and isinstance(newest, list):
                    continue  # joins the newest disconnect
            else:
                accepted = queue.push_activated([b"a"])
                if closed:
                    assert not accepted
                    continue
                if isinstance(newest, list):
                    if newest == ["D"]:
                        newest.append("A")
                    continue  # joins the newest notice
            if len(model) >= bound:
                if policy is CLOSE:
                    closed = True
                    assert not accepted
                    continue
                drop_oldest_message()
            assert accepted
            model.append(["D"] if push == "disconnected" else ["A"])
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
            keep = bound - sum(isinstance(m, list) for m in model)
            if len(push) > keep:
                dropped += len(push) - keep
                push = push[len(push) - keep :]
            for _ in range(len(push) - room):
                drop_oldest_message()
            model += push
        else:
            closed = True
            dropped += len(push)
            assert not accepted
        assert len(queue) == len(model) <= bound
    assert queue.dropped == dropped
    got: list[int | list[str]] = []
    while (item := queue.pop(HELD)) is not None:
        if isinstance(item, Notice):
            got.append(["D", "A"] if item.error and item.names else ["D"] if item.error else ["A"])
        else:
            got.append(int(item[1]))
    assert got == model


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


# ---------------------------------------------------------------- names that stop alone


def test_a_name_that_stops_alone_supersedes_only_its_own_activation() -> None:
    queue = DeliveryQueue(8, DROP_OLDEST)
    queue.push_disconnected(LOST)
    queue.push_activated([b"a", b"b"])
    refused = ConnectionLost("b refused")
    assert queue.push_stopped(b"b", refused)
    assert take(queue) == [("disconnected", LOST), ("stopped", refused), ("activated", [b"a"])]


def test_a_refusal_is_told_even_when_an_outage_joins_its_notice() -> None:
    queue = DeliveryQueue(1, DROP_OLDEST)
    refused = ConnectionLost("b refused")
    queue.push_stopped(b"b", refused)
    queue.push_disconnected(LOST)  # the buffer is full: joins the notice
    assert len(queue) == 1
    assert take(queue) == [("disconnected", LOST), ("stopped", refused)]


def test_a_name_stopping_again_and_again_keeps_one_error() -> None:
    queue = DeliveryQueue(2, DROP_OLDEST)
    queue.push(messages_of(b"a", None, [b"1", b"2"]))
    for round_ in range(100):
        queue.push_activated([b"a"])
        queue.push_stopped(b"a", ConnectionLost(f"stop {round_}"))
    assert len(queue) == 2
    (notice,) = [item for item in queue.items if isinstance(item, Notice)]
    assert notice.names is None
    assert notice.named is not None
    assert list(notice.named) == [b"a"]


history = st.lists(
    st.one_of(
        st.just(("outage",)),
        st.tuples(st.just("activate"), st.sets(st.sampled_from([b"a", b"b", b"c"]), min_size=1)),
        st.tuples(st.just("stop"), st.sampled_from([b"a", b"b", b"c"])),
        st.tuples(st.just("refuse"), st.sampled_from([b"a", b"b", b"c"])),
        st.tuples(st.just("messages"), st.integers(1, 5)),
    ),
    max_size=40,
)


@given(
    bound=st.integers(1, 5),
    steps=history,
    policy=st.sampled_from([DROP_OLDEST, DROP_NEWEST]),
)
def test_a_stuck_consumer_hears_what_the_history_adds_up_to(
    bound: int, steps: list[tuple[object, ...]], policy: OverflowPolicy
) -> None:
    """Whatever happened while the consumer was stuck, replaying its notices leaves it
    believing exactly the names that are active, never hearing of an activation of a name
    it believes active, told of every refusal; and the queue stays within its bound."""
    queue = DeliveryQueue(bound, policy)
    held = {b"a", b"b", b"c"}
    active = set(held)  # what the consumer was told before it got stuck
    believed = set(active)
    refusals: set[bytes] = set()
    for step in steps:
        kind = step[0]
        if kind == "outage":
            active.clear()
            queue.push_disconnected(LOST)
        elif kind == "activate":
            names = sorted(n for n in step[1] if n in held and n not in active)  # type: ignore[attr-defined]
            if names:
                active.update(names)
                queue.push_activated(names)
        elif kind == "stop" and step[1] in active:
            active.discard(step[1])  # type: ignore[arg-type]
            queue.push_stopped(step[1], ConnectionLost("stopped"))  # type: ignore[arg-type]
        elif kind == "refuse" and step[1] in held and step[1] not in active:
            held.discard(step[1])  # type: ignore[arg-type]
            refusals.add(step[1])  # type: ignore[arg-type]
            queue.push_stopped(step[1], ConnectionLost(f"refused {step[1]!r}"))  # type: ignore[arg-type]
        elif kind == "messages":
            queue.push(messages_of(b"a", None, [b"m"] * step[1]))  # type: ignore[operator]
        assert len(queue) <= bound
    told_refused: set[bytes] = set()
    while (item := queue.pop({b"a"})) is not None:
        if not isinstance(item, Notice):
            continue
        if item.error is not None:
            believed.clear()
        for name, error in (item.named or {}).items():
            believed.discard(name)
            if str(error).startswith("refused"):
                told_refused.add(name)
        for name in item.names or ():
            assert name not in believed, f"{name!r} activated twice in a row"
            believed.add(name)
    assert believed == active
    assert told_refused == refusals
