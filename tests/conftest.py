"""Fixtures shared by the whole suite.

`run` runs a coroutine to completion on a fresh event loop, once per loop
kind: "asyncio", "uvloop" (not on Windows, where uvloop does not exist) and
"trio" (a trio run, as anyio's trio backend and hypercorn make one), so that
every behaviour test that touches a loop is checked under each.  Under trio
the test's coroutine must use no asyncio API: such tests wait with anyio
(anyio.sleep, anyio.Event, task groups), which runs on all three.

A test that checks asyncio's own objects (loops, asyncio futures and tasks,
loop callbacks) carries `@pytest.mark.asyncio_only("why")` and runs under
asyncio and uvloop only; the reason says what trio lacks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

# A command started in the background by a non-interactive shell (`cmd &` in
# a CI script) starts with SIGINT ignored, and so does every process it
# starts: Python then installs no KeyboardInterrupt handler, and the tests
# that send SIGINT to a child (Ctrl-C at an exit wait, stopping a server)
# see nothing happen.  Python's own handler here, which exec resets to the
# default in each child, so that the children install theirs.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
Run = Callable[[Coroutine[Any, Any, T]], T]


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    # The class itself rather than asyncio.new_event_loop(), so that an
    # event loop policy installed by someone (uvloop.install()) cannot
    # turn the "asyncio" runs into uvloop runs.
    return asyncio.SelectorEventLoop()


def _uvloop_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


# uvloop does not exist on Windows: there the loop kinds are asyncio's alone.
# Everywhere else uvloop is a test requirement (requirements/test.txt), and a
# missing uvloop fails the uvloop runs rather than skip them.
HAVE_UVLOOP = sys.platform != "win32"

LOOP_FACTORIES: dict[str, LoopFactory] = {"asyncio": _asyncio_loop}
if HAVE_UVLOOP:
    LOOP_FACTORIES["uvloop"] = _uvloop_loop

# trio is a test requirement (requirements/test.txt): a missing trio fails the
# trio runs.  Not on Windows, where .ci/windows.sh installs pure-Python wheels
# alone and trio needs cffi's binary one.
HAVE_TRIO = sys.platform != "win32"
LOOP_KINDS: list[str] = [*sorted(LOOP_FACTORIES), *(["trio"] if HAVE_TRIO else [])]


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the coroutine left running, as asyncio.run() does."""
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during test loop shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def run_trio(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion in a new trio run (no asyncio loop runs)."""
    import trio

    async def main() -> T:
        return await coro

    return trio.run(main)


def run_on(factory: LoopFactory, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a new loop from `factory`; always close it."""
    if sys.version_info >= (3, 12):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


@pytest.fixture(autouse=True, scope="session")
def _outside_the_source_tree(tmp_path_factory: pytest.TempPathFactory):
    """Tests run from an empty directory.  A subprocess started as `python -c`
    puts its working directory first on sys.path; from the repository root
    that is the source tree, whose backgrounder package has no built
    extension, and it would shadow the installed one."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(here)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`loop_kind`, which `run` and `loop_factory` build on, takes each kind
    of LOOP_KINDS; trio is left out for tests marked asyncio_only.  A test
    that parametrizes loop_kind itself is left alone."""
    if "loop_kind" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "loop_kind" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return
    kinds = LOOP_KINDS
    if metafunc.definition.get_closest_marker("asyncio_only") is not None:
        kinds = sorted(LOOP_FACTORIES)
    metafunc.parametrize("loop_kind", kinds)


@pytest.fixture
def loop_factory(loop_kind: str) -> LoopFactory | None:
    """A callable that makes a new event loop of this kind; None for trio,
    which has no loop object (a test that makes loops itself is asyncio_only)."""
    return LOOP_FACTORIES.get(loop_kind)


@pytest.fixture
def run(loop_kind: str) -> Run[Any]:
    """`run(coro)` runs `coro` on a fresh loop of this kind (a new trio run
    for trio) and returns its result."""
    if loop_kind == "trio":
        return run_trio
    factory = LOOP_FACTORIES[loop_kind]

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return run_on(factory, coro)

    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The swap tests need PostgreSQL and Redis servers: .ci/scaleout.sh
    # starts them and sets BACKGROUNDER_SCALEOUT=1. Anywhere else they are
    # skipped, saying so; there, a missing server fails them.
    if os.environ.get("BACKGROUNDER_SCALEOUT") == "1":
        return
    skip = pytest.mark.skip(reason="needs the servers of .ci/scaleout.sh (BACKGROUNDER_SCALEOUT=1)")
    for item in items:
        if item.get_closest_marker("scaleout") is not None:
            item.add_marker(skip)
