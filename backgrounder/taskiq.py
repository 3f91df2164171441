"""A taskiq broker that runs tasks in this process on backgrounder.

Write tasks with taskiq's API (``@broker.task``, ``.kiq()``,
``wait_result()``), run them in the web process on backgrounder's engine, and
move them to a broker with a server (taskiq-redis, taskiq-aio-pika,
taskiq-nats) later by changing only the broker::

    from backgrounder.taskiq import BackgrounderBroker

    broker = BackgrounderBroker()

    @broker.task
    def resize(path: str) -> str: ...          # runs on the native pool

    @broker.task
    async def notify(user_id: int) -> None: ...  # runs on the running loop

    task = await resize.kiq("cat.png")
    result = await task.wait_result(timeout=10)

- ``kiq()`` returns at once.  The task goes through taskiq's own receiver:
  its middlewares (``pre_execute``, ``post_execute``, ``on_error``,
  ``post_save``), argument casting, dependencies and ``timeout`` label work as
  in a ``taskiq worker``.  An async task runs on the event loop that called
  ``kiq()``; a sync task runs on backgrounder's native thread pool, in a copy
  of the caller's ``contextvars`` context.
- Results go to taskiq's in-memory result backend (``is_ready()``,
  ``get_result()``, ``wait_result()``), which keeps the newest
  ``max_stored_results``.  They live in this process only.
- ``await broker.shutdown()`` waits until every task kicked so far has run
  and its result is stored, tasks kicked meanwhile included, then runs
  taskiq's shutdown events.  Afterwards ``kiq()`` raises
  ``taskiq.exceptions.SendTaskError`` until ``startup()`` is called again.
  Call it before the event loop ends: a task still running when its loop
  closes is cancelled, and taskiq's receiver logs that.
- Errors are never silent: a task's exception is stored in its result
  (``is_err``) and logged by taskiq's receiver; a failure outside the task
  (a middleware, the result backend) is logged on the ``backgrounder``
  logger with its traceback.

Nothing is persisted and nothing leaves the process: ``taskiq worker`` does
not apply (``listen()`` raises).  Arguments go through the broker's
serializer (JSON by default) as they would on the way to a server, so an
argument that cannot be sent fails at ``kiq()`` here too.  Return values do
not: the result holds the object the task returned, where a result backend
with a server hands back its serialized form (a tuple comes back as a list).
See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

try:
    from taskiq.abc.broker import AsyncBroker
    from taskiq.abc.middleware import TaskiqMiddleware
    from taskiq.events import TaskiqEvents
    from taskiq.brokers.inmemory_broker import InmemoryResultBackend
    from taskiq.exceptions import UnknownTaskError
    from taskiq.message import BrokerMessage
    from taskiq.receiver import Receiver
    from taskiq.utils import maybe_awaitable
except ImportError as exc:  # pragma: no cover - exercised without taskiq only
    raise ImportError(
        "backgrounder.taskiq needs taskiq: pip install 'backgrounder[taskiq]'"
    ) from exc

from backgrounder import Task, background

__all__ = ["BackgrounderBroker"]

DEFAULT_MAX_STORED_RESULTS = 1000


class _NativePool:
    """The ``executor`` that taskiq's ``Receiver`` gets for sync tasks.

    The receiver calls ``loop.run_in_executor(executor, fn, *args)``, which
    hands back unchanged what ``submit`` returns when it is already an asyncio
    future.  So ``submit`` returns an asyncio task that awaits a backgrounder
    ``Task``: the call runs on the native pool and its completion comes back
    to the loop through backgrounder's bridge, with no second thread hop.
    Not a general ``concurrent.futures.Executor``: it must be called on the
    running loop, which is how the receiver calls it.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(Task(fn, *args)())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop: the pool is backgrounder's and outlives the broker."""


async def _receive(receiver: Receiver, data: bytes) -> None:
    """Runs one kicked message through taskiq's receiver, on the running loop."""
    await receiver.callback(message=data, raise_err=True)


_receive_in_background = background(_receive)


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


class BackgrounderBroker(AsyncBroker):
    """Runs taskiq tasks in this process on backgrounder (see the module doc).

    ``max_stored_results``: how many results the in-memory result backend
    keeps (the oldest go first).  ``cast_types``: cast arguments to the
    annotated types, as a ``taskiq worker`` does.  ``propagate_exceptions``:
    hand a task's exception to its dependencies' cleanup, as in a worker.
    """

    def __init__(
        self,
        *,
        max_stored_results: int = DEFAULT_MAX_STORED_RESULTS,
        cast_types: bool = True,
        propagate_exceptions: bool = True,
    ) -> None:
        super().__init__()
        _positive_int("max_stored_results", max_stored_results)
        for name, flag in (("cast_types", cast_types), ("propagate_exceptions", propagate_exceptions)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.result_backend = InmemoryResultBackend(max_stored_results=max_stored_results)
        self.receiver = Receiver(
            broker=self,
            executor=_NativePool(),  # type: ignore[arg-type]
            validate_params=cast_types,
            # Bounds only Receiver.listen(), which this broker never runs;
            # given so that the receiver does not warn about no bound.
            max_async_tasks=1,
            propagate_exceptions=propagate_exceptions,
        )
        self._lock = threading.Lock()
        self._in_flight: set[Any] = set()  # handles of kicked, unfinished messages
        self._idle_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closed = False

    async def startup(self) -> None:
        """Runs the client and worker startup events (this process is both),
        the middlewares' and the result backend's startup; the broker accepts
        tasks again after a shutdown."""
        self._closed = False
        for event in (TaskiqEvents.CLIENT_STARTUP, TaskiqEvents.WORKER_STARTUP):
            for handler in self.event_handlers.get(event, []):
                await maybe_awaitable(handler(self.state))
        for middleware in self.middlewares:
            if middleware.__class__.startup != TaskiqMiddleware.startup:
                await maybe_awaitable(middleware.startup())
        await self.result_backend.startup()

    async def kick(self, message: BrokerMessage) -> None:
        """Starts the task of ``message`` on the running loop and returns."""
        if self._closed:
            raise RuntimeError(
                "BackgrounderBroker is shut down: it accepts no new tasks "
                "until startup() is called again"
            )
        if self.find_task(message.task_name) is None:
            raise UnknownTaskError(task_name=message.task_name)
        handle = _receive_in_background(self.receiver, message.message)
        with self._lock:
            self._in_flight.add(handle)
        handle.add_done_callback(self._finished)

    def _finished(self, handle: Any) -> None:
        # Only the reference goes: an exception nobody retrieved is then
        # logged by backgrounder, with its traceback.
        with self._lock:
            self._in_flight.discard(handle)
            if self._in_flight:
                return
            waiters, self._idle_waiters = self._idle_waiters, []
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(_wake, waiter)

    @property
    def in_flight(self) -> int:
        """How many kicked tasks have not finished yet (results not stored)."""
        with self._lock:
            return len(self._in_flight)

    async def wait_all(self) -> None:
        """Waits until every task kicked so far, and every task they kicked, is done."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if not self._in_flight:
                    return
                waiter = loop.create_future()
                self._idle_waiters.append((loop, waiter))
            await waiter

    def listen(self) -> AsyncGenerator[bytes, None]:
        """There is nothing to listen to: tasks run where they are kicked."""
        raise RuntimeError(
            "BackgrounderBroker runs tasks in the process that kicks them: it has "
            "no queue to listen to, so `taskiq worker` does not apply. Use a "
            "broker with a server (e.g. taskiq-redis) to run tasks in workers."
        )

    async def shutdown(self) -> None:
        """Waits for every kicked task (tasks they kick included), then runs
        the client and worker shutdown events, the middlewares' and the result
        backend's shutdown.  Results stay readable afterwards."""
        await self.wait_all()
        self._closed = True
        for event in (TaskiqEvents.CLIENT_SHUTDOWN, TaskiqEvents.WORKER_SHUTDOWN):
            for handler in self.event_handlers.get(event, []):
                await maybe_awaitable(handler(self.state))
        for middleware in self.middlewares:
            if middleware.__class__.shutdown != TaskiqMiddleware.shutdown:
                await maybe_awaitable(middleware.shutdown())
        await self.result_backend.shutdown()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
