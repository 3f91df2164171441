"""Why an awaited background task costs a busy server young collections.

    python bench/b9_gc.py [--requests N] [--concurrency C] [--objects K]

No server and no thread: N "requests", C at a time, each allocating K small
container objects (tracked by the garbage collector, all freed by reference
counting, no cycle) and dropping them when it ends. Printed: young
collections per request, when the request runs to its end in one step and
when it yields to the loop once (`await asyncio.sleep(0)`) in between, as a
request does while its response awaits a background task.

With one yield, C requests hold their objects across loop iterations, so a
young collection finds them alive and moves them to an older generation.
CPython counts a young allocation up and a deallocation down, but not below
zero, so these objects' later deallocation no longer offsets the next
requests' allocations, and the threshold is reached again after a few
requests. B9's `Task` rows pay this on the server's loop (docs/benchmarks.md,
"Where the cost goes"); no engine can avoid it while the response awaits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys


def allocate(k: int) -> list:
    return [[i] for i in range(k)]


async def run(requests: int, concurrency: int, objects: int, yield_once: bool) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def request() -> None:
        async with gate:
            held = allocate(objects)
            if yield_once:
                await asyncio.sleep(0)
            del held

    before = gc.get_stats()[0]["collections"]
    await asyncio.gather(*(request() for _ in range(requests)))
    return (gc.get_stats()[0]["collections"] - before) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--objects", type=int, default=50)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, gc thresholds {gc.get_threshold()}, "
          f"{args.requests:,} requests, {args.concurrency} at a time, "
          f"{args.objects} objects each")
    for yield_once in (False, True):
        per_request = asyncio.run(run(args.requests, args.concurrency, args.objects, yield_once))
        label = "yields once" if yield_once else "runs in one step"
        print(f"  request {label:<17} {per_request:.4f} young collections per request")


if __name__ == "__main__":
    main()
