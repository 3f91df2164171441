"""Every way into the engine, under trio through anyio, and under asyncio the same.

Starlette, FastAPI, Lilya and Ravyn apps run under trio when served by
hypercorn with trio (anyio's trio backend): sync work must still run on the
native pool, completions come back through trio's token, and cancellation
follows trio's rules (an unstarted sync call never starts).  Each test runs
once per anyio backend (the `backend` fixture), so the two stay the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest

import backgrounder
from backgrounder import Task, Tasks, background
from backgrounder.concurrency import run_in_threadpool

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytest.importorskip("trio")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def pool_thread(x: int) -> tuple[int, str]:
    return x + 1, threading.current_thread().name


def on_a_pool_thread(name: str) -> bool:
    return name != threading.main_thread().name


def test_await_task_of_a_sync_callable_runs_on_the_pool(backend):
    async def main():
        return await Task(pool_thread, 1)()

    value, thread = anyio.run(main, backend=backend)
    assert value == 2 and on_a_pool_thread(thread)


def test_await_task_of_an_async_callable(backend):
    async def double(x):
        await anyio.sleep(0)
        return 2 * x

    async def main():
        return await Task(double, 21)()

    assert anyio.run(main, backend=backend) == 42


def test_the_exception_of_a_sync_task_comes_out_at_the_await(backend):
    def fail():
        raise KeyError("boom")

    async def main():
        with pytest.raises(KeyError, match="boom"):
            await Task(fail)()

    anyio.run(main, backend=backend)


def test_tasks_in_order_run_one_after_another(backend):
    seen: list[str] = []

    def sync(tag):
        seen.append(tag)

    async def asynchronous(tag):
        await anyio.sleep(0)
        seen.append(tag)

    async def main():
        await Tasks([Task(sync, "a"), Task(asynchronous, "b"), Task(sync, "c")])()

    anyio.run(main, backend=backend)
    assert seen == ["a", "b", "c"]


def test_tasks_as_group_run_at_once_and_raise_failures_together(backend):
    started = threading.Barrier(2, timeout=10)

    def meet():
        started.wait()   # both must run at the same time to get past this

    def fail():
        raise ValueError("in the group")

    async def main():
        await Tasks([Task(meet), Task(meet)], as_group=True)()
        with pytest.raises(BaseExceptionGroup) as info:
            await Tasks([Task(fail), Task(anyio.sleep, 5)], as_group=True)()
        assert [type(e) for e in info.value.exceptions] == [ValueError]

    anyio.run(main, backend=backend)


def test_run_in_threadpool(backend):
    async def main():
        return await run_in_threadpool(pool_thread, 41)

    value, thread = anyio.run(main, backend=backend)
    assert value == 42 and on_a_pool_thread(thread)


def test_await_handle_of_a_background_call_from_many_tasks(backend):
    release = threading.Event()

    @background
    def slow():
        release.wait(10)
        return "done"

    async def main():
        handle = slow()
        results = []

        async def waiter():
            results.append(await handle)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(waiter)
            await anyio.sleep(0.05)
            release.set()
        return results

    assert anyio.run(main, backend=backend) == ["done"] * 3


def test_a_cancelled_await_of_a_handle_leaves_the_call_running(backend):
    release = threading.Event()

    @background
    def slow():
        release.wait(10)
        return "still ran"

    async def main():
        handle = slow()
        with anyio.move_on_after(0.05):
            await handle
        assert not handle.done()
        release.set()
        return await handle

    assert anyio.run(main, backend=backend) == "still ran"


def test_start_soon_takes_a_task_call(backend):
    done = threading.Event()

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(done.set))

    anyio.run(main, backend=backend)
    assert done.is_set()


def test_a_sync_call_cancelled_before_it_starts_never_starts(backend):
    backgrounder.configure(max_workers=1)
    release = threading.Event()
    ran: list[str] = []

    def blocker():
        release.wait(10)

    def never():
        ran.append("never")

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(blocker))       # takes the one worker
            await anyio.sleep(0.05)
            with anyio.move_on_after(0.05):
                await Task(never)()            # queued behind it, then cancelled
            release.set()

    try:
        anyio.run(main, backend=backend)
        assert backgrounder.wait_idle(10)
    finally:
        backgrounder.configure(max_workers=40)
    assert ran == []


def test_a_sync_call_already_running_when_cancelled_follows_the_backends_rule(backend):
    # asyncio: the awaiting task is cancelled at once, the call finishes on
    # its thread and its result is dropped.  trio (as trio.to_thread.run_sync):
    # the call is waited for, its result returned, and the cancellation is
    # delivered at the next checkpoint.
    finished = threading.Event()
    returned = []

    def work():
        time.sleep(0.2)
        finished.set()
        return "result"

    async def main():
        with anyio.move_on_after(0.05) as scope:
            returned.append(await Task(work)())
            await anyio.sleep(0)   # a checkpoint
        return scope.cancelled_caught, finished.is_set()

    caught, finished_in_scope = anyio.run(main, backend=backend)
    assert caught is True
    if backend == "trio":
        assert (finished_in_scope, returned) == (True, ["result"])
    else:
        assert (finished_in_scope, returned) == (False, [])
        assert finished.wait(5)


def test_an_async_background_call_can_use_anyio_whatever_the_callers_backend(backend):
    # Under trio it runs on backgrounder's own asyncio loop: anyio there must
    # find asyncio, though anyio.run() marked the caller's context as trio's.
    import sniffio

    @background
    async def uses_anyio():
        await anyio.sleep(0.001)
        return sniffio.current_async_library(), threading.current_thread().name

    async def main():
        return await uses_anyio()

    library, thread = anyio.run(main, backend=backend)
    assert library == "asyncio"
    assert (thread == threading.main_thread().name) == (backend == "asyncio")


def test_a_trio_caller_of_run_sync_waits_while_backgrounders_loop_runs_it(backend):
    from backgrounder.concurrency import run_sync

    async def on_asyncio():
        await anyio.sleep(0.001)
        return threading.get_ident()

    async def main():
        return run_sync(on_asyncio()), threading.get_ident()

    ran_on, caller = anyio.run(main, backend=backend)
    assert ran_on != caller


def test_trio_is_imported_only_when_the_running_loop_is_trios():
    code = textwrap.dedent(
        """
        import asyncio, sys
        import backgrounder
        from backgrounder import Task, Tasks, background

        async def main():
            await Task(len, "abc")()
            await Tasks([Task(len, "x")], as_group=True)()
            await background(len)("ab")

        asyncio.run(main())
        assert "trio" not in sys.modules, "trio imported"
        assert "backgrounder._trio" not in sys.modules
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_without_any_event_loop_the_error_is_asyncios():
    # trio imported but not running: the same error as with no trio at all.
    call = Task(len, "abc")()
    with pytest.raises(RuntimeError, match="no running event loop"):
        call.send(None)


def test_a_wait_that_fails_half_made_leaves_the_handle_awaitable():
    # An error while a trio wait registers itself (a Ctrl-C, no memory) must
    # not leave the handle with a waiter list that nothing ever fires.
    from backgrounder import _trio

    release = threading.Event()

    @background
    def work():
        release.wait(10)
        return 42

    class FailsOnceOnExit:
        def __init__(self, lock):
            self.lock, self.armed = lock, True

        def __enter__(self):
            return self.lock.__enter__()

        def __exit__(self, *exc):
            self.lock.__exit__(*exc)
            if self.armed and exc[0] is None and len(_trio._registry):
                self.armed = False
                raise RuntimeError("injected, as a Ctrl-C would come")

    async def main():
        handle = work()
        lock = _trio._lock
        _trio._lock = FailsOnceOnExit(lock)
        try:
            with pytest.raises(RuntimeError, match="injected"):
                await handle
        finally:
            _trio._lock = lock
        release.set()
        with trio.fail_after(10):
            value = await handle
        return value, len(_trio._registry)

    import trio

    assert trio.run(main) == (42, 0)


def test_a_blocked_trio_import_is_no_trio_run(monkeypatch):
    # sys.modules["trio"] = None blocks trio's import: no trio run, then.
    @background
    def work():
        return 7

    handle = work()
    monkeypatch.setitem(sys.modules, "trio", None)
    assert handle.result() == 7

    async def main():
        return await Task(pool_thread, 1)()

    with pytest.raises(RuntimeError, match="no running event loop"):
        main().send(None)


def test_thousands_of_quick_sync_calls_each_wake_their_awaiter():
    # A call may end before its awaiter registers for the wake-up (the
    # handle is then done already): no wake-up may be lost.
    import trio

    def triple(i):
        return 3 * i

    async def main():
        results = [None] * 20_000

        async def one(i):
            results[i] = await Task(triple, i)()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(len(results)):
                    nursery.start_soon(one, i)
        return results

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # GIL hand-offs everywhere: the race comes often
    try:
        assert trio.run(main) == [3 * i for i in range(20_000)]
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_a_pool_thread_wakes_trio_waiters_does_not_deadlock_the_child():
    # The engine's fork hook settles the parent's pending calls in the child,
    # which runs their trio waiters' callback: it must not wait for a lock
    # that a pool thread of the parent held at the fork.
    child = textwrap.dedent(
        """
        import os, threading, time
        import trio, backgrounder
        from backgrounder import _trio, background

        backgrounder.configure(max_workers=1)
        busy = background(time.sleep)(1.0)        # the only worker is busy
        pending = background(lambda: 1)()          # queued, with a trio waiter

        async def subscribe():
            _trio._subscribe(pending, object(), _trio._inbox(), lambda: None)

        trio.run(subscribe)
        held, release = threading.Event(), threading.Event()

        def holder():                              # as a pool thread in the callback
            with _trio._lock:
                held.set()
                release.wait()

        threading.Thread(target=holder, daemon=True).start()
        held.wait()
        threading.Timer(0.2, release.set).start()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if pending.cancelled() else 3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            print("child deadlocked")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", child],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.stdout.strip() == "child 0", (proc.stdout, proc.stderr[-2000:])
