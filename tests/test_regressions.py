"""Regression tests for defects found in review; each names what broke."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading

import anyio
import pytest

import backgrounder
from backgrounder import Task


def run_script(source: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no fork()")
def test_fork_while_another_thread_submits_does_not_deadlock():
    # The pool's lock used to be held across Python's fork hooks, during which
    # the forking thread could lose the GIL to a thread that then blocked on it.
    out = run_script(
        """
        import logging, os, sys, threading, time, warnings
        warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads, 3.12+
        os.register_at_fork(before=lambda: time.sleep(0.001))  # a hook that lets the GIL go
        sys.setswitchinterval(1e-6)
        from backgrounder import background

        @background
        def work(i):
            return i

        stop = False
        def feeder():
            while not stop:
                for h in [work(i) for i in range(100)]:
                    h.result()
        threading.Thread(target=feeder, daemon=True).start()
        time.sleep(0.1)
        for n in range(40):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if work(n).result(timeout=10) == n else 1)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
        stop = True
        print("forked", n + 1)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "forked 40"


def test_a_huge_idle_timeout_does_not_hang_the_pool():
    # A deadline past time_t's range made pthread_cond_timedwait fail at once,
    # and the idle wait spun forever holding the pool's lock.
    out = run_script(
        """
        import sys, backgrounder
        from backgrounder import background
        backgrounder.configure(idle_timeout=sys.float_info.max)
        @background
        def f(x):
            return x
        print(sum(f(i).result(timeout=10) for i in range(100)))
        """,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sum(range(100)))


def test_repr_survives_a_func_repr_that_replaces_the_args():
    class Evil:
        def __call__(self):
            pass

        def __repr__(self):
            task.args = ()
            [tuple([object()]) for _ in range(1000)]
            return "evil"

    task = Task(Evil(), *[object() for _ in range(3)])
    assert repr(task).startswith("Task(func=evil, args=(<object object")


def test_sending_into_a_call_before_it_is_settled_raises_a_real_exception():
    release = threading.Event()

    async def main():
        call = Task(release.wait, 5)()
        fut = call.send(None)   # submitted; its future is not settled yet
        # As a native coroutine awaiting a future: a resume that did not come
        # from the future raises and ends the coroutine, and leaves the
        # future alone: the work goes on and settles it.
        with pytest.raises(RuntimeError, match="await wasn't used with future"):
            call.send(None)
        assert not fut.cancelled()
        release.set()
        await asyncio.wait([fut])
        assert fut.result() is True
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            call.send(None)

    asyncio.run(main())
    assert backgrounder.wait_idle(5)


@pytest.mark.asyncio_only(
    "settles the call's asyncio future by hand-driving, then throws asyncio.CancelledError into it; "
    "under trio a step yields a trio trap that only trio's scheduler may take (the test below "
    "cancels the awaiter of a failing call without hand-driving, on every loop)"
)
def test_a_call_abandoned_after_it_failed_reports_the_exception(run):
    # A group cancelled a child just after the child's sync call had settled
    # its future with an exception: nobody read it, and only asyncio's
    # "exception was never retrieved" mentioned it.
    class Boom(Exception):
        pass

    def fail():
        raise Boom("abandoned")

    reported = []
    backgrounder.configure(on_error=reported.append)
    try:

        async def main():
            call = Task(fail)()
            fut = call.send(None)
            while not fut.done():
                await asyncio.sleep(0.001)
            with pytest.raises(asyncio.CancelledError):
                call.throw(asyncio.CancelledError())

        run(main())
    finally:
        backgrounder.configure(on_error=None)
    assert [str(e) for e in reported] == ["abandoned"]


def test_a_sync_call_that_fails_after_its_awaiter_was_cancelled_is_delivered_or_reported(run, loop_kind):
    # Next to the case above, without driving anything by hand: the awaiter
    # is cancelled while the call runs, then the call fails.  The failure is
    # never lost.  asyncio: the awaiter is cancelled at once, nobody reads
    # the failure, so it is reported.  trio (docs/background.md, "trio"):
    # the running call is waited for, its failure comes out at the await,
    # and the cancellation follows at the next checkpoint.
    class Boom(Exception):
        pass

    started = threading.Event()
    fail_now = threading.Event()

    def fail():
        started.set()
        fail_now.wait(10)
        raise Boom("abandoned")

    reported: list[BaseException] = []
    was_reported = threading.Event()
    delivered: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        reported.append(exc)
        was_reported.set()

    backgrounder.configure(on_error=on_error)
    try:

        async def main():
            scope = anyio.CancelScope()

            async def awaiter():
                with scope:
                    try:
                        await Task(fail)()
                    except Boom as exc:
                        delivered.append(exc)
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(awaiter)
                assert await anyio.to_thread.run_sync(started.wait, 10)
                scope.cancel()
                # asyncio: the awaiter ended, cancelled; trio: it waits for the call.
                await anyio.wait_all_tasks_blocked()
                fail_now.set()
            if loop_kind != "trio":
                assert await anyio.to_thread.run_sync(was_reported.wait, 10), "never reported"
            return scope.cancelled_caught

        cancelled_caught = run(main())
        assert backgrounder.wait_idle(10)
    finally:
        fail_now.set()
        backgrounder.configure(on_error=None)
    assert cancelled_caught is True
    if loop_kind == "trio":
        assert [str(e) for e in delivered] == ["abandoned"]
        assert reported == []
    else:
        assert delivered == []
        assert [str(e) for e in reported] == ["abandoned"]


# ---- found by the second review of the C (a CPython core developer's eye) ----------


def test_an_entry_closing_the_tasks_run_that_drives_it_gets_an_error_not_a_crash():
    # seq_close dropped the entry's coroutine while it was executing (a
    # use-after-free): a run refuses re-entry, as a generator does.
    out = run_script(
        """
        import asyncio
        from backgrounder import Tasks

        async def entry():
            try:
                asyncio.current_task().get_coro().close()
            except ValueError as e:
                print("close:", e)
            await asyncio.sleep(0)
            print("entry resumed")

        async def main():
            await asyncio.create_task(Tasks([entry])())
            print("run ended")

        asyncio.run(main())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["close: coroutine already executing", "entry resumed", "run ended"]


def test_a_cancelled_drain_leaves_no_thread_that_asyncio_run_waits_for():
    out = run_script(
        """
        import asyncio, threading, time
        import backgrounder

        release = threading.Event()

        @backgrounder.background
        def long_job():
            release.wait(30)

        async def main():
            long_job()
            try:
                await asyncio.wait_for(backgrounder.drain(), 0.2)
            except asyncio.TimeoutError:
                print("drain timed out")

        start = time.monotonic()
        asyncio.run(main())   # shuts the default executor down, waiting for its threads
        print("asyncio.run returned", time.monotonic() - start < 3)
        release.set()
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["drain timed out", "asyncio.run returned True"]


def test_a_sync_call_raising_invalid_state_error_raises_it_when_resumed_by_send():
    # The resume took the call's own InvalidStateError for "not done yet".
    def fail():
        raise asyncio.InvalidStateError("the call's own")

    async def main():
        call = Task(fail)()
        fut = call.send(None)
        await asyncio.wait([fut])
        with pytest.raises(asyncio.InvalidStateError, match="the call's own"):
            call.send(None)

    asyncio.run(main())


def test_a_keyboard_interrupt_in_a_done_callback_reaches_the_caller_of_cancel():
    # Done callbacks swallowed KeyboardInterrupt as a logged failure.
    backgrounder.configure(max_workers=1)
    release = threading.Event()
    try:
        blocker = backgrounder.background(release.wait)(10)
        queued = backgrounder.background(len)("abc")
        ran = []

        def interrupt(handle):
            raise KeyboardInterrupt

        queued.add_done_callback(interrupt)
        queued.add_done_callback(lambda handle: ran.append(handle.cancelled()))
        with pytest.raises(KeyboardInterrupt):
            queued.cancel()
        assert ran == [True]   # the other callbacks still ran
        assert queued.cancelled()
    finally:
        release.set()
        backgrounder.configure(max_workers=40)
    assert blocker.result(10) is True


# ---- found by the third review of the C ---------------------------------------------


def test_an_async_call_whose_loop_was_closed_under_it_is_reported_and_not_waited_for(caplog):
    # Kept alive for ever in the engine's table: never settled, never
    # reported, and every later drain() timed out.
    @backgrounder.background
    async def notify_on_a_closed_loop():
        await asyncio.sleep(3600)

    async def view():
        return notify_on_a_closed_loop()

    loop = asyncio.new_event_loop()
    handle = loop.run_until_complete(view())
    loop.close()
    with caplog.at_level("ERROR", logger="backgrounder"):
        assert asyncio.run(backgrounder.drain(timeout=5)) is True
    assert handle.cancelled()
    assert backgrounder.stats()["pending_async"] == 0
    assert any("notify_on_a_closed_loop" in r.getMessage() and "closed" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # The task itself is dropped pending: asyncio's own "destroyed but pending" is fine.
    del handle
    gc.collect()


@pytest.mark.parametrize("what", ["wait_idle", "shutdown"])
def test_wait_idle_and_shutdown_from_a_call_awaited_on_the_engines_loop_do_not_wait_for_it(what):
    out = run_script(
        f"""
        import time
        import backgrounder
        from backgrounder import Task, background

        def sync_part():
            start = time.monotonic()
            if "{what}" == "wait_idle":
                result = backgrounder.wait_idle(timeout=5)
            else:
                result = backgrounder.shutdown(wait=True, timeout=5)
            return result, time.monotonic() - start < 2

        @background
        async def outer():   # called from sync code: on the engine's own loop
            return await Task(sync_part)()

        print(outer().result(timeout=20))
        """
    )
    assert out.returncode == 0, out.stderr
    result, prompt = eval(out.stdout.strip())
    assert prompt is True, out.stdout
    assert result is (True if what == "wait_idle" else False), out.stdout


def test_awaiting_a_cancelled_handle_is_an_asyncio_cancellation():
    backgrounder.configure(max_workers=1)
    release = threading.Event()
    try:
        backgrounder.background(release.wait)(10)
        queued = backgrounder.background(len)("abc")
        assert queued.cancel()

        async def main():
            task = asyncio.ensure_future(_await(queued))
            await asyncio.wait([task])
            return task.cancelled()

        assert asyncio.run(main()) is True
    finally:
        release.set()
        backgrounder.configure(max_workers=40)


async def _await(aw):
    return await aw


def test_throw_into_a_call_does_not_chain_the_exception_the_caller_handles():
    release = threading.Event()

    async def main():
        call = Task(release.wait, 5)()
        call.send(None)
        thrown = ValueError("thrown")
        try:
            raise KeyError("being handled")
        except KeyError:
            with pytest.raises(ValueError) as info:
                call.throw(thrown)
        release.set()
        return info.value

    got = asyncio.run(main())
    assert got.__context__ is None
