"""How backgrounder's public API reads to a type checker: checked, never run.

tests/test_typing.py runs mypy (--strict, mypy.ini) and pyright (strict,
pyrightconfig.json) over this file. A good call states its type with
``assert_type``. A bad call carries, on its own line, the error each checker
must report: ``# type: ignore[code]`` for mypy, ``# pyright: ignore[rule]``
for pyright. Both checkers report an ignore that suppresses nothing, so a bad
call that stops being an error fails the test as surely as a good call that
becomes one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from typing_extensions import assert_type

import backgrounder
from backgrounder import BackgroundHandle, Task, Tasks, background
from backgrounder.concurrency import (
    AsyncCallable,
    enforce_async_callable,
    run_in_threadpool,
    run_sync,
)
from backgrounder.decorator import background as background_from_decorator
from backgrounder.tasks import Task as TaskFromTasks


def add(x: int, y: int = 0) -> int:
    return x + y


async def fetch(url: str, *, timeout: float = 1.0) -> bytes:
    return url.encode()


def notify(message: str, email: str) -> None:
    pass


def make_future() -> asyncio.Future[int]:
    return asyncio.get_running_loop().create_future()


class Fetcher:
    async def __call__(self, url: str) -> bytes:
        return url.encode()


# --- Task --------------------------------------------------------------------


async def task_result_is_the_return_value_of_func() -> None:
    assert_type(Task(add, 1), Task[int])
    assert_type(Task(add, 1, y=2), Task[int])
    assert_type(Task(add, x=1), Task[int])
    assert_type(Task(notify, "hi", email="a@b.c"), Task[None])
    assert_type(Task(add, 1).__call__, Callable[[], Coroutine[object, None, int]])
    assert_type(await Task(add, 1)(), int)
    assert_type(await Task(lambda: "x")(), str)


async def task_of_an_async_callable_gives_the_awaited_value() -> None:
    assert_type(Task(fetch, "u"), Task[bytes])
    assert_type(await Task(fetch, "u", timeout=2)(), bytes)
    assert_type(await Task(functools.partial(fetch, "u"))(), bytes)
    assert_type(await Task(Fetcher(), "u")(), bytes)


async def task_of_a_sync_callable_returning_an_awaitable_does_not_await_it() -> None:
    assert_type(await Task(make_future)(), asyncio.Future[int])


async def task_call_is_a_coroutine_for_asyncio() -> None:
    assert_type(asyncio.create_task(Task(add, 1)()), asyncio.Task[int])
    assert_type(
        await asyncio.gather(Task(add, 1)(), Task(fetch, "u")()), tuple[int, bytes]
    )


def task_attributes() -> None:
    task = Task(add, 1, y=2)
    assert_type(task.func, Callable[..., Any])
    assert_type(task.args, tuple[Any, ...])
    assert_type(task.kwargs, dict[str, Any])


def task_is_covariant_and_bare_task_means_any(task: Task) -> None:
    def takes_object_task(task: Task[object]) -> None:
        pass

    takes_object_task(Task(add, 1))
    assert_type(task, Task[Any])
    assert_type(TaskFromTasks(add, 1), Task[int])


def task_rejects_what_func_rejects() -> None:
    Task(add, "1")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType, reportCallIssue]
    Task(add)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    Task(add, 1, 2, 3)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    Task(add, 1, z=3)  # type: ignore[call-arg, arg-type]  # pyright: ignore[reportCallIssue]
    Task(fetch, "u", timeout="soon")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType, reportCallIssue]
    Task(notify, "hi")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    Task(42)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType, reportCallIssue]
    Task(func=add)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]


def task_result_type_is_checked() -> Task[str]:
    task = Task(add, 1)
    task.args = (2,)
    task.args = [2]  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]
    task.func = 42  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]
    return task  # type: ignore[return-value]  # pyright: ignore[reportReturnType]


# --- Tasks -------------------------------------------------------------------


async def tasks_run_in_order_or_as_a_group() -> None:
    tasks = Tasks([Task(add, 1), Task(fetch, "u")])
    assert_type(tasks, Tasks)
    assert_type(Tasks(), Tasks)
    assert_type(Tasks(as_group=True), Tasks)
    assert_type(Tasks((Task(add, 1) for _ in range(3)), True), Tasks)
    assert_type(Tasks([lambda: None]), Tasks)
    assert_type(tasks.__call__, Callable[[], Coroutine[object, None, None]])
    assert_type(tasks.run_single, Callable[[], Coroutine[object, None, None]])
    assert_type(tasks.run_as_group, Callable[[], Coroutine[object, None, None]])
    assert_type(tasks.tasks, list[Task[Any] | Callable[[], Any]])
    assert_type(tasks.as_group, bool)
    as_task: Task[None] = tasks
    await as_task()
    await asyncio.create_task(tasks())


def tasks_add_task_checks_func_arguments() -> None:
    tasks = Tasks()
    tasks.add_task(add, 1, y=2)
    tasks.add_task(fetch, "u", timeout=3)
    tasks.add_task(add, "1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    tasks.add_task(notify, "hi")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    tasks.add_task(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType, reportCallIssue]


def tasks_rejects_items_that_are_not_tasks_or_callables() -> None:
    Tasks([42])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]
    Tasks([add])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]
    Tasks(as_group="yes")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


# --- @background -------------------------------------------------------------


@background
def send(message: str, retries: int = 3) -> bool:
    return True


@background
async def send_async(message: str) -> int:
    return len(message)


class Mailer:
    @background
    def deliver(self, to: str) -> int:
        return len(to)

    @background
    async def deliver_async(self, to: str) -> str:
        return to


def background_handle_result_is_the_return_value() -> None:
    handle = send("hi")
    assert_type(handle, BackgroundHandle[bool])
    assert_type(handle.result(), bool)
    assert_type(handle.result(timeout=1.5), bool)
    assert_type(handle.exception(), BaseException | None)
    assert_type(handle.exception(0.5), BaseException | None)
    assert_type(handle.done(), bool)
    assert_type(handle.cancelled(), bool)
    assert_type(handle.running(), bool)
    assert_type(handle.cancel(), bool)
    assert_type(send("hi", retries=5), BackgroundHandle[bool])
    assert_type(send_async("hi").result(), int)
    assert_type(send.__name__, str)


async def background_handle_is_awaitable() -> None:
    assert_type(await send("hi"), bool)
    assert_type(await send_async("hi"), int)
    assert_type(await Mailer().deliver_async("a@b.c"), str)
    assert_type(await asyncio.wait_for(send("hi"), 1), bool)
    assert_type(asyncio.ensure_future(send("hi")), asyncio.Task[bool])
    asyncio.create_task(send("hi"))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def background_works_on_methods() -> None:
    mailer = Mailer()
    assert_type(mailer.deliver("a@b.c"), BackgroundHandle[int])
    result: bool = mailer.deliver("a@b.c")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(result)
    assert_type(mailer.deliver_async("a@b.c"), BackgroundHandle[str])
    assert_type(Mailer.deliver(mailer, "a@b.c"), BackgroundHandle[int])
    mailer.deliver(1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    mailer.deliver()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]


def background_done_callbacks_get_the_handle() -> None:
    def on_done(handle: BackgroundHandle[bool]) -> None:
        pass

    def on_done_str(handle: BackgroundHandle[str]) -> None:
        pass

    def on_done_object(handle: BackgroundHandle[object]) -> None:
        pass

    send("hi").add_done_callback(on_done)
    send("hi").add_done_callback(on_done_object)
    send("hi").add_done_callback(lambda handle: print(handle.result()))
    send("hi").add_done_callback(on_done_str)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def background_keeps_the_parameters() -> None:
    assert_type(background_from_decorator(add)(1), BackgroundHandle[int])
    send(1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    send()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    send("hi", retries="x")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    send_async("hi", "extra")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    background(42)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType, reportCallIssue]


# --- concurrency -------------------------------------------------------------


async def run_in_threadpool_gives_the_return_value() -> None:
    assert_type(asyncio.create_task(run_in_threadpool(add, 1)), asyncio.Task[int])
    assert_type(await run_in_threadpool(add, 1, y=2), int)
    assert_type(await run_in_threadpool(notify, "hi", "a@b.c"), None)
    assert_type(await run_in_threadpool(fetch, "https://example.com"), bytes)
    await run_in_threadpool(add, "1")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType, reportCallIssue]
    await run_in_threadpool(add)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]


def run_sync_gives_the_coroutine_result() -> None:
    assert_type(run_sync(fetch("u")), bytes)
    assert_type(run_sync(Task(add, 1)()), int)
    run_sync(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def async_callable_runs_func_on_the_pool() -> None:
    add_async = AsyncCallable(add)
    assert_type(await add_async(1, y=2), int)
    assert_type(await add_async.run_in_threadpool(1), int)
    assert_type(await AsyncCallable(add, y=2)(1), int)
    await add_async("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def enforce_async_callable_gives_an_async_callable() -> None:
    assert_type(await enforce_async_callable(fetch)("u"), bytes)
    assert_type(await enforce_async_callable(add)(1), int)
    await enforce_async_callable(add)("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


# --- configure, shutdown, stats ----------------------------------------------


def configure_shutdown_and_stats() -> None:
    def log_error(exc: BaseException) -> None:
        pass

    backgrounder.configure()
    backgrounder.configure(max_workers=8, idle_timeout=2.5, on_error=log_error)
    backgrounder.configure(idle_timeout=1, on_error=None)
    backgrounder.configure(on_error=lambda exc: print(exc))
    backgrounder.shutdown()
    backgrounder.shutdown(wait=False, timeout=5.0)
    assert_type(backgrounder.shutdown(), bool)
    assert_type(backgrounder.wait_idle(1.0), bool)
    assert_type(backgrounder.stats(), dict[str, int])
    assert_type(backgrounder.stats()["wakeups"], int)
    backgrounder.configure(max_workers="8")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    backgrounder.configure(idle_timeout="1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    backgrounder.configure(on_error=42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    backgrounder.configure(workers=8)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    backgrounder.shutdown(timeout="soon")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    text: str = backgrounder.stats()["wakeups"]  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(text)
