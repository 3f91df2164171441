"""@background and its handle (process-level behaviour is in test_lifecycle.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import inspect
import logging
import threading
import time

import anyio
import pytest

import backgrounder
from backgrounder import BackgroundHandle, background
from threadname import thread_comm

user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="anonymous")


class Boom(Exception):
    pass


@background
def add(x: int, y: int = 0) -> int:
    """Adds in the background."""
    return x + y


@background
async def async_add(x: int, y: int = 0) -> int:
    await asyncio.sleep(0)
    return x + y


@background
def wait_for(event: threading.Event, value: object = None) -> object:
    assert event.wait(10)
    return value


@background
def fail(message: str) -> None:
    raise Boom(message)


@pytest.fixture
def one_worker():
    backgrounder.configure(max_workers=1)
    yield
    backgrounder.configure(max_workers=40)


@pytest.fixture
def errors():
    """Exceptions the engine reports (on_error), collected."""
    seen = []
    backgrounder.configure(on_error=seen.append)
    yield seen
    backgrounder.configure(on_error=None)


def test_a_call_returns_a_handle_at_once_while_the_work_goes_on():
    release = threading.Event()
    start = time.perf_counter()
    handle = wait_for(release, "done")
    assert time.perf_counter() - start < 0.5
    assert isinstance(handle, BackgroundHandle)
    assert not handle.done()
    release.set()
    assert handle.result(timeout=5) == "done"
    assert handle.done()


def test_result_returns_the_value():
    assert add(1, y=2).result(timeout=5) == 3


def test_a_sync_function_runs_on_a_native_pool_thread():
    @background
    def where():
        return threading.get_ident(), thread_comm()

    ident, comm = where().result(timeout=5)
    assert ident != threading.get_ident()
    assert comm == "backgrounder"


def test_an_async_function_called_from_sync_code_runs_on_backgrounders_loop_thread():
    @background
    async def where():
        asyncio.get_running_loop()
        return threading.current_thread().name

    assert where().result(timeout=5) == "backgrounder-loop"
    assert async_add(20, 22).result(timeout=5) == 42


def test_an_async_function_called_inside_a_loop_runs_on_that_loop(run, loop_kind):
    @background
    async def where():
        asyncio.get_running_loop()
        return threading.get_ident(), threading.current_thread().name

    async def main():
        return await where()

    ident, name = run(main())
    if loop_kind == "trio":
        # docs/background.md, "trio": it runs on backgrounder's own asyncio
        # loop thread, as when it is called from sync code.
        assert (ident != threading.get_ident(), name) == (True, "backgrounder-loop")
    else:
        assert ident == threading.get_ident()


def test_the_callers_contextvars_are_visible_in_sync_work():
    @background
    def who():
        return user.get()

    def in_context():
        user.set("ada")
        return who()

    assert contextvars.copy_context().run(in_context).result(timeout=5) == "ada"


def test_the_callers_contextvars_are_visible_in_async_work_from_sync_code():
    @background
    async def who():
        return user.get()

    def in_context():
        user.set("grace")
        return who()

    assert contextvars.copy_context().run(in_context).result(timeout=5) == "grace"


def test_result_raises_the_functions_exception():
    with pytest.raises(Boom, match="raised"):
        fail("raised").result(timeout=5)


def test_exception_returns_it_and_none_on_success():
    assert isinstance(fail("x").exception(timeout=5), Boom)
    assert add(1).exception(timeout=5) is None


def test_result_times_out_with_timeout_error():
    release = threading.Event()
    handle = wait_for(release)
    with pytest.raises(concurrent.futures.TimeoutError):
        handle.result(timeout=0.05)
    release.set()
    handle.result(timeout=5)


@pytest.mark.parametrize("timeout", ["1", True])
def test_a_timeout_of_the_wrong_type_raises_type_error_naming_it(timeout):
    with pytest.raises(TypeError, match=repr(timeout)):
        add(1).result(timeout=timeout)


def test_running_is_true_while_the_function_runs():
    release = threading.Event()
    started = threading.Event()

    @background
    def slow():
        started.set()
        release.wait(10)

    handle = slow()
    assert started.wait(5)
    assert handle.running()
    release.set()
    handle.result(timeout=5)
    assert not handle.running()


def test_cancel_of_a_queued_call_means_it_never_runs(one_worker):
    release = threading.Event()
    ran = []
    blocker = wait_for(release)
    time.sleep(0.05)
    queued = background(ran.append)("never")
    assert queued.cancel() is True
    assert queued.cancelled() and queued.done()
    release.set()
    blocker.result(timeout=5)
    assert backgrounder.wait_idle(5)
    assert ran == []
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.exception()


def test_cancel_of_a_running_call_returns_false():
    release = threading.Event()
    started = threading.Event()

    @background
    def slow():
        started.set()
        release.wait(10)
        return "finished"

    handle = slow()
    assert started.wait(5)
    assert handle.cancel() is False
    assert not handle.cancelled()
    release.set()
    assert handle.result(timeout=5) == "finished"


def test_cancel_of_a_finished_call_returns_false():
    handle = add(1)
    handle.result(timeout=5)
    assert handle.cancel() is False


def test_done_callbacks_get_the_handle_once():
    release = threading.Event()
    seen = []
    handle = wait_for(release, 7)
    handle.add_done_callback(lambda h: seen.append((h, h.result())))
    release.set()
    handle.result(timeout=5)
    assert backgrounder.wait_idle(5)
    assert seen == [(handle, 7)]


def test_a_done_callback_added_after_completion_runs_at_once():
    handle = add(2)
    handle.result(timeout=5)
    seen = []
    handle.add_done_callback(seen.append)
    assert seen == [handle]


def test_a_failing_done_callback_is_reported_and_others_still_run(errors):
    handle = add(1)
    handle.result(timeout=5)
    seen = []

    def bad(h):
        raise Boom("callback")

    handle.add_done_callback(bad)
    handle.add_done_callback(seen.append)
    assert seen == [handle]
    assert any(isinstance(e, Boom) and str(e) == "callback" for e in errors)


def test_add_done_callback_with_a_non_callable_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="42"):
        add(1).add_done_callback(42)


def test_a_handle_is_awaitable_but_not_a_coroutine(run):
    async def main():
        handle = add(40, y=2)
        assert not asyncio.iscoroutine(handle)
        return await handle

    assert run(main()) == 42


def test_awaiting_a_failed_handle_raises_its_exception(run):
    async def main():
        await fail("awaited")

    with pytest.raises(Boom, match="awaited"):
        run(main())


def test_awaiting_an_async_call_started_on_the_same_loop(run):
    async def main():
        return await async_add(1, y=1)

    assert run(main()) == 2


def test_several_tasks_can_await_one_handle(run):
    async def main():
        release = threading.Event()
        handle = wait_for(release, "shared")
        results = []

        async def _await():
            results.append(await handle)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(_await)
            await anyio.sleep(0.02)   # lets the three start waiting
            assert not handle.done()
            release.set()
        return results

    assert run(main()) == ["shared"] * 3


def test_cancelling_an_await_does_not_cancel_the_work(run):
    release = threading.Event()

    async def main():
        handle = wait_for(release, "still done")
        returned = []

        async def _await():
            returned.append(await handle)

        async with anyio.create_task_group() as tg:
            tg.start_soon(_await)
            await anyio.sleep(0.02)   # lets it start waiting
            tg.cancel_scope.cancel()
        # The wait ended at once, the call still runs.
        assert (tg.cancel_scope.cancelled_caught, returned, handle.done()) == (True, [], False)
        release.set()
        return handle

    handle = run(main())
    assert handle.result(timeout=5) == "still done"


def test_result_on_the_loop_running_the_call_raises_instead_of_deadlocking(run, loop_kind):
    @background
    async def slow():
        await asyncio.sleep(0.01)
        return 1

    async def main():
        handle = slow()
        if loop_kind == "trio":
            # The call runs on backgrounder's own loop thread, not in this
            # trio run (docs/background.md, "trio"): result() can wait for it.
            assert handle.result(timeout=5) == 1
        else:
            with pytest.raises(RuntimeError, match="await"):
                handle.result()
        return await handle

    assert run(main()) == 1


def test_result_can_be_waited_on_from_another_thread():
    release = threading.Event()
    handle = wait_for(release, "x")
    got = []
    waiter = threading.Thread(target=lambda: got.append(handle.result(timeout=5)))
    waiter.start()
    release.set()
    waiter.join(5)
    assert got == ["x"]


def test_an_async_task_started_inside_a_loop_is_kept_alive_until_it_ends(run):
    finished = []

    @background
    async def unreferenced():
        await asyncio.sleep(0.05)
        finished.append(True)

    async def main():
        unreferenced()          # the handle is dropped at once
        for _ in range(3):
            gc.collect()
            await anyio.sleep(0.01)
        with anyio.move_on_after(5):   # a collected task never finishes: then it fails below
            while not finished:
                await anyio.sleep(0.005)

    run(main())
    assert finished == [True]


def test_an_unretrieved_exception_is_logged_naming_the_function_not_the_arguments(caplog):
    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        fail("top-secret-argument-free")
        assert backgrounder.wait_idle(5)
        gc.collect()
    records = [r for r in caplog.records if r.name == "backgrounder"]
    assert len(records) == 1
    record = records[0]
    assert "fail" in record.getMessage()
    assert isinstance(record.exc_info[1], Boom)
    secret = "s3cr3t-password"

    @background
    def leaky(password):
        raise Boom("no details")

    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        leaky(secret)
        assert backgrounder.wait_idle(5)
        gc.collect()
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_a_retrieved_exception_is_not_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        handle = fail("retrieved")
        with pytest.raises(Boom):
            handle.result(timeout=5)
        del handle
        gc.collect()
    assert not [r for r in caplog.records if r.name == "backgrounder"]


def test_an_unretrieved_async_exception_is_logged(caplog):
    @background
    async def afail():
        raise Boom("async unretrieved")

    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        afail()
        assert backgrounder.wait_idle(5)
        time.sleep(0.05)
        gc.collect()
    assert any(r.exc_info and str(r.exc_info[1]) == "async unretrieved" for r in caplog.records)


def test_on_error_gets_the_unretrieved_exception_instead_of_the_log(errors, caplog):
    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        fail("to on_error")
        assert backgrounder.wait_idle(5)
        gc.collect()
    assert [str(e) for e in errors] == ["to on_error"]
    assert not [r for r in caplog.records if r.name == "backgrounder"]


def test_wrapper_keeps_the_functions_metadata():
    assert add.__name__ == "add"
    assert add.__qualname__ == "add"
    assert add.__doc__ == "Adds in the background."
    assert add.__module__ == __name__
    assert add.__wrapped__.__name__ == "add"
    assert str(inspect.signature(add)) == "(x: 'int', y: 'int' = 0) -> 'int'"


def test_wrapper_keeps_the_functions_dict():
    def tagged():
        pass

    tagged.tag = "kept"
    assert background(tagged).tag == "kept"


def test_works_on_methods_static_methods_and_class_methods():
    class Service:
        factor = 10

        @background
        def method(self, x):
            return self, x

        @staticmethod
        @background
        def static_outer(x):
            return x + 1

        @background
        @staticmethod
        def static_inner(x):
            return x + 2

        @background
        @classmethod
        def klass(cls, x):
            return cls.factor * x

    service = Service()
    assert service.method(3).result(timeout=5) == (service, 3)
    assert Service.static_outer(1).result(timeout=5) == 2
    assert service.static_inner(1).result(timeout=5) == 3
    assert Service.static_inner(1).result(timeout=5) == 3
    assert service.klass(2).result(timeout=5) == 20
    assert str(inspect.signature(service.method)) == "(x)"


@pytest.mark.parametrize("value", [42, "text", None])
def test_background_of_a_non_callable_raises_type_error_naming_it(value):
    with pytest.raises(TypeError, match=repr(value)):
        background(value)


def test_many_calls_from_sync_code_all_complete():
    handles = [add(i, y=1) for i in range(10000)]
    assert [h.result(timeout=30) for h in handles] == [i + 1 for i in range(10000)]


def test_calls_from_many_threads_all_complete():
    results = []

    def caller(base):
        results.extend(h.result(timeout=30) for h in [add(base + i) for i in range(500)])

    threads = [threading.Thread(target=caller, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(k * 1000 + i for k in range(4) for i in range(500))
