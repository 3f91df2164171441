"""Misuse that needs a process of its own: recursion that could crash,
shutdown (final for a process), exit, fork.

Each script runs in a fresh interpreter with a timeout, so that a crash or a
hang fails its test instead of taking pytest down; the script reports on
stdout (or by its exit code) and the test reads that, its stderr and how long
it took.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.timeout(60)

CRASH_CODES = {-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE}


def python(source: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Runs `source` in a fresh interpreter.  A script still running after
    `timeout` seconds dumps every thread's traceback on stderr and exits
    with code 1 (faulthandler), so that a hang fails with its stacks; if even
    that does not end it, TimeoutExpired."""
    dump = f"import faulthandler; faulthandler.dump_traceback_later({timeout}, exit=True)\n"
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", dump + textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    why = describe(proc)
    assert "Fatal Python error" not in proc.stderr, why
    assert proc.returncode not in CRASH_CODES, why
    assert proc.returncode == 0, why


def lines(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The script's `key value` lines."""
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


# ---- recursion ----------------------------------------------------------------


@pytest.mark.parametrize("as_group", [False, True])
def test_a_tasks_that_contains_itself_raises_recursion_error(as_group):
    proc = python(
        f"""
        import asyncio
        from backgrounder import Tasks
        try:
            BaseExceptionGroup
        except NameError:  # 3.10
            from exceptiongroup import BaseExceptionGroup

        async def main():
            t = Tasks(as_group={as_group})
            t.add_task(t)
            try:
                await t()
            except RecursionError:
                print("RecursionError")
            except BaseExceptionGroup as eg:
                # A group may wrap it; it must still be a RecursionError.
                print(type(eg.exceptions[0]).__name__ if len(eg.exceptions) == 1 else repr(eg))

        asyncio.run(main())
        """,
        timeout=15,
    )
    assert_ok(proc)
    assert proc.stdout.strip() == "RecursionError", describe(proc)


@pytest.mark.parametrize("as_group", [False, True])
@pytest.mark.parametrize("times_the_limit", [1, 50])
def test_tasks_nested_deeper_than_the_recursion_limit_raise_recursion_error(as_group, times_the_limit):
    # Just past the limit, and far past it (where unchecked C recursion, in
    # the run or in the deallocation of the nest, would overflow the stack).
    proc = python(
        f"""
        import asyncio, sys
        from backgrounder import Task, Tasks
        try:
            BaseExceptionGroup
        except NameError:  # 3.10
            from exceptiongroup import BaseExceptionGroup

        def leaf():
            return 1

        t = Tasks([Task(leaf)], as_group={as_group})
        for _ in range(sys.getrecursionlimit() * {times_the_limit} + 100):
            t = Tasks([t], as_group={as_group})

        async def main():
            try:
                await t()
            except RecursionError:
                print("RecursionError")
            except BaseExceptionGroup as eg:
                while isinstance(eg, BaseExceptionGroup) and len(eg.exceptions) == 1:
                    eg = eg.exceptions[0]
                print(type(eg).__name__)
            else:
                print("no error")

        asyncio.run(main())
        """,
        timeout=15,
    )
    assert_ok(proc)
    assert proc.stdout.strip() == "RecursionError", describe(proc)


# ---- wait_idle and shutdown inside the engine's own work ------------------------


def test_wait_idle_inside_a_background_call_does_not_wait_for_itself():
    started = time.monotonic()
    proc = python(
        """
        import time, threading, backgrounder
        from backgrounder import background

        release = threading.Event()

        @background
        def alone():
            t, cpu = time.monotonic(), time.process_time()
            idle = backgrounder.wait_idle(timeout=0.5)
            return idle, time.monotonic() - t

        @background
        def sleeper():
            release.wait(1.5)

        @background
        def with_a_sleeper():
            t, cpu = time.monotonic(), time.process_time()
            idle = backgrounder.wait_idle(timeout=0.5)
            return idle, time.monotonic() - t, time.process_time() - cpu

        idle, elapsed = alone().result(timeout=10)
        print("alone", idle, round(elapsed, 3))
        sleeper()
        idle, elapsed, cpu = with_a_sleeper().result(timeout=10)
        print("with_sleeper", idle, round(elapsed, 3), round(cpu, 3))
        # The script ends with the sleeper still running: the exit drain
        # waits for it, and ends.
        """,
        timeout=15,
    )
    wall = time.monotonic() - started
    assert_ok(proc)
    out = lines(proc)
    idle, elapsed = out["alone"].split()
    assert idle == "True", describe(proc)
    assert float(elapsed) < 0.4, describe(proc)  # it did not wait for itself
    idle, elapsed, cpu = out["with_sleeper"].split()
    assert idle == "False", describe(proc)
    assert 0.4 <= float(elapsed) < 1.2, describe(proc)  # its own timeout
    assert float(cpu) < 0.25, describe(proc)  # waited, did not spin
    assert wall < 10, describe(proc)


def test_wait_idle_on_the_engines_loop_does_not_wait_for_its_caller():
    proc = python(
        """
        import time, backgrounder
        from backgrounder import background

        @background
        async def on_the_engine_loop():  # called from sync code: the engine's loop
            t = time.monotonic()
            idle = backgrounder.wait_idle(timeout=0.5)
            return idle, time.monotonic() - t

        idle, elapsed = on_the_engine_loop().result(timeout=10)
        print("idle", idle)
        print("elapsed", round(elapsed, 3))
        """,
        timeout=20,
    )
    assert_ok(proc)
    out = lines(proc)
    assert out["idle"] == "True", describe(proc)
    assert float(out["elapsed"]) < 0.4, describe(proc)


def test_drain_on_the_engines_loop_does_not_wait_for_its_caller():
    proc = python(
        """
        import time, backgrounder
        from backgrounder import background

        @background
        async def on_the_engine_loop():
            t = time.monotonic()
            idle = await backgrounder.drain(timeout=1)
            return idle, time.monotonic() - t

        idle, elapsed = on_the_engine_loop().result(timeout=10)
        print("idle", idle)
        print("elapsed", round(elapsed, 3))
        """,
        timeout=20,
    )
    assert_ok(proc)
    out = lines(proc)
    assert out["idle"] == "True", describe(proc)
    assert float(out["elapsed"]) < 0.5, describe(proc)


def test_two_background_calls_that_shut_down_do_not_wait_for_each_other():
    proc = python(
        """
        import time, threading, backgrounder
        from backgrounder import background

        both = threading.Barrier(2)

        @background
        def closer():
            both.wait(5)
            t = time.monotonic()
            backgrounder.shutdown(wait=True, timeout=5)
            return time.monotonic() - t

        handles = [closer(), closer()]
        for h in handles:
            print("elapsed", round(h.result(timeout=20), 3))
        """,
        timeout=40,
    )
    assert_ok(proc)
    elapsed = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("elapsed")]
    assert len(elapsed) == 2, describe(proc)
    assert max(elapsed) < 2.5, describe(proc)


def test_shutdown_timeout_is_one_deadline_for_the_pool_and_the_engine_loop():
    proc = python(
        """
        import asyncio, threading, time, backgrounder
        from backgrounder import background

        running = threading.Barrier(3)

        @background
        def blocking_sync():
            running.wait(5)
            time.sleep(1.5)

        @background
        async def blocking_async():  # from sync code: runs on the engine's loop
            running.wait(5)
            time.sleep(1.5)  # blocks that loop

        blocking_sync()
        blocking_async()
        running.wait(5)
        t = time.monotonic()
        backgrounder.shutdown(wait=True, timeout=0.5)
        print("elapsed", round(time.monotonic() - t, 3))
        """,
        timeout=40,
    )
    assert_ok(proc)
    elapsed = float(lines(proc)["elapsed"])
    assert elapsed < 0.9, describe(proc)


def test_run_sync_racing_shutdown_returns_or_raises_runtime_error():
    proc = python(
        """
        import asyncio, threading, time, backgrounder
        from backgrounder.concurrency import run_sync

        outcomes = []

        def in_a_loop(delay):
            async def outer():
                # sync code inside a running loop: run_sync goes to the
                # engine's loop thread
                try:
                    outcomes.append(run_sync(asyncio.sleep(delay, result=42)))
                except RuntimeError as e:
                    outcomes.append("RuntimeError")
            asyncio.run(outer())

        in_a_loop(0)  # starts the engine's loop
        threads = [threading.Thread(target=in_a_loop, args=(i / 20,)) for i in range(8)]
        for th in threads:
            th.start()
        time.sleep(0.05)
        backgrounder.shutdown(wait=True, timeout=5)
        deadline = time.monotonic() + 10
        for th in threads:
            th.join(max(0, deadline - time.monotonic()))
        print("alive", sum(th.is_alive() for th in threads))
        print("outcomes", sorted(map(str, outcomes)), flush=True)   # os._exit does not flush
        import os
        os._exit(0)  # a stuck thread must not hold the exit up: the test reads "alive"
        """,
        timeout=40,
    )
    assert_ok(proc)
    out = lines(proc)
    assert out.get("alive") == "0", describe(proc)
    outcomes = eval(out["outcomes"])  # a list of str, printed by the script
    assert len(outcomes) == 9, describe(proc)
    assert set(outcomes) <= {"42", "RuntimeError"}, describe(proc)


# ---- at exit --------------------------------------------------------------------


@pytest.mark.parametrize("first", ["backgrounder", "concurrent.futures"])
def test_background_work_at_exit_may_still_use_executors_and_to_thread(first):
    # Exit hooks run last registered first: importing concurrent.futures'
    # executors after backgrounder is the order where they refuse work first.
    imports = [
        "from backgrounder import background",
        "from concurrent.futures import ThreadPoolExecutor",
    ]
    if first != "backgrounder":
        imports.reverse()
    proc = python(
        """
        import asyncio, os, time
        IMPORTS

        def report(name, fn):
            try:
                os.write(1, f"{name} {fn()}\\n".encode())
            except BaseException as e:
                os.write(1, f"{name} failed: {e!r}\\n".encode())

        @background
        def late():
            time.sleep(0.3)  # the main script has returned by now

            async def to_thread():
                return await asyncio.to_thread(lambda: "ok")

            async def run_in_executor():
                return await asyncio.get_running_loop().run_in_executor(None, lambda: "ok")

            def pool():
                with ThreadPoolExecutor(1) as ex:
                    return ex.submit(lambda: "ok").result()

            report("to_thread", lambda: asyncio.run(to_thread()))
            report("run_in_executor", lambda: asyncio.run(run_in_executor()))
            report("pool", pool)

        late()
        """.replace("IMPORTS", "; ".join(imports))
    )
    why = describe(proc)
    assert_ok(proc)
    # What backgrounder controls: its drain runs before concurrent.futures
    # refuses new work.
    assert "cannot schedule new futures after interpreter shutdown" not in proc.stderr + proc.stdout, why
    # What it does not: from 3.12, CPython refuses to start any new thread
    # once its shutdown has begun (gh-104690), before any exit hook runs; an
    # executor that needs a new thread then fails with CPython's own error.
    allowed = {"ok"}
    if sys.version_info >= (3, 12):
        allowed.add("failed: RuntimeError(\"can't create new thread at interpreter shutdown\")")
    got = lines(proc)
    assert set(got) == {"to_thread", "run_in_executor", "pool"}, why
    assert set(got.values()) <= allowed, why


def test_an_unretrieved_exception_of_a_handle_held_at_exit_is_logged_with_its_traceback():
    proc = python(
        """
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
        from backgrounder import background

        @background
        def held_until_exit():
            raise LookupError("nobody looked at this")

        handle = held_until_exit()  # a module global: alive until the end
        """
    )
    why = describe(proc)
    assert_ok(proc)
    for needle in ("ERROR", "backgrounder", "held_until_exit", "Traceback", "nobody looked at this"):
        assert needle in proc.stderr, (needle, why)
    assert "Exception ignored" not in proc.stderr, why
    assert "sys.meta_path is None" not in proc.stderr, why


# ---- awaitables that are not coroutines -------------------------------------------


needs_markcoroutinefunction = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="inspect.markcoroutinefunction is new in Python 3.12"
)

# What the scripts below start with: an awaitable that is not a coroutine.
# Indented as the scripts' own text is, which python() dedents as a whole.
MARKED_PRELUDE = """
        import asyncio, inspect
        from backgrounder import background

        class Awaitable:
            def __await__(self):
                if False:
                    yield
                return 42
"""


@needs_markcoroutinefunction
def test_a_marked_function_returning_a_non_coroutine_awaitable_settles_from_sync_code():
    proc = python(
        MARKED_PRELUDE
        + """
        @background
        @inspect.markcoroutinefunction
        def gives_an_awaitable():
            return Awaitable()

        loop = asyncio.new_event_loop()
        done = loop.create_future()
        done.set_result(43)
        loop.close()

        @background
        @inspect.markcoroutinefunction
        def gives_a_done_future():
            return done

        print("awaitable", gives_an_awaitable().result(timeout=5))
        print("future", gives_a_done_future().result(timeout=5))
        """,
        timeout=30,
    )
    assert_ok(proc)
    assert lines(proc) == {"awaitable": "42", "future": "43"}, describe(proc)


@needs_markcoroutinefunction
def test_a_marked_function_returning_a_non_coroutine_awaitable_works_on_a_running_loop():
    proc = python(
        MARKED_PRELUDE
        + """
        @background
        @inspect.markcoroutinefunction
        def gives_an_awaitable():
            return Awaitable()

        async def main():
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(43)

            @background
            @inspect.markcoroutinefunction
            def gives_a_done_future():
                return fut

            print("awaitable", await gives_an_awaitable())
            print("future", await gives_a_done_future())

        asyncio.run(main())
        """,
        timeout=30,
    )
    assert_ok(proc)
    assert "TypeError" not in proc.stderr, describe(proc)
    assert lines(proc) == {"awaitable": "42", "future": "43"}, describe(proc)


@needs_markcoroutinefunction
def test_a_marked_function_returning_a_tuple_fails_in_the_call_as_awaiting_a_tuple_does():
    # The engine wraps what such a function returns in a coroutine that awaits
    # it.  A tuple was once spread into that wrapper's arguments: () failed the
    # call itself, (awaitable,) quietly awaited the awaitable inside.
    proc = python(
        MARKED_PRELUDE
        + """
        @background
        @inspect.markcoroutinefunction
        def gives_an_empty_tuple():
            return ()

        @background
        @inspect.markcoroutinefunction
        def gives_a_tuple_of_an_awaitable():
            return (Awaitable(),)

        async def await_a_tuple():
            await ()

        try:  # the oracle: what awaiting a tuple raises in this Python
            asyncio.run(await_a_tuple())
        except TypeError as exc:
            native = str(exc)

        for name, fn in [("empty", gives_an_empty_tuple), ("one", gives_a_tuple_of_an_awaitable)]:
            exc = fn().exception(timeout=5)
            print(name, type(exc).__name__, str(exc) == native)

        async def main():
            try:
                await gives_a_tuple_of_an_awaitable()
            except TypeError as exc:
                print("loop", type(exc).__name__, str(exc) == native)

        asyncio.run(main())
        """,
        timeout=30,
    )
    assert_ok(proc)
    assert lines(proc) == {"empty": "TypeError True", "one": "TypeError True", "loop": "TypeError True"}, describe(
        proc
    )


# ---- fork -------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is tested on Linux")
def test_the_childs_copies_of_in_flight_handles_are_cancelled():
    proc = python(
        """
        import concurrent.futures, os, threading, time, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        from backgrounder import background

        release = threading.Event()
        started = threading.Event()

        @background
        def in_flight():
            started.set()
            release.wait(10)
            return "parent"

        h = in_flight()
        assert started.wait(10)
        pid = os.fork()
        if pid == 0:
            code = 0
            t = time.monotonic()
            try:
                if not h.cancelled():
                    code = 2
                try:
                    h.result(timeout=1)
                    code = code or 3
                except concurrent.futures.CancelledError:
                    pass
                except concurrent.futures.TimeoutError:
                    code = code or 4
                if time.monotonic() - t > 1.5:
                    code = code or 5
            except BaseException:
                code = 6
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        release.set()
        print("child", os.waitstatus_to_exitcode(status))
        print("parent", h.result(timeout=10))
        """,
        timeout=30,
    )
    assert_ok(proc)
    # child codes: 2 not cancelled(), 3 result() returned, 4 result() timed
    # out, 5 too slow, 6 raised something else
    assert lines(proc) == {"child": "0", "parent": "parent"}, describe(proc)
