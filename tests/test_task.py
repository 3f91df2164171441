"""Task: the contract of DESIGN.md, under asyncio, uvloop and trio (the `run` fixture)."""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import gc
import sys
import threading
import time
import traceback

import anyio
import pytest

import backgrounder
from backgrounder import Task
from threadname import thread_comm

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def add(x: int, y: int = 0) -> int:
    return x + y


async def async_add(x: int, y: int = 0) -> int:
    await anyio.sleep(0)
    return x + y


class Boom(Exception):
    pass


def raise_boom() -> None:
    raise Boom("boom")


async def until(condition: collections.abc.Callable[[], object]) -> None:
    """Waits, without blocking the loop, until `condition()` is true (a pool
    thread makes it so); fails after 10 seconds rather than hang."""
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.005)


@pytest.fixture
def one_worker():
    backgrounder.configure(max_workers=1)
    yield
    backgrounder.configure(max_workers=40)


def test_await_returns_the_sync_callables_value(run):
    assert run(Task(add, 1, y=2)()) == 3


def test_await_returns_the_async_callables_value(run):
    assert run(Task(async_add, 20, y=22)()) == 42


def test_func_args_kwargs_are_readable():
    task = Task(add, 1, y=2)
    assert task.func is add
    assert task.args == (1,)
    assert task.kwargs == {"y": 2}


def test_kwargs_is_a_dict_even_without_keywords():
    assert Task(add, 1).kwargs == {}


def test_kwargs_are_copied_not_aliased():
    options = {"y": 1}
    task = Task(add, 1, **options)
    options["y"] = 100
    assert task.kwargs == {"y": 1}


def test_repr_matches_backgrounder_0_2_0():
    def notify(message, email):
        pass

    task = Task(notify, "hello", email="a@b.c")
    assert repr(task) == f"Task(func={notify!r}, args=('hello',), kwargs={{'email': 'a@b.c'}})"


@pytest.mark.parametrize("value", [42, "not callable", None, [1, 2]])
def test_non_callable_func_raises_type_error_naming_it(value):
    with pytest.raises(TypeError, match=repr(value).replace("[", r"\[").replace("]", r"\]")):
        Task(value)


def test_missing_func_raises_type_error():
    with pytest.raises(TypeError, match="func"):
        Task()


def test_task_called_with_arguments_raises_type_error():
    with pytest.raises(TypeError):
        Task(add, 1)(2)


def test_sync_callable_runs_on_a_native_pool_thread(run):
    loop_thread = threading.get_ident()

    def where():
        return threading.get_ident(), thread_comm(), type(threading.current_thread())

    ident, comm, thread_type = run(Task(where)())
    assert ident != loop_thread
    assert comm == "backgrounder"
    assert thread_type is threading._DummyThread


def test_async_callable_runs_in_the_awaiting_task(run):
    async def where():
        return threading.get_ident(), anyio.get_current_task().id

    async def main():
        ident, task = await Task(where)()
        return ident, task == anyio.get_current_task().id

    ident, same_task = run(main())
    assert ident == threading.get_ident()
    assert same_task


def test_exception_is_raised_at_the_await_with_its_traceback(run):
    async def main():
        try:
            await Task(raise_boom)()
        except Boom as exc:
            return exc
        return None

    exc = run(main())
    assert isinstance(exc, Boom)
    frames = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    assert "raise_boom" in frames
    assert "main" in frames


def test_async_exception_is_raised_at_the_await(run):
    async def fail():
        raise Boom("async")

    with pytest.raises(Boom, match="async"):
        run(Task(fail)())


def test_sync_callable_sees_the_callers_contextvars(run):
    async def main():
        request_id.set("req-7")
        return await Task(request_id.get)()

    assert run(main()) == "req-7"


def test_context_changes_in_the_pool_do_not_leak_back(run):
    def change():
        request_id.set("changed-in-pool")
        return request_id.get()

    async def main():
        request_id.set("caller")
        inside = await Task(change)()
        return inside, request_id.get()

    assert run(main()) == ("changed-in-pool", "caller")


def test_concurrent_calls_each_get_their_own_context(run):
    def read(expected):
        time.sleep(0.001)
        return request_id.get() == expected

    async def one(i):
        request_id.set(f"req-{i}")
        return await Task(read, f"req-{i}")()

    async def main():
        results = []

        async def collect(i):
            results.append(await one(i))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(collect, i)
        return results

    results = run(main())
    assert len(results) == 200 and all(results)


def test_calling_task_starts_nothing_until_awaited(run):
    calls = []

    async def main():
        aw = Task(calls.append, 1)()
        await anyio.sleep(0.05)
        before = list(calls)
        await aw
        return before

    assert run(main()) == []
    assert calls == [1]


def test_closing_an_unawaited_call_runs_nothing(run):
    calls = []

    async def main():
        aw = Task(calls.append, 1)()
        aw.close()
        await anyio.sleep(0.05)

    run(main())
    assert calls == []


def test_each_await_runs_the_callable_once(run):
    calls = []
    task = Task(calls.append, "x")

    async def main():
        await task()
        await task()

    run(main())
    assert calls == ["x", "x"]


def test_a_call_cannot_be_awaited_twice(run):
    async def main():
        aw = Task(add, 1)()
        await aw
        with pytest.raises(RuntimeError):
            await aw

    run(main())


def test_what_task_returns_is_a_coroutine(run):
    aw = Task(add, 1)()
    try:
        assert isinstance(aw, collections.abc.Coroutine)
        assert asyncio.iscoroutine(aw)
    finally:
        aw.close()


@pytest.mark.asyncio_only("asyncio.create_task and asyncio.gather are asyncio's own; trio has neither")
def test_create_task_and_gather_accept_it(run):
    async def main():
        t = asyncio.create_task(Task(add, 1, 1)())
        results = await asyncio.gather(Task(add, 2)(), Task(async_add, 3)())
        return await t, results

    assert run(main()) == (2, [2, 3])


def test_anyio_start_soon_accepts_a_task(run):
    results = []

    def record(x):
        results.append(x)

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(record, 1))
            tg.start_soon(Task(async_record, 2))

    async def async_record(x):
        await anyio.sleep(0)
        results.append(x)

    run(main())
    assert sorted(results) == [1, 2]


def test_asyncio_sees_a_task_as_a_coroutine_function():
    # Frameworks test a background with asyncio.iscoroutinefunction before
    # awaiting it, as they did 0.2.0's `async def __call__`.  From 3.14 it
    # warns (DeprecationWarning, removed in 3.16); the answer stays True for
    # the frameworks that still call it.
    if not hasattr(asyncio, "iscoroutinefunction"):
        pytest.skip("asyncio.iscoroutinefunction was removed in Python 3.16")
    if sys.version_info >= (3, 14):
        with pytest.deprecated_call(match="iscoroutinefunction"):
            assert asyncio.iscoroutinefunction(Task(add, 1))
    else:
        assert asyncio.iscoroutinefunction(Task(add, 1))


def test_thousands_of_concurrent_awaits_get_the_right_results(run):
    async def main():
        results = [None] * 5000

        async def one(i):
            results[i] = await Task(add, i, y=1)()

        async with anyio.create_task_group() as tg:
            for i in range(5000):
                tg.start_soon(one, i)
        return results

    assert run(main()) == [i + 1 for i in range(5000)]


@pytest.mark.asyncio_only(
    "the wakeups and completions counters measure the engine's bridge to asyncio loops; "
    "under trio each completion goes through trio's own token (TrioToken.run_sync_soon), not that bridge"
)
def test_completions_are_batched_into_few_loop_wakeups(run):
    before = backgrounder.stats()

    async def main():
        await asyncio.gather(*[Task(add, i)() for i in range(2000)])

    run(main())
    after = backgrounder.stats()
    completions = after["completions"] - before["completions"]
    wakeups = after["wakeups"] - before["wakeups"]
    assert completions == 2000
    assert wakeups < completions / 2


def test_cancelling_the_awaiting_task_before_the_call_starts_means_it_never_runs(run, one_worker):
    assert backgrounder.wait_idle(5)
    started = []
    returned = []
    blocking = threading.Event()
    release = threading.Event()

    def block():
        blocking.set()
        release.wait(10)

    async def await_the_queued_call():
        await Task(started.append, 1)()
        returned.append(True)

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(block))
            await until(blocking.is_set)                 # the only worker is busy now
            async with anyio.create_task_group() as queued:
                queued.start_soon(await_the_queued_call)
                await until(lambda: backgrounder.stats()["queued"] == 1)   # submitted, behind block
                queued.cancel_scope.cancel()
            release.set()

    before = backgrounder.stats()
    run(main())
    assert backgrounder.wait_idle(5)
    assert started == []
    assert returned == []
    # The worker dropped it unrun: counted as cancelled, not as done.
    after = backgrounder.stats()
    assert (after["cancelled"] - before["cancelled"], after["done"] - before["done"]) == (1, 1)


async def cancel_once_running(await_the_call, started, release, loop_kind) -> bool:
    """Runs `await_the_call` in a task group and cancels the group once its
    sync call has `started`.  Under trio the group's end waits for that call:
    `release` is set shortly after the cancel.  Returns whether the group's
    scope caught the cancellation."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(await_the_call)
        await until(started.is_set)
        if loop_kind == "trio":
            threading.Timer(0.05, release.set).start()
        tg.cancel_scope.cancel()
    return tg.cancel_scope.cancelled_caught


def test_cancelling_a_running_call_lets_it_finish(run, loop_kind):
    # asyncio: the awaiting task is cancelled at once; the call finishes on
    # its thread and its result is dropped.  trio (docs/background.md, "trio";
    # as trio.to_thread.run_sync): the call is waited for, its result is
    # returned, and the cancellation comes at the next checkpoint.
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    returned = []
    finished_at_return = []
    past_the_checkpoint = []

    def slow():
        started.set()
        release.wait(10)
        finished.set()
        return "result"

    async def await_the_call():
        returned.append(await Task(slow)())
        finished_at_return.append(finished.is_set())
        await anyio.sleep(0)                          # a checkpoint
        past_the_checkpoint.append(True)

    async def main():
        return await cancel_once_running(await_the_call, started, release, loop_kind)

    try:
        caught = run(main())
        finished_when_the_run_ended = finished.is_set()
    finally:
        release.set()
    assert caught is True
    assert past_the_checkpoint == []
    if loop_kind == "trio":
        assert (finished_when_the_run_ended, returned, finished_at_return) == (True, ["result"], [True])
    else:
        assert (finished_when_the_run_ended, returned, finished_at_return) == (False, [], [])
        assert finished.wait(5)


def test_a_cancelled_call_that_raises_is_not_lost(run, loop_kind, caplog):
    # asyncio: the awaiting task is cancelled at once, so nobody gets the
    # exception: it is logged on the backgrounder logger.  trio: the running
    # call is waited for and its exception raised at the await (so it is
    # retrieved, not logged).
    started = threading.Event()
    release = threading.Event()
    raised = []

    def slow_failure():
        started.set()
        release.wait(10)
        raise Boom("nobody awaits me")

    def logged():
        return [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], Boom)]

    async def await_the_call():
        try:
            await Task(slow_failure)()
        except Boom as exc:
            raised.append(exc)

    async def main():
        await cancel_once_running(await_the_call, started, release, loop_kind)
        release.set()   # asyncio: its awaiter is gone when the call fails
        if loop_kind != "trio":
            await until(logged)

    with caplog.at_level("ERROR", logger="backgrounder"):
        try:
            run(main())
        finally:
            release.set()
        assert backgrounder.wait_idle(5)
        gc.collect()
    if loop_kind == "trio":
        assert [str(e) for e in raised] == ["nobody awaits me"]
        assert logged() == []
    else:
        assert raised == []
        assert len(logged()) == 1


def test_stop_iteration_from_a_sync_callable_becomes_runtime_error(run):
    def stop():
        raise StopIteration("done")

    with pytest.raises(RuntimeError) as info:
        run(Task(stop)())
    assert isinstance(info.value.__cause__, StopIteration)


def test_base_exception_from_a_sync_callable_is_delivered_and_the_worker_survives(run):
    class Fatal(BaseException):
        pass

    def fatal():
        raise Fatal()

    async def main():
        with pytest.raises(Fatal):
            await Task(fatal)()
        return await Task(add, 1, 1)()

    assert run(main()) == 2


def test_partial_of_an_async_function_is_awaited(run):
    import functools

    assert run(Task(functools.partial(async_add, 1), y=1)()) == 2


def test_object_with_async_call_is_awaited(run):
    class Callable:
        async def __call__(self, x):
            return ("async", x)

    assert run(Task(Callable(), 1)()) == ("async", 1)


def test_task_subclass_keeps_working(run):
    class Named(Task):
        def __init__(self, name, func, *args, **kwargs):
            super().__init__(func, *args, **kwargs)
            self.name = name

    task = Named("n", add, 1, y=1)
    assert task.name == "n"
    assert run(task()) == 2
    assert repr(task).startswith("Named(func=")


def test_the_loop_is_not_blocked_while_a_sync_call_runs(run):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await Task(time.sleep, 0.2)()
            tg.cancel_scope.cancel()
        return ticks

    assert run(main()) >= 5


def test_a_call_from_a_pool_thread_can_await_backgrounder_again(run):
    def nested():
        return run(Task(add, 20, 22)())   # a loop (or trio run) of the same kind, on the pool thread

    assert run(Task(nested)()) == 42


def test_a_closed_loop_drops_its_pending_completions_cleanly():
    release = threading.Event()
    loop = asyncio.new_event_loop()

    async def start():
        return asyncio.ensure_future(Task(release.wait, 5)())

    pending = loop.run_until_complete(start())
    loop.run_until_complete(asyncio.sleep(0.02))
    pending.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    release.set()
    assert backgrounder.wait_idle(5)
    del pending
    gc.collect()
    # The pool still works on a new loop.
    assert asyncio.run(Task(add, 1, 2)()) == 3


def test_inspect_sees_a_task_as_a_coroutine_function():
    # Lilya, Esmerald and Starlette on 3.13 decide with inspect whether to
    # await a background or run it in a thread and drop what it returns.
    import inspect

    assert inspect.iscoroutinefunction(Task(add, 1))
    assert Task(add, 1).__name__ == "add"


def test_a_call_dropped_unawaited_warns_like_a_coroutine():
    aw = Task(add, 1)()
    with pytest.warns(RuntimeWarning, match="never awaited"):
        del aw
        gc.collect()
