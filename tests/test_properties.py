"""Bad input and random schedules: property tests (hypothesis) over the public API.

Whatever callables, arguments, keyword names, exceptions and cancellations
hypothesis comes up with: no crash, no hang, every bad input a TypeError or
ValueError whose message names it, every result and every exception right.
Examples are not stored; there are 250 per test by default (the file runs
in about 15 s), BACKGROUNDER_HYPOTHESIS_EXAMPLES=n sets how many.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import backgrounder
from backgrounder import Task, Tasks, background
from backgrounder.concurrency import AsyncCallable, enforce_async_callable, run_in_threadpool

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

# Examples per test; .ci/valgrind.sh asks for fewer.
EXAMPLES = int(os.environ.get("BACKGROUNDER_HYPOTHESIS_EXAMPLES", "250"))
# The `run` fixture is function-scoped but keeps no state between examples:
# each run(coro) makes a fresh loop.
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# For the test that starts a subprocess per example.
FEW = settings(SETTINGS, max_examples=max(EXAMPLES // 5, 5))
# For the tests where a failure may be a stall: report the example found,
# without shrinking it (each try could take the full timeout).
NO_SHRINK = settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.fixture(autouse=True)
def default_configuration():
    yield
    backgrounder.configure(max_workers=40, idle_timeout=30, on_error=None)


# ---- strategies ----------------------------------------------------------------


class Opaque:
    """A plain object: not callable, its repr names its address."""


non_callables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.integers(), st.text(max_size=3)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.frozensets(st.integers(), max_size=3),
    st.complex_numbers(allow_nan=False),
    st.builds(Opaque),
)

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=6,
)
# Names that collide with the engine's own parameters are plain keyword
# arguments of the callable: func is positional-only everywhere.
keyword_names = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        ["func", "fn", "self", "args", "kwargs", "tasks", "as_group", "timeout", "_", "__call__"]
    ),
)
arguments = st.tuples(st.lists(values, max_size=4), st.dictionaries(keyword_names, values, max_size=4))


# ---- callables of every kind, each returning what it was called with -------------


def echo(*args, **kwargs):
    return args, kwargs


# anyio's sleep: these run in the test's own task under asyncio, uvloop and
# trio (or, as async @background calls under trio, on backgrounder's loop).
async def async_echo(*args, **kwargs):
    await anyio.sleep(0)
    return args, kwargs


class Echo:
    # self and cls are positional-only: "self" may be a keyword argument.
    def __call__(self, /, *args, **kwargs):
        return args, kwargs

    def method(self, /, *args, **kwargs):
        return args, kwargs

    async def async_method(self, /, *args, **kwargs):
        return args, kwargs

    @classmethod
    def class_method(cls, /, *args, **kwargs):
        return args, kwargs

    @staticmethod
    def static_method(*args, **kwargs):
        return args, kwargs


class AsyncEcho:
    async def __call__(self, /, *args, **kwargs):
        await anyio.sleep(0)
        return args, kwargs


CALLABLE_KINDS = {
    "function": echo,
    "lambda": lambda *args, **kwargs: (args, kwargs),
    "partial": functools.partial(echo),
    "callable object": Echo(),
    "bound method": Echo().method,
    "class method": Echo.class_method,
    "static method": Echo.static_method,
    "async function": async_echo,
    "partial of async": functools.partial(async_echo),
    "async callable object": AsyncEcho(),
    "async bound method": Echo().async_method,
}
callable_kinds = st.sampled_from(sorted(CALLABLE_KINDS))


def assert_names(excinfo: pytest.ExceptionInfo, value: object) -> None:
    assert repr(value) in str(excinfo.value), (str(excinfo.value), value)


# ---- bad input -------------------------------------------------------------------


def _awaitable_of(make):
    """Runs `make()`; if it returns an awaitable, drives it to its first step,
    so that checks made on the first await are reached too."""
    aw = make()
    if hasattr(aw, "__await__"):

        async def drive():
            return await aw

        asyncio.run(drive())


def _add_done_callback(value):
    handle = background(echo)()
    handle.result(10)
    handle.add_done_callback(value)


ENTRY_POINTS = {
    "Task": lambda v: Task(v),
    "Task with arguments": lambda v: Task(v, 1, func=2),
    "Tasks entry": lambda v: Tasks([Task(echo), v]),
    "Tasks group entry": lambda v: Tasks([v], as_group=True),
    "Tasks.add_task": lambda v: Tasks().add_task(v, 1),
    "Tasks.tasks": lambda v: setattr(Tasks(), "tasks", [echo, v]),
    "Task.func": lambda v: setattr(Task(echo), "func", v),
    "background": lambda v: background(v),
    "run_in_threadpool": lambda v: _awaitable_of(lambda: run_in_threadpool(v, 1)),
    "AsyncCallable": lambda v: _awaitable_of(lambda: AsyncCallable(v)(1)),
    "enforce_async_callable": lambda v: _awaitable_of(lambda: enforce_async_callable(v)(1)),
    "add_done_callback": _add_done_callback,
}


@SETTINGS
@given(entry=st.sampled_from(sorted(ENTRY_POINTS)), value=non_callables)
def test_a_non_callable_is_a_type_error_naming_it(entry, value):
    with pytest.raises(TypeError) as excinfo:
        ENTRY_POINTS[entry](value)
    assert_names(excinfo, value)


@SETTINGS
@given(value=non_callables.filter(lambda v: v is not None))
def test_on_error_that_is_not_callable_is_a_type_error_naming_it(value):
    with pytest.raises(TypeError) as excinfo:
        backgrounder.configure(on_error=value)
    assert_names(excinfo, value)


not_numbers = st.one_of(st.text(max_size=6), st.lists(st.integers(), max_size=2), st.builds(Opaque),
                        st.complex_numbers(allow_nan=False))


@SETTINGS
@given(value=st.one_of(not_numbers, st.floats(allow_nan=True)))
def test_max_workers_that_is_not_an_int_is_a_type_error_naming_it(value):
    with pytest.raises(TypeError) as excinfo:
        backgrounder.configure(max_workers=value)
    assert_names(excinfo, value)


@SETTINGS
@given(value=st.integers(max_value=0))
def test_max_workers_below_one_is_a_value_error_naming_it(value):
    before = backgrounder.stats()["max_workers"]
    with pytest.raises(ValueError) as excinfo:
        backgrounder.configure(max_workers=value)
    assert_names(excinfo, value)
    assert backgrounder.stats()["max_workers"] == before


@SETTINGS
@given(value=st.integers(min_value=1, max_value=64))
def test_max_workers_of_one_or_more_is_taken(value):
    backgrounder.configure(max_workers=value)
    assert backgrounder.stats()["max_workers"] == value


@SETTINGS
@given(value=not_numbers)
def test_idle_timeout_that_is_not_a_number_is_a_type_error_naming_it(value):
    with pytest.raises(TypeError) as excinfo:
        backgrounder.configure(idle_timeout=value)
    assert_names(excinfo, value)


@SETTINGS
@given(
    value=st.one_of(
        st.integers(max_value=0), st.floats(max_value=0), st.just(math.nan), st.just(-math.inf)
    )
)
def test_idle_timeout_not_above_zero_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError) as excinfo:
        backgrounder.configure(idle_timeout=value)
    assert_names(excinfo, value)


@SETTINGS
@given(value=st.one_of(not_numbers, st.floats(max_value=-1e-9), st.integers(max_value=-1), st.just(math.nan)))
def test_a_bad_timeout_of_wait_idle_or_shutdown_is_rejected_naming_it_and_changes_nothing(value):
    for call in (backgrounder.wait_idle, backgrounder.shutdown):
        with pytest.raises((TypeError, ValueError)) as excinfo:
            call(timeout=value)
        assert_names(excinfo, value)
        assert isinstance(excinfo.value, ValueError) == isinstance(value, (int, float))
    # The rejected shutdown did not shut anything down.
    assert background(echo)(1).result(10) == ((1,), {})


@SETTINGS
@given(value=not_numbers, method=st.sampled_from(["result", "exception"]))
def test_a_handle_timeout_that_is_not_a_number_is_a_type_error_naming_it(value, method):
    handle = background(echo)()
    with pytest.raises(TypeError) as excinfo:
        getattr(handle, method)(value)
    assert_names(excinfo, value)
    handle.result(10)


@pytest.mark.parametrize("method", ["result", "exception"])
def test_a_handle_timeout_of_nan_is_a_value_error_naming_it(method):
    # concurrent.futures.Future.result(nan) raises ValueError.  The call
    # is held for a second, so that a wait with no limit ends (and fails
    # this test) rather than hangs.
    release = threading.Event()
    handle = background(release.wait)(10)
    timer = threading.Timer(1.0, release.set)
    timer.start()
    try:
        with pytest.raises(ValueError) as excinfo:
            getattr(handle, method)(math.nan)
        assert_names(excinfo, math.nan)
    finally:
        timer.cancel()
        release.set()
        handle.result(10)


IDLE_TIMEOUT_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    import backgrounder
    from backgrounder import Task
    for value in map(float, sys.argv[1:]):
        backgrounder.configure(idle_timeout=value)
        assert asyncio.run(Task(pow, 2, 10)()) == 1024
        time.sleep(0.02)
        stats = backgrounder.stats()   # takes the pool's lock
        assert stats["workers"] >= (1 if value > 1 else 0), (value, stats)
    print("ok")
    """
)


@FEW
@given(values=st.lists(st.floats(min_value=1e-3, max_value=1e308), min_size=1, max_size=5))
@example(values=[1e300])
@example(values=[1e19])
def test_any_positive_idle_timeout_keeps_the_engine_working(values, tmp_path_factory):
    # In a subprocess: a worker stuck with the pool's lock held would hang
    # the interpreter where no timeout can interrupt it.
    proc = subprocess.run(
        [sys.executable, "-c", IDLE_TIMEOUT_CHILD, *map(repr, values)],
        capture_output=True,
        text=True,
        check=False,
        timeout=8,
        cwd=tmp_path_factory.getbasetemp(),
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ---- arguments and results ---------------------------------------------------------


@SETTINGS
@given(kind=callable_kinds, args_kwargs=arguments)
def test_await_task_passes_any_arguments_and_returns_the_result(run, kind, args_kwargs):
    func = CALLABLE_KINDS[kind]
    args, kwargs = args_kwargs
    task = Task(func, *args, **kwargs)
    assert task.func is func
    assert task.args == tuple(args)
    assert task.kwargs == kwargs
    assert run(task()) == (tuple(args), kwargs)


@SETTINGS
@given(kind=callable_kinds, args_kwargs=arguments)
def test_every_other_way_in_passes_any_arguments_and_returns_the_result(run, kind, args_kwargs):
    func = CALLABLE_KINDS[kind]
    args, kwargs = args_kwargs
    expected = (tuple(args), kwargs)

    async def main():
        assert await run_in_threadpool(func, *args, **kwargs) == expected
        assert await background(func)(*args, **kwargs) == expected
        tasks = Tasks()
        tasks.add_task(func, *args, **kwargs)
        assert tasks.tasks[0].args == tuple(args) and tasks.tasks[0].kwargs == kwargs
        assert await tasks() is None

    run(main())
    assert background(func)(*args, **kwargs).result(10) == expected


class Custom(Exception):
    pass


class CustomBase(BaseException):
    pass


EXCEPTIONS = [ValueError, KeyError, RuntimeError, ZeroDivisionError, Custom, StopIteration, CustomBase]


async def gather_outcomes(awaitables):
    """Awaits each in a task of its own, all at once (as asyncio.gather with
    return_exceptions=True): its result or its exception, in order."""
    outcomes = [None] * len(awaitables)

    async def one(i, aw):
        try:
            outcomes[i] = await aw
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - CustomBase too; checked by the test
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i, aw in enumerate(awaitables):
            tg.start_soon(one, i, aw)
    return outcomes


def raiser(exc):
    def sync_raise():
        raise exc

    async def async_raise():
        await anyio.sleep(0)
        raise exc

    return sync_raise, async_raise


@SETTINGS
@given(
    plan=st.lists(
        st.tuples(st.booleans(), st.one_of(st.sampled_from(EXCEPTIONS), values)), min_size=1, max_size=8
    )
)
def test_each_await_gives_its_own_result_or_exception(run, plan):
    """Calls that raise at random among calls that return, awaited at once."""
    calls = []
    for is_async, outcome in plan:
        if isinstance(outcome, type):
            exc = outcome(f"raised by call {len(calls)}")
            sync_raise, async_raise = raiser(exc)
            calls.append((Task(async_raise if is_async else sync_raise), exc))
        else:
            calls.append((Task(async_echo if is_async else echo, outcome), ((outcome,), {})))

    async def main():
        return await gather_outcomes([task() for task, _ in calls])

    for got, (_, expected) in zip(run(main()), calls):
        if isinstance(expected, StopIteration):
            # A StopIteration cannot leave a coroutine (PEP 479).
            assert type(got) is RuntimeError and got.__cause__ is expected
        elif isinstance(expected, BaseException):
            assert got is expected
            assert got.__traceback__ is not None
        else:
            assert got == expected


@SETTINGS
@given(raising=st.lists(st.booleans(), min_size=1, max_size=6))
def test_failing_done_callbacks_are_reported_and_the_others_still_run(raising):
    reported = []
    backgrounder.configure(on_error=reported.append)
    called = []
    errors = []

    def callback(i, fails):
        def cb(handle):
            called.append(i)
            if fails:
                errors.append(Custom(i))
                raise errors[-1]

        return cb

    release = threading.Event()
    handle = background(release.wait)(10)
    for i, fails in enumerate(raising):
        handle.add_done_callback(callback(i, fails))
    release.set()
    assert handle.result(10) is True
    deadline = time.monotonic() + 10
    while (len(called), len(reported)) != (len(raising), len(errors)) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert called == list(range(len(raising)))
    assert [id(e) for e in reported] == [id(e) for e in errors]


# ---- cancellation at random points -------------------------------------------------


@dataclass
class Call:
    index: int
    is_async: bool
    fails: bool
    work: float  # seconds the call takes
    cancel_after: int | None  # loop iterations before it is cancelled, or never
    runs: list = field(default_factory=list)

    def make(self):
        def sync_call():
            self.runs.append(threading.get_native_id())
            if self.work:
                time.sleep(self.work)
            if self.fails:
                raise Custom(self.index)
            return self.index

        async def async_call():
            self.runs.append(threading.get_native_id())
            await anyio.sleep(self.work)
            if self.fails:
                raise Custom(self.index)
            return self.index

        return Task(async_call if self.is_async else sync_call)


call_plans = st.lists(
    st.builds(
        Call,
        index=st.just(0),
        is_async=st.booleans(),
        fails=st.booleans(),
        work=st.sampled_from([0, 0, 0.0005, 0.002]),
        cancel_after=st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
    ),
    min_size=1,
    max_size=12,
)


CANCELLED = "cancelled"  # the outcome of an await whose cancellation came out of it


@NO_SHRINK
@given(plan=call_plans, max_workers=st.integers(min_value=1, max_value=4))
def test_cancelling_at_random_points_gives_each_await_its_result_or_cancelled_error(
    run, loop_kind, plan, max_workers
):
    backgrounder.configure(max_workers=max_workers)
    for i, call in enumerate(plan):
        call.index = i

    async def cancel_later(scope, after):
        for _ in range(after):
            await anyio.sleep(0)
        scope.cancel()

    async def main():
        outcomes = [None] * len(plan)
        scopes = [anyio.CancelScope() for _ in plan]

        async def one(i, call):
            with scopes[i]:
                try:
                    outcomes[i] = await call.make()()
                except Custom as exc:
                    outcomes[i] = exc
            if scopes[i].cancelled_caught:
                outcomes[i] = CANCELLED

        # At most 12 calls of at most 2 ms each: 10 s is a stall.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i, call in enumerate(plan):
                    tg.start_soon(one, i, call)
                for scope, call in zip(scopes, plan):
                    if call.cancel_after is not None:
                        tg.start_soon(cancel_later, scope, call.cancel_after)
        return outcomes

    outcomes = run(main())
    # What is left is at most 12 skipped or 2 ms calls: 5 s is a stall.
    assert backgrounder.wait_idle(5), backgrounder.stats()
    for call, outcome in zip(plan, outcomes):
        assert len(call.runs) <= 1, call
        if loop_kind == "trio" and not call.is_async:
            # docs/background.md, "trio": a sync call cancelled before it
            # starts never starts; one already running is waited for, and
            # its result (or exception) comes out of the await.
            assert (outcome == CANCELLED) == (len(call.runs) == 0), (call, outcome)
        if outcome == CANCELLED:
            assert call.cancel_after is not None
        elif call.fails:
            assert type(outcome) is Custom and outcome.args == (call.index,)
            assert len(call.runs) == 1
        else:
            assert outcome == call.index
            assert len(call.runs) == 1
    stats = backgrounder.stats()
    assert stats["queued"] == 0 and stats["running"] == 0, stats


# ---- nested Tasks trees -----------------------------------------------------------


@dataclass
class Leaf:
    is_async: bool
    fails: bool
    sleeps: int  # anyio.sleep(0) calls (async) or 0.2 ms naps (sync) first
    bare: bool  # in its parent's list as a bare callable, not a Task
    id: int = 0


@dataclass
class Node:
    as_group: bool
    children: list
    id: int = 0


leaves = st.builds(
    Leaf,
    is_async=st.booleans(),
    fails=st.integers(0, 5).map(lambda n: n == 0),
    sleeps=st.integers(0, 3),
    bare=st.booleans(),
)
trees = st.recursive(
    leaves,
    lambda children: st.builds(Node, as_group=st.booleans(), children=st.lists(children, max_size=4)),
    max_leaves=10,
).filter(lambda t: isinstance(t, Node))


def all_leaves(node):
    if isinstance(node, Leaf):
        return [node]
    return [leaf for child in node.children for leaf in all_leaves(child)]


def all_nodes(node):
    if isinstance(node, Leaf):
        return []
    return [node] + [n for child in node.children for n in all_nodes(child)]


def flatten(exc):
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in flatten(sub)]
    return [exc]


def build(node, log):
    """The Tasks for `node`; each leaf logs ("start", id) and ("end", id)
    (or ("raise", id) as it raises)."""
    for i, leaf in enumerate(all_leaves(node)):
        leaf.id = i

    def leaf_callable(leaf):
        def sync_leaf():
            log.append(("start", leaf.id))
            for _ in range(leaf.sleeps):
                time.sleep(0.0002)
            if leaf.fails:
                log.append(("raise", leaf.id))
                raise Custom(leaf.id)
            log.append(("end", leaf.id))

        async def async_leaf():
            log.append(("start", leaf.id))
            for _ in range(leaf.sleeps):
                await anyio.sleep(0)
            if leaf.fails:
                log.append(("raise", leaf.id))
                raise Custom(leaf.id)
            log.append(("end", leaf.id))

        return async_leaf if leaf.is_async else sync_leaf

    def make(n):
        if isinstance(n, Leaf):
            fn = leaf_callable(n)
            return fn if n.bare else Task(fn)
        return Tasks([make(child) for child in n.children], as_group=n.as_group)

    return make(node)


@NO_SHRINK
@given(tree=trees)
def test_a_nested_tasks_tree_runs_as_its_structure_says(run, tree):
    reported = []
    backgrounder.configure(on_error=reported.append)
    log = []
    tasks = build(tree, log)

    async def main():
        try:
            with anyio.fail_after(10):
                await tasks()
        except Exception as exc:  # noqa: BLE001 - checked below
            return exc
        return None

    outcome = run(main())
    assert backgrounder.wait_idle(30)
    started = [i for what, i in log if what == "start"]
    raised = {i for what, i in log if what == "raise"}
    ended = {i for what, i in log if what == "end"}
    position = {event: n for n, event in enumerate(log)}

    # Every leaf runs at most once.
    assert len(started) == len(set(started)), log
    if not raised:
        # Nothing failed: everything ran to its end.
        assert outcome is None, outcome
        assert ended == {leaf.id for leaf in all_leaves(tree)}, log
    else:
        # Something failed: the failures raised are among those that
        # happened, and a group's failures come as an ExceptionGroup.
        assert outcome is not None, log
        failures = flatten(outcome)
        assert failures and all(type(f) is Custom for f in failures), outcome
        assert {f.args[0] for f in failures} <= raised, (outcome, log)
        if tree.as_group:
            assert isinstance(outcome, ExceptionGroup), outcome
    # A sequential node starts a child only once every child before it has
    # ended, all of its leaves without failure.
    for node in all_nodes(tree):
        if node.as_group:
            continue
        for j, after in enumerate(node.children):
            later = [
                position[("start", leaf.id)]
                for leaf in all_leaves(after)
                if ("start", leaf.id) in position
            ]
            if not later:
                continue
            for before in node.children[:j]:
                earlier = {leaf.id for leaf in all_leaves(before)}
                assert earlier <= ended, log
                assert all(position[("end", i)] < min(later) for i in earlier), log
    # A sync leaf's failure is delivered to whoever awaits it or, when
    # nobody does any longer (its group was cancelled meanwhile), reported.
    delivered = {f.args[0] for f in flatten(outcome)} if outcome is not None else set()
    reported_ids = {e.args[0] for e in reported}
    sync_raised = {leaf.id for leaf in all_leaves(tree) if not leaf.is_async and leaf.id in raised}
    assert sync_raised <= delivered | reported_ids, (log, outcome, reported)
    assert all(type(e) is Custom for e in reported), reported


@SETTINGS
@given(
    mutations=st.lists(st.sampled_from(["append", "pop", "clear", "non-callable"]), max_size=4),
    size=st.integers(1, 5),
)
def test_changing_the_list_of_a_running_tasks_is_safe(run, mutations, size):
    """Entries that change the list of the Tasks being run (sequentially:
    each entry is read when its turn comes)."""
    tasks = Tasks()
    ran = []

    def mutate(kind):
        def entry():
            ran.append(kind)
            if kind == "append":
                tasks.tasks.append(lambda: ran.append("appended"))
            elif kind == "pop" and tasks.tasks:
                tasks.tasks.pop()
            elif kind == "clear":
                tasks.tasks.clear()
            elif kind == "non-callable":
                tasks.tasks.append(Opaque())

        return entry

    for i in range(size):
        tasks.add_task(ran.append, i)
    for kind in mutations:
        tasks.tasks.insert(len(tasks.tasks) // 2, mutate(kind))
    expect_type_error = "non-callable" in mutations

    async def main():
        try:
            with anyio.fail_after(10):
                await tasks()
        except TypeError as exc:
            return exc
        return None

    outcome = run(main())
    if outcome is not None:
        assert expect_type_error and "Opaque" in str(outcome), outcome
    if set(mutations) <= {"append"}:
        # Entries appended while it runs run too, after the others.
        assert ran.count("appended") == len(mutations), ran
        assert [r for r in ran if isinstance(r, int)] == list(range(size)), ran
