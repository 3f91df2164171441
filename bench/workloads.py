"""The workloads, one function per workload, each taking a system id.

Every function imports what its system needs, warms up, then times only the
measured part (interpreter start and imports are outside the timer) and
checks the results, so that a broken system cannot look fast: a system that
returns the callable's value has its results summed and compared; one that
drops them (0.2.0's Task, Starlette's BackgroundTask) first makes a checked
pass with a recording variant of the callable.

Each function returns {"value": float, "unit": str, "extra": {...}}.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

CHUNK = 1_000  # calls in flight in B1, B7, B8: gather in chunks of this size


def f(x):
    return x + 1


async def g(x):
    return x


def sleep_1ms(x):
    time.sleep(0.001)
    return x + 1


def sleep_10ms(x):
    time.sleep(0.01)
    return x + 1


class Recorder:
    """f and g that also record what they computed, for the checked passes."""

    def __init__(self):
        self.out = []

    def f(self, x):
        self.out.append(x + 1)
        return x + 1

    async def g(self, x):
        self.out.append(x)
        return x

    def recording(self, fn):
        """fn that also records its value; f and g get the cheap variants."""
        if fn is f:
            return self.f
        if fn is g:
            return self.g

        def rec_fn(x):
            r = fn(x)
            self.out.append(r)
            return r
        return rec_fn

    def check(self, n, expected_sum, what):
        got = (len(self.out), sum(self.out))
        if got != (n, expected_sum):
            raise CheckError(
                f"{what}: recorded {got[0]} calls summing to {got[1]}, "
                f"expected {n} calls summing to {expected_sum}")
        self.out.clear()


class CheckError(AssertionError):
    pass


def check_sum(total, n, offset, what):
    """Results of f over range(n) sum to n(n-1)/2 + n*offset."""
    expected = n * (n - 1) // 2 + n * offset
    if total != expected:
        raise CheckError(f"{what}: results sum to {total!r}, expected {expected}")


def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------
# The call each system makes, written as its user writes it, with `fn` and
# `x` free. compile_calls() pastes it into the same loops for every system,
# so that the systems differ in this expression only.

SYNC_CALL = {
    "floor": "floor(fn, x)",
    "to_thread": "to_thread(fn, x)",
    "run_in_executor": "loop.run_in_executor(None, fn, x)",
    "anyio": "run_sync(fn, x)",
    "starlette": "run_in_threadpool(fn, x)",
    "original": "Task(fn, x)()",
    "backgrounder": "Task(fn, x)()",
}

ASYNC_CALL = {
    "bare": "fn(x)",
    "bgtask": "BackgroundTask(fn, x)()",
    "original": "Task(fn, x)()",
    "backgrounder": "Task(fn, x)()",
}

# These drop the callable's value: 0.2.0's Task.__call__, Starlette's
# BackgroundTask.__call__.
DROPS_VALUE = {"original", "bgtask"}

LOOPS = """
async def gather_chunk(fn, start, stop):
    loop = get_running_loop()
    return await gather(*[{call} for x in range(start, stop)])

async def each_sum(fn, n):
    loop = get_running_loop()
    total = 0
    for x in range(n):
        total += await {call}
    return total

async def each(fn, n):
    loop = get_running_loop()
    for x in range(n):
        await {call}

def make_each(fn, n):
    loop = get_running_loop()
    return [{call} for x in range(n)]
"""


async def floor(fn, x):
    """The floor: fn(x) inline on the loop thread behind a done future."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(fn(x))
    return await fut


class Calls:
    """gather_chunk(fn, start, stop), each_sum(fn, n), each(fn, n) of a system."""

    def __init__(self, system, forms):
        ns = {"gather": asyncio.gather, "get_running_loop": asyncio.get_running_loop,
              "to_thread": asyncio.to_thread, "floor": floor}
        if system == "anyio":
            import anyio.to_thread
            ns["run_sync"] = anyio.to_thread.run_sync
        elif system == "starlette":
            from starlette.concurrency import run_in_threadpool
            ns["run_in_threadpool"] = run_in_threadpool
        elif system == "bgtask":
            from starlette.background import BackgroundTask
            ns["BackgroundTask"] = BackgroundTask
        elif system in ("original", "backgrounder"):
            from backgrounder import Task
            ns["Task"] = Task
        if system not in forms:
            raise ValueError(f"system {system!r} has no call form here")
        exec(LOOPS.format(call=forms[system]), ns)
        self.gather_chunk = ns["gather_chunk"]
        self.each_sum = ns["each_sum"]
        self.each = ns["each"]
        self.make_each = ns["make_each"]
        self.returns_value = system not in DROPS_VALUE

    async def gather(self, fn, n):
        """Awaits fn(i) for i in range(n), CHUNK in flight; returns the sum."""
        total = 0
        for start in range(0, n, CHUNK):
            results = await self.gather_chunk(fn, start, min(start + CHUNK, n))
            if self.returns_value:
                total += sum(results)
        return total

    async def checked_gather(self, fn, n, offset, what):
        """A gather pass of fn (x -> x + offset) that checks what it computed."""
        if self.returns_value:
            check_sum(await self.gather(fn, n), n, offset, what)
        else:
            rec = Recorder()
            await self.gather(rec.recording(fn), n)
            rec.check(n, n * (n - 1) // 2 + n * offset, what)


def set_workers(system, loop, workers):
    """Makes the thread-pool peers use `workers` threads (B8)."""
    if system in ("to_thread", "run_in_executor"):
        from concurrent.futures import ThreadPoolExecutor
        loop.set_default_executor(ThreadPoolExecutor(workers))
    elif system == "backgrounder":
        import backgrounder
        backgrounder.configure(max_workers=workers)
    # anyio, starlette and 0.2.0 (anyio) default to a 40-token limiter.


def _stats():
    import backgrounder
    return backgrounder.stats()


# --------------------------------------------------------------------------
# B1 / B8: gather, 1,000 in flight


def b1(system, n, params, fn=f, workers=None):
    calls = Calls(system, SYNC_CALL)

    async def main():
        loop = asyncio.get_running_loop()
        if workers is not None:
            set_workers(system, loop, workers)
        # sleeping calls (B8) need fewer to start every thread
        warm = min(n, 1_000 if system != "original" and fn is f else 200)
        await calls.checked_gather(fn, warm, 1, "warm-up")
        gc.collect()
        s0 = _stats() if system == "backgrounder" else None
        t0 = time.perf_counter()
        total = await calls.gather(fn, n)
        elapsed = time.perf_counter() - t0
        s1 = _stats() if system == "backgrounder" else None
        if calls.returns_value:
            check_sum(total, n, 1, "timed run")
        extra = {"seconds": elapsed}
        if s0 is not None:
            wake = s1.get("wakeups", 0) - s0.get("wakeups", 0)
            done = s1.get("completions", 0) - s0.get("completions", 0)
            extra["wakeups"] = wake
            extra["completions"] = done
            extra["wakeups_per_call"] = wake / done if done else None
        return {"value": n / elapsed, "unit": "calls/s", "extra": extra}

    return asyncio.run(main())


def b8(system, n, params):
    return b1(system, n, params, fn=sleep_1ms, workers=40)


# --------------------------------------------------------------------------
# B2: one after another


def b2(system, n, params):
    calls = Calls(system, SYNC_CALL)

    async def main():
        warm = min(n, 500 if system != "original" else 100)
        await calls.checked_gather(f, warm, 1, "warm-up")
        gc.collect()
        t0 = time.perf_counter()
        if calls.returns_value:
            total = await calls.each_sum(f, n)
        else:
            await calls.each(f, n)
        elapsed = time.perf_counter() - t0
        if calls.returns_value:
            check_sum(total, n, 1, "timed run")
        return {"value": elapsed / n * 1e6, "unit": "us/call",
                "extra": {"seconds": elapsed}}

    return asyncio.run(main())


# --------------------------------------------------------------------------
# B3: async callables


def b3(system, n, params):
    calls = Calls(system, ASYNC_CALL)

    async def main():
        rec = Recorder()
        warm = min(n, 10_000)
        await calls.each(rec.g, warm)  # checked pass, untimed
        rec.check(warm, warm * (warm - 1) // 2, "warm-up")
        gc.collect()
        t0 = time.perf_counter()
        if calls.returns_value:
            total = await calls.each_sum(g, n)
        else:
            await calls.each(g, n)
        elapsed = time.perf_counter() - t0
        if calls.returns_value:
            check_sum(total, n, 0, "timed run")
        return {"value": elapsed / n * 1e9, "unit": "ns/call",
                "extra": {"seconds": elapsed}}

    return asyncio.run(main())


# --------------------------------------------------------------------------
# B4: fire and forget from sync code, then wait for all


def b4(system, n, params):
    warm = min(n, 1_000 if system != "original" else 100)
    if system == "tpe40":
        from concurrent.futures import ThreadPoolExecutor
        ex = ThreadPoolExecutor(40)
        check_sum(sum(fu.result() for fu in [ex.submit(f, i) for i in range(warm)]),
                  warm, 1, "warm-up")
        gc.collect()
        t0 = time.perf_counter()
        futs = [ex.submit(f, i) for i in range(n)]
        total = sum(fu.result() for fu in futs)
        elapsed = time.perf_counter() - t0
        check_sum(total, n, 1, "timed run")
        ex.shutdown()
    elif system == "backgrounder":
        from backgrounder import background
        fb = background(f)
        check_sum(sum(h.result() for h in [fb(i) for i in range(warm)]),
                  warm, 1, "warm-up")
        gc.collect()
        t0 = time.perf_counter()
        handles = [fb(i) for i in range(n)]
        total = sum(h.result() for h in handles)
        elapsed = time.perf_counter() - t0
        check_sum(total, n, 1, "timed run")
    elif system == "original":
        # 0.2.0's @background blocks until the function ends and returns None.
        from backgrounder import background
        rec = Recorder()
        fr = background(rec.f)
        for i in range(warm):
            fr(i)
        rec.check(warm, warm * (warm - 1) // 2 + warm, "warm-up")
        fb = background(f)
        gc.collect()
        t0 = time.perf_counter()
        for i in range(n):
            fb(i)
        elapsed = time.perf_counter() - t0
    else:
        raise ValueError(system)
    return {"value": n / elapsed, "unit": "calls/s", "extra": {"seconds": elapsed}}


# --------------------------------------------------------------------------
# B5: Starlette route with a background task, httpx ASGITransport


def b5(system, n, params):
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    rec = Recorder()
    if system == "nobg":
        def make_bg(x):
            rec.f(x)  # the same work, inline, so that the check holds
            return None
    elif system == "bgtask":
        from starlette.background import BackgroundTask
        make_bg = lambda x: BackgroundTask(rec.f, x)  # noqa: E731
    elif system in ("original", "backgrounder"):
        from backgrounder import Task
        make_bg = lambda x: Task(rec.f, x)  # noqa: E731
    else:
        raise ValueError(system)

    counter = iter(range(10 ** 12))

    async def endpoint(request):
        return Response("ok", background=make_bg(next(counter)))

    app = Starlette(routes=[Route("/", endpoint)])

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://bench") as client:
            warm = min(n // 4, 200)
            for _ in range(warm):
                r = await client.get("/")
                assert r.status_code == 200 and r.content == b"ok", r
            rec.check(warm, warm * (warm - 1) // 2 + warm, "warm-up")
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(n):
                r = await client.get("/")
            elapsed = time.perf_counter() - t0
            assert r.status_code == 200 and r.content == b"ok", r
            # the background work ran within each request (ASGITransport
            # awaits the whole app), with the next values of the counter
            rec.check(n, (2 * warm + n - 1) * n // 2 + n, "timed run")
        return {"value": n / elapsed, "unit": "req/s",
                "extra": {"seconds": elapsed}}

    return asyncio.run(main())


# --------------------------------------------------------------------------
# B6a: bytes per live Task object


def b6a(system, n, params):
    import tracemalloc

    if system == "partial":
        from functools import partial as make
    elif system == "bgtask":
        from starlette.background import BackgroundTask as make
    elif system in ("original", "backgrounder"):
        from backgrounder import Task as make
    else:
        raise ValueError(system)

    xs = list(range(10 ** 9, 10 ** 9 + n))  # argument objects made beforehand
    out = [None] * n
    make(f, 0)  # warm-up: first-use caches are not per-object cost
    # RSS pass, without tracemalloc (whose own records would show in RSS): a
    # cross-check that sees memory tracemalloc cannot (plain malloc in C).
    gc.collect()
    rss0 = rss_bytes()
    for k in range(n):
        out[k] = make(f, xs[k])
    rss1 = rss_bytes()
    out = [None] * n
    gc.collect()
    # tracemalloc pass: the figure
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for k in range(n):
            out[k] = make(f, xs[k])
        cur = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    bad = [o for o in out[:: max(1, n // 100)]
           if not (callable(o) and getattr(o, "args", None) is not None)]
    if bad or out[-1].args != (xs[-1],):
        raise CheckError(f"not a Task of (f, x): {(bad or out[-1:])[0]!r}")
    return {"value": (cur - base) / n, "unit": "B/Task",
            "extra": {"rss_bytes_per_task": (rss1 - rss0) / n}}


# --------------------------------------------------------------------------
# B6b: peak bytes of pending sync awaits


def b6b(system, n, params):
    import tracemalloc

    calls = Calls(system, SYNC_CALL)

    async def main():
        # Start every pool thread first (200 concurrent 1 ms calls): thread
        # start-up is not per-await cost, and no thread may start while
        # tracemalloc starts or stops (CPython gh-128679: a native thread
        # creating its thread state during tracemalloc.stop() can crash 3.11).
        await calls.checked_gather(sleep_1ms, 200, 1, "warm-up")
        ensure_future = asyncio.ensure_future
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            futs = [ensure_future(c) for c in calls.make_each(sleep_10ms, n)]
            for _ in range(3):  # let every task run up to its first suspension
                await asyncio.sleep(0)
            cur, peak = tracemalloc.get_traced_memory()
            pending = sum(not fu.done() for fu in futs)
            for fu in futs:
                fu.cancel()
            done, not_done = await asyncio.wait(futs, timeout=60)
            # the threads finish the calls already running: wait for them too
            await asyncio.sleep(0.05)
        finally:
            tracemalloc.stop()
        if not_done:
            raise CheckError(f"{len(not_done)} awaits still pending 60 s after cancel")
        if pending < n * 0.9:
            raise CheckError(f"only {pending} of {n} awaits were pending when measured")
        return {"value": (peak - base) / n, "unit": "B/await",
                "extra": {"pending": pending, "current_per_await": (cur - base) / n}}

    return asyncio.run(main())


# --------------------------------------------------------------------------
# B7: B1 at a small and a large count, backgrounder only


def b7(system, n, params):
    calls = Calls(system, SYNC_CALL)
    small = params.get("small", 10_000)

    async def main():
        await calls.checked_gather(f, 1_000, 1, "warm-up")
        gc.collect()
        rss0 = rss_bytes()
        # the small count's cost: median of 3 runs, so that one noisy run of
        # a few milliseconds does not decide the ratio
        smalls = []
        for _ in range(3):
            t0 = time.perf_counter()
            total = await calls.gather(f, small)
            smalls.append(time.perf_counter() - t0)
            if calls.returns_value:
                check_sum(total, small, 1, "small run")
        t_small = sorted(smalls)[1]
        t0 = time.perf_counter()
        total = await calls.gather(f, n)
        t_big = time.perf_counter() - t0
        if calls.returns_value:
            check_sum(total, n, 1, "large run")
        gc.collect()
        rss1 = rss_bytes()
        ratio = (t_big / n) / (t_small / small)
        return {"value": ratio, "unit": "x",
                "extra": {"small": small, "large": n,
                          "us_per_call_small": t_small / small * 1e6,
                          "us_per_call_large": t_big / n * 1e6,
                          "rss_before_mb": rss0 / 2 ** 20,
                          "rss_after_mb": rss1 / 2 ** 20,
                          "rss_growth_mb": (rss1 - rss0) / 2 ** 20}}

    return asyncio.run(main())


RUNNERS = {"B1": b1, "B2": b2, "B3": b3, "B4": b4, "B5": b5, "B6a": b6a,
           "B6b": b6b, "B7": b7, "B8": b8}
