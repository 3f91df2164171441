"""Reference and memory leaks: every public operation, repeated, grows nothing.

Each test runs one operation in a fresh interpreter (a subprocess with a
timeout): a warm-up, then many more rounds, each round on a fresh event loop
of the kind under test (for trio, a fresh trio.run, where the operations that
cancel follow trio's rules: docs/background.md, "trio").  Between the two the
child measures, after gc.collect() and backgrounder.wait_idle():

- the live instances of `Payload`, the object every operation passes as an
  argument, a keyword argument, a return value and an exception's argument,
  so a reference the engine keeps to any of them is seen exactly;
- every gc-tracked object (by type, so a failure names what grew);
- the memory tracemalloc traces (Python's allocators and PyMem_Raw*, which
  is where the engine's work items come from);
- RSS (skipped under ASan/TSan, whose quarantine and shadow memory grow it);
- in a debug build (BACKGROUNDER_DEBUG=1), the engine's own counters: items
  allocated minus freed stays bounded (items are recycled through a free list
  of up to 4096), and threads started minus ended equals the live workers.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

import pytest

# A child may take up to 240 s (measure()); pytest waits for it, and a margin.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(270)]

CHILD = textwrap.dedent(
    r'''
    import asyncio, collections, gc, inspect, json, os, sys, threading, time, tracemalloc

    import anyio

    import backgrounder
    from backgrounder import Task, Tasks, background
    from backgrounder import _backgrounder
    from backgrounder.concurrency import AsyncCallable, run_in_threadpool, run_sync

    if sys.version_info < (3, 11):
        from exceptiongroup import ExceptionGroup

    OP, LOOP_KIND, WARMUP, ROUNDS, PER_ROUND = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    TRIO = LOOP_KIND == "trio"
    if TRIO:
        import trio
        from trio.testing import wait_all_tasks_blocked


    class Payload:
        """Passed in and out of every operation; its live count must not grow."""


    class Boom(Exception):
        pass


    def payload_count():
        return sum(1 for o in gc.get_objects() if type(o) is Payload)


    def sync_ok(p, *, q):
        assert type(p) is Payload and type(q) is Payload
        return Payload()


    def sync_fail(p, *, q):
        raise Boom(Payload())


    # anyio's sleep: under trio, Task(async_ok) runs in the trio task, and
    # the @background one on backgrounder's own asyncio loop thread.
    async def async_ok(p, *, q):
        await anyio.sleep(0)
        return Payload()


    async def async_fail(p, *, q):
        await anyio.sleep(0)
        raise Boom(Payload())


    bg_sync_ok = background(sync_ok)
    bg_sync_fail = background(sync_fail)
    bg_async_ok = background(async_ok)
    reported = []


    def on_error(exc):
        # Set for every operation: what the engine reports is counted here,
        # not logged.  (A group's sibling that fails after the group
        # cancelled it is reported, for one.)
        assert isinstance(exc, Boom), exc
        reported.append(1)


    def new_loop():
        if LOOP_KIND == "uvloop":
            import uvloop
            return uvloop.new_event_loop()
        return asyncio.SelectorEventLoop()


    def run(coro):
        if TRIO:
            async def main():
                return await coro
            return trio.run(main)
        loop = new_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


    def expect(exc_type, func, *args, **kwargs):
        try:
            func(*args, **kwargs)
        except exc_type:
            return
        raise AssertionError(f"{func!r} did not raise {exc_type.__name__}")


    async def aexpect(exc_type, awaitable):
        try:
            await awaitable
        except exc_type as exc:
            return exc
        raise AssertionError(f"{awaitable!r} did not raise {exc_type.__name__}")


    async def gather(*awaitables):
        """asyncio.gather; under trio, the same in a nursery."""
        if not TRIO:
            return await asyncio.gather(*awaitables)
        results = [None] * len(awaitables)

        async def one(i, awaitable):
            results[i] = await awaitable

        async with trio.open_nursery() as nursery:
            for i, awaitable in enumerate(awaitables):
                nursery.start_soon(one, i, awaitable)
        return results


    async def trio_cancelled(scope, awaitable, outcome):
        """Under trio: awaits `awaitable` in `scope`, noting in `outcome` what it
        returned and whether the cancellation came at the next checkpoint."""
        with scope:
            outcome["result"] = await awaitable
            await trio.lowlevel.checkpoint()
            outcome["not cancelled"] = True


    # ---- the operations: one call each; `async def` ones run in a loop ----

    OPS = {}


    def op(fn):
        OPS[fn.__name__] = fn
        return fn


    @op
    async def task_sync():
        assert type(await Task(sync_ok, Payload(), q=Payload())()) is Payload


    @op
    async def task_async():
        assert type(await Task(async_ok, Payload(), q=Payload())()) is Payload


    @op
    async def task_sync_failing():
        exc = await aexpect(Boom, Task(sync_fail, Payload(), q=Payload())())
        assert type(exc.args[0]) is Payload


    @op
    async def task_async_failing():
        await aexpect(Boom, Task(async_fail, Payload(), q=Payload())())


    @op
    async def task_cancelled_before_it_starts():
        if TRIO:
            # A trio task always takes its first step: the cancellation is
            # pending when the await begins, so the call is submitted and
            # withdrawn at once; one a worker already took is waited for and
            # returns its result, the cancellation coming at the next checkpoint.
            outcome, scope = {}, trio.CancelScope()
            scope.cancel()
            await trio_cancelled(scope, Task(sync_ok, Payload(), q=Payload())(), outcome)
            assert scope.cancelled_caught, outcome
            assert outcome == {} or (list(outcome) == ["result"] and type(outcome["result"]) is Payload), outcome
            return
        # Cancelled before its first step: the call is closed unsubmitted.
        t = asyncio.ensure_future(Task(sync_ok, Payload(), q=Payload())())
        t.cancel()
        await aexpect(asyncio.CancelledError, t)


    @op
    async def task_cancelled_once_submitted():
        if TRIO:
            # Submitted, then cancelled: withdrawn if still queued; if already
            # running, waited for (its result returned), then cancelled.  (Its
            # completion may also reach the trio run before the cancellation.)
            # After two checkpoints the call may be in any of these states.
            outcome, scope = {}, trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio_cancelled, scope, Task(sync_ok, Payload(), q=Payload())(), outcome)
                await trio.sleep(0)
                await trio.sleep(0)
                scope.cancel()
            result = outcome.pop("result", None)
            assert result is None or type(result) is Payload, result
            if scope.cancelled_caught:
                assert outcome == {}, outcome
            else:
                assert result is not None and outcome == {"not cancelled": True}, outcome
            return
        # Submitted, then cancelled: skipped if still queued, its result
        # dropped if already running.
        t = asyncio.ensure_future(Task(sync_ok, Payload(), q=Payload())())
        await asyncio.sleep(0)
        t.cancel()
        await aexpect(asyncio.CancelledError, t)


    gate = threading.Event()


    @op
    async def task_cancelled_while_queued():
        # max_workers=1 (set below): the one worker is held by `blocker`.
        gate.clear()
        if TRIO:
            # The call queued behind it is withdrawn and never runs.
            outcome, blocked, scope = {}, {}, trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio_cancelled, trio.CancelScope(), Task(gate.wait, 10)(), blocked)
                await wait_all_tasks_blocked()
                nursery.start_soon(trio_cancelled, scope, Task(sync_ok, Payload(), q=Payload())(), outcome)
                await wait_all_tasks_blocked()
                scope.cancel()
                gate.set()
            assert scope.cancelled_caught and outcome == {}, outcome
            assert blocked == {"result": True, "not cancelled": True}, blocked
            return
        blocker = asyncio.ensure_future(Task(gate.wait, 10)())
        await asyncio.sleep(0)
        t = asyncio.ensure_future(Task(sync_ok, Payload(), q=Payload())())
        await asyncio.sleep(0)
        t.cancel()
        gate.set()
        await aexpect(asyncio.CancelledError, t)
        assert await blocker is True


    @op
    async def task_cancelled_while_running():
        started = threading.Event()
        release = threading.Event()

        def work(p, *, q):
            started.set()
            release.wait(10)
            return Payload()

        if TRIO:
            # trio's rule: the running call is waited for and its result
            # returned; the cancellation comes at the next checkpoint.
            outcome, scope = {}, trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio_cancelled, scope, Task(work, Payload(), q=Payload())(), outcome)
                while not started.is_set():
                    await trio.sleep(0.0005)
                scope.cancel()
                release.set()
            assert scope.cancelled_caught and list(outcome) == ["result"], outcome
            assert type(outcome.pop("result")) is Payload
            return
        t = asyncio.ensure_future(Task(work, Payload(), q=Payload())())
        while not started.is_set():
            await asyncio.sleep(0.0005)
        t.cancel()
        release.set()
        await aexpect(asyncio.CancelledError, t)


    @op
    async def tasks_sequential():
        tasks = Tasks([Task(sync_ok, Payload(), q=Payload()), Task(async_ok, Payload(), q=Payload())])
        tasks.add_task(sync_ok, Payload(), q=Payload())
        assert await tasks() is None


    @op
    async def tasks_sequential_failing():
        tasks = Tasks([Task(sync_ok, Payload(), q=Payload()), Task(sync_fail, Payload(), q=Payload()),
                       Task(sync_ok, Payload(), q=Payload())])
        await aexpect(Boom, tasks())


    @op
    async def tasks_group():
        tasks = Tasks([Task(sync_ok, Payload(), q=Payload()), Task(async_ok, Payload(), q=Payload()),
                       Task(sync_ok, Payload(), q=Payload())], as_group=True)
        assert await tasks() is None


    @op
    async def tasks_group_failing():
        async def sleeper(p, *, q):
            await anyio.sleep(10)

        tasks = Tasks([Task(sleeper, Payload(), q=Payload()), Task(sync_fail, Payload(), q=Payload()),
                       Task(async_fail, Payload(), q=Payload())], as_group=True)
        await aexpect(ExceptionGroup, tasks())


    @op
    async def tasks_group_cancelled():
        if TRIO:
            # The group's nursery is cancelled: the sleep ends at once, the
            # sync call is withdrawn or waited for.
            tasks = Tasks([Task(trio.sleep, 10), Task(sync_ok, Payload(), q=Payload())], as_group=True)
            outcome, scope = {}, trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio_cancelled, scope, tasks(), outcome)
                await wait_all_tasks_blocked()
                scope.cancel()
            assert scope.cancelled_caught and outcome == {}, outcome
            return
        tasks = Tasks([Task(asyncio.sleep, 10), Task(sync_ok, Payload(), q=Payload())], as_group=True)
        t = asyncio.ensure_future(tasks())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        t.cancel()
        await aexpect(asyncio.CancelledError, t)


    @op
    async def background_sync_awaited():
        assert type(await bg_sync_ok(Payload(), q=Payload())) is Payload


    @op
    async def background_async_awaited():
        assert type(await bg_async_ok(Payload(), q=Payload())) is Payload


    @op
    async def background_failing_awaited():
        await aexpect(Boom, bg_sync_fail(Payload(), q=Payload()))


    @op
    def background_sync_waited():
        handle = bg_sync_ok(Payload(), q=Payload())
        handle.add_done_callback(lambda h: h.result())
        assert type(handle.result(10)) is Payload


    @op
    def background_async_waited():
        # An async function called from sync code: backgrounder's loop thread.
        assert type(bg_async_ok(Payload(), q=Payload()).result(10)) is Payload


    @op
    def background_failing_waited():
        assert type(bg_sync_fail(Payload(), q=Payload()).exception(10)) is Boom


    @op
    def background_dropped():
        bg_sync_ok(Payload(), q=Payload())
        bg_async_ok(Payload(), q=Payload())


    @op
    def background_failing_dropped():
        # Nobody retrieves the exception: it goes to on_error (set below).
        bg_sync_fail(Payload(), q=Payload())


    @op
    def run_sync_from_sync_code():
        assert type(run_sync(async_ok(Payload(), q=Payload()))) is Payload


    @op
    async def run_sync_inside_a_loop():
        # A sync function called from async code (a trio run's too): run_sync
        # uses another thread.
        assert type(run_sync(Task(sync_ok, Payload(), q=Payload())())) is Payload


    @op
    async def run_in_threadpool_and_async_callable():
        assert type(await run_in_threadpool(sync_ok, Payload(), q=Payload())) is Payload
        assert type(await AsyncCallable(sync_ok, q=Payload())(Payload())) is Payload


    @op
    async def configure_between_calls():
        backgrounder.configure(max_workers=2, idle_timeout=5, on_error=on_error)
        assert type(await Task(sync_ok, Payload(), q=Payload())()) is Payload
        backgrounder.configure(max_workers=3, idle_timeout=30.0, on_error=on_error)


    @op
    async def workers_retiring_and_starting():
        # idle_timeout 1 ms (set below): workers exit between rounds and new
        # ones start; their threads and thread states must not leak.
        await gather(*(Task(time.sleep, 0.001)() for _ in range(4)))
        await anyio.sleep(0.005)


    @op
    def bad_input_is_rejected():
        expect(TypeError, Task, Payload())
        expect(TypeError, Tasks, [Payload()])
        expect(TypeError, Tasks().add_task, Payload())
        expect(TypeError, background, Payload())
        expect(TypeError, run_in_threadpool, Payload())
        expect(TypeError, backgrounder.configure, max_workers=Payload())
        expect(ValueError, backgrounder.configure, max_workers=0)
        expect(TypeError, backgrounder.configure, on_error=Payload())
        expect(TypeError, bg_sync_ok(Payload(), q=Payload()).result, Payload())


    @op
    async def calls_after_shutdown_are_rejected():
        # shutdown() is called once before the warm-up (below).
        expect(RuntimeError, Task(sync_ok, Payload(), q=Payload()))
        expect(RuntimeError, bg_sync_ok, Payload(), q=Payload())
        assert backgrounder.shutdown() is True


    # ---- measuring ----------------------------------------------------------

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


    def thread_names():
        names = []
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    names.append(f.read().strip())
            except FileNotFoundError:  # it just exited
                pass
        return names


    def settle():
        """Waits until the engine is idle and its thread counts agree (a
        retiring worker leaves the count before its thread is gone)."""
        assert backgrounder.wait_idle(30), backgrounder.stats()
        deadline = time.monotonic() + 10
        while True:
            gc.collect()
            dbg = _backgrounder._debug_counters() if hasattr(_backgrounder, "_debug_counters") else None
            workers = backgrounder.stats()["workers"]
            names = thread_names()
            os_workers = names.count("backgrounder")
            agree = os_workers == workers and (
                dbg is None or dbg["threads_started"] - dbg["threads_ended"] == workers)
            if agree or time.monotonic() > deadline:
                return dbg, workers, os_workers, len(names) - os_workers
            time.sleep(0.01)


    def snapshot():
        dbg, workers, os_workers, other_threads = settle()
        return {
            "payloads": payload_count(),
            "loops": sum(1 for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)),
            "types": collections.Counter(type(o).__qualname__ for o in gc.get_objects()),
            "traced": tracemalloc.get_traced_memory()[0],
            "rss": rss(),
            "debug": dbg,
            "workers": workers,
            "worker_threads": os_workers,
            "other_threads": other_threads,
            "stats": backgrounder.stats(),
        }


    def one_round(fn):
        if inspect.iscoroutinefunction(fn):
            async def many():
                for _ in range(PER_ROUND):
                    await fn()
            run(many())
        else:
            for _ in range(PER_ROUND):
                fn()
        # Dropped handles end here, so that each round has at most PER_ROUND
        # calls in flight (more would rightly grow the free list).
        assert backgrounder.wait_idle(30)


    fn = OPS[OP]
    if OP == "task_cancelled_while_queued":
        backgrounder.configure(max_workers=1)
    if OP == "workers_retiring_and_starting":
        backgrounder.configure(idle_timeout=0.001)
    backgrounder.configure(on_error=on_error)
    if OP == "calls_after_shutdown_are_rejected":
        run(Task(sync_ok, Payload(), q=Payload())())
        assert backgrounder.shutdown() is True

    tracemalloc.start(1)
    for _ in range(WARMUP):
        one_round(fn)
    snaps = [snapshot()]
    for _ in range(2):
        for _ in range(ROUNDS // 2):
            one_round(fn)
        snaps.append(snapshot())
    grown = []
    for a, b in zip(snaps, snaps[1:]):
        diff = {k: b["types"][k] - a["types"].get(k, 0) for k in b["types"]}
        grown.append(dict(sorted(((k, v) for k, v in diff.items() if v > 0), key=lambda kv: -kv[1])[:10]))
    for snap in snaps:
        del snap["types"]
    sanitized = any(("libasan" in line or "libtsan" in line) for line in open("/proc/self/maps"))
    print(json.dumps({"snaps": snaps, "grown": grown, "reported": len(reported), "sanitized": sanitized}))
    '''
)

OPERATIONS = [
    "task_sync",
    "task_async",
    "task_sync_failing",
    "task_async_failing",
    "task_cancelled_before_it_starts",
    "task_cancelled_once_submitted",
    "task_cancelled_while_queued",
    "task_cancelled_while_running",
    "tasks_sequential",
    "tasks_sequential_failing",
    "tasks_group",
    "tasks_group_failing",
    "tasks_group_cancelled",
    "background_sync_awaited",
    "background_async_awaited",
    "background_failing_awaited",
    "run_in_threadpool_and_async_callable",
    "run_sync_inside_a_loop",
    "configure_between_calls",
    "workers_retiring_and_starting",
    "calls_after_shutdown_are_rejected",
]
# Operations that use no event loop of the test's, or start one per call
# themselves: run once, not per loop kind.
LOOPLESS_OPERATIONS = [
    "background_sync_waited",
    "background_async_waited",
    "background_failing_waited",
    "background_dropped",
    "background_failing_dropped",
    "run_sync_from_sync_code",
    "bad_input_is_rejected",
]
# Operations that are slow per call: fewer of them.
FEW = {"run_sync_from_sync_code": 40, "run_sync_inside_a_loop": 40, "workers_retiring_and_starting": 5,
       "task_cancelled_while_running": 60, "tasks_group_cancelled": 60}

WARMUP_ROUNDS = 3
ROUNDS = 20  # measured in two halves
PER_ROUND = 150

# What may grow over half the measured calls (1,500): one object kept per
# call, or 32 bytes, would exceed these.
MAX_NEW_GC_OBJECTS = 100
MAX_NEW_TRACED_BYTES = 48 * 1024
MAX_NEW_RSS_BYTES = 2 * 1024 * 1024
FREE_LIST_MAX = 4096  # src/pool.c


def measure(op: str, loop_kind: str, cwd: str) -> dict:
    per_round = FEW.get(op, PER_ROUND)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, op, loop_kind, str(WARMUP_ROUNDS), str(ROUNDS), str(per_round)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=cwd,  # not the source tree: the child imports the installed package
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def growth(m: dict, key) -> int:
    """How much `key(snapshot)` grew in the half of the measured rounds where
    it grew least: a leak grows it in both halves, a one-time event (a dict
    resized, a worker started late) in one."""
    return min(key(b) - key(a) for a, b in itertools.pairwise(m["snaps"]))


def live_items(snap: dict) -> int:
    """Items allocated and not freed: in flight, or on the free list."""
    return snap["debug"]["items_allocated"] - snap["debug"]["items_freed"]


def assert_nothing_grew(m: dict) -> None:
    snaps = m["snaps"]
    first, last = snaps[0], snaps[-1]
    assert all(snap["payloads"] == 0 for snap in snaps), m
    assert last["loops"] <= first["loops"], m
    assert min(sum(g.values()) for g in m["grown"]) <= MAX_NEW_GC_OBJECTS, m["grown"]
    assert growth(m, lambda snap: snap["traced"]) <= MAX_NEW_TRACED_BYTES, m
    assert last["other_threads"] <= first["other_threads"], m
    assert last["worker_threads"] == last["workers"], m
    if not m["sanitized"]:
        assert growth(m, lambda snap: snap["rss"]) <= MAX_NEW_RSS_BYTES, m
    if last["debug"] is not None:
        dbg = last["debug"]
        assert dbg["threads_started"] - dbg["threads_ended"] == last["workers"], m
        assert dbg["items_allocated"] - dbg["items_freed"] <= FREE_LIST_MAX, m
        assert growth(m, live_items) <= PER_ROUND, m


@pytest.mark.parametrize("op", OPERATIONS)
def test_repeating_an_operation_leaks_nothing(op, loop_kind, loop_factory, tmp_path):
    assert_nothing_grew(measure(op, loop_kind, tmp_path))


@pytest.mark.parametrize("op", LOOPLESS_OPERATIONS)
def test_repeating_a_loopless_operation_leaks_nothing(op, tmp_path):
    m = measure(op, "asyncio", tmp_path)
    assert_nothing_grew(m)
    if op == "background_failing_dropped":
        # Every unretrieved exception was reported, none is pending.
        per_round = FEW.get(op, PER_ROUND)
        assert m["reported"] == (WARMUP_ROUNDS + ROUNDS // 2 * 2) * per_round

