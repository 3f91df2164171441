"""Concurrency helpers, at backgrounder 0.2.0's import paths.

``run_in_threadpool`` is the engine's own (a sync callable runs on the native
pool, an async one is awaited); the rest are thin wrappers over it.
"""

import asyncio
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from ._backgrounder import _loop_runner
from ._backgrounder import run_in_threadpool as run_in_threadpool
from ._compat import in_trio_run, is_async_callable

P = ParamSpec("P")
T = TypeVar("T")
_P2 = ParamSpec("_P2")
_T2 = TypeVar("_T2")


def run_sync(async_function: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion from sync code and returns its result.

    With no event loop running in this thread, it runs on a fresh loop here.
    Inside a running loop (sync code called from async code, an asyncio
    loop's or a trio run's), it runs on backgrounder's own loop thread while
    this thread waits: no nest_asyncio, and the running loop is left alone.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        if not in_trio_run():
            return asyncio.run(async_function)
        running = None  # a trio run: it is not asyncio.run's to nest either
    try:
        runner = _loop_runner()
    except RuntimeError:  # shut down: a loop of its own on a thread of its own
        runner = None
    if runner is not None and runner.loop is not running:
        return cast(T, runner.run(async_function))
    # Called on backgrounder's own loop: waiting for it there would block it.
    with futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, async_function).result()


class AsyncCallable(Generic[P, T]):
    """Makes a sync callable awaitable: calling it awaits ``func`` on the pool,
    the call's keyword arguments overriding the defaults given here."""

    __slots__ = ("_callable", "default_kwargs")

    @overload
    def __init__(self: "AsyncCallable[_P2, _T2]", func: Callable[_P2, _T2]) -> None: ...
    @overload
    def __init__(
        self: "AsyncCallable[..., _T2]", func: Callable[..., _T2], **kwargs: Any
    ) -> None: ...
    def __init__(self, func: Callable[..., Any], **kwargs: Any) -> None:
        self._callable: Callable[..., T] = func
        self.default_kwargs = kwargs

    # An `async def`, so that calling an AsyncCallable looks like calling an
    # async function to Task, the frameworks and inspect: they await it
    # rather than run it as a sync callable and drop what it returns.
    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return await run_in_threadpool(
            self._callable, *args, **{**self.default_kwargs, **kwargs}
        )

    async def run_in_threadpool(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self(*args, **kwargs)


@overload
def enforce_async_callable(
    func: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]: ...
@overload
def enforce_async_callable(func: Callable[P, T]) -> Callable[P, Coroutine[object, None, T]]: ...
def enforce_async_callable(func: Callable[..., Any]) -> Callable[..., Any]:
    """Returns ``func`` itself if it is async, an AsyncCallable of it otherwise."""
    return func if is_async_callable(func) else AsyncCallable(func)


__all__ = ["AsyncCallable", "enforce_async_callable", "run_in_threadpool", "run_sync"]
