"""Soak and faults: a million calls, BaseExceptions, re-entry, bursts.

Each test runs its scenario in a fresh interpreter (a subprocess with a
timeout), so that a crash, a hang or a dead worker fails one test instead of
the session.  The scenario's coroutine runs on a loop of the kind under test,
or in a trio run, where gather() and wait_for() below use a nursery and a
cancel scope.  Process-level faults (exit with work running, fork while
workers are busy, Ctrl-C, shutdown from inside a call, the loop closed while
completions are in flight) are in test_lifecycle.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

PRELUDE = textwrap.dedent(
    """
    import asyncio, json, os, sys, threading, time
    import anyio
    import backgrounder
    from backgrounder import Task, Tasks, background
    from backgrounder import _backgrounder
    from backgrounder.concurrency import run_sync

    LOOP_KIND = sys.argv[1]
    TRIO = LOOP_KIND == "trio"
    if TRIO:
        import trio


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
            loop.close()


    # asyncio.gather; under trio, the same in a nursery.
    async def gather(*awaitables, return_exceptions=False):
        if not TRIO:
            return await asyncio.gather(*awaitables, return_exceptions=return_exceptions)
        results = [None] * len(awaitables)

        async def one(i, awaitable):
            try:
                results[i] = await awaitable
            except Exception as exc:
                if not return_exceptions:
                    raise
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i, awaitable in enumerate(awaitables):
                nursery.start_soon(one, i, awaitable)
        return results


    # asyncio.wait_for; under trio, trio.fail_after.  Both raise asyncio.TimeoutError.
    async def wait_for(awaitable, timeout):
        if not TRIO:
            return await asyncio.wait_for(awaitable, timeout)
        try:
            with trio.fail_after(timeout):
                return await awaitable
        except trio.TooSlowError:
            raise asyncio.TimeoutError from None


    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


    def sanitized():
        with open("/proc/self/maps") as f:
            return any("libasan" in line or "libtsan" in line for line in f)


    def debug_counters():
        if hasattr(_backgrounder, "_debug_counters"):
            return _backgrounder._debug_counters()
        return None


    def report(**values):
        print(json.dumps(values), flush=True)
    """
)


def run_child(body: str, loop_kind: str, cwd, timeout: float) -> dict:
    """Runs PRELUDE + body in a new interpreter; returns what it report()ed."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body), loop_kind],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=cwd,  # not the source tree: the child imports the installed package
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-4000:]
    return json.loads(lines[-1])


# ---- a million calls ------------------------------------------------------------

MILLION = """
    class Boom(Exception):
        pass


    def work(i):
        if i % 10 == 7:
            raise Boom(i)
        return i * 3


    TOTAL, BATCH, WARMUP = 1_000_000, 10_000, 100_000


    async def main():
        samples = []
        wrong = 0
        for start in range(0, TOTAL, BATCH):
            results = await gather(
                *(Task(work, i)() for i in range(start, start + BATCH)), return_exceptions=True)
            for i, got in enumerate(results, start):
                if i % 10 == 7:
                    wrong += not (type(got) is Boom and got.args == (i,))
                else:
                    wrong += got != i * 3
            del results
            if start + BATCH >= WARMUP:
                samples.append(rss())
        return wrong, samples


    t0 = time.monotonic()
    wrong, samples = run(main())
    assert backgrounder.wait_idle(30)
    report(wrong=wrong, rss_after_warmup=samples[0], rss_peak=max(samples), rss_end=samples[-1],
           seconds=time.monotonic() - t0, stats=backgrounder.stats(), debug=debug_counters(),
           sanitized=sanitized())
"""


@pytest.mark.timeout(630)  # the child's own limit, and a margin
def test_a_million_sync_tasks_through_gather_every_result_right_and_rss_flat(
    loop_kind, loop_factory, tmp_path
):
    m = run_child(MILLION, loop_kind, tmp_path, timeout=600)
    assert m["wrong"] == 0, m
    stats = m["stats"]
    assert stats["done"] >= 1_000_000 and stats["failed"] >= 100_000, m
    assert stats["queued"] == 0 and stats["running"] == 0, m
    if not m["sanitized"]:
        # Flat after warm-up: a leak of 8 bytes per call would be 7 MB.
        assert m["rss_peak"] - m["rss_after_warmup"] <= 6 * 1024 * 1024, m
    if m["debug"] is not None:
        assert m["debug"]["items_allocated"] - m["debug"]["items_freed"] <= 4096, m


# ---- BaseExceptions -------------------------------------------------------------

BASE_EXCEPTIONS = """
    class Custom(BaseException):
        pass


    backgrounder.configure(max_workers=1)
    reported = []
    backgrounder.configure(on_error=reported.append)


    def worker_id():
        return threading.get_native_id()


    def raise_it(exc):
        raise exc


    async def async_raise_it(exc):
        await anyio.sleep(0)
        raise exc


    bg_raise = background(raise_it)
    kinds = [SystemExit(3), KeyboardInterrupt(), Custom("custom"), GeneratorExit()]
    outcomes = {}


    async def main():
        first = await Task(worker_id)()
        for exc in kinds:
            name = type(exc).__name__
            for way, make in [("sync task", lambda: Task(raise_it, exc)()),
                              ("async task", lambda: Task(async_raise_it, exc)()),
                              ("awaited handle", lambda: bg_raise(exc))]:
                try:
                    await make()
                except BaseException as got:
                    outcomes[f"{way}: {name}"] = got is exc
                else:
                    outcomes[f"{way}: {name}"] = "no exception"
            # The same one worker is still there, and still works.
            outcomes[f"worker after {name}"] = await Task(worker_id)() == first
        return first


    first = run(main())
    for exc in kinds:
        handle = bg_raise(exc)
        try:
            handle.result(10)
        except BaseException as got:
            outcomes[f"handle.result: {type(exc).__name__}"] = got is exc
        outcomes[f"handle.exception: {type(exc).__name__}"] = handle.exception(10) is exc
        bg_raise(exc)   # dropped unretrieved: reported
    assert backgrounder.wait_idle(10)
    deadline = time.monotonic() + 10
    while len(reported) < len(kinds) and time.monotonic() < deadline:
        time.sleep(0.01)
    report(outcomes=outcomes, same_worker=run(Task(worker_id)()) == first,
           stats=backgrounder.stats(), reported=sorted(type(e).__name__ for e in reported))
"""


def test_base_exceptions_inside_a_call_are_delivered_and_the_worker_lives_on(
    loop_kind, loop_factory, tmp_path
):
    m = run_child(BASE_EXCEPTIONS, loop_kind, tmp_path, timeout=60)
    assert m["outcomes"] and all(v is True for v in m["outcomes"].values()), m["outcomes"]
    assert m["same_worker"] is True, m
    assert m["stats"]["workers"] == 1 and m["stats"]["threads_started"] == 1, m
    assert m["reported"] == sorted(["SystemExit", "KeyboardInterrupt", "Custom", "GeneratorExit"]), m


# ---- re-entry from a pool thread ---------------------------------------------------

REENTRY = """
    def double(x):
        return 2 * x


    async def async_double(x):
        await asyncio.sleep(0)  # in asyncio.run() on the pool thread, whatever the loop kind
        return 2 * x


    bg_double = background(double)


    def nested(depth, x):
        # On a pool thread: use backgrounder again, every way there is.
        assert threading.current_thread().__class__.__name__ == "_DummyThread"
        if depth == 0:
            return x
        a = run_sync(Task(nested, depth - 1, x)())
        b = asyncio.run(Task(async_double, a)()) // 2
        c = bg_double(b).result(10) // 2
        d = run_sync(Tasks([Task(double, c)])()) or c
        return d + 1


    async def main():
        # 6 chains 3 deep: at most 24 workers are busy at once, of 40.
        return await wait_for(gather(*(Task(nested, 3, i)() for i in range(6))), 60)


    results = run(main())
    report(results=results, stats=backgrounder.stats())
"""


@pytest.mark.timeout(150)  # the child's own limit, and a margin
def test_a_call_can_use_backgrounder_again_from_its_pool_thread(loop_kind, loop_factory, tmp_path):
    m = run_child(REENTRY, loop_kind, tmp_path, timeout=120)
    assert m["results"] == [i + 3 for i in range(6)], m


NESTED_WAIT_ON_A_FULL_POOL = """
    # One worker, and the call on it waits for a call that needs a worker:
    # a deadlock for any pool of one.  The wait times out, nothing hangs, and
    # the pool goes on.
    from concurrent.futures import TimeoutError as FuturesTimeoutError

    backgrounder.configure(max_workers=1)
    inner = background(lambda: "inner")


    def outer():
        handle = inner()
        try:
            handle.result(0.5)
        except FuturesTimeoutError:
            return "timed out", handle
        return "ran", handle


    verdict, handle = background(outer)().result(30)
    report(verdict=verdict, inner=handle.result(30), after=run(Task(lambda: "after")()))
"""


def test_a_call_waiting_for_another_on_a_pool_of_one_times_out_and_the_pool_goes_on(tmp_path):
    m = run_child(NESTED_WAIT_ON_A_FULL_POOL, "asyncio", tmp_path, timeout=60)
    assert m == {"verdict": "timed out", "inner": "inner", "after": "after"}, m


# ---- bursts ----------------------------------------------------------------------

BURST = """
    MAX = 3
    backgrounder.configure(max_workers=MAX)
    lock = threading.Lock()
    running = 0
    peak = 0


    def work(i):
        global running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        if i % 100 == 0:
            time.sleep(0.001)   # some calls release the GIL and block
        with lock:
            running -= 1
        return i


    N = 60_000


    async def main():
        results = await wait_for(gather(*(Task(work, i)() for i in range(N))), 120)
        return results == list(range(N))


    ok_tasks = run(main())
    # And a burst of @background calls from many threads at once.
    bg_work = background(work)
    handles = [[] for _ in range(8)]
    threads = [threading.Thread(target=lambda hs=hs: hs.extend(bg_work(i) for i in range(5_000)))
               for hs in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok_handles = all(h.result(60) == i for hs in handles for i, h in enumerate(hs))
    assert backgrounder.wait_idle(30)
    report(ok_tasks=ok_tasks, ok_handles=ok_handles, peak=peak, stats=backgrounder.stats(),
           debug=debug_counters())
"""


@pytest.mark.timeout(330)  # the child's own limit, and a margin
def test_a_burst_far_beyond_max_workers_completes_with_at_most_max_workers(loop_kind, loop_factory, tmp_path):
    m = run_child(BURST, loop_kind, tmp_path, timeout=300)
    assert m["ok_tasks"] is True and m["ok_handles"] is True, m
    assert 1 <= m["peak"] <= 3, m
    assert m["stats"]["workers"] <= 3 and m["stats"]["queued"] == 0, m
    if m["debug"] is not None:
        # 100,000 items were queued at the peak; the free list keeps 4096.
        assert m["debug"]["items_allocated"] - m["debug"]["items_freed"] <= 4096, m


SHRINK = """
    # configure(max_workers=...) lowered while workers are busy: the surplus
    # workers retire, and calls submitted meanwhile must still be taken at
    # once (not after the survivors' idle timeout, 30 s).
    async def main():
        for i in range(300):
            backgrounder.configure(max_workers=4)
            barrier = threading.Barrier(4)
            await gather(*(Task(barrier.wait, 10)() for _ in range(4)))
            backgrounder.configure(max_workers=1)
            try:
                await wait_for(gather(*(Task(pow, 2, k)() for k in range(8))), 5)
            except asyncio.TimeoutError:
                return i, backgrounder.stats()
        return None, backgrounder.stats()


    stalled_at, stats = run(main())
    report(stalled_at=stalled_at, stats=stats)
"""


@pytest.mark.timeout(150)  # the child's own limit, and a margin
def test_lowering_max_workers_while_calls_run_stalls_no_call(loop_kind, loop_factory, tmp_path):
    m = run_child(SHRINK, loop_kind, tmp_path, timeout=120)
    assert m["stalled_at"] is None, m
