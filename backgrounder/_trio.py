"""Awaiting backgrounder's work under trio (anyio's trio backend, hypercorn).

The engine's awaitables wait on asyncio futures.  When no asyncio loop runs
and trio is imported, the engine hands the rest of an await to one of the
functions below instead (src/coro.c, bg_coro_go_foreign): sync work still
runs on the native pool, and its completion comes back to the trio run
through its token.  This module is imported only then, so backgrounder never
imports trio itself.

Each function checks, before it returns a coroutine, that it is called from
inside a trio run; if not it raises LookupError, and the engine raises
asyncio's own "no running event loop" instead.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import outcome
import trio

from ._backgrounder import BackgroundHandle, Task, _run_in_pool


def _token() -> trio.lowlevel.TrioToken:
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise LookupError("no trio run in this thread") from None


class _Waiters:
    """The trio waits on one handle: the handle's only done callback, however
    many tasks wait and come and go.  A wait that ends any other way
    (cancelled, interrupted) takes its entry out, so cancelled awaits of a
    long call leave nothing behind."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[object, tuple[trio.lowlevel.TrioToken, Callable[[], None]]] = {}

    def __call__(self, handle: BackgroundHandle[Any]) -> None:  # on whichever thread settled it
        with _lock:
            if _registry.get(handle) is self:
                del _registry[handle]
            entries = list(self.entries.values())
            self.entries.clear()
        # Every waiter is woken, whatever one of them raises (a Ctrl-C in
        # the thread that settled it, no memory); the first error goes on.
        error: BaseException | None = None
        for token, wake in entries:
            try:
                token.run_sync_soon(wake)
            except trio.RunFinishedError:
                pass  # the run is over: nobody waits any more
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error


# Reentrant: a handle already done calls its new done callback at once, in
# the thread that adds it, which holds the lock then.
_lock = threading.RLock()
_registry: "weakref.WeakKeyDictionary[BackgroundHandle[Any], _Waiters]" = weakref.WeakKeyDictionary()


def _subscribe(
    handle: BackgroundHandle[Any], key: object, token: trio.lowlevel.TrioToken, wake: Callable[[], None]
) -> None:
    with _lock:
        waiters = _registry.get(handle)
        new = waiters is None
        if waiters is None:
            waiters = _registry[handle] = _Waiters()
        # The entry first: a handle already done calls its new callback at
        # once, and the entry must be there then.
        waiters.entries[key] = (token, wake)
        if new:
            try:
                handle.add_done_callback(waiters)
            except BaseException:
                # Not attached: nobody may join it.
                del _registry[handle]
                waiters.entries.clear()
                raise


def _unsubscribe(handle: BackgroundHandle[Any], key: object) -> None:
    with _lock:
        waiters = _registry.get(handle)
        if waiters is not None:  # else it fired, and let go of every entry
            waiters.entries.pop(key, None)


@trio.lowlevel.enable_ki_protection
async def _wait(handle: BackgroundHandle[Any], token: trio.lowlevel.TrioToken, cancel: bool) -> Any:
    """Waits for `handle` in the current trio task.  Cancelled while waiting:
    with `cancel`, a call not started yet never starts (trio's rule, as for
    trio.to_thread.run_sync); a call already running is waited for, then the
    cancellation is delivered.  Without `cancel`, the wait ends at once and
    the call goes on.  Protected from Ctrl-C (trio delivers it at the wait,
    through abort), so that no entry is left half made."""
    task = trio.lowlevel.current_task()
    waiting = True

    def wake() -> None:  # on the trio thread
        nonlocal waiting
        if waiting:
            waiting = False
            trio.lowlevel.reschedule(task, outcome.capture(handle.result, 0))

    def abort(_: Any) -> trio.lowlevel.Abort:
        if not cancel or handle.cancel():
            return trio.lowlevel.Abort.SUCCEEDED
        return trio.lowlevel.Abort.FAILED  # running: wake() comes when it ends

    key = object()
    try:
        _subscribe(handle, key, token, wake)
        return await trio.lowlevel.wait_task_rescheduled(abort)
    finally:
        waiting = False  # a wake() still to come does nothing
        _unsubscribe(handle, key)


def call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Coroutine[Any, Any, Any]:
    """The rest of `await Task(func, *args, **kwargs)()` for a sync func."""
    token = _token()
    # Submitted now, in the awaiting task's context (copied for the pool).
    handle = _run_in_pool(func, args, kwargs)
    return _wait(handle, token, cancel=True)


def wait_handle(handle: BackgroundHandle[Any]) -> Coroutine[Any, Any, Any]:
    """The rest of `await handle`: many may wait; a cancelled wait leaves the
    call alone."""
    token = _token()
    if handle.done():
        return _done(handle)
    return _wait(handle, token, cancel=False)


async def _done(handle: BackgroundHandle[Any]) -> Any:
    await trio.lowlevel.checkpoint()
    return handle.result(0)


def group(entries: list[Any]) -> Coroutine[Any, Any, None]:
    """The rest of a Tasks run as a group: every entry in a nursery; at the
    first failure trio cancels the others, and the failures come out
    together as an ExceptionGroup."""
    _token()
    return _group(entries)


async def _group(entries: list[Any]) -> None:
    async def run(entry: Any) -> None:
        await (entry() if isinstance(entry, Task) else Task(entry)())

    async with trio.open_nursery() as nursery:
        for entry in entries:
            nursery.start_soon(run, entry)


async def drain(timeout: "float | None") -> bool:
    """backgrounder.drain() in a trio run: the wait blocks a trio worker
    thread, in short slices; a cancelled drain() abandons it at once, and
    the thread ends at its next slice."""
    from . import _drain_slices

    cancelled = threading.Event()
    try:
        return await trio.to_thread.run_sync(
            _drain_slices, timeout, False, cancelled, abandon_on_cancel=True
        )
    finally:
        cancelled.set()


def in_trio_run() -> bool:
    """Whether this thread runs a trio run."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True
