"""The pool's threads as Python sees them: named backgrounder-worker-N.

threading.current_thread().name and logging's %(threadName)s show the name,
for every way work reaches the pool.
"""

from __future__ import annotations

import logging
import re
import sys
import threading

import anyio
import pytest

import backgrounder
from backgrounder import Task, Tasks, background
from backgrounder.concurrency import run_in_threadpool

pytestmark = pytest.mark.timeout(60)

WORKER = re.compile(r"backgrounder-worker-[1-9][0-9]*")


def thread_name() -> str:
    return threading.current_thread().name


def test_an_awaited_sync_call_runs_on_a_named_worker(run):
    async def main():
        return await Task(thread_name)()

    assert WORKER.fullmatch(run(main()))


def test_background_and_run_in_threadpool_run_on_named_workers(run):
    @background
    def in_background() -> str:
        return thread_name()

    async def main():
        return await in_background(), await run_in_threadpool(thread_name)

    names = run(main())
    assert all(WORKER.fullmatch(name) for name in names), names


def test_calls_running_at_once_see_distinct_names(run):
    arrived = threading.Barrier(3, timeout=20)
    names: list[str] = []

    def meet() -> None:
        arrived.wait()   # three pool threads at once
        names.append(thread_name())

    async def main():
        await Tasks([Task(meet), Task(meet), Task(meet)], as_group=True)()

    run(main())
    assert len(set(names)) == 3 and all(WORKER.fullmatch(name) for name in names), names


def test_a_log_record_of_a_call_names_its_worker(run, caplog):
    log = logging.getLogger("test_threads")

    def logs() -> str:
        log.warning("from the pool")
        return thread_name()

    async def main():
        return await Task(logs)()

    with caplog.at_level(logging.WARNING, logger="test_threads"):
        name = run(main())
    (record,) = [r for r in caplog.records if r.name == "test_threads"]
    assert WORKER.fullmatch(name) and record.threadName == name


def test_a_sync_caller_waiting_on_a_handle_sees_the_worker_name():
    @background
    def in_background() -> str:
        return thread_name()

    assert WORKER.fullmatch(in_background().result(20))


def test_the_main_thread_keeps_its_name(run):
    async def main():
        await Task(thread_name)()
        await anyio.sleep(0)
        return thread_name()

    assert run(main()) == threading.main_thread().name
    assert backgrounder.stats()["threads_started"] >= 1


@pytest.mark.skipif(sys.platform != "linux", reason="reads the OS thread name from /proc (Linux)")
def test_the_os_keeps_the_short_name_of_a_worker(run):
    # 3.14+ passes a Python thread name on to the OS, cut to 15 bytes there:
    # the worker sets its OS name back to "backgrounder" (top, gdb, py-spy).
    def os_name() -> str:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
            return comm.read().strip()

    async def main():
        return await Task(os_name)()

    assert run(main()) == "backgrounder"
