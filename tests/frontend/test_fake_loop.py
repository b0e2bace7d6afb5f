"""The fake loop's own contract: scopes, deadlines, shields, task groups, signals, streams,
and the idle detector. The harness trusts these; a fake that lies would hide bugs."""

from __future__ import annotations

import math
import random

import pytest

from core.fake_redis import FakeRedis
from frontend.fake_loop import Cancelled, FakeLoop, NeverIdle, TaskFailed
from redismpx_core import ConnectionLost
from redismpx_frontend import Address

ADDRESS = Address("fake", 6379)


def test_a_signal_wakes_its_waiters_and_nothing_runs_between_steps() -> None:
    loop = FakeLoop()
    signal = loop.new_signal()
    log: list[str] = []

    async def waiter(name: str) -> None:
        log.append(f"{name} waits")
        await signal.wait()
        log.append(f"{name} woke")

    first = loop.spawn(waiter, "a")
    loop.spawn(waiter, "b")
    assert log == []  # spawned, not run: only a step runs tasks
    loop.run_until_idle()
    assert log == ["a waits", "b waits"]
    assert first.parked
    assert not first.done
    signal.set()
    assert log == ["a waits", "b waits"]
    loop.run_until_idle()
    assert log == ["a waits", "b waits", "a woke", "b woke"]
    assert first.done
    assert loop.tasks() == []


def test_waiting_on_a_set_signal_is_still_a_checkpoint() -> None:
    loop = FakeLoop()
    signal = loop.new_signal()
    signal.set()
    log: list[str] = []

    async def cancelled_then_waits() -> None:
        loop.current_task().cancel()
        try:
            await signal.wait()
        except Cancelled:
            log.append("cancelled")
            raise

    task = loop.spawn(cancelled_then_waits)
    loop.run_until_idle()
    assert log == ["cancelled"]
    assert task.done
    assert task.exception is None  # its root scope absorbed it


def test_a_deadline_cancels_a_blocked_wait_at_its_time_and_not_before() -> None:
    loop = FakeLoop()
    outcome: list[object] = []

    async def sleeper() -> None:
        with loop.cancel_scope(deadline=loop.now() + 5) as scope:
            await loop.new_signal().wait()
        outcome.append((loop.now(), scope.cancelled_caught))

    loop.spawn(sleeper)
    loop.run_until_idle()
    assert loop.next_deadline() == 5
    loop.advance(4.999)
    assert outcome == []
    loop.advance(0.001)
    assert outcome == [(5, True)]
    assert loop.next_deadline() is None


def test_advance_fires_deadlines_in_order_and_each_at_its_own_time() -> None:
    loop = FakeLoop()
    fired: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        with loop.cancel_scope(deadline=loop.now() + seconds):
            await loop.new_signal().wait()
        fired.append((name, loop.now()))
        if name == "first":  # a timer that sets another, due before the target
            with loop.cancel_scope(deadline=loop.now() + 1):
                await loop.new_signal().wait()
            fired.append(("chained", loop.now()))

    loop.spawn(sleeper, "late", 10)
    loop.spawn(sleeper, "first", 2)
    loop.spawn(sleeper, "middle", 3.5)
    loop.advance(20)
    assert fired == [("first", 2), ("chained", 3), ("middle", 3.5), ("late", 10)]
    assert loop.now() == 20


def test_cancel_before_entering_cancels_the_first_await() -> None:
    loop = FakeLoop()
    log: list[str] = []

    async def body() -> None:
        scope = loop.cancel_scope()
        scope.cancel()
        with scope:
            log.append("entered")
            await loop.checkpoint()
            log.append("never")
        log.append(f"caught={scope.cancelled_caught}")

    loop.spawn(body)
    loop.run_until_idle()
    assert log == ["entered", "caught=True"]


def test_cancellation_is_level_triggered_until_the_scope_exits() -> None:
    loop = FakeLoop()
    raised = 0

    async def body() -> None:
        nonlocal raised
        with loop.cancel_scope() as scope:
            scope.cancel()
            for _ in range(3):
                try:
                    await loop.checkpoint()
                except Cancelled:
                    raised += 1
        assert not scope.cancelled_caught  # every Cancelled was caught before it got there
        await loop.checkpoint()  # outside the scope: no cancellation

    task = loop.spawn(body)
    loop.run_until_idle()
    assert raised == 3
    assert task.done
    assert task.exception is None


def test_cancel_reaches_a_task_blocked_in_a_read() -> None:
    loop = FakeLoop()
    server = FakeRedis()
    loop.listen(("fake", 6379), server.connect)
    got: list[object] = []
    scope = loop.cancel_scope()

    async def reader() -> None:
        stream = await loop.connect(ADDRESS)
        with scope:
            got.append(await stream.receive())
        got.append("left the scope")
        await stream.aclose()

    loop.spawn(reader)
    loop.run_until_idle()
    assert got == []
    assert len(server.connections) == 1
    scope.cancel()
    loop.run_until_idle()
    assert got == ["left the scope"]
    assert scope.cancelled_caught
    assert server.connections == []


def test_an_outer_cancel_passes_through_an_inner_scope_to_the_outer_one() -> None:
    loop = FakeLoop()
    caught: list[bool] = []

    async def body() -> None:
        with loop.cancel_scope() as outer:
            with loop.cancel_scope() as inner:
                outer.cancel()
                inner.cancel()
                await loop.checkpoint()
            caught.append(True)  # never: the cancellation went on past the inner scope
        caught.extend([inner.cancelled_caught, outer.cancelled_caught])

    loop.spawn(body)
    loop.run_until_idle()
    assert caught == [False, True]  # both cancelled: the outermost absorbs it


def test_a_shield_keeps_outer_cancellation_out_but_not_its_own_deadline() -> None:
    loop = FakeLoop()
    log: list[object] = []

    async def body() -> None:
        with loop.cancel_scope() as outer:
            outer.cancel()
            with loop.cancel_scope(deadline=loop.now() + 1, shield=True) as shielded:
                await loop.checkpoint()
                log.append("shielded checkpoint passed")
                await loop.new_signal().wait()  # only the deadline ends this
            log.append(("deadline", loop.now(), shielded.cancelled_caught))
            await loop.checkpoint()
            log.append("never")
        log.append(("outer", outer.cancelled_caught))

    loop.spawn(body)
    loop.run_until_idle()
    assert log == ["shielded checkpoint passed"]
    loop.advance(1)
    assert log == ["shielded checkpoint passed", ("deadline", 1, True), ("outer", True)]


def test_a_task_group_waits_for_its_children_and_cancels_them_all() -> None:
    loop = FakeLoop()
    log: list[str] = []

    async def child(name: str) -> None:
        try:
            await loop.new_signal().wait()
        except Cancelled:
            log.append(f"{name} cancelled")
            raise

    async def parent() -> None:
        async with loop.open_task_group() as group:
            group.start_soon(child, "a")
            group.start_soon(child, "b")
            await loop.checkpoint()
            log.append("body done")
            group.cancel_scope.cancel()
        log.append(f"group exited, caught={group.cancel_scope.cancelled_caught}")

    task = loop.spawn(parent)
    loop.run_until_idle()
    assert log == ["body done", "a cancelled", "b cancelled", "group exited, caught=True"]
    assert task.done
    assert task.exception is None
    assert loop.failures == []


def test_leaving_a_task_group_waits_for_running_children() -> None:
    loop = FakeLoop()
    gate = loop.new_signal()
    log: list[str] = []

    async def child() -> None:
        await gate.wait()
        log.append("child done")

    async def parent() -> None:
        async with loop.open_task_group() as group:
            group.start_soon(child)
        log.append("group exited")

    loop.spawn(parent)
    loop.run_until_idle()
    assert log == []
    gate.set()
    loop.run_until_idle()
    assert log == ["child done", "group exited"]


def test_a_failing_child_cancels_its_siblings_and_surfaces_in_the_test() -> None:
    loop = FakeLoop()
    log: list[str] = []
    crash = loop.new_signal()

    async def sibling() -> None:
        try:
            await loop.new_signal().wait()
        except Cancelled:
            log.append("sibling cancelled")
            raise

    async def buggy() -> None:
        await crash.wait()
        raise KeyError("a bug")

    async def parent() -> None:
        async with loop.open_task_group() as group:
            group.start_soon(sibling)
            group.start_soon(buggy)

    task = loop.spawn(parent)
    loop.run_until_idle()
    crash.set()
    with pytest.raises(TaskFailed) as failed:
        loop.run_until_idle()
    assert isinstance(failed.value.__cause__, KeyError)
    assert log == ["sibling cancelled"]
    assert task.done
    assert isinstance(task.exception, BaseExceptionGroup)
    assert [type(e) for e in task.exception.exceptions] == [KeyError]
    loop.run_until_idle()  # reported once


def test_start_soon_from_outside_any_task_and_a_closed_group_refuses() -> None:
    loop = FakeLoop()
    groups = []
    ran: list[str] = []
    stop = loop.new_signal()

    async def owner() -> None:
        async with loop.open_task_group() as group:
            groups.append(group)
            await stop.wait()

    async def work() -> None:
        ran.append("work")

    loop.spawn(owner)
    loop.run_until_idle()
    groups[0].start_soon(work)  # from the test itself, as a dispatcher callback would
    loop.run_until_idle()
    assert ran == ["work"]
    stop.set()
    loop.run_until_idle()
    with pytest.raises(RuntimeError):
        groups[0].start_soon(work)


def test_a_task_that_never_waits_is_reported_not_spun_forever() -> None:
    loop = FakeLoop(max_steps=500)

    async def spinner() -> None:
        while True:
            await loop.checkpoint()

    loop.spawn(spinner, name="spinner")
    with pytest.raises(NeverIdle, match="spinner"):
        loop.run_until_idle()


def test_a_root_task_that_raises_fails_the_step() -> None:
    loop = FakeLoop()

    async def broken() -> None:
        await loop.checkpoint()
        raise ValueError("oops")

    loop.spawn(broken)
    with pytest.raises(TaskFailed, match="oops"):
        loop.run_until_idle()


def test_awaiting_a_foreign_awaitable_is_an_error_in_the_task() -> None:
    loop = FakeLoop()

    class Foreign:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield "an asyncio future, say"

    async def body() -> None:
        await Foreign()

    loop.spawn(body)
    with pytest.raises(TaskFailed, match="foreign"):
        loop.run_until_idle()


def test_the_clock_and_jitter_are_the_tests() -> None:
    assert FakeLoop(jitter=0.25).random() == 0.25
    drawn = [FakeLoop(jitter=random.Random(7)).random() for _ in range(2)]
    assert drawn[0] == drawn[1]
    loop = FakeLoop()
    assert loop.now() == 0
    loop.advance(2.5)
    assert loop.now() == 2.5
    with pytest.raises(ValueError, match="forward"):
        loop.advance(-1)


def test_a_seeded_schedule_is_deterministic_and_does_reorder() -> None:
    def order(seed: int) -> list[int]:
        loop = FakeLoop(schedule=random.Random(seed))
        log: list[int] = []

        async def step(index: int) -> None:
            log.append(index)

        for index in range(8):
            loop.spawn(step, index)
        loop.run_until_idle()
        return log

    assert order(3) == order(3)
    assert any(order(seed) != list(range(8)) for seed in range(5))


def test_connect_is_refused_without_a_server_or_when_it_is_down() -> None:
    loop = FakeLoop()
    server = FakeRedis()
    outcomes: list[object] = []

    async def attempt() -> None:
        try:
            outcomes.append(await loop.connect(ADDRESS))
        except ConnectionLost as exc:
            outcomes.append(exc)

    loop.spawn(attempt)
    loop.run_until_idle()
    loop.listen(("fake", 6379), server.connect)
    loop.down.add(("fake", 6379))
    loop.spawn(attempt)
    loop.run_until_idle()
    loop.down.clear()
    loop.spawn(attempt)
    loop.run_until_idle()
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["ConnectionLost", "ConnectionLost", "FakeStream"]


def test_a_hanging_connect_ends_at_the_callers_deadline() -> None:
    loop = FakeLoop()
    loop.listen(("fake", 6379), FakeRedis().connect)
    loop.hanging.add(("fake", 6379))
    log: list[object] = []

    async def attempt() -> None:
        with loop.cancel_scope(deadline=loop.now() + 3) as scope:
            await loop.connect(ADDRESS)
        log.append((loop.now(), scope.cancelled_caught))

    loop.spawn(attempt)
    loop.advance(10)
    assert log == [(3, True)]


def test_server_output_reaches_the_client_only_when_delivered_in_the_split_chosen() -> None:
    loop = FakeLoop()
    server = FakeRedis()
    loop.listen(("fake", 6379), server.connect)
    reads: list[bytes] = []
    streams = []

    async def client() -> None:
        stream = await loop.connect(ADDRESS)
        streams.append(stream)
        await stream.send(b"*1\r\n$4\r\nPING\r\n")
        while True:
            reads.append(await stream.receive())

    loop.spawn(client)
    loop.run_until_idle()
    (stream,) = streams
    assert stream.server.commands == [[b"PING"]]  # reached the server at once
    assert reads == []
    assert stream.pending() == 7
    assert stream.deliver(3) == 3
    loop.run_until_idle()
    assert reads == [b"+PO"]
    stream.deliver()
    loop.run_until_idle()
    assert reads == [b"+PO", b"NG\r\n"]


def test_a_dropped_connection_fails_the_read_and_the_server_forgets_it() -> None:
    loop = FakeLoop()
    server = FakeRedis()
    loop.listen(("fake", 6379), server.connect)
    outcome: list[object] = []
    streams = []

    async def client() -> None:
        stream = await loop.connect(ADDRESS)
        streams.append(stream)
        await stream.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n")
        try:
            await stream.receive()
        except ConnectionLost as exc:
            outcome.append(exc)
        try:
            await stream.send(b"*1\r\n$4\r\nPING\r\n")
        except ConnectionLost as exc:
            outcome.append(exc)

    loop.spawn(client)
    loop.run_until_idle()
    assert server.channels() == {b"a"}
    streams[0].drop()
    loop.run_until_idle()
    assert [type(o) for o in outcome] == [ConnectionLost, ConnectionLost]
    assert server.channels() == set()
    assert loop.open_streams() == []


def test_a_scope_exited_out_of_order_is_an_error() -> None:
    loop = FakeLoop()

    async def body() -> None:
        outer = loop.cancel_scope()
        inner = loop.cancel_scope()
        outer.__enter__()
        inner.__enter__()
        outer.__exit__(None, None, None)

    loop.spawn(body)
    with pytest.raises(TaskFailed, match="innermost first"):
        loop.run_until_idle()


def test_no_deadline_is_infinite() -> None:
    loop = FakeLoop()

    async def body() -> None:
        with loop.cancel_scope(deadline=math.inf):
            await loop.new_signal().wait()

    task = loop.spawn(body)
    loop.advance(1e9)
    assert task.parked
    assert loop.next_deadline() is None


def test_close_unwinds_tasks_left_waiting_even_through_a_finally_that_awaits() -> None:
    loop = FakeLoop()
    unwound: list[str] = []

    async def body() -> None:
        try:
            await loop.new_signal().wait()
        finally:
            with loop.cancel_scope(deadline=loop.now() + 1, shield=True):
                await loop.checkpoint()  # as a stream's close does, shielded
            unwound.append("finally ran")

    task = loop.spawn(body)
    loop.run_until_idle()
    loop.close()
    assert unwound == ["finally ran"]
    assert task.done
    assert loop.tasks() == []
