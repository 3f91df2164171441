"""What the suite measures: workloads, systems, sizes and targets.

This file holds data only; BENCHMARKS.md (shared with the design docs) is the
source of the numbers. run.py reads it to plan a run and to judge the
figures; worker.py reads it for the sizes of a workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Systems: id -> label printed in the table.
LABELS = {
    "floor": "floor",
    "bare": "bare await g(i)",
    "nobg": "no background",
    "partial": "functools.partial",
    "to_thread": "asyncio.to_thread",
    "run_in_executor": "loop.run_in_executor",
    "anyio": "anyio.to_thread.run_sync",
    "starlette": "starlette run_in_threadpool",
    "bgtask": "starlette BackgroundTask",
    "tpe40": "ThreadPoolExecutor(40)",
    "original": "backgrounder 0.2.0",
    "backgrounder": "backgrounder",
}

# Shorter names for the target column.
SHORT = {
    "floor": "floor", "bare": "bare await", "to_thread": "to_thread",
    "anyio": "anyio", "bgtask": "BackgroundTask", "tpe40": "TPE(40)",
    "original": "0.2.0",
}

# Which interpreter a system runs in: "peer" (the script's own interpreter),
# "current" (--python, default the script's interpreter) or "original"
# (the 0.2.0 virtualenv).
WHERE = {"original": "original", "backgrounder": "current"}


@dataclass(frozen=True)
class Target:
    """figure(backgrounder) / figure(ref) must be >= (or <=) factor."""

    ref: str
    op: str  # ">=" or "<="
    factor: float


@dataclass(frozen=True)
class Workload:
    wid: str
    title: str
    unit: str
    higher_is_better: bool
    systems: tuple[str, ...]
    ref: str  # the system the ratio column is relative to
    n_full: int
    n_quick: int
    targets: tuple[Target, ...] = ()
    # absolute targets on the backgrounder figure itself: (op, value, text)
    absolute: tuple[tuple[str, float, str], ...] = ()
    params: dict = field(default_factory=dict)


THREAD_PEERS = ("floor", "to_thread", "run_in_executor", "anyio", "starlette")

WORKLOADS = (
    Workload(
        "B1",
        "await Task(f, i)() through asyncio.gather, 1,000 in flight",
        "calls/s",
        True,
        THREAD_PEERS + ("original", "backgrounder"),
        "to_thread",
        20_000,
        2_000,
        (Target("floor", ">=", 0.5), Target("to_thread", ">=", 3.0),
         Target("original", ">=", 50.0)),
    ),
    Workload(
        "B2",
        "await Task(f, i)() one after another",
        "us/call",
        False,
        THREAD_PEERS + ("original", "backgrounder"),
        "to_thread",
        5_000,
        1_000,
        (Target("to_thread", "<=", 0.5),),
    ),
    Workload(
        "B3",
        "await Task(g, i)() of an async g",
        "ns/call",
        False,
        ("bare", "bgtask", "original", "backgrounder"),
        "bare",
        100_000,
        20_000,
        (Target("bare", "<=", 1.5),),
    ),
    Workload(
        "B4",
        "@background sync function called from sync code, then wait for all",
        "calls/s",
        True,
        ("tpe40", "original", "backgrounder"),
        "tpe40",
        20_000,
        1_000,
        (Target("tpe40", ">=", 5.0),),
    ),
    Workload(
        "B5",
        "sequential requests, Starlette route with Response(background=...), "
        "httpx ASGITransport",
        "req/s",
        True,
        ("nobg", "bgtask", "original", "backgrounder"),
        "bgtask",
        2_000,
        300,
        (Target("bgtask", ">=", 1.5), Target("original", ">=", 1.5)),
    ),
    Workload(
        "B6a",
        "live Task(f, i) objects, tracemalloc",
        "B/Task",
        False,
        ("partial", "bgtask", "original", "backgrounder"),
        "original",
        100_000,
        10_000,
        (Target("original", "<=", 0.5),),
    ),
    Workload(
        "B6b",
        "pending sync awaits (f sleeps 10 ms), tracemalloc peak",
        "B/await",
        False,
        ("to_thread", "run_in_executor", "anyio", "starlette", "original",
         "backgrounder"),
        "to_thread",
        10_000,
        1_000,
        (Target("to_thread", "<=", 0.5),),
    ),
    Workload(
        "B7",
        "B1 at 10,000 and at N calls: per-call cost ratio, RSS growth",
        "x",
        False,
        ("backgrounder",),
        "backgrounder",
        1_000_000,
        100_000,
        absolute=(("<=", 1.2, "<= 1.2x (flat)"),
                  ("<=", 10.0, "within 10 MB of before")),
        params={"small": 10_000},
    ),
    Workload(
        "B8",
        "B1 with f = time.sleep(0.001), 40 workers everywhere",
        "calls/s",
        True,
        ("to_thread", "run_in_executor", "anyio", "starlette", "original",
         "backgrounder"),
        "anyio",
        20_000,
        2_000,
        (Target("anyio", ">=", 1.0),),
    ),
)

BY_ID = {w.wid: w for w in WORKLOADS}

# B1 also reports loop wake-ups per completed call; "well under one".
WAKEUPS_TARGET = 0.5
