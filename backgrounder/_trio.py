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

import collections
import os
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


class _Inbox:
    """The wake-ups bound for one trio run, handed to it in batches: the
    first wake-up posted schedules one flush through the run's token (a
    write to its wake-up socket); the ones posted before that flush runs
    ride along.  Posting takes no lock: a deque append, then the flag."""

    __slots__ = ("token", "wakes", "scheduled")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.wakes: collections.deque[Callable[[], None]] = collections.deque()
        self.scheduled = False

    @trio.lowlevel.enable_ki_protection
    def post(self, wake: Callable[[], None]) -> None:  # any thread
        self.wakes.append(wake)
        if not self.scheduled:
            # Two posters may both get here: a second flush finds nothing.
            self.scheduled = True
            try:
                self.token.run_sync_soon(self.flush)
            except trio.RunFinishedError:
                self.wakes.clear()  # the run is over: nobody waits any more
            except BaseException:
                # A Ctrl-C in a thread trio does not protect: the flag must
                # not stay set with no flush to come.
                try:
                    self.token.run_sync_soon(self.flush)
                except BaseException:
                    self.scheduled = False
                raise

    def flush(self) -> None:  # on the trio thread
        # The flag first: a wake-up posted from here on schedules a flush of its own.
        self.scheduled = False
        wakes = self.wakes
        while wakes:
            wakes.popleft()()


_inbox_var: "trio.lowlevel.RunVar[_Inbox]" = trio.lowlevel.RunVar("backgrounder_inbox")


def _inbox() -> _Inbox:
    """This trio run's inbox (on the trio thread); LookupError outside a run."""
    try:
        return _inbox_var.get()
    except LookupError:
        pass
    except RuntimeError:
        raise LookupError("no trio run in this thread") from None
    inbox = _Inbox(trio.lowlevel.current_trio_token())
    _inbox_var.set(inbox)
    return inbox


class _Waiters:
    """The trio waits on one handle: the handle's only done callback, however
    many tasks wait and come and go.  A wait that ends any other way
    (cancelled, interrupted) takes its entry out, so cancelled awaits of a
    long call leave nothing behind."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[object, tuple[_Inbox, Callable[[], None]]] = {}

    @trio.lowlevel.enable_ki_protection
    def __call__(self, handle: BackgroundHandle[Any]) -> None:  # on whichever thread settled it
        with _lock:
            entries = list(self.entries.values())
            self.entries.clear()
            if _registry.get(handle) is self:
                _registry.pop(handle, None)
        # Every waiter is woken, whatever one of them raises (a Ctrl-C in
        # the thread that settled it, no memory); the first error goes on.
        error: BaseException | None = None
        for inbox, wake in entries:
            try:
                inbox.post(wake)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error


# Reentrant: a handle already done calls its new done callback at once, in
# the thread that adds it, which holds the lock then.
_lock = threading.RLock()
if hasattr(os, "register_at_fork"):
    # Held across fork(): the engine's hook in the child settles the
    # parent's pending calls, which takes it (reentrant, in the forking
    # thread); a pool thread that held it does not exist in the child.
    os.register_at_fork(before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_lock.release)
_registry: "weakref.WeakKeyDictionary[BackgroundHandle[Any], _Waiters]" = weakref.WeakKeyDictionary()


def _subscribe(handle: BackgroundHandle[Any], key: object, inbox: _Inbox, wake: Callable[[], None]) -> None:
    with _lock:
        waiters = _registry.get(handle)
        new = waiters is None
        if waiters is None:
            waiters = _registry[handle] = _Waiters()
        # The entry first: a handle already done calls its new callback at
        # once, and the entry must be there then.
        waiters.entries[key] = (inbox, wake)
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
async def _wait(handle: BackgroundHandle[Any], inbox: _Inbox, own: bool) -> Any:
    """Waits for `handle` in the current trio task.  `own`: the handle is
    this wait's alone (`await Task(sync)()`).  Cancelled while waiting, then
    a call not started yet never starts (trio's rule, as for
    trio.to_thread.run_sync); a call already running is waited for, then the
    cancellation is delivered.  Not `own` (`await handle`, which many may
    wait for): the wait ends at once and the call goes on.  Protected from
    Ctrl-C (trio delivers it at the wait, through abort), so that no entry
    is left half made."""
    task = trio.lowlevel.current_task()
    waiting = True

    def wake() -> None:  # on the trio thread
        nonlocal waiting
        if waiting:
            waiting = False
            trio.lowlevel.reschedule(task, outcome.capture(handle.result, 0))

    def abort(_: Any) -> trio.lowlevel.Abort:  # on the trio thread
        nonlocal waiting
        if not own or handle.cancel():
            # trio reschedules the task itself: a wake() before it resumes
            # (the cancelled handle's callback) must not do it again.
            waiting = False
            return trio.lowlevel.Abort.SUCCEEDED
        return trio.lowlevel.Abort.FAILED  # running: wake() comes when it ends

    if own:
        # Nobody else waits on it, and it ends (run, failed or cancelled):
        # its one callback, without the shared registry.
        handle.add_done_callback(lambda _: inbox.post(wake))
        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            waiting = False  # a wake() still to come does nothing
    key = object()
    try:
        _subscribe(handle, key, inbox, wake)
        return await trio.lowlevel.wait_task_rescheduled(abort)
    finally:
        waiting = False
        _unsubscribe(handle, key)


@trio.lowlevel.enable_ki_protection
def call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Coroutine[Any, Any, Any]:
    """The rest of `await Task(func, *args, **kwargs)()` for a sync func."""
    inbox = _inbox()
    # Submitted now, in the awaiting task's context (copied for the pool).
    handle = _run_in_pool(func, args, kwargs)
    return _wait(handle, inbox, own=True)


@trio.lowlevel.enable_ki_protection
def wait_handle(handle: BackgroundHandle[Any]) -> Coroutine[Any, Any, Any]:
    """The rest of `await handle`: many may wait; a cancelled wait leaves the
    call alone."""
    inbox = _inbox()
    if handle.done():
        return _done(handle)
    return _wait(handle, inbox, own=False)


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
