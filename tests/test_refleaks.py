"""Reference leaks, counted by a debug CPython: every public operation,
repeated, leaves sys.gettotalrefcount() where it was.

A debug build of CPython (configure --with-pydebug; Debian's python3.X-dbg)
keeps a count of every reference held anywhere, sys.gettotalrefcount(), and
of the memory blocks its allocator hands out, sys.getallocatedblocks().
A reference the engine takes and never drops (a missing Py_DECREF on a
function, an argument, a result, an exception, a loop, a future) shows up
there even when the object is immortal or its type is not gc-tracked, which
the type census of test_leaks.py does not see.

Each test runs one operation in a fresh interpreter (a subprocess with a
timeout, started with this interpreter's -X dev), the way CPython's own
refleak hunter (regrtest -R) does:

- WARMUP rounds first, so that caches, free lists, interned strings and
  the pool's worker threads reach their steady size (the @background
  operations need 15 to 30 rounds of 20 calls under python3.14-dbg -X dev:
  before that their count still grows, by less each round);
- then ROUNDS more rounds of PER_ROUND calls each; after each round the
  engine is idle (backgrounder.wait_idle()) and gc.collect() has run, and
  the child records sys.gettotalrefcount() and sys.getallocatedblocks();
- a leak of even one reference per call grows the count by PER_ROUND in
  every round.  The test fails when the count grew in every round (regrtest
  -R's rule: deltas such as [3, 0, 0] or [8, -8, 1] are noise, [1, 1, 1]
  is growth), or when the median round grew by PER_ROUND / 2 or more (a
  leak of a reference per call that a round's noise happened to hide; see
  grows()).  The allocated blocks are checked with the same rules.

Outside a debug build sys.gettotalrefcount does not exist and the refcount
tests are skipped; the CI runs it under python3.14-dbg (.ci/py315.sh).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import textwrap

import pytest

needs_debug_build = pytest.mark.skipif(
    not hasattr(sys, "gettotalrefcount"),
    reason="sys.gettotalrefcount() exists only in a debug build of CPython (python3.X-dbg)",
)

WARMUP = 40
ROUNDS = 8
PER_ROUND = 20

CHILD = textwrap.dedent(
    r'''
    import asyncio, gc, inspect, json, logging, sys, threading

    import backgrounder
    from backgrounder import Task, Tasks, background
    from backgrounder.concurrency import AsyncCallable, enforce_async_callable, run_in_threadpool, run_sync

    if sys.version_info < (3, 11):
        from exceptiongroup import ExceptionGroup

    OP, WARMUP, ROUNDS, PER_ROUND = sys.argv[1], *map(int, sys.argv[2:5])
    # -X dev puts asyncio in debug mode, which logs a warning for each
    # callback slower than 0.1 s: on a loaded machine that is timing, not a
    # defect.  Errors (a task destroyed pending, an exception nobody
    # retrieved) are still logged, and fail the test.
    logging.getLogger("asyncio").setLevel(logging.ERROR)


    class Boom(Exception):
        pass


    def sync_ok(x, *, y):
        return [x, y]


    def sync_fail(x, *, y):
        raise Boom(x, y)


    async def async_ok(x, *, y):
        await asyncio.sleep(0)
        return [x, y]


    async def async_fail(x, *, y):
        await asyncio.sleep(0)
        raise Boom(x, y)


    class AsyncCallableObject:
        async def __call__(self, x, *, y):
            return [x, y]


    bg_sync_ok = background(sync_ok)
    bg_sync_fail = background(sync_fail)
    bg_async_ok = background(async_ok)
    bg_async_fail = background(async_fail)
    reported = []


    def on_error(exc):
        # What nobody retrieved reaches on_error (set below), not the log.
        assert isinstance(exc, Boom), exc
        reported.append(type(exc).__name__)
        reported.clear()


    async def raises(exc_type, awaitable):
        try:
            await awaitable
        except exc_type as exc:
            return exc
        raise AssertionError(f"{awaitable!r} did not raise {exc_type.__name__}")


    def raises_sync(exc_type, func, *args, **kwargs):
        try:
            func(*args, **kwargs)
        except exc_type as exc:
            return exc
        raise AssertionError(f"{func!r} did not raise {exc_type.__name__}")


    OPS = {}


    def op(fn):
        OPS[fn.__name__] = fn
        return fn


    # ---- Task ---------------------------------------------------------------

    @op
    async def task_sync_awaited():
        assert await Task(sync_ok, "a", y="b")() == ["a", "b"]


    @op
    async def task_async_awaited():
        assert await Task(async_ok, "a", y="b")() == ["a", "b"]
        assert await Task(AsyncCallableObject(), "a", y="b")() == ["a", "b"]


    @op
    async def task_failing():
        exc = await raises(Boom, Task(sync_fail, "a", y="b")())
        assert exc.args == ("a", "b") and exc.__traceback__ is not None
        await raises(Boom, Task(async_fail, "a", y="b")())


    @op
    async def task_cancelled():
        # Before its first step: closed unsubmitted.
        t = asyncio.ensure_future(Task(sync_ok, "a", y="b")())
        t.cancel()
        await raises(asyncio.CancelledError, t)
        # Submitted, then cancelled: skipped if still queued, else dropped.
        t = asyncio.ensure_future(Task(sync_ok, "a", y="b")())
        await asyncio.sleep(0)
        t.cancel()
        await raises(asyncio.CancelledError, t)
        # While it runs on its thread: it finishes there, its result dropped.
        started, release = threading.Event(), threading.Event()

        def work(x, *, y):
            started.set()
            release.wait(10)
            return [x, y]

        t = asyncio.ensure_future(Task(work, "a", y="b")())
        while not started.is_set():
            await asyncio.sleep(0.0005)
        t.cancel()
        release.set()
        await raises(asyncio.CancelledError, t)


    # ---- Tasks --------------------------------------------------------------

    @op
    async def tasks_in_order():
        tasks = Tasks([Task(sync_ok, "a", y="b"), Task(async_ok, "a", y="b")])
        tasks.add_task(sync_ok, "a", y="b")
        assert await tasks() is None
        assert await tasks.run_single() is None


    @op
    async def tasks_in_order_failing():
        tasks = Tasks([Task(sync_ok, "a", y="b"), Task(sync_fail, "a", y="b"), Task(sync_ok, "a", y="b")])
        await raises(Boom, tasks())


    @op
    async def tasks_as_group():
        tasks = Tasks([Task(sync_ok, "a", y="b"), Task(async_ok, "a", y="b"), Task(sync_ok, "a", y="b")],
                      as_group=True)
        assert await tasks() is None
        assert await tasks.run_as_group() is None


    @op
    async def tasks_as_group_failing():
        async def sleeper(x, *, y):
            await asyncio.sleep(10)

        tasks = Tasks([Task(sleeper, "a", y="b"), Task(sync_fail, "a", y="b"), Task(async_fail, "a", y="b")],
                      as_group=True)
        eg = await raises(ExceptionGroup, tasks())
        assert all(isinstance(e, Boom) for e in eg.exceptions)


    @op
    async def tasks_as_group_cancelled():
        tasks = Tasks([Task(asyncio.sleep, 10), Task(sync_ok, "a", y="b")], as_group=True)
        t = asyncio.ensure_future(tasks())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        t.cancel()
        await raises(asyncio.CancelledError, t)


    # ---- @background ----------------------------------------------------------

    @op
    def background_sync_result():
        done = []
        handle = bg_sync_ok("a", y="b")
        handle.add_done_callback(done.append)
        assert handle.result(10) == ["a", "b"]
        handle.add_done_callback(done.append)   # already done: called at once
        assert handle.done() and not handle.cancelled() and not handle.running()
        assert handle.exception(10) is None
        assert done == [handle, handle]


    @op
    def background_sync_exception():
        handle = bg_sync_fail("a", y="b")
        exc = handle.exception(10)
        assert type(exc) is Boom and exc.args == ("a", "b")
        raises_sync(Boom, handle.result, 10)


    @op
    def background_async_from_sync_code():
        # Runs on backgrounder's own loop thread.
        assert bg_async_ok("a", y="b").result(10) == ["a", "b"]
        assert type(bg_async_fail("a", y="b").exception(10)) is Boom


    @op
    def wait_idle_with_the_loop_thread():
        # With backgrounder's loop thread running (the first call starts it),
        # every wait asks it whether it is idle: a method called by name from C.
        bg_async_ok("a", y="b").result(10)
        for _ in range(200):
            assert backgrounder.wait_idle(10)


    @op
    def background_cancel():
        # max_workers=1 (set below): the one worker is held by `blocker`, so
        # the second call is still queued when cancelled.
        gate = threading.Event()
        blocker = background(gate.wait)(10)
        handle = bg_sync_ok("a", y="b")
        assert handle.cancel() is True
        assert handle.cancelled()
        raises_sync(Exception, handle.result, 10)
        gate.set()
        assert blocker.result(10) is True


    @op
    async def background_awaited_in_a_loop():
        assert await bg_sync_ok("a", y="b") == ["a", "b"]
        assert await bg_async_ok("a", y="b") == ["a", "b"]
        await raises(Boom, bg_sync_fail("a", y="b"))
        await raises(Boom, bg_async_fail("a", y="b"))


    @op
    def background_dropped():
        # Nobody keeps the handle; the failure goes to on_error.
        bg_sync_ok("a", y="b")
        bg_sync_fail("a", y="b")
        bg_async_ok("a", y="b")


    # ---- configure, stats, concurrency helpers ---------------------------------

    @op
    def configure_and_stats():
        backgrounder.configure(max_workers=4, idle_timeout=60, on_error=on_error)
        s = backgrounder.stats()
        assert isinstance(s, dict) and all(type(v) is int for v in s.values())
        raises_sync(TypeError, backgrounder.configure, max_workers="x")
        raises_sync(ValueError, backgrounder.configure, max_workers=0)
        raises_sync(ValueError, backgrounder.configure, idle_timeout=-1)
        raises_sync(TypeError, backgrounder.configure, on_error=42)
        raises_sync(TypeError, Task, 42)
        raises_sync(TypeError, Tasks, [42])
        raises_sync(TypeError, background, 42)
        backgrounder.configure(max_workers=40, idle_timeout=60, on_error=on_error)


    @op
    async def run_in_threadpool_and_async_callable():
        assert await run_in_threadpool(sync_ok, "a", y="b") == ["a", "b"]
        assert await run_in_threadpool(async_ok, "a", y="b") == ["a", "b"]
        await raises(Boom, run_in_threadpool(sync_fail, "a", y="b"))
        assert await AsyncCallable(sync_ok, y="b")("a") == ["a", "b"]
        assert await AsyncCallable(sync_ok).run_in_threadpool("a", y="b") == ["a", "b"]
        assert await enforce_async_callable(sync_ok)("a", y="b") == ["a", "b"]
        assert enforce_async_callable(async_ok) is async_ok


    @op
    def run_sync_from_sync_code():
        assert run_sync(async_ok("a", y="b")) == ["a", "b"]


    @op
    async def run_sync_inside_a_loop():
        # Called inside a running loop: it runs on backgrounder's loop thread.
        assert run_sync(async_ok("a", y="b")) == ["a", "b"]
        assert run_sync(Task(sync_ok, "a", y="b")()) == ["a", "b"]


    # ---- measuring ------------------------------------------------------------

    # One event loop for all the rounds: what is measured is the cost of a
    # call, not that of a new loop (tests/test_leaks.py makes a fresh loop
    # per round and counts objects by type).
    LOOP = asyncio.SelectorEventLoop()
    # run_sync blocks the loop by design, and -X dev's debug mode then formats
    # a "slow callback" warning for each round's task (the logger drops it):
    # reprlib looks up 'repr_' + a type name, a fresh string that CPython's
    # type cache keeps until its slot is reused, counted here as a slow leak
    # that is not the engine's.
    LOOP.slow_callback_duration = 3600


    def one_round(fn):
        if inspect.iscoroutinefunction(fn):
            async def many():
                for _ in range(PER_ROUND):
                    await fn()

            LOOP.run_until_complete(many())
        else:
            for _ in range(PER_ROUND):
                fn()
        assert backgrounder.wait_idle(30), backgrounder.stats()


    def counts():
        # Three passes: a cycle freed by one pass can free the next.
        for _ in range(3):
            gc.collect()
        return sys.gettotalrefcount(), sys.getallocatedblocks()


    fn = OPS[OP]
    backgrounder.configure(max_workers=1 if OP == "background_cancel" else 40, idle_timeout=60,
                           on_error=on_error)
    # Every round, warm-up or measured, is the same: the operation PER_ROUND
    # times, then counts().  Nothing the measuring keeps is made after the
    # first count: the lists at their full size, `last`, `now`, `i` (the
    # deltas are small ints, which are shared).
    n = WARMUP + ROUNDS
    refs, blocks = [0] * n, [0] * n
    i = 0
    now = last = counts()
    while i < n:
        one_round(fn)
        now = counts()
        refs[i] = now[0] - last[0]
        blocks[i] = now[1] - last[1]
        last = now
        i += 1
    print(json.dumps({"refs": refs[WARMUP:], "blocks": blocks[WARMUP:], "warmup_refs": refs[:WARMUP]}))
    '''
)

OPERATIONS = [
    "task_sync_awaited",
    "task_async_awaited",
    "task_failing",
    "task_cancelled",
    "tasks_in_order",
    "tasks_in_order_failing",
    "tasks_as_group",
    "tasks_as_group_failing",
    "tasks_as_group_cancelled",
    "background_sync_result",
    "background_sync_exception",
    "background_async_from_sync_code",
    "background_cancel",
    "background_awaited_in_a_loop",
    "background_dropped",
    "configure_and_stats",
    "run_in_threadpool_and_async_callable",
    "run_sync_from_sync_code",
    "run_sync_inside_a_loop",
    "wait_idle_with_the_loop_thread",
]


def grows(deltas: list[int]) -> bool:
    """regrtest -R's rule (growth in every round), or a typical round (the
    median) that grew by half a reference (block) per call or more.

    The median, not the sum: some operations hold a large chunk in one
    round and let it go in the next (task_cancelled: +103, -101, +104,
    -102, ...), which a sum over an odd number of spikes would call a leak,
    while a leak of one reference per call moves every round by PER_ROUND."""
    return all(d >= 1 for d in deltas) or statistics.median(deltas) >= PER_ROUND / 2


def run_child(operation: str) -> dict[str, list[int]]:
    flags = ["-X", "dev"] if sys.flags.dev_mode else []
    proc = subprocess.run(
        [sys.executable, *flags, "-c", CHILD, operation, str(WARMUP), str(ROUNDS), str(PER_ROUND)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    # -X dev: any warning or unraisable exception in the child is printed to stderr.
    assert proc.stderr == "", proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_operation_is_covered():
    assert sorted(re.findall(r"^@op\n(?:async )?def (\w+)", CHILD, re.M)) == sorted(OPERATIONS)


@needs_debug_build
@pytest.mark.parametrize("operation", OPERATIONS)
def test_repeating_an_operation_grows_no_reference_count(operation: str) -> None:
    result = run_child(operation)
    refs, blocks = result["refs"], result["blocks"]
    assert len(refs) == ROUNDS
    assert not grows(refs), f"total refcount grew by {refs} over rounds of {PER_ROUND} calls (blocks: {blocks})"
    assert not grows(blocks), f"allocated blocks grew by {blocks} over rounds of {PER_ROUND} calls (refs: {refs})"
