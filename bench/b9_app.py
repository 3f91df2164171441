"""The B9 server: one Starlette (or FastAPI) route whose response carries
background work, served by uvicorn (uvloop, httptools, one process).

    B9_SYSTEM=task B9_WORK=io python bench/b9_app.py PORT

B9_SYSTEM picks how the route hands off its work (SYSTEMS below), B9_WORK
what the work is: `io` sleeps 1 ms (the GIL released), `cpu` makes 200
Python additions (the GIL held). Every system but `nobg` runs the same sync
function per background call.

GET /      the measured route: b"ok", with the background work attached.
GET /count waits (up to 60 s) until every handled request's background
           work has run, then returns JSON: handled requests, background
           calls expected and ran, and backgrounder's stats() if present.
           b9.py compares these with wrk's own count: nothing may be lost.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's
# annotation (BackgroundTasks, imported in make_app) at run time.
import asyncio
import json
import os
import sys
import time

SYSTEM = os.environ.get("B9_SYSTEM", "nobg")
WORK = os.environ.get("B9_WORK", "io")

# system -> background calls per request
PER_REQUEST = {"nobg": 0, "bgtask": 1, "fastapi": 1, "task": 1, "tasks2": 2,
               "decorator": 1, "original": 1,
               # b9_profile.py's control: no thread at all, the response's
               # background is an async function that yields to the loop once
               # and then runs the work inline
               "yield0": 1}

# One item per background call that ran. list.append is atomic under the
# GIL, from whatever thread the work runs on.
ran: list = []
handled = 0


def work_io():
    time.sleep(0.001)
    ran.append(1)


def work_cpu():
    s = 0
    for i in range(200):
        s += i
    ran.append(s)


WORKS = {"io": work_io, "cpu": work_cpu}


# B9_GC_STATS=1 (bench/b9_profile.py): collections per generation and the
# time spent in them, from gc.callbacks.
gc_counts = [0, 0, 0]
gc_seconds = [0.0]
_gc_started = [0.0]


def _gc_callback(phase, info):
    if phase == "start":
        gc_counts[info["generation"]] += 1
        _gc_started[0] = time.perf_counter()
    else:
        gc_seconds[0] += time.perf_counter() - _gc_started[0]


def count_payload():
    out = {"system": SYSTEM, "work": WORK, "handled": handled,
           "per_request": PER_REQUEST[SYSTEM],
           "expected": handled * PER_REQUEST[SYSTEM], "ran": len(ran)}
    if os.environ.get("B9_GC_SAVEALL"):
        import collections
        import gc
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        out["gc_garbage"] = dict(kinds.most_common(25))
        out["gc_garbage_total"] = len(gc.garbage)
        gc.garbage.clear()
    if os.environ.get("B9_GC_STATS"):
        out["gc_collections"] = list(gc_counts)
        out["gc_seconds"] = gc_seconds[0]
    bg = sys.modules.get("backgrounder")
    if bg is not None:
        out["backgrounder"] = getattr(bg, "__version__", "?")
        stats = getattr(bg, "stats", None)
        if stats is not None:
            out["stats"] = stats()
    return out


async def wait_drained(timeout=60.0):
    t0 = time.monotonic()
    backlog = handled * PER_REQUEST[SYSTEM] - len(ran)
    while len(ran) < handled * PER_REQUEST[SYSTEM] and time.monotonic() < t0 + timeout:
        await asyncio.sleep(0.01)
    # how far the background work was behind when asked, and how long it
    # took to catch up
    return dict(count_payload(), backlog=backlog, drain_seconds=time.monotonic() - t0)


def make_app():
    from starlette.responses import Response

    if SYSTEM not in PER_REQUEST:
        raise SystemExit(f"B9_SYSTEM: unknown system {SYSTEM!r}; "
                         f"known: {', '.join(PER_REQUEST)}")
    if WORK not in WORKS:
        raise SystemExit(f"B9_WORK: unknown work {WORK!r}; known: io, cpu")
    work = WORKS[WORK]

    async def count(request):
        payload = await wait_drained()
        return Response(json.dumps(payload), media_type="application/json")

    if SYSTEM == "fastapi":
        from fastapi import BackgroundTasks, FastAPI

        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.get("/")
        async def endpoint(background_tasks: BackgroundTasks):
            global handled
            handled += 1
            background_tasks.add_task(work)
            return Response(b"ok")

        app.add_route("/count", count)
        return app

    from starlette.applications import Starlette
    from starlette.routing import Route

    if SYSTEM == "nobg":
        async def endpoint(request):
            global handled
            handled += 1
            return Response(b"ok")
    elif SYSTEM == "bgtask":
        from starlette.background import BackgroundTask

        async def endpoint(request):
            global handled
            handled += 1
            return Response(b"ok", background=BackgroundTask(work))
    elif SYSTEM in ("task", "original"):
        import backgrounder
        if (backgrounder.__version__ == "0.2.0") != (SYSTEM == "original"):
            raise SystemExit(f"B9_SYSTEM={SYSTEM} imported backgrounder "
                             f"{backgrounder.__version__}: wrong interpreter")
        from backgrounder import Task

        async def endpoint(request):
            global handled
            handled += 1
            return Response(b"ok", background=Task(work))
    elif SYSTEM == "yield0":
        from starlette.background import BackgroundTask

        async def yield_then_work():
            await asyncio.sleep(0)
            work()

        async def endpoint(request):
            global handled
            handled += 1
            return Response(b"ok", background=BackgroundTask(yield_then_work))
    elif SYSTEM == "tasks2":
        from backgrounder import Task, Tasks

        async def endpoint(request):
            global handled
            handled += 1
            return Response(b"ok", background=Tasks([Task(work), Task(work)]))
    elif SYSTEM == "decorator":
        from backgrounder import background

        bg_work = background(work)

        async def endpoint(request):
            global handled
            handled += 1
            bg_work()  # fire and forget: the handle is dropped
            return Response(b"ok")

    return Starlette(routes=[Route("/", endpoint), Route("/count", count)])


def main(argv):
    import uvicorn

    port = int(argv[0])
    if os.environ.get("B9_SWITCH_INTERVAL"):  # bench/b9_profile.py --switch-interval
        sys.setswitchinterval(float(os.environ["B9_SWITCH_INTERVAL"]))
    if os.environ.get("B9_GC_STATS"):
        import gc
        gc.callbacks.append(_gc_callback)
    if os.environ.get("B9_GC_SAVEALL"):  # what the collector frees, by type
        import gc
        gc.set_debug(gc.DEBUG_SAVEALL)
    if os.environ.get("B9_GC_THRESHOLD"):  # b9_profile.py --gc-threshold
        import gc
        gc.set_threshold(int(os.environ["B9_GC_THRESHOLD"]))
    app = make_app()
    if os.environ.get("B9_GC_FREEZE"):  # b9_profile.py --gc-freeze
        import gc
        gc.collect()
        gc.freeze()
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                lifespan="off", access_log=False, log_level="warning",
                workers=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
