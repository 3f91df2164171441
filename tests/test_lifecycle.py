"""The engine across a process's life: interpreter exit, Ctrl-C, shutdown(),
fork, and event loops that close while work is in flight.

What happens at exit, on a signal, after shutdown() or in a forked child is
checked in a subprocess (shutdown is final for a process, and a crash or a
hang must not take the test run with it): each script runs with
tests/scripts/ as its working directory and reports on stdout; the test reads
its exit code, its output and its stderr.  A hang shows as
subprocess.TimeoutExpired.  The loop-closing tests run in this process, under
every loop kind (the `run` and `loop_factory` fixtures): under trio, the run
ends instead of a loop closing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest

import backgrounder

pytestmark = pytest.mark.timeout(120)

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")

# How a process that crashed ends: by one of these signals, or after
# CPython's "Fatal Python error" report (which then aborts).
# On Windows: the NTSTATUS codes of an access violation, an illegal
# instruction, a stack overflow, a heap corruption and a fail-fast (what the
# UCRT's abort() ends with).
if sys.platform == "win32":
    CRASH_CODES = {0xC0000005, 0xC000001D, 0xC00000FD, 0xC0000374, 0xC0000409}
else:
    CRASH_CODES = {-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE}

no_fork_on_windows = pytest.mark.skipif(sys.platform == "win32", reason="Windows has no fork()")

# Generous: these are there to turn a hang into a failure, not to time anything.
TIMEOUT = 60
WAIT = 10.0


def python(source: str, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Runs `source` in a fresh interpreter and returns what it did."""
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(source), *args],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(proc: subprocess.CompletedProcess[str] | subprocess.Popen[bytes], out: str, err: str) -> str:
    return f"rc={proc.returncode}\n--- stdout ---\n{out[-2000:]}\n--- stderr ---\n{err[-4000:]}"


def assert_no_crash(proc: subprocess.CompletedProcess[str]) -> None:
    why = describe(proc, proc.stdout, proc.stderr)
    assert "Fatal Python error" not in proc.stderr, why
    assert proc.returncode not in CRASH_CODES, why


def assert_clean_exit(proc: subprocess.CompletedProcess[str]) -> None:
    """Exit code 0, and nothing raised, ignored or crashed on the way out."""
    assert_no_crash(proc)
    why = describe(proc, proc.stdout, proc.stderr)
    assert proc.returncode == 0, why
    assert "Traceback" not in proc.stderr, why
    assert "Exception ignored" not in proc.stderr, why


# ---- interpreter exit -------------------------------------------------------


def test_exit_completes_every_accepted_sync_background_call():
    proc = python(
        """
        import os, time
        import backgrounder

        @backgrounder.background
        def work():
            time.sleep(0.001)
            os.write(1, b"x")

        for _ in range(1000):
            work()
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "x" * 1000


def test_exit_completes_every_async_background_call_made_from_sync_code():
    proc = python(
        """
        import asyncio, os
        import backgrounder

        @backgrounder.background
        async def work():
            await asyncio.sleep(0.001)
            os.write(1, b"x")

        for _ in range(1000):
            work()
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "x" * 1000


def test_exit_completes_async_background_coroutines_still_pending_on_the_loop_thread():
    # Each coroutine is still sleeping when the script ends, then hands sync
    # work to the pool: both must be finished before the interpreter goes.
    proc = python(
        """
        import asyncio, os
        import backgrounder

        def write(text):
            os.write(1, text)

        @backgrounder.background
        async def later():
            await asyncio.sleep(0.3)
            await backgrounder.Task(write, b"x")()
            os.write(1, b"y")

        for _ in range(100):
            later()
        """
    )
    assert_clean_exit(proc)
    assert sorted(proc.stdout) == sorted("xy" * 100)


def test_exit_completes_async_background_calls_started_on_the_loop_thread():
    # An async @background call made by a coroutine that itself runs on
    # backgrounder's loop thread is accepted work too.
    proc = python(
        """
        import asyncio, os
        import backgrounder

        @backgrounder.background
        async def child():
            await asyncio.sleep(0.3)
            os.write(1, b"c")

        @backgrounder.background
        async def parent():
            child()
            os.write(1, b"p")

        for _ in range(10):
            parent()
        """
    )
    assert_clean_exit(proc)
    assert sorted(proc.stdout) == sorted("cp" * 10)


def test_exit_completes_background_calls_made_inside_asyncio_run():
    proc = python(
        """
        import asyncio, os, time
        import backgrounder

        @backgrounder.background
        def work():
            time.sleep(0.001)
            os.write(1, b"x")

        async def main():
            for _ in range(1000):
                work()

        asyncio.run(main())
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "x" * 1000


def test_exit_completes_background_calls_whose_awaiting_tasks_asyncio_run_cancelled():
    # Cancelling an `await handle` stops the waiting, not the call.
    proc = python(
        """
        import asyncio, os, time
        import backgrounder

        @backgrounder.background
        def work():
            time.sleep(0.05)
            os.write(1, b"x")

        async def waiter(handle):
            await handle

        async def main():
            for _ in range(200):
                asyncio.ensure_future(waiter(work()))
            await asyncio.sleep(0)

        asyncio.run(main())
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "x" * 200


def test_exit_completes_sync_task_already_running_when_asyncio_run_cancels_its_awaiter():
    # The call runs on its thread until it returns; its result is dropped.
    proc = python(
        """
        import asyncio, os, threading, time
        import backgrounder

        started = threading.Event()

        def slow():
            started.set()
            time.sleep(0.3)
            os.write(1, b"x")

        async def main():
            asyncio.ensure_future(backgrounder.Task(slow)())
            while not started.is_set():
                await asyncio.sleep(0.005)

        asyncio.run(main())
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "x"


def test_queued_sync_task_whose_awaiter_asyncio_run_cancelled_never_runs():
    proc = python(
        """
        import asyncio, os, threading, time
        import backgrounder

        backgrounder.configure(max_workers=1)
        started = threading.Event()

        def slow():
            started.set()
            time.sleep(0.3)
            os.write(1, b"x")

        def never():
            os.write(1, b"never")

        async def main():
            asyncio.ensure_future(backgrounder.Task(slow)())
            while not started.is_set():
                await asyncio.sleep(0.005)
            asyncio.ensure_future(backgrounder.Task(never)())
            await asyncio.sleep(0)   # submitted, queued behind slow

        asyncio.run(main())
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "x"


def test_async_background_call_cut_short_by_asyncio_run_is_reported():
    # asyncio.run cancels what is left on its loop: a @background coroutine
    # that did not finish is work lost, and it says so.
    proc = python(
        """
        import asyncio, os
        import backgrounder

        @backgrounder.background
        async def unfinished():
            await asyncio.sleep(30)
            os.write(1, b"finished")

        async def main():
            unfinished()
            await asyncio.sleep(0)

        asyncio.run(main())
        """
    )
    assert_no_crash(proc)
    assert proc.returncode == 0, describe(proc, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "unfinished" in proc.stderr and "cancelled" in proc.stderr, proc.stderr


def test_exit_waits_for_workers_busy_in_long_calls():
    proc = python(
        """
        import os, time
        import backgrounder

        @backgrounder.background
        def long_call():
            time.sleep(0.5)
            os.write(1, b"x")

        for _ in range(8):
            long_call()
        os.write(1, b"main done ")
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "main done " + "x" * 8


def test_exit_by_uncaught_exception_still_completes_accepted_work():
    proc = python(
        """
        import os, time
        import backgrounder

        @backgrounder.background
        def work():
            time.sleep(0.2)
            os.write(1, b"x")

        for _ in range(10):
            work()
        raise SystemExit(3)
        """
    )
    assert_no_crash(proc)
    assert proc.returncode == 3, describe(proc, proc.stdout, proc.stderr)
    assert proc.stdout == "x" * 10


# ---- Ctrl-C -------------------------------------------------------------------

# A burst of 100,000 calls, then the main thread blocks.  The call `gated`
# cannot end before the test has sent SIGINT: it reads stdin (unbuffered, so
# that no io lock is held), which the test closes only afterwards, so the
# main thread is certainly still waiting when the signal comes.
CTRL_C_SCRIPT = """
import os, sys, time
import backgrounder

@backgrounder.background
def gated():
    return os.read(0, 1)

@backgrounder.background
def work():
    time.sleep(0.0002)

g = gated()
handles = [work() for _ in range(100_000)]
os.write(1, b"ready\\n")
if sys.argv[1] == "result":
    g.result()
else:
    backgrounder.wait_idle()
os.write(1, b"not interrupted\\n")
"""


def interrupt(source: str, *args: str, signals: int = 1) -> tuple[subprocess.Popen[bytes], str, str]:
    """Starts `source`, waits for its "ready" line, sends it SIGINT `signals`
    times, then closes its stdin.  Returns the process, stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(source), *args],
        cwd=SCRIPTS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline()
        assert ready == b"ready\n", ready
        time.sleep(0.2)   # let the main thread reach its blocking call
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
        proc.stdin.close()
        proc.stdin = None
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, out.decode(errors="replace"), err.decode(errors="replace")


# What Ctrl-C does on Windows (CTRL_C_EVENT) goes to every process of a
# console, the test's own included: a signal to one child is POSIX's.
sigint_to_a_child = pytest.mark.skipif(
    sys.platform == "win32", reason="Windows cannot send SIGINT to one child process (send_signal(SIGINT) is POSIX's)"
)


@sigint_to_a_child
@pytest.mark.parametrize("blocked_in", ["result", "wait_idle"])
def test_ctrl_c_interrupts_a_main_thread_blocked_on_background_work(blocked_in):
    proc, out, err = interrupt(CTRL_C_SCRIPT, blocked_in)
    why = describe(proc, out, err)
    assert "Fatal Python error" not in err, why
    assert proc.returncode not in CRASH_CODES, why
    assert proc.returncode != 0, why
    assert "KeyboardInterrupt" in err, why
    # Interrupted where it waited, not elsewhere.
    blocking_line = "g.result()" if blocked_in == "result" else "backgrounder.wait_idle()"
    lineno = CTRL_C_SCRIPT.splitlines().index(f"    {blocking_line}") + 1
    lines = err.splitlines()
    frames = [line for line in lines[: lines.index("KeyboardInterrupt")] if line.startswith("  File ")]
    assert frames[-1] == f'  File "<string>", line {lineno}, in <module>', why
    assert "not interrupted" not in out, why


@sigint_to_a_child
def test_repeated_ctrl_c_during_the_exit_wait_exits_without_crash():
    # The first SIGINT ends the main thread; the next ones land in the
    # exit hooks that wait for the (still blocked) accepted work.
    proc, out, err = interrupt(CTRL_C_SCRIPT, "result", signals=3)
    why = describe(proc, out, err)
    assert "Fatal Python error" not in err, why
    assert proc.returncode not in CRASH_CODES, why
    assert proc.returncode != 0, why
    assert "not interrupted" not in out, why


EXIT_WAIT_SCRIPT = """
import logging, sys, threading, time
import backgrounder

if sys.argv[1] == "logging":
    logging.basicConfig(format="%(levelname)s %(name)s %(message)s")

release = threading.Event()

@backgrounder.background
def slow_report():
    release.wait(60)

@backgrounder.background
def quick():
    pass

slow_report()
quick().result(10)
print("main done", flush=True)
"""


def run_until_exit_wait(source: str, *args: str):
    """Starts `source`; once stderr says the exit waits for background calls,
    sends one SIGINT.  Returns the process, its stdout and stderr, and how
    long it took from the signal to the end."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(source), *args],
        cwd=SCRIPTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()   # the exit drain's line comes first
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=TIMEOUT)
        return proc, out, first + err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@sigint_to_a_child
@pytest.mark.parametrize("logging_set_up", ["logging", "no-logging"])
def test_exit_wait_says_what_it_waits_for_and_ctrl_c_abandons_it_in_one_line(logging_set_up):
    proc, out, err, took = run_until_exit_wait(EXIT_WAIT_SCRIPT, logging_set_up)
    why = describe(proc, out, err)
    assert "main done" in out, why
    lines = [line for line in err.splitlines() if line.strip()]
    sep = " " if logging_set_up == "logging" else ":"
    assert lines[0] == (
        f"WARNING{sep}backgrounder{sep}Waiting for 1 background call to complete. "
        "(CTRL+C again to abandon it)"
    ), why
    assert lines[1] == f"WARNING{sep}backgrounder{sep}Abandoned 1 background call: __main__.slow_report", why
    assert len(lines) == 2, why   # no traceback, nothing ignored
    assert proc.returncode not in CRASH_CODES, why
    assert took < WAIT, why


@sigint_to_a_child
def test_ctrl_c_twice_stops_the_main_thread_then_abandons_the_background_work():
    # A server's Ctrl-C: the first ends the main thread (its own
    # KeyboardInterrupt), the exit then says what it waits for; the second
    # abandons that work in one line, with no traceback after it.
    source = """
import os, threading, time
import backgrounder

release = threading.Event()

@backgrounder.background
def nightly_export():
    release.wait(60)

nightly_export()
os.write(1, b"ready\\n")
time.sleep(60)
"""
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(source)],
        cwd=SCRIPTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)   # the first: the main thread's KeyboardInterrupt
        seen = []
        while True:
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
            if "Waiting for" in line:
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)   # the second: abandon
        _, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = "".join(seen) + rest
    why = describe(proc, "", err)
    assert proc.returncode not in CRASH_CODES, why
    assert seen[-1].rstrip("\n") == (
        "WARNING:backgrounder:Waiting for 1 background call to complete. (CTRL+C again to abandon it)"
    ), why
    after = [line for line in rest.splitlines() if line.strip()]
    assert after == ["WARNING:backgrounder:Abandoned 1 background call: __main__.nightly_export"], why


def test_exit_wait_is_silent_when_nothing_is_left():
    proc = python(
        """
        import backgrounder

        @backgrounder.background
        def quick():
            return 1

        quick().result(10)
        """
    )
    assert_clean_exit(proc)
    assert proc.stderr == "", describe(proc, proc.stdout, proc.stderr)


# The same wait interrupted from inside the process, as a console's Ctrl-C
# reaches Python on Windows (a handler thread trips SIGINT's handler): on
# every platform.
INTERRUPT_MAIN_SCRIPT = """
import _thread, signal, sys, threading, time
import backgrounder

gate = threading.Event()

@backgrounder.background
def gated():
    return gate.wait(30)

def ctrl_c():
    time.sleep(0.5)
    _thread.interrupt_main(signal.SIGINT)
    time.sleep(0.5)
    gate.set()

g = gated()
threading.Thread(target=ctrl_c).start()
if sys.argv[1] == "result":
    g.result()
else:
    backgrounder.wait_idle()
print("not interrupted")
"""


@pytest.mark.parametrize("blocked_in", ["result", "wait_idle"])
def test_sigint_from_inside_the_process_interrupts_a_main_thread_blocked_on_background_work(blocked_in):
    proc = python(INTERRUPT_MAIN_SCRIPT, blocked_in)
    assert_no_crash(proc)
    why = describe(proc, proc.stdout, proc.stderr)
    assert proc.returncode != 0, why
    assert "KeyboardInterrupt" in proc.stderr, why
    blocking_line = "g.result()" if blocked_in == "result" else "backgrounder.wait_idle()"
    lineno = INTERRUPT_MAIN_SCRIPT.splitlines().index(f"    {blocking_line}") + 1
    assert f'File "<string>", line {lineno}, in <module>' in proc.stderr, why
    assert "not interrupted" not in proc.stdout, why


# ---- shutdown() -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_background_call_after_shutdown_raises_runtime_error(kind):
    proc = python(
        """
        import sys
        import backgrounder

        @backgrounder.background
        def sync_fn():
            print("ran")

        @backgrounder.background
        async def async_fn():
            print("ran")

        fn = sync_fn if sys.argv[1] == "sync" else async_fn
        fn().result(timeout=10)
        backgrounder.shutdown()
        try:
            fn()
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        """,
        kind,
    )
    assert_clean_exit(proc)
    assert proc.stdout.splitlines()[0] == "ran"
    assert proc.stdout.splitlines()[1].startswith("RuntimeError:")
    assert len(proc.stdout.splitlines()) == 2


def test_await_of_sync_task_after_shutdown_raises_runtime_error():
    proc = python(
        """
        import asyncio
        import backgrounder

        def sync_fn():
            print("ran")

        async def main():
            await backgrounder.Task(sync_fn)()
            backgrounder.shutdown()
            try:
                await backgrounder.Task(sync_fn)()
            except RuntimeError as exc:
                print("RuntimeError:", exc)

        asyncio.run(main())
        """
    )
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "ran"
    assert lines[1].startswith("RuntimeError:")
    assert len(lines) == 2


def test_await_of_async_task_after_shutdown_still_runs():
    # Only sync callables need the pool.
    proc = python(
        """
        import asyncio
        import backgrounder

        async def async_fn():
            return 42

        async def main():
            backgrounder.shutdown()
            print(await backgrounder.Task(async_fn)())

        asyncio.run(main())
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "42\n"


def test_shutdown_waits_for_running_and_queued_work():
    proc = python(
        """
        import time
        import backgrounder

        backgrounder.configure(max_workers=1)

        @backgrounder.background
        def work(i):
            time.sleep(0.1)
            return i

        handles = [work(i) for i in range(4)]
        print(backgrounder.shutdown(), [h.done() for h in handles], [h.result() for h in handles])
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "True [True, True, True, True] [0, 1, 2, 3]\n"


def test_shutdown_without_wait_returns_before_the_work_ends_and_the_work_still_completes():
    proc = python(
        """
        import os, threading
        import backgrounder

        gate = threading.Event()

        @backgrounder.background
        def work():
            gate.wait(10)
            os.write(1, b"work done\\n")
            return 42

        h = work()
        backgrounder.shutdown(wait=False)
        print("returned, done:", h.done(), flush=True)
        gate.set()
        print("result:", h.result(timeout=10), flush=True)
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "returned, done: False\nwork done\nresult: 42\n"


def test_shutdown_without_wait_returns_false_while_work_is_unfinished():
    # shutdown() returns True only when everything finished.
    proc = python(
        """
        import threading
        import backgrounder

        gate = threading.Event()

        @backgrounder.background
        def work():
            gate.wait(10)

        h = work()
        print(backgrounder.shutdown(wait=False))
        gate.set()
        h.result(timeout=10)
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "False\n"


def test_shutdown_with_timeout_returns_false_while_work_runs_and_the_work_still_completes():
    proc = python(
        """
        import threading
        import backgrounder

        gate = threading.Event()

        @backgrounder.background
        def work():
            gate.wait(10)
            return 42

        h = work()
        print(backgrounder.shutdown(timeout=0.1), h.done())
        gate.set()
        print(h.result(timeout=10), backgrounder.shutdown(timeout=10))
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "False False\n42 True\n"


def test_shutdown_called_from_a_background_call_does_not_deadlock():
    proc = python(
        """
        import backgrounder

        @backgrounder.background
        def stop():
            return backgrounder.shutdown()

        print(type(stop().result(timeout=20)).__name__)
        try:
            stop()
        except RuntimeError:
            print("closed")
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "bool\nclosed\n"


def test_shutdown_called_from_an_awaited_sync_task_does_not_deadlock():
    proc = python(
        """
        import asyncio
        import backgrounder

        async def main():
            result = await asyncio.wait_for(backgrounder.Task(backgrounder.shutdown)(), 20)
            print(type(result).__name__)

        asyncio.run(main())
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "bool\n"


def test_shutdown_called_from_an_async_background_call_on_the_loop_thread_does_not_deadlock():
    proc = python(
        """
        import backgrounder

        @backgrounder.background
        async def stop():
            return backgrounder.shutdown()

        print(type(stop().result(timeout=20)).__name__)
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "bool\n"


def test_shutdown_twice_is_fine():
    proc = python(
        """
        import backgrounder

        @backgrounder.background
        def work():
            return 1

        work().result(timeout=10)
        print(backgrounder.shutdown(), backgrounder.shutdown(), backgrounder.shutdown(wait=False))
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "True True True\n"


# ---- fork -----------------------------------------------------------------------


@no_fork_on_windows
def test_a_forked_childs_stats_start_from_zero_and_balance():
    # A gunicorn --preload worker showed the master's counts (submitted 7,
    # done 6, running 0, queued 0), which never balance in the child.
    proc = python(
        """
        import os, threading, warnings
        warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads, 3.12+
        import backgrounder
        from lcutil import reap

        release = threading.Event()
        running = backgrounder.background(release.wait)(30)
        done = [backgrounder.background(len)("abc").result(10) for _ in range(5)]
        pid = os.fork()
        if pid == 0:
            s = backgrounder.stats()
            zero = all(s[k] == 0 for k in ("submitted", "done", "failed", "cancelled", "running",
                                           "queued", "threads_started", "wakeups", "completions"))
            h = backgrounder.background(len)("child")
            ok = h.result(10) == 5
            s = backgrounder.stats()
            balanced = (s["submitted"], s["done"], s["running"], s["queued"]) == (1, 1, 0, 0)
            os._exit(0 if zero and ok and balanced else 1)
        code = reap(pid)
        release.set()
        print(code, running.result(10))
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "0 True\n", describe(proc, proc.stdout, proc.stderr)


@no_fork_on_windows
def test_forked_child_gets_results_while_the_parents_workers_are_busy():
    # At fork the parent has two calls running and two queued: the child
    # gets none of them (it would print its own pid), runs its own work,
    # and exits normally; the parent's four calls all complete, in the parent.
    proc = python(
        """
        import asyncio, os, sys, threading
        import lcutil
        import backgrounder

        backgrounder.configure(max_workers=2)
        gate = threading.Event()

        @backgrounder.background
        def busy(i):
            gate.wait(20)
            os.write(1, b"%d:%d\\n" % (os.getpid(), i))
            return i

        @backgrounder.background
        def double(x):
            return 2 * x

        def add(a, b):
            return a + b

        handles = [busy(i) for i in range(4)]
        assert lcutil.wait_until(lambda: backgrounder.stats()["running"] == 2)
        pid = os.fork()
        if pid == 0:
            ok = double(21).result(timeout=10) == 42
            ok = ok and asyncio.run(backgrounder.Task(add, 1, 2)()) == 3
            ok = ok and backgrounder.wait_idle(timeout=10)
            sys.exit(0 if ok else 3)
        print("child:", lcutil.reap(pid), flush=True)
        gate.set()
        print("parent:", os.getpid(), [h.result(timeout=10) for h in handles], double(1).result(timeout=10))
        """
    )
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "child: 0", proc.stdout
    parent_pid = lines[-1].split()[1]
    assert lines[-1] == f"parent: {parent_pid} [0, 1, 2, 3] 2"
    assert sorted(lines[1:-1]) == [f"{parent_pid}:{i}" for i in range(4)]


@no_fork_on_windows
def test_child_forked_from_inside_a_pool_call_can_use_the_engine():
    proc = python(
        """
        import asyncio, os
        import lcutil
        import backgrounder

        @backgrounder.background
        def double(x):
            return 2 * x

        def add(a, b):
            return a + b

        @backgrounder.background
        def forker():
            pid = os.fork()
            if pid == 0:
                try:
                    ok = double(21).result(timeout=10) == 42
                    ok = ok and asyncio.run(backgrounder.Task(add, 1, 2)()) == 3
                except BaseException as exc:
                    os.write(2, repr(exc).encode())
                    ok = False
                os._exit(0 if ok else 3)
            return lcutil.reap(pid)

        print(forker().result(timeout=30), double(5).result(timeout=10))
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "0 10\n"


@no_fork_on_windows
def test_multiprocessing_fork_children_run_background_calls():
    proc = python(
        """
        import asyncio, multiprocessing, os, time
        import lcutil
        import backgrounder

        @backgrounder.background
        def double(x):
            return 2 * x

        @backgrounder.background
        def fire_and_forget(i):
            time.sleep(0.05)     # still running when map() returns
            os.write(1, b"f%d\\n" % i)

        def add(a, b):
            return a + b

        def in_child(x):
            fire_and_forget(x)   # not waited for: must be done before the child exits
            return double(x).result(timeout=10) + asyncio.run(backgrounder.Task(add, x, 0)())

        if __name__ == "__main__":
            assert double(1).result(timeout=10) == 2
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(2) as pool:
                print(pool.map(in_child, range(6)), flush=True)
                # Leaving the block calls terminate(): SIGTERM, which no
                # process survives to finish its work. close() and join()
                # let the workers exit, and exit waits for their calls.
                pool.close()
                pool.join()
            procs = [ctx.Process(target=in_child, args=(10 + i,)) for i in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(20)
            print("exitcodes", [p.exitcode for p in procs])
        """
    )
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    assert "[0, 3, 6, 9, 12, 15]" in lines
    assert "exitcodes [0, 0]" in lines
    fired = sorted(line for line in lines if line.startswith("f"))
    assert fired == sorted(f"f{i}" for i in [0, 1, 2, 3, 4, 5, 10, 11])


@no_fork_on_windows
def test_module_imported_before_fork_works_in_each_forked_worker():
    # gunicorn --preload: the master imports the app (which uses the pool
    # and the loop thread), then forks workers that serve requests and exit
    # normally, running the exit hooks in each worker.
    proc = python(
        """
        import asyncio, os, sys
        import lcutil
        import preloaded_app as app
        import backgrounder

        pids = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:
                ok = app.double(n).result(timeout=10) == 2 * n
                ok = ok and app.triple(n).result(timeout=10) == 3 * n
                ok = ok and asyncio.run(app.handle_request(n)) == n + 1
                sys.exit(0 if ok else 3)
            pids.append(pid)
        print([lcutil.reap(pid) for pid in pids])
        print(app.double(5).result(timeout=10), app.triple(5).result(timeout=10))
        """
    )
    assert_clean_exit(proc)
    assert proc.stdout == "[0, 0, 0]\n10 15\n"


# ---- loops closed while completions are in flight --------------------------------


class Gate:
    """A sync callable that blocks on a pool thread until opened."""

    def __init__(self, fail: bool = False) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()
        self.fail = fail

    def __call__(self) -> str:
        self.started.set()
        self.opened.wait(WAIT)
        if self.fail:
            raise ValueError("failed after its loop closed")
        return "done"

    async def wait_started(self) -> None:
        deadline = time.monotonic() + WAIT
        while not self.started.is_set():
            assert time.monotonic() < deadline, "the call never started"
            await anyio.sleep(0.005)


def leave_running(gate: Gate, loop_kind: str) -> object:
    """A coroutine for `run` that returns while the call `gate` runs, the
    task that awaited it cancelled by the end of the run.

    asyncio, uvloop: it starts `await Task(gate)()` in a task and returns (the
    loop's shutdown then cancels the awaiting task).

    trio: a run ends only once all its tasks have, and a cancelled
    `await Task(gate)()` waits for its running call (docs/background.md,
    "trio"), so a Task call cannot outlive the run.  What can is a
    @background call whose awaiter is cancelled: that wait ends at once, the
    call goes on, and when it completes the trio run it would report to is
    over."""

    async def main() -> None:
        asyncio.ensure_future(backgrounder.Task(gate)())
        await gate.wait_started()

    async def main_trio() -> None:
        handle = backgrounder.background(gate)()

        async def await_it() -> None:
            await handle

        async with anyio.create_task_group() as tg:
            tg.start_soon(await_it)
            await gate.wait_started()
            tg.cancel_scope.cancel()   # as asyncio's shutdown cancels the awaiting task
        assert not handle.done()

    return main_trio() if loop_kind == "trio" else main()


def finish_after_loop_closed(gate: Gate) -> None:
    gate.opened.set()
    assert backgrounder.wait_idle(timeout=WAIT)


def test_sync_task_still_running_when_its_loop_closes_leaves_the_pool_usable(run, loop_kind):
    gate = Gate()
    try:
        run(leave_running(gate, loop_kind))
    finally:
        finish_after_loop_closed(gate)
    assert run(backgrounder.Task(lambda: 42)()) == 42


def test_sync_task_still_running_when_its_loop_closes_is_counted_once(run, loop_kind):
    assert backgrounder.wait_idle(timeout=WAIT)
    before = backgrounder.stats()
    gate = Gate(fail=True)
    try:
        run(leave_running(gate, loop_kind))
    finally:
        finish_after_loop_closed(gate)
    after = backgrounder.stats()
    assert after["queued"] == 0 and after["running"] == 0
    assert after["submitted"] - before["submitted"] == 1
    assert after["done"] - before["done"] == 1
    assert after["failed"] - before["failed"] == 1


def test_exception_of_sync_task_whose_loop_closed_meanwhile_is_logged(run, loop_kind, caplog):
    gate = Gate(fail=True)
    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        try:
            run(leave_running(gate, loop_kind))
        finally:
            finish_after_loop_closed(gate)
    records = [r for r in caplog.records if r.name == "backgrounder"]
    assert len(records) == 1, records
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)
    assert "Gate" in records[0].getMessage()


@pytest.mark.asyncio_only(
    "trio has no loop object to close with a task still pending: a trio run returns only once all its tasks have ended"
)
def test_exception_of_sync_task_left_pending_on_a_loop_closed_without_cancelling_is_logged(
    loop_factory, caplog
):
    # Old-style code: run_until_complete, then close() with a task pending.
    gate = Gate(fail=True)
    loop = loop_factory()
    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        try:
            pending = [loop.run_until_complete(start_and_leave(gate))]
            loop.close()
        finally:
            finish_after_loop_closed(gate)
    records = [r for r in caplog.records if r.name == "backgrounder"]
    assert len(records) == 1, records
    assert isinstance(records[0].exc_info[1], ValueError)
    assert not pending[0].done()
    collect(pending)   # what that reports is the next test's business
    assert run_fresh(loop_factory, backgrounder.Task(lambda: 42)()) == 42


@pytest.mark.asyncio_only(
    "trio has no loop object to close with a task still pending, nor a pending task to collect after it"
)
def test_sync_task_left_pending_on_a_closed_loop_is_collected_without_unraisable_errors(loop_factory):
    # The loop was closed with the awaiting task pending (asyncio logs "Task
    # was destroyed but it is pending!" when it is collected); collecting it
    # must not make the engine raise into sys.unraisablehook.
    gate = Gate()
    loop = loop_factory()
    try:
        pending = [loop.run_until_complete(start_and_leave(gate))]
        loop.close()
    finally:
        finish_after_loop_closed(gate)
    unraisable = collect(pending)
    assert [(u.exc_type, str(u.exc_value), repr(u.object)) for u in unraisable] == []


async def start_and_leave(gate: Gate) -> asyncio.Future[str]:
    """Starts `await Task(gate)()` in a task; returns the task once the call runs."""
    task = asyncio.ensure_future(backgrounder.Task(gate)())
    await gate.wait_started()
    return task


def collect(pending: list[asyncio.Future[str]]) -> list:
    """Drops the tasks in `pending` (their only references; their loop is
    closed) and collects them.  Returns what went to sys.unraisablehook
    meanwhile."""
    unraisable: list = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.disabled = True   # "Task was destroyed but it is pending!"
    try:
        pending.clear()
        gc.collect()
    finally:
        asyncio_logger.disabled = False
        sys.unraisablehook = old_hook
    return unraisable


def run_fresh(loop_factory, coro):
    loop = loop_factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
