"""backgrounder: background work for Python on a native engine.

``Task`` and ``Tasks`` are what a Starlette, FastAPI, Esmerald or Lilya response
takes as its ``background``; ``@background`` starts a function at once and
hands back a handle, from sync or async code.  Sync callables run on a native
thread pool, async ones on the asyncio loop.
"""

import asyncio
import threading
import time

from . import _backgrounder
from ._compat import in_trio_run
from ._backgrounder import (
    BackgroundHandle,  # noqa
    Task,
    Tasks,
    background,
    configure,
    shutdown,
    stats,
    wait_idle,
)


async def drain(timeout: "float | None" = None) -> bool:
    """Waits, without blocking the running loop, until no background work is
    queued or running anywhere: on the pool, as async calls on any loop, on
    backgrounder's own loop.  True when idle, False after ``timeout``
    seconds.  Put it in a server's lifespan shutdown so that background work
    finishes before the loop ends.  Called from an async ``@background``
    call, it does not wait for that call itself."""
    _backgrounder._check_timeout(timeout, "drain() argument 'timeout'")
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if not in_trio_run():
            raise
        from ._trio import drain as trio_drain

        return await trio_drain(timeout)
    me = _backgrounder._is_background_task(asyncio.current_task())
    # The wait blocks a thread, not the loop: the loop's own background
    # calls go on meanwhile.  Cancelling drain() stops that thread too.
    cancelled = threading.Event()
    try:
        return await loop.run_in_executor(None, _drain_slices, timeout, me, cancelled)
    finally:
        cancelled.set()


def _drain_slices(timeout: "float | None", me: bool, cancelled: threading.Event) -> bool:
    """drain()'s wait, on an executor thread: in short slices, so that a
    cancelled drain() leaves no thread behind (an executor that waits for
    its threads, as asyncio.run's does at its end, would wait for it)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not cancelled.is_set():
        left = _SLICE if deadline is None else min(_SLICE, max(0.0, deadline - time.monotonic()))
        if _backgrounder._wait_drained(left, me):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return False


_SLICE = 0.05

__version__ = "1.0.0"

__all__ = [
    "BackgroundHandle",
    "Task",
    "Tasks",
    "background",
    "configure",
    "drain",
    "shutdown",
    "stats",
    "wait_idle",
]
