"""Misuse of the awaitables and the engine, in this process.

The awaitables (what `Task(f)()`, `Tasks([...])()`, `Tasks([...],
as_group=True)()`, `run_single()` and `run_as_group()` return, and the
iterator of `await handle`) follow a native coroutine's rules: a second
awaiter gets RuntimeError and the first is left alone; awaiting one that
finished raises RuntimeError; a resume that comes before the awaited future
is done never cancels or drops it.  `await handle` itself may be awaited any
number of times, from any number of tasks.

Each test names the behaviour it checks; the ones that need a process of
their own (exit, fork, shutdown, recursion that could crash) are in
test_misuse_process.py.  Misuse from tasks (two awaiters, awaiting again,
cancelled awaits) runs under asyncio, uvloop and trio; driving an awaitable
by hand (send, early resumes) is asyncio's future protocol and runs under
asyncio and uvloop only: under trio a step yields a trap that only trio's
scheduler may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import anyio
import pytest

import backgrounder
from backgrounder import Task, Tasks, background
from backgrounder.concurrency import enforce_async_callable

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # generous: turns a hang into a failure, times nothing
AT_ONCE = 1.0  # for what a native coroutine does within one loop step


@pytest.fixture(autouse=True)
def _idle_after_each_test():
    """Every test leaves the pool idle, so that one test's stragglers cannot
    show up in the next one's figures."""
    yield
    for gate in Gate.instances:
        gate.release.set()
    Gate.instances.clear()
    assert backgrounder.wait_idle(10)
    gc.collect()  # what the test left behind warns here, in its own teardown


class Gate:
    """A sync function that blocks until released and counts its runs."""

    instances: list[Gate] = []  # released after each test, passed or failed

    def __init__(self, value: Any = 7, wait: float = WAIT) -> None:
        Gate.instances.append(self)
        self.value = value
        self.wait = wait
        self.release = threading.Event()
        self.started = threading.Event()
        self.runs = 0

    def __call__(self) -> Any:
        self.runs += 1
        self.started.set()
        if not self.release.wait(self.wait):
            raise TimeoutError("the test never released the gate")
        return self.value


class AwaitIterator:
    """Awaiting this drives the one iterator it holds: the way to await the
    iterator of `await handle` from several tasks."""

    def __init__(self, it: Generator[Any, None, Any]) -> None:
        self.it = it

    def __await__(self) -> Generator[Any, None, Any]:
        return self.it


# The awaitables under test.  Each maker returns (awaitable, expected result)
# for a gate; the awaitable runs the gate once.
def _call(gate: Gate) -> tuple[Any, Any]:
    return Task(gate)(), gate.value


def _tasks(gate: Gate) -> tuple[Any, Any]:
    return Tasks([Task(gate)])(), None


def _tasks_group(gate: Gate) -> tuple[Any, Any]:
    return Tasks([Task(gate)], as_group=True)(), None


def _run_single(gate: Gate) -> tuple[Any, Any]:
    return Tasks([Task(gate)]).run_single(), None


def _run_as_group(gate: Gate) -> tuple[Any, Any]:
    return Tasks([Task(gate)]).run_as_group(), None


def _handle_iterator(gate: Gate) -> tuple[Any, Any]:
    return AwaitIterator(background(gate)().__await__()), gate.value


COROUTINE_MAKERS: dict[str, Callable[[Gate], tuple[Any, Any]]] = {
    "call": _call,
    "tasks": _tasks,
    "tasks_group": _tasks_group,
    "run_single": _run_single,
    "run_as_group": _run_as_group,
}
MAKERS = {**COROUTINE_MAKERS, "handle_iterator": _handle_iterator}


async def _await(aw: Any) -> Any:
    return await aw


class Spawned:
    """A task that `spawn` started to await one awaitable: what it ended
    with, once it ended."""

    def __init__(self) -> None:
        self.began = anyio.Event()  # set just before the await
        self.ended = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._cancelled = False

    def done(self) -> bool:
        return self.ended.is_set()

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        assert self.done(), "not ended yet"
        return self._error

    def result(self) -> Any:
        assert self.done(), "not ended yet"
        if self._error is not None:
            raise self._error
        return self._value

    async def wait(self, timeout: float) -> bool:
        """Waits at most `timeout` seconds for it to end; True if it ended."""
        with anyio.move_on_after(timeout):
            await self.ended.wait()
        return self.done()


@contextlib.asynccontextmanager
async def spawning() -> AsyncIterator[Callable[[Any], Spawned]]:
    """`spawn(aw)` starts a task (in a task group) that awaits `aw`, and
    returns its Spawned.  Its `began` is set right before the await: once
    another task sees it set, the spawned one is suspended in `aw` (or done).
    On the way out the gates are released and every task left is cancelled
    and waited for, also when the test failed (under trio, a cancelled wait
    for a sync call that runs waits for the call)."""
    async with anyio.create_task_group() as tg:

        def spawn(aw: Any) -> Spawned:
            spawned = Spawned()

            async def drive() -> None:
                try:
                    spawned.began.set()
                    spawned._value = await aw
                except anyio.get_cancelled_exc_class():
                    spawned._cancelled = True
                    raise
                except Exception as exc:  # noqa: BLE001 - kept for the test to check
                    spawned._error = exc
                finally:
                    spawned.ended.set()

            tg.start_soon(drive)
            return spawned

        try:
            yield spawn
        finally:
            for gate in Gate.instances:
                gate.release.set()
            tg.cancel_scope.cancel()


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await anyio.sleep(0.001)


# ---- a second awaiter -------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(COROUTINE_MAKERS))
def test_a_second_awaiter_gets_runtime_error_and_the_first_its_result(run, kind):
    # A native coroutine raises "coroutine is being awaited already" in the
    # second awaiter at once; the first completes as if nothing happened.
    gate = Gate()

    async def main():
        async with spawning() as spawn:
            aw, expected = COROUTINE_MAKERS[kind](gate)
            first = spawn(_await(aw))
            await _until(gate.started.is_set, "the first awaiter started the work")
            second = spawn(_await(aw))
            assert await second.wait(AT_ONCE), "the second awaiter was not refused at once"
            assert isinstance(second.exception(), RuntimeError), repr(second.exception())
            # asyncio's complaint about a future yielded without
            # _asyncio_future_blocking is a RuntimeError too, but a wrong one.
            assert "yield was used instead of yield from" not in str(second.exception())
            assert not first.done()
            gate.release.set()
            assert await first.wait(WAIT), "the first awaiter never completed"
            assert first.result() == expected

    run(main())
    assert gate.runs == 1


def test_a_second_awaiter_of_the_handle_iterator_gets_runtime_error_and_the_first_its_result(run):
    # The iterator of `await handle` is not a coroutine, so nothing refuses the
    # second `await` itself (as for the iterator of a native coroutine's
    # `__await__()`): its resume comes before the future is done.  As there,
    # the second awaiter ends with RuntimeError (at once or when the call
    # finishes) and the first gets the result.
    gate = Gate()

    async def main():
        async with spawning() as spawn:
            aw, expected = _handle_iterator(gate)
            first = spawn(_await(aw))
            await _until(gate.started.is_set, "the call started")
            await first.began.wait()  # the first awaiter waits in the iterator
            second = spawn(_await(aw))
            await second.began.wait()  # the second one resumed it, and waits or ended
            assert not first.done()
            gate.release.set()
            assert await first.wait(WAIT), "the first awaiter never completed"
            assert first.result() == expected
            assert await second.wait(WAIT), "the second awaiter never ended"
            assert isinstance(second.exception(), RuntimeError), repr(second.exception())
            # asyncio's complaint about a future yielded without
            # _asyncio_future_blocking is a RuntimeError too, but a wrong one.
            assert "yield was used instead of yield from" not in str(second.exception())

    run(main())
    assert gate.runs == 1


@pytest.mark.asyncio_only(
    "drives the awaitable by hand through asyncio's future protocol; under trio a step yields a "
    "trio trap that only trio's scheduler may take (taken by hand, trio reschedules a task that "
    "does not wait: TrioInternalError, as for trio's own primitives)"
)
@pytest.mark.parametrize("kind", sorted(COROUTINE_MAKERS))
def test_awaiting_after_a_hand_driven_send_raises_runtime_error(run, kind):
    # A native coroutine that was sent into by hand is suspended in an await:
    # awaiting it raises RuntimeError at once, and the work is not disturbed.
    gate = Gate()

    async def main():
        aw, expected = COROUTINE_MAKERS[kind](gate)
        fut = aw.send(None)
        with pytest.raises(RuntimeError):
            await aw
        await _until(gate.started.is_set, "the work started")
        gate.release.set()
        # Driving it on by hand still works: resume once its future is done.
        if fut is not None:
            await asyncio.wait([fut], timeout=WAIT)
            assert fut.done() and not fut.cancelled()
        with pytest.raises(StopIteration) as stop:
            for _ in range(100):
                fut = aw.send(None)
                if fut is None:
                    await asyncio.sleep(0)
                else:
                    await asyncio.wait([fut], timeout=WAIT)
        assert stop.value.value == expected

    run(main())
    assert gate.runs == 1


# ---- awaiting one that finished ---------------------------------------------


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_awaiting_a_finished_awaitable_raises_runtime_error(run, kind):
    gate = Gate()
    gate.release.set()

    async def main():
        aw, expected = MAKERS[kind](gate)
        assert await aw == expected
        with pytest.raises(RuntimeError):
            await aw

    run(main())
    assert gate.runs == 1


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_awaiting_a_failed_awaitable_again_raises_runtime_error(run, kind):
    def fail():
        raise LookupError("once")

    async def main():
        aw = {
            "call": lambda: Task(fail)(),
            "tasks": lambda: Tasks([Task(fail)])(),
            "tasks_group": lambda: Tasks([Task(fail)], as_group=True)(),
            "run_single": lambda: Tasks([Task(fail)]).run_single(),
            "run_as_group": lambda: Tasks([Task(fail)]).run_as_group(),
            "handle_iterator": lambda: AwaitIterator(background(fail)().__await__()),
        }[kind]()
        with pytest.raises((LookupError, BaseExceptionGroup)):
            await aw
        with pytest.raises(RuntimeError):
            await aw

    run(main())


@pytest.mark.parametrize("kind", sorted(COROUTINE_MAKERS))
def test_awaiting_a_closed_awaitable_raises_runtime_error_and_runs_nothing(run, kind):
    # A native coroutine closed before its first step: awaiting it raises
    # RuntimeError ("cannot reuse already awaited coroutine"), and its work
    # never starts.
    gate = Gate()
    gate.release.set()

    async def main():
        aw, _ = COROUTINE_MAKERS[kind](gate)
        aw.close()
        with pytest.raises(RuntimeError):
            await aw

    run(main())
    assert backgrounder.wait_idle(WAIT)
    assert gate.runs == 0


# ---- a resume before the future is done ---------------------------------------


@pytest.mark.asyncio_only(
    "resumes the awaitable early by hand and checks the asyncio future it yields "
    "(_asyncio_future_blocking); trio yields its own traps, which only trio may resume; "
    "two tasks awaiting one handle iterator is the generic case, run under trio too"
)
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_an_early_resume_by_a_second_driver_neither_cancels_nor_drops_the_wait(run, kind):
    # A native coroutine awaiting a future, resumed by a second driver before
    # the future is done (its task cleared _asyncio_future_blocking), yields
    # the same future again; the first driver then completes with the result.
    gate = Gate()

    async def main():
        async with spawning() as spawn:
            aw, expected = MAKERS[kind](gate)
            it = aw.__await__()
            first = spawn(_await(aw))
            await _until(gate.started.is_set, "the work started")
            await first.began.wait()  # the first driver waits in it
            yielded = it.send(None)
            assert isinstance(yielded, asyncio.Future), repr(yielded)
            assert not yielded.done()
            yielded._asyncio_future_blocking = False  # as a Task would
            await asyncio.sleep(0.01)
            assert not first.done()
            gate.release.set()
            assert await first.wait(WAIT), "the first driver never completed"
            assert first.result() == expected
            assert not yielded.cancelled()

    run(main())
    assert gate.runs == 1


@pytest.mark.asyncio_only(
    "resumes the awaitable early by hand and checks the asyncio future it yields "
    "(_asyncio_future_blocking); trio yields its own traps, which only trio may resume; "
    "two tasks awaiting one handle iterator is the generic case, run under trio too"
)
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_two_early_resumes_raise_runtime_error_and_never_cancel_the_work(run, kind):
    # Resumed early twice, a native coroutine awaiting a future raises
    # RuntimeError("await wasn't used with future"); the future is left alone
    # and the first driver still completes (it does not hang).
    gate = Gate()

    async def main():
        async with spawning() as spawn:
            aw, expected = MAKERS[kind](gate)
            it = aw.__await__()
            first = spawn(_await(aw))
            await _until(gate.started.is_set, "the work started")
            await first.began.wait()  # the first driver waits in it
            yielded = it.send(None)
            assert isinstance(yielded, asyncio.Future), repr(yielded)
            with pytest.raises(RuntimeError):
                it.send(None)
            assert not yielded.cancelled()
            gate.release.set()
            assert await first.wait(WAIT), "the first driver never completed"
            assert not first.cancelled()
            if first.exception() is None:
                assert first.result() == expected
            else:
                assert isinstance(first.exception(), RuntimeError), repr(first.exception())
            assert not yielded.cancelled()

    run(main())
    assert gate.runs == 1


@pytest.mark.asyncio_only(
    "drives the awaitable by hand through asyncio's future protocol; under trio a step yields a "
    "trio trap that only trio's scheduler may take (taken by hand, trio reschedules a task that "
    "does not wait: TrioInternalError, as for trio's own primitives)"
)
def test_a_hand_driven_call_resumed_early_raises_runtime_error_and_keeps_its_future(run):
    # By hand, nobody clears _asyncio_future_blocking: the second send of a
    # native coroutine raises RuntimeError("await wasn't used with future").
    # The future stays pending and gets the call's result.
    gate = Gate()

    async def main():
        call = Task(gate)()
        fut = call.send(None)
        with pytest.raises(RuntimeError):
            call.send(None)
        assert not fut.cancelled()
        await _until(gate.started.is_set, "the call started")
        gate.release.set()
        await asyncio.wait([fut], timeout=WAIT)
        assert fut.done() and not fut.cancelled()
        assert fut.result() == gate.value

    run(main())
    assert gate.runs == 1


# ---- await handle: a future, not a coroutine ----------------------------------


def test_await_handle_many_times_from_many_tasks_gives_each_the_result(run):
    gate = Gate("done")
    handle = background(gate)()

    async def main():
        async with spawning() as spawn:
            waiters = [spawn(_await(handle)) for _ in range(20)]
            for waiter in waiters:
                await waiter.began.wait()  # each one waits on the handle
            assert not any(waiter.done() for waiter in waiters)
            gate.release.set()
            for waiter in waiters:
                assert await waiter.wait(WAIT), "a waiter never woke"
            assert [waiter.result() for waiter in waiters] == ["done"] * 20
            # And again, once done, as often as wanted.
            assert [await handle for _ in range(3)] == ["done"] * 3

    run(main())
    assert gate.runs == 1


async def _cancelled_awaits(handle: Any, n: int) -> None:
    """n awaits of `handle`, each cancelled once it waits (what a timed-out
    wait_for or move_on_after does, without depending on the timer's
    resolution)."""
    ends: list[str] = []

    async def waiter(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # the starter resumes once this one waits in the await
        try:
            await handle
        except anyio.get_cancelled_exc_class():
            ends.append("cancelled")
            raise
        ends.append("woke")

    for _ in range(n):
        async with anyio.create_task_group() as tg:
            await tg.start(waiter)
            tg.cancel_scope.cancel()
    assert ends == ["cancelled"] * n, ends[-5:]


def test_cancelled_awaits_of_a_handle_leave_nothing_behind(run):
    # 2,000 timed-out waits on one long-running handle: each cancelled await
    # must drop what it registered on the handle.
    gate = Gate()
    handle = background(gate)()

    def live_objects() -> int:
        # Every object the collector tracks: a registration left behind is
        # one or more (under asyncio a future, under trio a done callback
        # and what its closure holds).
        gc.collect()
        return len(gc.get_objects())

    async def main():
        await _cancelled_awaits(handle, 50)  # warm up whatever the loop caches
        before = live_objects()
        await _cancelled_awaits(handle, 2000)
        after = live_objects()
        assert after - before < 100, (before, after)
        assert not handle.done()
        gate.release.set()
        with anyio.fail_after(WAIT):
            assert await handle == gate.value

    try:
        run(main())
    finally:
        gate.release.set()


def test_cancelled_awaits_of_a_handle_do_not_grow_memory(run):
    # The gate holds for the 2,100 cancelled awaits: more than WAIT on a
    # loaded machine under ASan and trio, where they took over 5 s.
    gate = Gate(wait=120)
    handle = background(gate)()
    import tracemalloc

    async def main():
        await _cancelled_awaits(handle, 100)
        gc.collect()
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            await _cancelled_awaits(handle, 2000)
            gc.collect()
            end, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # 2,000 leaked registrations (a future or a callback entry each) cost
        # well over 100 kB; a bounded cache costs far less.
        assert end - start < 100_000, (start, end)
        gate.release.set()
        with anyio.fail_after(WAIT):
            assert await handle == gate.value

    try:
        run(main())
    finally:
        gate.release.set()


def test_handle_result_without_timeout_on_a_loop_thread_raises_for_a_pending_sync_call(run):
    gate = Gate()

    async def main():
        handle = background(gate)()
        with pytest.raises(RuntimeError):
            handle.result()
        gate.release.set()
        with anyio.fail_after(WAIT):
            assert await handle == gate.value
        # Done: no wait, so no deadlock to refuse.
        assert handle.result() == gate.value

    try:
        run(main())
    finally:
        gate.release.set()


# ---- Task and Tasks as callables ----------------------------------------------


def test_the_task_classes_are_not_coroutine_functions_but_their_instances_are():
    # Starlette's BackgroundTask(func) checks is_async_callable(func): for the
    # class Task it must say "sync", so BackgroundTask(Task, f) calls Task(f)
    # as a sync callable.
    def f() -> None:
        pass

    for cls in (Task, Tasks):
        assert not inspect.iscoroutinefunction(cls), cls
    assert inspect.iscoroutinefunction(Task(f))
    assert inspect.iscoroutinefunction(Tasks([Task(f)]))
    if sys.version_info < (3, 14):  # deprecated there (filterwarnings=error)
        for cls in (Task, Tasks):
            assert not asyncio.iscoroutinefunction(cls), cls
        assert asyncio.iscoroutinefunction(Task(f))
        assert asyncio.iscoroutinefunction(Tasks([Task(f)]))


def test_a_task_of_enforce_async_callable_runs_the_function(run):
    def add(a: int, b: int) -> int:
        return a + b

    wrapped = enforce_async_callable(add)
    assert wrapped is not add  # an AsyncCallable around a sync function

    async def main():
        return await Task(wrapped, 2, 3)()

    result = run(main())
    if hasattr(result, "close"):  # an awaitable handed back instead of run
        result.close()
    assert result == 5


# ---- closing a sync call that failed --------------------------------------------


@pytest.mark.asyncio_only(
    "drives the awaitable by hand through asyncio's future protocol; under trio a step yields a "
    "trio trap that only trio's scheduler may take (taken by hand, trio reschedules a task that "
    "does not wait: TrioInternalError, as for trio's own primitives)"
)
def test_closing_a_call_whose_function_failed_logs_the_exception(run, caplog):
    def failing_sync():
        raise LookupError("closed after failing")

    async def main():
        call = Task(failing_sync)()
        fut = call.send(None)
        await asyncio.wait([fut], timeout=WAIT)
        assert fut.done()
        call.close()

    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        run(main())
        del main
        gc.collect()
    records = [r for r in caplog.records if r.name == "backgrounder"]
    assert records, "the failure was not logged"
    assert any(
        r.exc_info and isinstance(r.exc_info[1], LookupError) and "closed after failing" in str(r.exc_info[1])
        for r in records
    ), [r.getMessage() for r in records]


# ---- drain --------------------------------------------------------------------


def test_drain_waits_for_sync_and_async_background_calls(run):
    finished: list[str] = []

    @background
    def sync_work(i: int) -> None:
        time.sleep(0.05)
        finished.append(f"sync{i}")

    # On an asyncio loop whatever the test's loop is: the caller's, or under
    # trio backgrounder's own.
    @background
    async def async_work(i: int) -> None:
        await asyncio.sleep(0.05)
        finished.append(f"async{i}")

    async def main():
        handles = [sync_work(i) for i in range(4)] + [async_work(i) for i in range(4)]
        with anyio.fail_after(WAIT):
            assert await backgrounder.drain() is True
        assert all(h.done() for h in handles)
        assert sorted(finished) == sorted([f"sync{i}" for i in range(4)] + [f"async{i}" for i in range(4)])
        assert await backgrounder.drain(timeout=0.5) is True  # idle: at once

    run(main())


def test_drain_with_a_timeout_returns_false_and_keeps_the_loop_responsive(run):
    release = threading.Event()

    @background
    def blocking() -> None:
        release.wait(2)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await anyio.sleep(0.01)
                ticks += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            handle = blocking()
            started = time.monotonic()
            assert await backgrounder.drain(timeout=0.2) is False
            elapsed = time.monotonic() - started
            tg.cancel_scope.cancel()
        assert 0.15 <= elapsed < 1.5, elapsed
        assert ticks >= 5, f"the loop ticked {ticks} times in {elapsed:.2f} s"
        release.set()
        with anyio.fail_after(WAIT):
            assert await backgrounder.drain() is True
        assert handle.done()

    try:
        run(main())
    finally:
        release.set()


# ---- loops that stop or end under a call ----------------------------------------


def _stop_a_loop_under_a_call(release: threading.Event) -> weakref.ref[Any]:
    """Runs a loop until a task awaits a sync call, stops it, and returns a
    weak reference to it: every strong one dies with this frame."""
    submitted = threading.Event()

    def work() -> int:
        submitted.set()
        release.wait(WAIT)
        return 1

    loop = asyncio.SelectorEventLoop()

    async def main():
        loop.stop()  # run_forever returns after this step
        return await Task(work)()

    loop.create_task(main())
    loop.run_forever()
    assert submitted.wait(WAIT)
    return weakref.ref(loop)


# asyncio's loop only: an unclosed uvloop loop is never collected, with or
# without backgrounder (a uvloop loop stopped while a task awaits a plain
# future that a thread settles later stays alive; the asyncio one is
# collected).  An unclosed loop warns when collected; that is the point of
# this test, so the warning is not an error here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_loop_stopped_but_not_closed_is_collected_once_the_call_finishes():
    release = threading.Event()
    ref = _stop_a_loop_under_a_call(release)
    release.set()
    assert backgrounder.wait_idle(WAIT)
    deadline = time.monotonic() + WAIT
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert ref() is None, "the stopped loop is still referenced"


def test_an_async_background_call_on_a_loop_that_ends_is_reported(run, loop_kind, caplog):
    # Under asyncio the call is a task of the caller's loop: the loop's end
    # cancels it, and that is logged naming the function.  Under trio it runs
    # on backgrounder's own loop thread (docs/background.md, "trio"), as when
    # called from sync code: the end of the trio run leaves it running, and
    # there is nothing to report.
    started = threading.Event()
    stop = threading.Event()
    threads: dict[str, int] = {}

    @background
    async def outlived_by_its_loop() -> None:
        threads["call"] = threading.get_ident()
        started.set()
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def main():
        threads["caller"] = threading.get_ident()
        handle = outlived_by_its_loop()
        await _until(started.is_set, "the call started")
        return handle

    try:
        with caplog.at_level(logging.WARNING, logger="backgrounder"):
            handle = run(main())  # the loop ends with the call still sleeping
            gc.collect()
            messages = [r.getMessage() for r in caplog.records if r.name == "backgrounder"]
            if loop_kind == "trio":
                assert threads["call"] != threads["caller"], "it ran on the trio run's thread"
                assert not handle.done(), "the end of the trio run ended the call"
                assert not any("outlived_by_its_loop" in m for m in messages), messages
                stop.set()
                assert handle.result(WAIT) is None
                messages = [r.getMessage() for r in caplog.records if r.name == "backgrounder"]
                assert not any("outlived_by_its_loop" in m for m in messages), messages
            else:
                assert threads["call"] == threads["caller"], "it did not run on the caller's loop"
                assert handle.cancelled()
                assert any("outlived_by_its_loop" in m for m in messages), messages
    finally:
        stop.set()


# ---- a KeyboardInterrupt while a completion settles a future ---------------------


class _KIFuture(asyncio.Future):
    """A future whose first set_result (across the class) raises
    KeyboardInterrupt, as a Ctrl-C arriving right there would."""

    armed = True

    def set_result(self, result: Any) -> None:
        if _KIFuture.armed:
            _KIFuture.armed = False
            raise KeyboardInterrupt("while settling")
        super().set_result(result)


def _ki_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        base: type = uvloop.Loop
    else:
        base = asyncio.SelectorEventLoop

    class KILoop(base):  # type: ignore[misc, valid-type]
        def create_future(self) -> asyncio.Future[Any]:
            return _KIFuture(loop=self)

    return KILoop()


@pytest.mark.asyncio_only(
    "subclasses the asyncio (or uvloop) loop and future so that settling the future raises; "
    "trio has no loop object or future to subclass, and delivers completions through its token"
)
def test_a_keyboard_interrupt_while_settling_a_future_propagates_and_the_task_wakes(
    loop_kind, monkeypatch
):
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    _KIFuture.armed = True
    loop = _ki_loop(loop_kind)
    try:

        async def main():
            return await Task(lambda: 5)()

        task = loop.create_task(main())
        # Bounded: if the interrupt were swallowed, this returns after WAIT
        # with the task still pending, and pytest.raises fails.
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.wait([task], timeout=WAIT))
        assert not _KIFuture.armed, "set_result was never called"
        # A further run: the awaiting task wakes (done, not stuck for ever).
        loop.run_until_complete(asyncio.wait([task], timeout=WAIT))
        assert task.done(), "the awaiting task never woke"
        # It wakes with the result, or with whatever the engine reports for
        # a settle that was interrupted; never left pending.
        if not task.cancelled() and task.exception() is None:
            assert task.result() == 5
    finally:
        _KIFuture.armed = False
        pending = asyncio.all_tasks(loop)
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=WAIT))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert not unraisable, [u.exc_value for u in unraisable]


# ---- configure while calls run ------------------------------------------------


def test_lowering_max_workers_applies_to_calls_already_queued():
    lock = threading.Lock()
    running = 0
    peak_after = 0
    configured = threading.Event()
    first_batch = threading.Event()

    def work(i: int) -> None:
        nonlocal running, peak_after
        after = configured.is_set()
        with lock:
            running += 1
            if after:
                peak_after = max(peak_after, running)
        if i < 4:
            first_batch.wait(WAIT)
        time.sleep(0.05)
        with lock:
            running -= 1

    task = background(work)
    backgrounder.configure(max_workers=4)
    try:
        handles = [task(i) for i in range(4)]
        deadline = time.monotonic() + WAIT
        while backgrounder.stats()["running"] < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert backgrounder.stats()["running"] == 4
        handles += [task(i) for i in range(4, 10)]  # queued behind the four
        backgrounder.configure(max_workers=1)
        configured.set()
        first_batch.set()
        for h in handles:
            h.result(timeout=WAIT)
        # Calls that start after configure returned wait for the four
        # running ones to finish, then run one at a time.
        assert peak_after == 1, f"{peak_after} calls ran at once after max_workers=1"
    finally:
        first_batch.set()
        backgrounder.configure(max_workers=40)
