"""Oracle tests: a backgrounder awaitable and its native equivalent, driven
through the same random sequence of operations, must look the same to every
caller.

1. A Call (what `Task(sync_fn)()` returns) against a native coroutine that
   awaits an asyncio future which a thread settles: the same thing written
   by hand.  Operations: send(None), send(non-None), throw(ValueError()),
   throw(CancelledError()), close(), "finish" (let the work end and wait
   until its future is done), "a second task starts awaiting it", "cancel
   the awaiting tasks".  After each step both sides report what the caller
   saw (a future yielded, a return value, an exception type) and the state
   of every awaiting task and of every future handed out.

2. A `@background` handle against a `concurrent.futures.Future` in the
   running state (the handle's function is running, blocked on an event):
   result/exception with a zero timeout, done/cancelled/running, cancel,
   add_done_callback, "finish with a value", "finish with an exception", and
   `await` (`await handle` against `await asyncio.wrap_future(future)`).

3. Under trio, `await Task(sync_fn)()` against `trio.to_thread.run_sync`,
   whose cancellation rules the engine follows there: known sequences (a
   return, a raise, cancelled or timed out while running, cancelled while
   queued or before it starts on a full pool), compared by what the awaiting
   tasks saw, whether the cancellation was caught, and which calls ran.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from typing import Any

import pytest
from conftest import LOOP_FACTORIES, run_on
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import backgrounder
from backgrounder import Task, background

pytestmark = pytest.mark.timeout(120)

# Shrinking would replay failing sequences many times, each with its
# convergence waits: the generated ones (8 steps at most) are short enough
# to read as they are.
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)

WAIT = 2.0
VALUE = 7


class Boom(LookupError):
    pass


def _loop_factory(kind: str):
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    return LOOP_FACTORIES[kind]


# ---- 1. a Call against a native coroutine ---------------------------------------

CALL_OPS = [
    "send_none",
    "send_value",
    "throw_value_error",
    "throw_cancelled",
    "close",
    "finish",
    "second_awaiter",
    "cancel_awaiters",
]


def _outcome(fn: Any, futures: list[Any]) -> tuple[Any, ...]:
    """What a caller sees from one send/throw/close."""
    try:
        r = fn()
    except StopIteration as e:
        return ("return", e.value)
    except BaseException as e:  # noqa: B036 - CancelledError, GeneratorExit, all compared
        return ("raise", type(e).__name__)
    if isinstance(r, asyncio.Future):
        futures.append(r)
        return ("yield", "future")
    return ("yield", type(r).__name__)


def _task_state(task: asyncio.Future[Any]) -> tuple[Any, ...]:
    if not task.done():
        return ("pending",)
    if task.cancelled():
        return ("cancelled",)
    exc = task.exception()
    if exc is not None:
        return ("raised", type(exc).__name__)
    return ("result", task.result())


def _future_state(fut: asyncio.Future[Any]) -> str:
    if not fut.done():
        return "pending"
    if fut.cancelled():
        return "cancelled"
    return "done"


class CallSide:
    """One side of the comparison: the object under test, the gate its work
    waits on, the futures it handed out and the tasks awaiting it."""

    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.gate = threading.Event()
        self.futures: list[asyncio.Future[Any]] = []
        self.awaiters: list[asyncio.Future[Any]] = []
        self.obj: Any = None

    def work(self) -> int:
        self.gate.wait(WAIT * 5)
        if self.fails:
            raise Boom("work failed")
        return VALUE

    def snapshot(self) -> tuple[Any, ...]:
        return (
            tuple(_task_state(t) for t in self.awaiters),
            tuple(_future_state(f) for f in self.futures),
        )

    async def _await(self) -> Any:
        return await self.obj

    def apply(self, op: str) -> tuple[Any, ...] | None:
        """Applies a synchronous op; returns what the caller saw."""
        if op == "send_none":
            return _outcome(lambda: self.obj.send(None), self.futures)
        if op == "send_value":
            return _outcome(lambda: self.obj.send(1), self.futures)
        if op == "throw_value_error":
            self.before_throw()
            return _outcome(lambda: self.obj.throw(ValueError("thrown")), self.futures)
        if op == "throw_cancelled":
            self.before_throw()
            return _outcome(lambda: self.obj.throw(asyncio.CancelledError()), self.futures)
        if op == "close":
            self.before_throw()
            return _outcome(lambda: self.obj.close(), self.futures)
        if op == "second_awaiter":
            self.awaiters.append(asyncio.ensure_future(self._await()))
            return None
        if op == "cancel_awaiters":
            return ("cancel", tuple(t.cancel() for t in self.awaiters))
        if op == "finish":
            self.gate.set()
            return None
        raise AssertionError(op)

    def before_throw(self) -> None:
        pass

    def cleanup(self) -> None:
        self.gate.set()
        for t in self.awaiters:
            t.cancel()


class BackgrounderCall(CallSide):
    def __init__(self, fails: bool) -> None:
        super().__init__(fails)
        self.obj = Task(self.work)()


class NativeCall(CallSide):
    """`async def native(): return await fut`, fut settled by a thread that
    starts on the first send, as the Call submits its work then.

    One normalization: a throw()/close() into the suspended native coroutine
    first cancels its future.  The Call owns its work, and abandoning it
    (thrown into, closed) cancels the call and its future, as cancelling
    the awaiting task does; a bare native coroutine cannot cancel the thread
    it waits for, so the model does it for it.  Resumes (send) never do.
    """

    def __init__(self, fails: bool) -> None:
        super().__init__(fails)
        self.fut: asyncio.Future[Any] | None = None
        self.settled = threading.Event()
        self.obj = self.native()

    async def native(self) -> Any:
        loop = asyncio.get_running_loop()
        fut = self.fut = loop.create_future()

        def settle() -> None:
            if not fut.done():
                if self.fails:
                    fut.set_exception(Boom("work failed"))
                else:
                    fut.set_result(VALUE)
            self.settled.set()

        def thread() -> None:
            self.gate.wait(WAIT * 5)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed first (cleanup)
                pass

        threading.Thread(target=thread, daemon=True).start()
        return await fut

    def before_throw(self) -> None:
        if inspect.getcoroutinestate(self.obj) == inspect.CORO_SUSPENDED and self.fut is not None:
            self.fut.cancel()


async def _settle_native(native: NativeCall, op: str) -> None:
    if op == "finish" and native.fut is not None:
        deadline = time.monotonic() + WAIT
        while not native.settled.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
    for _ in range(10):
        await asyncio.sleep(0)


async def _converge(side: CallSide, target: tuple[Any, ...], op: str) -> tuple[Any, ...]:
    """Lets the loop run until `side` shows `target` (the native side's
    state after the same step), for at most a short while; returns what it
    shows then.  The pool settles futures from its threads, so the Call
    side may need a few more loop turns than the native side."""
    for _ in range(10):
        await asyncio.sleep(0)
    limit = 0.5 if op in ("finish", "cancel_awaiters", "second_awaiter") else 0.05
    deadline = time.monotonic() + limit
    while side.snapshot() != target and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    return side.snapshot()


async def _compare_call(ops: list[str], fails: bool) -> None:
    ours = BackgrounderCall(fails)
    native = NativeCall(fails)
    trace: list[Any] = []
    try:
        for op in [*ops, "finish"]:
            theirs_saw = native.apply(op)
            await _settle_native(native, op)
            theirs_state = native.snapshot()
            ours_saw = ours.apply(op)
            ours_state = await _converge(ours, theirs_state, op)
            trace.append((op, theirs_saw, theirs_state))
            assert (ours_saw, ours_state) == (theirs_saw, theirs_state), (
                f"after {op!r}: backgrounder saw {ours_saw}, state {ours_state}; "
                f"native saw {theirs_saw}, state {theirs_state}\nnative trace: {trace}"
            )
    finally:
        for side in (ours, native):
            side.cleanup()
        tasks = ours.awaiters + native.awaiters
        if tasks:
            await asyncio.wait(tasks, timeout=WAIT)
        for t in tasks:
            if t.done() and not t.cancelled():
                t.exception()
        for side in (ours, native):
            side.obj.close()  # never awaited: no "never awaited" warning
            for f in side.futures:
                if f.done() and not f.cancelled():
                    f.exception()


@pytest.mark.parametrize("loop_kind", sorted(LOOP_FACTORIES))
@SETTINGS
@given(ops=st.lists(st.sampled_from(CALL_OPS), min_size=1, max_size=8), fails=st.booleans())
def test_a_call_looks_like_a_native_coroutine_awaiting_a_future(loop_kind, ops, fails):
    factory = _loop_factory(loop_kind)
    run_on(factory, _compare_call(ops, fails))
    assert backgrounder.wait_idle(WAIT * 5)


# A few sequences that matter, always run (the generated ones may miss them).
@pytest.mark.parametrize("loop_kind", sorted(LOOP_FACTORIES))
@pytest.mark.parametrize(
    "ops",
    [
        ["send_none", "finish", "send_none"],
        ["second_awaiter", "second_awaiter", "finish"],
        ["second_awaiter", "send_none", "finish"],
        ["second_awaiter", "send_none", "send_none", "finish"],
        ["send_none", "send_none"],
        ["send_none", "second_awaiter"],
        ["send_value"],
        ["send_none", "finish", "send_none", "send_none"],
        ["second_awaiter", "cancel_awaiters", "send_none"],
        ["send_none", "throw_cancelled", "send_none"],
        ["send_none", "close", "second_awaiter"],
        ["close", "throw_value_error"],
        ["send_none", "finish", "send_none", "throw_value_error"],
    ],
    ids=lambda ops: "-".join(ops) if isinstance(ops, list) else ops,
)
def test_a_call_looks_like_a_native_coroutine_in_known_sequences(loop_kind, ops):
    factory = _loop_factory(loop_kind)
    run_on(factory, _compare_call(ops, fails=False))
    assert backgrounder.wait_idle(WAIT * 5)


# ---- 2. a @background handle against a concurrent.futures.Future -----------------

HANDLE_OPS = [
    "result0",
    "exception0",
    "done",
    "cancelled",
    "running",
    "cancel",
    "add_done_callback",
    "finish_value",
    "finish_error",
    "await",
]


def _normalize_exc(e: BaseException) -> str:
    if isinstance(e, (TimeoutError, concurrent.futures.TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(e, (concurrent.futures.CancelledError, asyncio.CancelledError)):
        return "cancelled"
    return type(e).__name__


def _call_outcome(fn: Any) -> tuple[Any, ...]:
    try:
        r = fn()
    except BaseException as e:  # noqa: B036
        return ("raise", _normalize_exc(e))
    if isinstance(r, BaseException):
        return ("exception", _normalize_exc(r))
    return ("return", r)


class FutureSide:
    def __init__(self) -> None:
        self.callback_calls: list[list[Any]] = []

    def add_callback(self, future: Any) -> None:
        calls: list[Any] = []
        self.callback_calls.append(calls)
        future.add_done_callback(lambda f: calls.append(f is future))

    def snapshot(self) -> tuple[Any, ...]:
        return tuple(tuple(c) for c in self.callback_calls)


class HandleSide(FutureSide):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.outcome: list[Any] = []
        started = threading.Event()

        @background
        def work() -> Any:
            started.set()
            self.release.wait(WAIT * 5)
            if not self.outcome:
                return "never finished"
            if isinstance(self.outcome[0], BaseException):
                raise self.outcome[0]
            return self.outcome[0]

        self.future = work()
        assert started.wait(WAIT), "the background call never started"

    def finish(self, value: Any) -> None:
        if not self.release.is_set():
            self.outcome.append(value)
            self.release.set()
        deadline = time.monotonic() + WAIT
        while not self.future.done() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.01)  # done callbacks run right after done() turns True

    def awaited(self) -> Any:
        async def main() -> Any:
            return await asyncio.wait_for(_await(self.future), 0.05)

        return asyncio.run(main())


class ReferenceSide(FutureSide):
    def __init__(self) -> None:
        super().__init__()
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        assert self.future.set_running_or_notify_cancel()  # as the handle: running

    def finish(self, value: Any) -> None:
        if not self.future.done():
            if isinstance(value, BaseException):
                self.future.set_exception(value)
            else:
                self.future.set_result(value)

    def awaited(self) -> Any:
        async def main() -> Any:
            return await asyncio.wait_for(asyncio.wrap_future(self.future), 0.05)

        return asyncio.run(main())


async def _await(aw: Any) -> Any:
    return await aw


def _apply_handle_op(side: HandleSide | ReferenceSide, op: str) -> tuple[Any, ...]:
    f = side.future
    if op == "result0":
        return _call_outcome(lambda: f.result(timeout=0))
    if op == "exception0":
        return _call_outcome(lambda: f.exception(timeout=0))
    if op in ("done", "cancelled", "running", "cancel"):
        return _call_outcome(getattr(f, op))
    if op == "add_done_callback":
        side.add_callback(f)
        return ("added",)
    if op == "finish_value":
        side.finish("value")
        return ("finished",)
    if op == "finish_error":
        side.finish(Boom("failed"))
        return ("finished",)
    if op == "await":
        return _call_outcome(side.awaited)
    raise AssertionError(op)


def _compare_handle(ops: list[str]) -> None:
    ours = HandleSide()
    reference = ReferenceSide()
    trace: list[Any] = []
    try:
        for op in [*ops, "finish_value", "result0", "exception0", "done", "add_done_callback"]:
            theirs = (_apply_handle_op(reference, op), reference.snapshot())
            mine = (_apply_handle_op(ours, op), ours.snapshot())
            trace.append((op, theirs))
            assert mine == theirs, (
                f"after {op!r}: handle {mine}; concurrent.futures.Future {theirs}\nreference trace: {trace}"
            )
    finally:
        ours.release.set()


@SETTINGS
@given(ops=st.lists(st.sampled_from(HANDLE_OPS), min_size=1, max_size=8))
def test_a_handle_looks_like_a_running_concurrent_future(ops):
    _compare_handle(ops)
    assert backgrounder.wait_idle(WAIT * 5)


# ---- 3. under trio: a Call against trio.to_thread.run_sync ------------------------
#
# docs/background.md ("trio"): awaited in a trio run, `Task(sync_fn)()` follows
# trio.to_thread.run_sync's rules for cancellation.  Both sides go through the
# same known sequences, on a pool (or a CapacityLimiter) of one, and report
# what each awaiting task saw, whether the cancel scope caught the
# cancellation, and which calls ran.  Only sequences whose outcome does not
# depend on timing: a call cancelled before it starts on an idle pool may be
# taken by a worker first (the Call submits it on its first step).

TRIO_SEQUENCES = [
    "returns",
    "raises",
    "cancelled_while_running",
    "deadline_while_running",
    "cancelled_while_queued",
    "cancelled_before_it_starts_on_a_full_pool",
]


class TrioCallSide:
    """`await Task(fn)()` on backgrounder's pool, of one worker."""

    async def call(self, fn: Any, *args: Any) -> Any:
        return await Task(fn, *args)()

    def pool_of_one(self) -> Any:
        return _PoolOfOne()


class TrioToThreadSide:
    """`await trio.to_thread.run_sync(fn)` on a CapacityLimiter of one."""

    def __init__(self) -> None:
        import trio

        self.limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Any, *args: Any) -> Any:
        import trio

        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def pool_of_one(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


class _PoolOfOne:
    def __enter__(self) -> None:
        self.before = backgrounder.stats()["max_workers"]
        backgrounder.configure(max_workers=1)

    def __exit__(self, *exc: Any) -> None:
        backgrounder.configure(max_workers=self.before)


async def _trio_sequence(side: TrioCallSide | TrioToThreadSide, sequence: str) -> dict[str, Any]:
    import trio
    from trio.testing import wait_all_tasks_blocked

    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []
    seen: dict[str, list[Any]] = {}

    def work(name: str, fails: bool) -> int:
        started.set()
        gate.wait(WAIT * 5)
        ran.append(name)
        if fails:
            raise Boom("work failed")
        return VALUE

    async def awaiting(scope: trio.CancelScope, name: str, fails: bool = False) -> None:
        saw = seen[name] = []
        with scope:
            try:
                saw.append(("result", await side.call(work, name, fails)))
            except Boom:
                saw.append(("raise", "Boom"))
            await trio.lowlevel.checkpoint()
            saw.append("not cancelled at the next checkpoint")

    async def until(predicate: Any) -> None:
        with trio.fail_after(WAIT):
            while not predicate():
                await trio.sleep(0.001)

    scope = trio.CancelScope()
    with side.pool_of_one():
        async with trio.open_nursery() as nursery:
            if sequence in ("returns", "raises"):
                gate.set()
                nursery.start_soon(awaiting, scope, "it", sequence == "raises")
            elif sequence == "cancelled_while_running":
                nursery.start_soon(awaiting, scope, "it")
                await until(started.is_set)
                scope.cancel()
                gate.set()
            elif sequence == "deadline_while_running":
                scope = trio.CancelScope(deadline=trio.current_time() + 0.02)
                nursery.start_soon(awaiting, scope, "it")
                await until(lambda: started.is_set() and scope.cancel_called)
                gate.set()
            else:
                # The one worker (token) is held by a first call.
                nursery.start_soon(awaiting, trio.CancelScope(), "blocker")
                await until(started.is_set)
                if sequence == "cancelled_while_queued":
                    nursery.start_soon(awaiting, scope, "it")
                    await wait_all_tasks_blocked()
                    scope.cancel()
                else:
                    scope.cancel()
                    nursery.start_soon(awaiting, scope, "it")
                    await wait_all_tasks_blocked()
                gate.set()
    return {"seen": seen, "cancelled_caught": scope.cancelled_caught, "ran": sorted(ran)}


@pytest.mark.parametrize("sequence", TRIO_SEQUENCES)
def test_under_trio_a_call_looks_like_trio_to_thread_run_sync(sequence):
    import trio  # a test requirement (conftest.py): missing, this fails

    theirs = trio.run(_trio_sequence, TrioToThreadSide(), sequence)
    ours = trio.run(_trio_sequence, TrioCallSide(), sequence)

    assert ours == theirs, f"backgrounder: {ours}\ntrio.to_thread.run_sync: {theirs}"
    assert backgrounder.wait_idle(WAIT * 5)
