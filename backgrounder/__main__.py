"""python -m backgrounder: a short demo of Task, Tasks and @background."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time

import backgrounder
from backgrounder import Task, Tasks, background

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def send_email(to: str, subject: str) -> str:
    """A blocking call: it runs on backgrounder's native pool."""
    time.sleep(0.05)
    return f"[{request_id.get()}] mail to {to}: {subject!r} (on thread {threading.current_thread().name})"


async def write_audit_log(event: str) -> str:
    """An async call: it runs on the event loop, in the awaiting task."""
    await asyncio.sleep(0.01)
    return f"[{request_id.get()}] audit: {event}"


@background
def resize_image(name: str) -> str:
    """Fire and forget: the call returns a handle at once."""
    time.sleep(0.1)
    return f"resized {name}"


@background
def charge_card(amount: int) -> None:
    """Fails, and nobody waits for it: backgrounder logs the exception."""
    raise ValueError(f"card declined for {amount}")


async def handle_request() -> None:
    request_id.set("req-42")
    print("Task:  ", await Task(send_email, "ada@example.com", subject="welcome")())
    print("Task:  ", await Task(write_audit_log, "signup")())

    log: list[str] = []
    tasks = Tasks(as_group=True)
    tasks.add_task(log.append, "thumbnail")
    tasks.add_task(log.append, "search index")
    await tasks()
    print("Tasks: ", sorted(log), "(as a group)")

    start = time.perf_counter()
    results = await asyncio.gather(*[Task(pow, i, 2)() for i in range(10_000)])
    elapsed = time.perf_counter() - start
    print(f"Tasks:  10,000 sync calls through the pool in {elapsed * 1000:.0f} ms, sum {sum(results)}")


def main() -> None:
    # Where the `backgrounder` logger's records go; an app has its own setup.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    print(f"backgrounder {backgrounder.__version__}: a native engine for background work\n")
    asyncio.run(handle_request())

    start = time.perf_counter()
    handle = resize_image("cat.png")
    print(f"\n@background: returned {handle!r} after {(time.perf_counter() - start) * 1e6:.0f} µs")
    print("@background:", handle.result(timeout=5))

    print("\n@background: charge_card(42) fails, and nobody waits for its handle:")
    sys.stdout.flush()
    charge_card(42)  # the handle is dropped at once: the failure is logged
    backgrounder.wait_idle(timeout=5)
    print("\nstats:", backgrounder.stats())


if __name__ == "__main__":
    main()
