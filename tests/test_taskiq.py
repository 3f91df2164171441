"""backgrounder.taskiq.BackgrounderBroker: taskiq tasks in this process (issue 13).

Each test makes its own broker, so that tasks, middlewares and results of one
test never reach another; coroutines run under asyncio and uvloop (`run`),
not trio: taskiq is asyncio code (see `pytestmark` below).
The real-server counterpart (the same app on taskiq-redis with a `taskiq
worker`) is tests/test_scaleout.py, run by .ci/scaleout.sh.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

pytest.importorskip("taskiq")

from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqMiddleware  # noqa: E402
from taskiq.exceptions import SendTaskError, TaskiqResultTimeoutError  # noqa: E402

from backgrounder.taskiq import BackgrounderBroker  # noqa: E402

# taskiq runs only on asyncio: under a trio run, AsyncTaskiqTask.wait_result
# fails at its asyncio.sleep ("no running event loop"), and so does the
# broker's shutdown(), at the asyncio.get_running_loop() whose future it
# waits on (tried once: kiq() itself went through).  The tests that
# touch no loop (no `run`) are not parametrized by loop kind at all.
pytestmark = pytest.mark.asyncio_only(
    "taskiq is asyncio code (AsyncTaskiqTask.wait_result awaits asyncio.sleep, the "
    "broker's shutdown waits on an asyncio future): a trio run has no asyncio loop"
)

WAIT = 10.0
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def on_pool_thread() -> bool:
    """A thread of backgrounder's native pool (named "backgrounder" on Linux)."""
    if not isinstance(threading.current_thread(), threading._DummyThread):
        return False
    comm = f"/proc/self/task/{threading.get_native_id()}/comm"
    if os.path.exists(comm):
        with open(comm) as f:
            return f.read().strip() == "backgrounder"
    return True


async def wait_result(task: Any) -> Any:
    return await task.wait_result(check_interval=0.01, timeout=WAIT)


# -- where tasks run ------------------------------------------------------------


def test_a_sync_task_runs_on_the_native_pool_and_its_result_is_stored(run):
    broker = BackgrounderBroker()

    @broker.task
    def where(x: int) -> dict:
        return {"double": 2 * x, "pool": on_pool_thread(), "thread": threading.get_ident()}

    async def main():
        await broker.startup()
        task = await where.kiq(21)
        result = await wait_result(task)
        await broker.shutdown()
        return result, threading.get_ident()

    result, loop_thread = run(main())

    assert not result.is_err
    assert result.return_value["double"] == 42
    assert result.return_value["pool"] is True
    assert result.return_value["thread"] != loop_thread


def test_an_async_task_runs_on_the_loop_that_kicked_it(run):
    broker = BackgrounderBroker()

    @broker.task
    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    async def main():
        task = await where.kiq()
        result = await wait_result(task)
        await broker.shutdown()
        return result.return_value, threading.get_ident()

    ran_on, loop_thread = run(main())

    assert ran_on == loop_thread


def test_kiq_returns_before_the_task_runs_and_is_ready_tells_when_it_is_done(run):
    broker = BackgrounderBroker()
    gate = threading.Event()

    @broker.task
    def gated() -> str:
        if not gate.wait(WAIT):
            raise TimeoutError("gate stayed closed")
        return "opened"

    async def main():
        task = await gated.kiq()
        before = await task.is_ready()
        gate.set()
        result = await wait_result(task)
        after = await task.is_ready()
        await broker.shutdown()
        return before, after, result.return_value

    assert run(main()) == (False, True, "opened")


def test_wait_result_times_out_while_the_task_still_runs(run):
    broker = BackgrounderBroker()
    gate = threading.Event()

    @broker.task
    def gated() -> None:
        gate.wait(WAIT)

    async def main():
        task = await gated.kiq()
        try:
            with pytest.raises(TaskiqResultTimeoutError):
                await task.wait_result(check_interval=0.01, timeout=0.05)
        finally:
            gate.set()
        await broker.shutdown()
        return await task.is_ready()

    assert run(main()) is True


def test_a_sync_task_sees_the_callers_contextvars(run):
    broker = BackgrounderBroker()

    @broker.task
    def read_request_id() -> str:
        return REQUEST_ID.get()

    async def main():
        REQUEST_ID.set("req-7")
        task = await read_request_id.kiq()
        result = await wait_result(task)
        await broker.shutdown()
        return result.return_value

    assert run(main()) == "req-7"


def test_arguments_are_cast_to_the_annotated_types_as_in_a_worker(run):
    broker = BackgrounderBroker()

    @broker.task
    def add(a: int, b: int) -> int:
        return a + b

    async def main():
        task = await add.kiq("2", "40")
        result = await wait_result(task)
        await broker.shutdown()
        return result.return_value

    assert run(main()) == 42


def test_many_sync_and_async_tasks_each_run_once_with_their_result(run):
    broker = BackgrounderBroker()
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()

    @broker.task
    def square(n: int) -> int:
        with lock:
            calls.append(("square", n))
        return n * n

    @broker.task
    async def negate(n: int) -> int:
        await asyncio.sleep(0)
        calls.append(("negate", n))
        return -n

    async def main():
        tasks = [await square.kiq(n) for n in range(200)]
        tasks += [await negate.kiq(n) for n in range(200)]
        results = [await wait_result(t) for t in tasks]
        await broker.shutdown()
        return [r.return_value for r in results]

    values = run(main())

    assert values == [n * n for n in range(200)] + [-n for n in range(200)]
    assert sorted(calls) == sorted([("square", n) for n in range(200)] + [("negate", n) for n in range(200)])


def test_arguments_go_through_the_serializer_as_they_would_to_a_server(run):
    broker = BackgrounderBroker()

    @broker.task
    def echo(x: Any) -> Any:
        return x

    async def main():
        with pytest.raises(SendTaskError) as info:
            await echo.kiq(object())
        result = await wait_result(await echo.kiq((1, 2)))
        await broker.shutdown()
        return info.value.__cause__, result.return_value

    cause, echoed = run(main())

    assert "object" in str(cause)  # the serializer refused it, at kiq()
    assert echoed == [1, 2]  # a tuple argument arrives as JSON's list


def test_a_return_value_is_kept_as_the_object_the_task_returned(run):
    broker = BackgrounderBroker()
    sentinel = object()

    @broker.task
    def give() -> Any:
        return (1, sentinel)

    async def main():
        result = await wait_result(await give.kiq())
        await broker.shutdown()
        return result.return_value

    assert run(main()) == (1, sentinel)


def test_dependencies_and_the_task_context_are_injected_as_in_a_worker(run):
    broker = BackgrounderBroker()
    closed: list[str] = []

    def connection() -> Any:
        yield "conn"  # a generator dependency: cleaned up after the task
        closed.append("conn")

    @broker.task(task_name="injected")
    async def injected(
        n: int,
        context: Context = TaskiqDepends(),
        conn: str = TaskiqDepends(connection),
    ) -> list:
        return [n, context.message.task_name, conn, context.broker is broker]

    async def main():
        result = await wait_result(await injected.kiq(5))
        await broker.shutdown()
        return result.return_value

    assert run(main()) == [5, "injected", "conn", True]
    assert closed == ["conn"]


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_exception_is_stored_in_the_result_and_logged(run, caplog, kind):
    broker = BackgrounderBroker()

    if kind == "sync":

        @broker.task(task_name="charge")
        def charge(cents: int) -> int:
            raise ValueError(f"cannot charge {cents}")

    else:

        @broker.task(task_name="charge")
        async def charge(cents: int) -> int:
            raise ValueError(f"cannot charge {cents}")

    async def main():
        task = await charge.kiq(-5)
        result = await wait_result(task)
        await broker.shutdown()
        return result

    with caplog.at_level(logging.ERROR):
        result = run(main())

    assert result.is_err
    assert isinstance(result.error, ValueError)
    assert str(result.error) == "cannot charge -5"
    with pytest.raises(ValueError, match="cannot charge -5"):
        result.raise_for_error()
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is result.error]
    assert logged, caplog.text


def test_a_failure_outside_the_task_is_logged_on_the_backgrounder_logger(run, caplog):
    broker = BackgrounderBroker()

    class BrokenSave(TaskiqMiddleware):
        def post_save(self, message, result):
            raise RuntimeError("the audit store is down")

    broker.add_middlewares(BrokenSave())

    @broker.task
    def ok() -> int:
        return 1

    async def main():
        task = await ok.kiq()
        await broker.shutdown()
        return await task.is_ready()

    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        ready = run(main())
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not any(
            r.name == "backgrounder" for r in caplog.records
        ):
            time.sleep(0.01)

    assert ready  # the result was stored before the middleware failed
    mine = [r for r in caplog.records if r.name == "backgrounder"]
    assert len(mine) == 1, caplog.text
    assert mine[0].exc_info is not None
    assert "the audit store is down" in str(mine[0].exc_info[1])


def test_the_timeout_label_fails_an_async_task_that_runs_too_long(run):
    broker = BackgrounderBroker()

    @broker.task(timeout=0.05)
    async def sleepy() -> str:
        await asyncio.sleep(WAIT)
        return "woke"

    async def main():
        task = await sleepy.kiq()
        result = await wait_result(task)
        await broker.shutdown()
        return result

    result = run(main())

    assert result.is_err
    assert isinstance(result.error, TimeoutError)


def test_kicking_an_unknown_task_fails_at_the_call(run):
    from taskiq.kicker import AsyncKicker

    broker = BackgrounderBroker()

    async def main():
        with pytest.raises(SendTaskError) as info:
            await AsyncKicker("no.such:task", broker, {}).kiq()
        return info.value.__cause__

    cause = run(main())

    assert "no.such:task" in str(cause)


# -- middlewares and events ------------------------------------------------------


def test_middlewares_see_every_stage_in_order(run):
    broker = BackgrounderBroker()
    seen: list[str] = []

    class Recorder(TaskiqMiddleware):
        def startup(self):
            seen.append("startup")

        def pre_send(self, message):
            seen.append(f"pre_send {message.task_name}")
            message.labels["tag"] = "from pre_send"
            return message

        def post_send(self, message):
            seen.append("post_send")

        async def pre_execute(self, message):
            seen.append(f"pre_execute tag={message.labels.get('tag')}")
            return message

        def post_execute(self, message, result):
            seen.append(f"post_execute {result.return_value}")

        def on_error(self, message, result, exception):
            seen.append(f"on_error {exception}")

        def post_save(self, message, result):
            seen.append("post_save")

        def shutdown(self):
            seen.append("shutdown")

    broker.add_middlewares(Recorder())

    @broker.task(task_name="double")
    def double(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    async def main():
        await broker.startup()
        await wait_result(await double.kiq(4))
        await wait_result(await double.kiq(-1))
        await broker.shutdown()

    run(main())

    assert seen == [
        "startup",
        "pre_send double",
        "post_send",
        "pre_execute tag=from pre_send",
        "post_execute 8",
        "post_save",
        "pre_send double",
        "post_send",
        "pre_execute tag=from pre_send",
        "on_error negative",
        "post_execute None",
        "post_save",
        "shutdown",
    ]


def test_startup_and_shutdown_run_both_the_client_and_the_worker_events(run):
    broker = BackgrounderBroker()
    seen: list[str] = []
    for event in (
        TaskiqEvents.CLIENT_STARTUP,
        TaskiqEvents.WORKER_STARTUP,
        TaskiqEvents.CLIENT_SHUTDOWN,
        TaskiqEvents.WORKER_SHUTDOWN,
    ):
        broker.add_event_handler(event, lambda state, event=event: seen.append(event.value))

    async def main():
        await broker.startup()
        await broker.shutdown()

    run(main())

    assert seen == ["CLIENT_STARTUP", "WORKER_STARTUP", "CLIENT_SHUTDOWN", "WORKER_SHUTDOWN"]


# -- shutdown ------------------------------------------------------------------


def test_shutdown_waits_for_every_kicked_task_and_for_the_tasks_they_kick(run):
    broker = BackgrounderBroker()
    done: list[str] = []
    lock = threading.Lock()

    @broker.task
    def slow(n: int) -> int:
        time.sleep(0.02)
        with lock:
            done.append(f"slow {n}")
        return n

    @broker.task
    async def chain(n: int) -> int:
        await asyncio.sleep(0.02)
        await follow_up.kiq(n)  # kicked while the broker shuts down
        done.append(f"chain {n}")
        return n

    @broker.task
    async def follow_up(n: int) -> None:
        await asyncio.sleep(0.02)
        done.append(f"follow_up {n}")

    async def main():
        await broker.startup()
        tasks = [await slow.kiq(n) for n in range(30)] + [await chain.kiq(n) for n in range(5)]
        in_flight = broker.in_flight
        await broker.shutdown()
        ready = [await t.is_ready() for t in tasks]
        return in_flight, ready, broker.in_flight

    in_flight, ready, after = run(main())

    assert in_flight > 0  # shutdown had something to wait for
    assert all(ready) and after == 0
    expected = [f"slow {n}" for n in range(30)] + [f"chain {n}" for n in range(5)]
    expected += [f"follow_up {n}" for n in range(5)]
    assert sorted(done) == sorted(expected)


def test_after_shutdown_kiq_fails_until_startup(run):
    broker = BackgrounderBroker()

    @broker.task
    def one() -> int:
        return 1

    async def main():
        await broker.shutdown()
        with pytest.raises(SendTaskError) as info:
            await one.kiq()
        await broker.startup()
        result = await wait_result(await one.kiq())
        await broker.shutdown()
        return info.value.__cause__, result.return_value

    cause, value = run(main())

    assert isinstance(cause, RuntimeError)
    assert "shut down" in str(cause)
    assert value == 1


def test_shutdown_with_nothing_kicked_returns_at_once(run):
    broker = BackgrounderBroker()

    async def main():
        start = time.monotonic()
        await broker.shutdown()
        return time.monotonic() - start

    assert run(main()) < 1.0


# -- the broker's API ------------------------------------------------------------


def test_listen_raises_because_tasks_run_where_they_are_kicked():
    with pytest.raises(RuntimeError, match="taskiq worker"):
        BackgrounderBroker().listen()


def test_the_result_backend_keeps_the_newest_max_stored_results(run):
    broker = BackgrounderBroker(max_stored_results=3)

    @broker.task
    def ident(n: int) -> int:
        return n

    async def main():
        tasks = []
        for n in range(5):
            tasks.append(await ident.kiq(n))
            await wait_result(tasks[-1])
        await broker.shutdown()
        return [await t.is_ready() for t in tasks]

    assert run(main()) == [False, False, True, True, True]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"max_stored_results": 0}, ValueError, "0"),
        ({"max_stored_results": "10"}, TypeError, "'10'"),
        ({"max_stored_results": True}, TypeError, "True"),
        ({"cast_types": "yes"}, TypeError, "'yes'"),
        ({"propagate_exceptions": None}, TypeError, "None"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, error, text):
    with pytest.raises(error, match=text):
        BackgrounderBroker(**kwargs)


def test_importing_backgrounder_imports_neither_taskiq_nor_django():
    code = (
        "import sys, backgrounder, backgrounder.tasks, backgrounder.decorator, "
        "backgrounder.concurrency\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('taskiq', 'django', 'django_tasks', 'pydantic'))\n"
        "print(loaded)\n"
        "import backgrounder.taskiq\n"
        "print('taskiq' in sys.modules, 'django' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.splitlines() == ["[]", "True False"]


def test_a_task_still_running_when_its_loop_ends_is_cancelled_and_logged(loop_factory, caplog):
    from conftest import run_on

    broker = BackgrounderBroker()

    @broker.task
    async def long() -> None:
        await asyncio.sleep(WAIT)

    async def kick_and_leave():
        task = await long.kiq()
        await asyncio.sleep(0.01)  # it runs
        return task

    with caplog.at_level(logging.ERROR):
        task = run_on(loop_factory, kick_and_leave())  # the loop ends here

    async def read():
        await broker.shutdown()  # nothing left to wait for
        return await task.get_result()

    result = run_on(loop_factory, read())

    assert broker.in_flight == 0
    assert result.is_err and isinstance(result.error, asyncio.CancelledError)
    assert any(
        isinstance(r.exc_info[1], asyncio.CancelledError) for r in caplog.records if r.exc_info
    ), caplog.text
