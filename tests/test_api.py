"""The public API of backgrounder 0.2.0 and the concurrency helpers."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import threading

import pytest

import backgrounder
from backgrounder import Task, Tasks, background
from backgrounder._compat import is_async_callable
from backgrounder.concurrency import AsyncCallable, enforce_async_callable, run_in_threadpool, run_sync
from threadname import thread_comm


def add(x, y=0):
    return x + y


async def async_add(x, y=0):
    return x + y


def test_0_2_0_import_paths_still_work():
    from backgrounder.decorator import background as decorator_background
    from backgrounder.tasks import Task as TasksTask
    from backgrounder.tasks import Tasks as TasksTasks

    assert decorator_background is background
    assert TasksTask is Task
    assert TasksTasks is Tasks


def test_all_names_the_public_api():
    assert {"Task", "Tasks", "background"} <= set(backgrounder.__all__)
    for name in backgrounder.__all__:
        assert hasattr(backgrounder, name)


def test_version_is_a_string():
    assert isinstance(backgrounder.__version__, str)
    assert backgrounder.__version__.split(".")[0].isdigit()


def test_importing_backgrounder_imports_no_third_party_module():
    # A module file right in the standard library's directory is standard
    # library too: 3.15's traceback imports _missing_stdlib_info, which
    # sys.stdlib_module_names does not list.
    script = (
        "import os, sys, sysconfig\n"
        "before = set(sys.modules)\n"
        "import backgrounder, backgrounder.concurrency, backgrounder.tasks, backgrounder.decorator\n"
        "stdlib = set(sys.stdlib_module_names)\n"
        "stdlib_dir = os.path.realpath(sysconfig.get_path('stdlib'))\n"
        "def in_stdlib_dir(name):\n"
        "    f = getattr(sys.modules.get(name), '__file__', None)\n"
        "    return bool(f) and os.path.dirname(os.path.realpath(f)) == stdlib_dir\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(m for m in new - stdlib - {'backgrounder'} if not in_stdlib_dir(m)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "obj, expected",
    [
        (add, False),
        (async_add, True),
        (functools.partial(async_add, 1), True),
        (functools.partial(functools.partial(add, 1)), False),
        (print, False),
        (type("AsyncCall", (), {"__call__": async_add})(), True),
        (type("SyncCall", (), {"__call__": add})(), False),
        (42, False),
    ],
)
def test_is_async_callable(obj, expected):
    assert is_async_callable(obj) is expected


def test_run_in_threadpool_runs_a_sync_callable_on_the_pool(run):
    def where(x, y=0):
        return x + y, thread_comm()

    assert run(run_in_threadpool(where, 1, y=2)) == (3, "backgrounder")


def test_run_in_threadpool_awaits_an_async_callable(run):
    assert run(run_in_threadpool(async_add, 1, y=2)) == 3


def test_run_in_threadpool_of_a_non_callable_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="42"):
        run_in_threadpool(42)


def test_async_callable_awaits_the_function_on_the_pool(run):
    def where(x):
        return x, thread_comm()

    assert run(AsyncCallable(where)(5)) == (5, "backgrounder")


def test_async_callable_call_kwargs_override_the_defaults(run):
    def pair(a, b=0, c=0):
        return (a, b, c)

    call = AsyncCallable(pair, b=1, c=2)
    assert run(call(0, c=3)) == (0, 1, 3)


def test_async_callable_run_in_threadpool(run):
    assert run(AsyncCallable(add, y=1).run_in_threadpool(1)) == 2


def test_enforce_async_callable_returns_an_async_function_itself():
    assert enforce_async_callable(async_add) is async_add


def test_enforce_async_callable_wraps_a_sync_function(run):
    wrapped = enforce_async_callable(add)
    assert isinstance(wrapped, AsyncCallable)
    assert run(wrapped(1, y=1)) == 2


def test_run_sync_runs_a_coroutine_from_sync_code():
    assert run_sync(async_add(1, y=2)) == 3


def test_run_sync_works_inside_a_running_loop_without_nesting_it(run):
    async def inner():
        await asyncio.sleep(0.01)
        return threading.get_ident()

    async def main():
        def sync_helper():
            return run_sync(inner())

        return sync_helper(), threading.get_ident()

    inner_thread, loop_thread = run(main())
    assert inner_thread != loop_thread


def test_run_sync_raises_the_coroutines_exception():
    async def fail():
        raise ValueError("from run_sync")

    with pytest.raises(ValueError, match="from run_sync"):
        run_sync(fail())


def test_a_task_in_a_background_loop_thread_can_use_run_sync():
    @background
    async def outer():
        def sync_part():
            return run_sync(async_add(2, y=3))

        return sync_part()

    assert outer().result(timeout=10) == 5


@pytest.mark.parametrize(
    "obj, signature",
    [
        (Task, "(func, /, *args, **kwargs)"),
        (Tasks, "(tasks=None, as_group=False)"),
        (background, "(fn, /)"),
        (backgrounder.configure, "(*, max_workers=None, idle_timeout=None, on_error=None)"),
        (backgrounder.shutdown, "(wait=True, *, timeout=None)"),
        (backgrounder.wait_idle, "(timeout=None)"),
        (run_in_threadpool, "(func, /, *args, **kwargs)"),
        (backgrounder.BackgroundHandle.result, "(self, /, timeout=None)"),
    ],
)
def test_help_shows_the_signatures_of_the_c_types_and_functions(obj, signature):
    import inspect

    assert str(inspect.signature(obj)) == signature
    assert obj.__doc__
