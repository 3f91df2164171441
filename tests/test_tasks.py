"""Tasks: in order, or as a group, under asyncio, uvloop and trio.

Under trio a group runs its entries in a trio nursery (docs/background.md,
"trio"): its failures come out as an ExceptionGroup there too."""

from __future__ import annotations

import asyncio
import sys
import threading

import anyio
import pytest

from backgrounder import Task, Tasks

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


class Boom(Exception):
    pass


def fail(message: str = "boom") -> None:
    raise Boom(message)


def test_tasks_is_a_task():
    assert issubclass(Tasks, Task)


def test_defaults_are_an_empty_list_run_in_order():
    tasks = Tasks()
    assert tasks.tasks == []
    assert tasks.as_group is False


def test_as_group_is_a_bool():
    assert Tasks(as_group=1).as_group is True


def test_repr_matches_backgrounder_0_2_0():
    task = Task(print, "x")
    assert repr(Tasks([task])) == f"Tasks(tasks=[{task!r}], as_group=False)"
    assert repr(Tasks(as_group=True)) == "Tasks(tasks=[], as_group=True)"


def test_add_task_appends_a_task():
    tasks = Tasks()
    tasks.add_task(print, "x", sep="-")
    (task,) = tasks.tasks
    assert isinstance(task, Task)
    assert (task.func, task.args, task.kwargs) == (print, ("x",), {"sep": "-"})


def test_add_task_with_a_non_callable_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="42"):
        Tasks().add_task(42)


def test_entries_that_are_neither_tasks_nor_callables_raise_type_error_naming_them():
    with pytest.raises(TypeError, match="'nope'"):
        Tasks([Task(print), "nope"])


def test_tasks_argument_that_is_not_iterable_raises_type_error():
    with pytest.raises(TypeError, match="42"):
        Tasks(42)


def test_runs_in_order(run):
    log = []

    async def record_async(x):
        await anyio.sleep(0.01)
        log.append(x)

    tasks = Tasks([Task(log.append, 1), Task(record_async, 2), Task(log.append, 3)])
    run(tasks())
    assert log == [1, 2, 3]


def test_first_failure_stops_the_rest(run):
    log = []
    tasks = Tasks([Task(log.append, 1), Task(fail, "second"), Task(log.append, 3)])
    with pytest.raises(Boom, match="second"):
        run(tasks())
    assert log == [1]


def test_bare_callables_run_as_tasks(run):
    log = []

    async def async_entry():
        log.append("async")

    run(Tasks([lambda: log.append("sync"), async_entry])())
    assert log == ["sync", "async"]


def test_entries_added_after_construction_run(run):
    log = []
    tasks = Tasks()
    tasks.add_task(log.append, 1)
    tasks.tasks.append(Task(log.append, 2))
    run(tasks())
    assert log == [1, 2]


def test_run_single_runs_in_order_even_for_a_group(run):
    log = []
    tasks = Tasks([Task(log.append, 1), Task(log.append, 2)], as_group=True)
    run(tasks.run_single())
    assert log == [1, 2]


def test_empty_tasks_complete(run):
    assert run(Tasks()()) is None
    assert run(Tasks(as_group=True)()) is None


def test_nested_tasks_run(run):
    log = []
    inner = Tasks([Task(log.append, "a"), Task(log.append, "b")], as_group=True)
    outer = Tasks([inner, Task(log.append, "c")])
    run(outer())
    assert sorted(log[:2]) == ["a", "b"]
    assert log[2] == "c"


def test_group_runs_entries_at_once(run):
    # Each entry waits for the other: only concurrent runs can finish.
    async def main():
        a, b = anyio.Event(), anyio.Event()

        async def first():
            a.set()
            with anyio.fail_after(5):
                await b.wait()

        async def second():
            b.set()
            with anyio.fail_after(5):
                await a.wait()

        await Tasks([Task(first), Task(second)], as_group=True)()
        return a.is_set() and b.is_set()

    assert run(main())


def test_group_runs_sync_entries_on_the_pool_concurrently(run):
    barrier = threading.Barrier(3, timeout=5)
    run(Tasks([Task(barrier.wait) for _ in range(3)], as_group=True)())


def test_run_as_group_runs_at_once_even_when_as_group_is_false(run):
    barrier = threading.Barrier(2, timeout=5)
    run(Tasks([Task(barrier.wait), Task(barrier.wait)]).run_as_group())


def test_group_failure_raises_an_exception_group(run):
    tasks = Tasks([Task(fail, "one"), Task(print, end="")], as_group=True)
    with pytest.raises(ExceptionGroup) as info:
        run(tasks())
    assert [str(e) for e in info.value.exceptions] == ["one"]


def test_group_failure_cancels_the_other_entries(run):
    cancelled = []

    async def long_sleeper():
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    async def fail_soon():
        await anyio.sleep(0.01)
        raise Boom("first")

    with pytest.raises(ExceptionGroup) as info:
        run(Tasks([Task(long_sleeper), Task(fail_soon)], as_group=True)())
    assert cancelled == [True]
    assert len(info.value.exceptions) == 1


def test_group_gathers_every_failure(run):
    async def fail_async(message):
        raise Boom(message)

    tasks = Tasks([Task(fail_async, "a"), Task(fail_async, "b")], as_group=True)
    with pytest.raises(ExceptionGroup) as info:
        run(tasks())
    assert sorted(str(e) for e in info.value.exceptions) == ["a", "b"]


async def cancel_a_group_while_its_entries_sleep(cleanup) -> tuple[bool, list, list, list]:
    """Awaits a group of two entries in a task, cancels that task's scope
    once both entries sleep, and returns: whether the cancellation was
    caught, what the await returned ([] if it raised), what the entries had
    logged when the await ended, and what they logged in the end.  An entry
    runs `cleanup()` when cancelled, then logs "cleaned up"."""
    states = []
    at_the_end_of_the_await = []
    returned = []
    asleep = 0
    both_asleep = anyio.Event()

    async def sleeper():
        nonlocal asleep
        try:
            asleep += 1
            if asleep == 2:
                both_asleep.set()
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            await cleanup()
            states.append("cleaned up")
            raise

    async def await_the_group():
        try:
            await Tasks([Task(sleeper), Task(sleeper)], as_group=True)()
            returned.append(True)
        finally:
            at_the_end_of_the_await.extend(states)

    async with anyio.create_task_group() as tg:
        tg.start_soon(await_the_group)
        with anyio.fail_after(5):
            await both_asleep.wait()
        tg.cancel_scope.cancel()
    return tg.cancel_scope.cancelled_caught, returned, at_the_end_of_the_await, states


def test_cancelling_a_group_cancels_its_entries_and_waits_for_them(run):
    async def cleanup():
        pass

    caught, returned, at_the_end_of_the_await, states = run(cancel_a_group_while_its_entries_sleep(cleanup))
    assert caught is True and returned == []
    assert at_the_end_of_the_await == states == ["cleaned up", "cleaned up"]


def test_a_cancelled_group_lets_its_entries_finish_a_shielded_cleanup(run):
    # A cleanup that awaits, shielded from the cancellation (trio's and
    # anyio's idiom), is waited for, as asyncio.TaskGroup and trio's nursery
    # let it finish.
    async def cleanup():
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.01)   # cleanup takes a moment

    caught, returned, at_the_end_of_the_await, states = run(cancel_a_group_while_its_entries_sleep(cleanup))
    assert caught is True and returned == []
    assert at_the_end_of_the_await == states == ["cleaned up", "cleaned up"]


def test_cancelling_a_sequential_run_cancels_the_current_entry(run):
    async def main():
        log = []
        returned = []
        asleep = anyio.Event()

        async def sleeper():
            try:
                asleep.set()
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                log.append("cancelled")
                raise

        async def await_the_run():
            await Tasks([Task(sleeper), Task(log.append, "never")])()
            returned.append(True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(await_the_run)
            with anyio.fail_after(5):
                await asleep.wait()
            tg.cancel_scope.cancel()
        return tg.cancel_scope.cancelled_caught, returned, log

    assert run(main()) == (True, [], ["cancelled"])


@pytest.mark.asyncio_only("asyncio.gather is asyncio's own; trio has none (the next test does it with a task group)")
def test_a_response_style_await_of_tasks_works_with_gather(run):
    log = []

    async def main():
        return await asyncio.gather(Tasks([Task(log.append, 1)])(), Tasks([Task(log.append, 2)], as_group=True)())

    results = run(main())
    assert results == [None, None]
    assert sorted(log) == [1, 2]


def test_tasks_awaited_side_by_side_in_a_task_group_both_run(run):
    log = []

    async def main():
        results = []

        async def await_(tasks):
            results.append(await tasks())

        async with anyio.create_task_group() as tg:
            tg.start_soon(await_, Tasks([Task(log.append, 1)]))
            tg.start_soon(await_, Tasks([Task(log.append, 2)], as_group=True))
        return results

    results = run(main())
    assert results == [None, None]
    assert sorted(log) == [1, 2]


def test_tasks_has_no_func_of_its_own():
    with pytest.raises(AttributeError):
        Tasks().func


def test_a_group_cancelled_then_failing_cancels_its_other_entries_only_once(run, loop_kind):
    # Cancelled from outside, then an entry fails in its cleanup: the other
    # entries are not cancelled again (asyncio.TaskGroup aborts once), so a
    # cleanup that awaits runs to its end.  Shielded, as trio's cancellation
    # would end it otherwise (under asyncio the group's own re-cancel went
    # through anyio's shield).
    log: list[str] = []
    started = anyio.Event()

    async def patient():
        try:
            started.set()
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.2)  # a cleanup that awaits
                log.append("cleanup ran to its end")
            except anyio.get_cancelled_exc_class():
                log.append("cleanup cancelled again")
            raise

    async def fails_in_cleanup():
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)
            raise ValueError("failed in its cleanup") from None

    async def main():
        async with anyio.create_task_group() as tg:

            async def the_group():
                with pytest.raises(BaseExceptionGroup) as info:
                    await Tasks([Task(patient), Task(fails_in_cleanup)], as_group=True)()
                failures = {type(e).__name__ for e in info.value.exceptions}
                # trio's nursery keeps the other entry's Cancelled beside it.
                assert failures == ({"ValueError", "Cancelled"} if loop_kind == "trio" else {"ValueError"})

            tg.start_soon(the_group)
            await started.wait()
            await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    run(main())
    assert log == ["cleanup ran to its end"]
