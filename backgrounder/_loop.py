"""backgrounder's own event loop thread.

An async function decorated with ``@background`` and called from sync code (a
Django view, a script) runs here: one daemon thread running one asyncio loop,
started on first use.  The engine (background.c) submits the coroutine with the
caller's context and a done callback; it drains and stops this loop at exit,
before the interpreter finalizes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class LoopThread:
    """One asyncio loop on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._pending = 0
        self._closing = False
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="backgrounder-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(
        self,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context,
        done: Callable[[asyncio.Future[Any]], object],
    ) -> None:
        """Runs ``coro`` on the loop, in ``context``; ``done(task)`` is called
        when it ends.  Callable from any thread."""
        with self._idle:
            if self._closing:
                raise RuntimeError("backgrounder is shut down: it accepts no new work")
            self._pending += 1
        try:
            self.loop.call_soon_threadsafe(self._start, coro, context, done)
        except BaseException:
            self._finished(None)
            raise

    def _start(
        self,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context,
        done: Callable[[asyncio.Future[Any]], object],
    ) -> None:
        # The task copies the current context: run create_task in the caller's.
        try:
            task: asyncio.Future[Any] = context.run(_create_task, self.loop, coro)
        except BaseException as exc:  # never leave the call pending
            coro.close()
            task = self.loop.create_future()
            task.set_exception(exc)
        self._tasks.add(task)
        task.add_done_callback(done)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any] | None) -> None:
        if task is not None:
            self._tasks.discard(task)
        with self._idle:
            self._pending -= 1
            if self._pending <= 1:   # a waiter may leave one out (its own caller)
                self._idle.notify_all()
            if self._pending == 0 and self._closing:
                self.loop.call_soon_threadsafe(self.loop.stop)

    def wait_idle(self, timeout: float | None, exclude: int = 0) -> bool:
        """Blocks until no coroutine is pending, but `exclude` of them (the
        ones awaiting the caller itself); False on timeout."""
        if threading.current_thread() is self._thread:
            return self._pending <= 1
        with self._idle:
            return self._idle.wait_for(lambda: self._pending <= exclude, timeout)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Runs ``coro`` to completion on this loop and returns its result
        (for run_sync from inside another running loop).  Counted as pending
        like a submitted call, so that stop() lets it finish; RuntimeError
        once the loop is stopping."""
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(task: asyncio.Future[Any]) -> None:
            if task.cancelled():
                outcome.cancel()
            elif task.exception() is not None:
                outcome.set_exception(task.exception())
            else:
                outcome.set_result(task.result())

        self.submit(coro, contextvars.copy_context(), done)
        return outcome.result()

    def stop(self, wait: bool, timeout: float | None) -> bool:
        """Stops the loop once the pending coroutines are done: none is lost.
        With wait, blocks until then (at most timeout seconds).  Returns True
        when the thread is gone."""
        with self._idle:
            self._closing = True
            if self._pending == 0 and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.loop.stop)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()


async def as_coroutine(awaitable: Any) -> Any:
    """A coroutine of any awaitable: what a function marked as a coroutine
    function (inspect.markcoroutinefunction) returned, for create_task."""
    return await awaitable


def ends_with_the_call(loop: asyncio.AbstractEventLoop) -> bool:
    """True for an event loop that asgiref's async_to_sync made for one call.

    Django's sync handler (WSGI, the test Client) runs an async view that
    way: the loop is closed, and its pending tasks are cancelled, as soon as
    the view returns.  Background work started there would die with the
    request, so it goes to backgrounder's own loop instead.
    """
    sync = sys.modules.get("asgiref.sync")
    executors = getattr(getattr(sync, "AsyncToSync", None), "loop_thread_executors", None)
    try:
        return isinstance(executors, dict) and loop in executors
    except TypeError:
        return False


def _create_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> "asyncio.Task[Any]":
    """A task of `coro` on `loop`, in the current context (a copy of the
    caller's).  That context may name the caller's async library: anyio.run()
    sets sniffio's variable to "trio" for a trio run.  On this loop it is
    asyncio's, so anyio and httpx inside the call must find asyncio."""
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        sniffio.current_async_library_cvar.set(None)
    return loop.create_task(coro)
