"""configure(), stats() and wait_idle(): the engine's knobs and gauges.

Tests that change the configuration in this process restore the defaults
afterwards (the `defaults` fixture).  Those that need a pool nobody has used
yet (how many workers run or retire) run in a subprocess, with
tests/scripts/ as working directory; they print what they measured.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import backgrounder

pytestmark = pytest.mark.timeout(120)

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
DEFAULTS = {"max_workers": 40, "idle_timeout": 30, "on_error": None}
WAIT = 10.0

STATS_KEYS = {
    "queued",
    "running",
    "workers",
    "idle",
    "max_workers",
    "submitted",
    "done",
    "failed",
    "cancelled",
    "wakeups",
    "completions",
    "threads_started",
    "pending_async",
}


@pytest.fixture
def defaults():
    """Puts the engine's configuration back as it was at import."""
    yield
    backgrounder.configure(**DEFAULTS)


def python(source: str, *args: str, timeout: float = 60) -> str:
    """Runs `source` in a fresh interpreter; returns its stdout, after checking
    that it exited cleanly."""
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(source), *args],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    why = f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, why
    assert "Traceback" not in proc.stderr and "Fatal Python error" not in proc.stderr, why
    return proc.stdout


def results(line: str) -> dict[str, int]:
    """Parses "name=value name=value" as printed by the scripts."""
    return {k: int(v) for k, v in (item.split("=") for item in line.split())}


# ---- configure(): validation ------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_workers", "4"),
        ("max_workers", 4.0),
        ("max_workers", True),
        ("max_workers", [4]),
        ("idle_timeout", "1"),
        ("idle_timeout", True),
        ("idle_timeout", [1]),
        ("on_error", 42),
        ("on_error", "print"),
    ],
)
def test_configure_rejects_a_wrong_type_with_type_error_naming_the_value(defaults, name, value):
    with pytest.raises(TypeError) as info:
        backgrounder.configure(**{name: value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_workers", 0),
        ("max_workers", -1),
        ("idle_timeout", 0),
        ("idle_timeout", 0.0),
        ("idle_timeout", -1),
        ("idle_timeout", math.nan),
    ],
)
def test_configure_rejects_a_value_out_of_range_with_value_error_naming_it(defaults, name, value):
    with pytest.raises(ValueError) as info:
        backgrounder.configure(**{name: value})
    assert repr(value) in str(info.value)


def test_rejected_configure_changes_nothing(defaults):
    backgrounder.configure(max_workers=7)
    with pytest.raises(ValueError):
        backgrounder.configure(max_workers=3, idle_timeout=-1)
    with pytest.raises(TypeError):
        backgrounder.configure(max_workers=5, on_error=42)
    assert backgrounder.stats()["max_workers"] == 7


@pytest.mark.parametrize("max_workers", [1, 8, 40, 1000])
def test_configure_accepts_max_workers_from_one_up(defaults, max_workers):
    backgrounder.configure(max_workers=max_workers)
    assert backgrounder.stats()["max_workers"] == max_workers


@pytest.mark.parametrize("idle_timeout", [0.05, 2, 30.0, 3600])
def test_configure_accepts_a_positive_idle_timeout(defaults, idle_timeout):
    assert backgrounder.configure(idle_timeout=idle_timeout) is None


@pytest.mark.parametrize("on_error", [print, lambda exc: None, logging.getLogger("x").exception, None])
def test_configure_accepts_a_callable_or_none_as_on_error(defaults, on_error):
    assert backgrounder.configure(on_error=on_error) is None


def test_configure_leaves_omitted_arguments_unchanged(defaults):
    backgrounder.configure(max_workers=5)
    backgrounder.configure(idle_timeout=10)
    backgrounder.configure()
    assert backgrounder.stats()["max_workers"] == 5


# ---- stats() ----------------------------------------------------------------------


def test_stats_is_a_dict_of_ints_with_the_documented_keys():
    stats = backgrounder.stats()
    assert type(stats) is dict
    assert set(stats) >= STATS_KEYS
    assert {k: type(v) for k, v in stats.items() if type(v) is not int} == {}
    assert all(v >= 0 for v in stats.values())


def test_stats_count_submitted_done_and_failed_calls():
    @backgrounder.background
    def ok():
        return 1

    @backgrounder.background
    def fail():
        raise ValueError("counted")

    assert backgrounder.wait_idle(timeout=WAIT)
    before = backgrounder.stats()
    handles = [ok() for _ in range(3)] + [fail() for _ in range(2)]
    assert backgrounder.wait_idle(timeout=WAIT)
    for h in handles[3:]:
        assert isinstance(h.exception(), ValueError)   # retrieved: not logged
    after = backgrounder.stats()
    assert after["submitted"] - before["submitted"] == 5
    assert after["done"] - before["done"] == 5
    assert after["failed"] - before["failed"] == 2
    assert after["queued"] == after["running"] == 0


# ---- max_workers ------------------------------------------------------------------

# Starts `calls` calls that block until released, all at once, either as
# @background calls or as awaited sync Tasks on a loop of the given kind;
# waits until as many run as the pool allows (and a little longer, to see
# whether more would start), then releases them.  Prints the highest number
# that ran at once and the pool's counts while they were blocked.
BOUND_SCRIPT = """
import asyncio, sys, threading, time
import lcutil
import backgrounder

limit, calls, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
backgrounder.configure(max_workers=limit)
gauge = lcutil.Gauge()
gate = threading.Event()

def blocking(i):
    with gauge:
        gate.wait(10)
    return i

expected = min(limit, calls)
if how == "background":
    handles = [backgrounder.background(blocking)(i) for i in range(calls)]
    lcutil.wait_until(lambda: gauge.current >= expected)
    time.sleep(0.3)
    snapshot = backgrounder.stats()
    gate.set()
    values = [h.result(timeout=10) for h in handles]
else:
    async def main():
        everything = asyncio.gather(*(backgrounder.Task(blocking, i)() for i in range(calls)))
        deadline = time.monotonic() + 10
        while gauge.current < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        snapshot = backgrounder.stats()
        gate.set()
        return await everything, snapshot

    if how == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.SelectorEventLoop()
    values, snapshot = loop.run_until_complete(main())
    loop.close()
assert values == list(range(calls)), values
print(f"peak={gauge.peak} running={snapshot['running']} queued={snapshot['queued']}")
"""


@pytest.fixture(params=["background", "task-asyncio"] + (["task-uvloop"] if sys.platform != "win32" else []))
def how(request):
    """How the calls are made: @background, or awaited sync Tasks on a loop kind
    (uvloop: not on Windows, where it does not exist)."""
    return request.param.removeprefix("task-")


@pytest.mark.parametrize("limit", [1, 3])
def test_max_workers_bounds_the_number_of_sync_calls_running_at_once(how, limit):
    got = results(python(BOUND_SCRIPT, str(limit), "9", how))
    assert got["peak"] <= limit
    assert got["running"] <= limit
    assert got["queued"] == 9 - got["running"]


def test_a_larger_max_workers_lets_more_sync_calls_run_at_once(how):
    got = results(python(BOUND_SCRIPT, "12", "12", how))
    assert got["peak"] == 12
    assert got["running"] == 12
    assert got["queued"] == 0


def test_lowering_max_workers_bounds_calls_even_when_more_workers_are_idle():
    # Six workers exist (and idle) when max_workers drops to 2.
    got = results(
        python(
            """
            import os, threading, time
            import lcutil
            import backgrounder

            gauge, gate = lcutil.Gauge(), threading.Event()

            @backgrounder.background
            def blocking():
                with gauge:
                    gate.wait(10)

            handles = [blocking() for _ in range(6)]
            assert lcutil.wait_until(lambda: gauge.current == 6)
            gate.set()
            assert backgrounder.wait_idle(timeout=10)
            assert lcutil.wait_until(lambda: backgrounder.stats()["idle"] == 6)

            backgrounder.configure(max_workers=2)
            gauge, gate = lcutil.Gauge(), threading.Event()
            handles = [blocking() for _ in range(6)]
            lcutil.wait_until(lambda: gauge.current >= 2)
            time.sleep(0.3)
            gate.set()
            print(f"peak={gauge.peak}", flush=True)
            # (Whether they all end is the next test's business: leave
            # without the exit hooks, which would wait for them.)
            os._exit(0)
            """
        )
    )
    assert got["peak"] <= 2


def test_calls_submitted_while_surplus_workers_retire_all_run():
    # max_workers drops from 6 to 1 with six idle workers; calls submitted
    # at once, while the five surplus workers leave, must not be stranded
    # in the queue.  Several rounds, as this is a race.
    got = results(
        python(
            """
            import os, threading
            import lcutil
            import backgrounder

            gate = threading.Event()

            @backgrounder.background
            def blocking():
                gate.wait(10)

            @backgrounder.background
            def quick(i):
                return i

            stranded = 0
            for _ in range(10):
                backgrounder.configure(max_workers=6)
                gate.clear()
                handles = [blocking() for _ in range(6)]
                assert lcutil.wait_until(lambda: backgrounder.stats()["running"] == 6)
                gate.set()
                assert backgrounder.wait_idle(timeout=10)
                assert lcutil.wait_until(lambda: backgrounder.stats()["idle"] == 6)
                backgrounder.configure(max_workers=1)
                handles = [quick(i) for i in range(20)]
                if not backgrounder.wait_idle(timeout=5):
                    stranded += 1
                    break
            print(f"stranded={stranded} queued={backgrounder.stats()['queued']}", flush=True)
            os._exit(0)   # the exit hooks would wait for stranded calls forever
            """
        )
    )
    assert got == {"stranded": 0, "queued": 0}


def test_raising_max_workers_starts_queued_calls():
    got = results(
        python(
            """
            import threading
            import lcutil
            import backgrounder

            backgrounder.configure(max_workers=1)
            gauge, gate = lcutil.Gauge(), threading.Event()

            @backgrounder.background
            def blocking():
                with gauge:
                    gate.wait(10)

            handles = [blocking() for _ in range(4)]
            assert lcutil.wait_until(lambda: gauge.current == 1)
            backgrounder.configure(max_workers=4)
            all_running = lcutil.wait_until(lambda: gauge.current == 4)
            gate.set()
            for h in handles:
                h.result(timeout=10)
            print(f"all_running={int(all_running)} peak={gauge.peak}")
            """
        )
    )
    assert got == {"all_running": 1, "peak": 4}


# ---- idle_timeout -------------------------------------------------------------------

IDLE_SCRIPT = """
import sys, threading
import lcutil
import backgrounder

lower_first = sys.argv[1] == "before"
if lower_first:
    backgrounder.configure(idle_timeout=0.2)
gauge, gate = lcutil.Gauge(), threading.Event()

@backgrounder.background
def blocking():
    with gauge:
        gate.wait(10)
    return 1

handles = [blocking() for _ in range(4)]
assert lcutil.wait_until(lambda: gauge.current == 4)
gate.set()
assert [h.result(timeout=10) for h in handles] == [1] * 4
busy = backgrounder.stats()["workers"]
if not lower_first:
    backgrounder.configure(idle_timeout=0.2)
retired = lcutil.wait_until(lambda: backgrounder.stats()["workers"] == 0, timeout=5)
after = backgrounder.stats()
again = backgrounder.background(lambda: 2)().result(timeout=10)
print(f"busy={busy} retired={int(retired)} workers={after['workers']} idle={after['idle']} again={again}")
"""


def test_idle_timeout_retires_idle_workers():
    got = results(python(IDLE_SCRIPT, "before"))
    assert got["busy"] == 4
    assert got["retired"] == 1
    assert got["workers"] == 0 and got["idle"] == 0


def test_pool_starts_workers_again_after_idle_ones_retired():
    got = results(python(IDLE_SCRIPT, "before"))
    assert got["retired"] == 1
    assert got["again"] == 2


def test_lowering_idle_timeout_retires_workers_already_idle():
    # The workers are idle (under the default 30 s) when the timeout drops.
    got = results(python(IDLE_SCRIPT, "after"))
    assert got["busy"] == 4
    assert got["retired"] == 1
    assert got["workers"] == 0


# ---- on_error ----------------------------------------------------------------------


@backgrounder.background
def fails(message):
    raise ValueError(message)


def leave_unretrieved(message: str) -> None:
    """Makes a call that fails, lets it end, and drops its handle (the only
    reference) without retrieving the exception."""
    handle = fails(message)
    assert backgrounder.wait_idle(timeout=WAIT)
    assert handle.done()
    del handle
    gc.collect()


def backgrounder_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "backgrounder"]


def test_on_error_receives_the_unretrieved_exception_instead_of_the_logger(defaults, caplog):
    received = []
    backgrounder.configure(on_error=received.append)
    with caplog.at_level(logging.DEBUG, logger="backgrounder"):
        leave_unretrieved("to on_error")
    assert [type(e) for e in received] == [ValueError]
    assert str(received[0]) == "to on_error"
    assert received[0].__traceback__ is not None
    assert backgrounder_records(caplog) == []


def test_on_error_is_not_called_for_a_retrieved_exception(defaults):
    received = []
    backgrounder.configure(on_error=received.append)
    handle = fails("retrieved")
    with pytest.raises(ValueError):
        handle.result(timeout=WAIT)
    del handle
    gc.collect()
    assert received == []


def test_on_error_none_gives_unretrieved_exceptions_back_to_the_logger(defaults, caplog):
    received = []
    backgrounder.configure(on_error=received.append)
    backgrounder.configure(on_error=None)
    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        leave_unretrieved("to the logger")
    assert received == []
    records = backgrounder_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert str(records[0].exc_info[1]) == "to the logger"


def test_on_error_is_kept_when_configure_omits_it(defaults):
    received = []
    backgrounder.configure(on_error=received.append)
    backgrounder.configure(max_workers=39, idle_timeout=29)
    leave_unretrieved("still mine")
    assert [str(e) for e in received] == ["still mine"]


# ---- wait_idle() --------------------------------------------------------------------


def test_wait_idle_returns_true_when_nothing_is_queued_or_running():
    assert backgrounder.wait_idle(timeout=WAIT) is True
    assert backgrounder.wait_idle() is True
    assert backgrounder.wait_idle(timeout=0) is True


def test_wait_idle_returns_false_on_timeout():
    gate = threading.Event()

    @backgrounder.background
    def blocking():
        gate.wait(WAIT)

    handle = blocking()
    try:
        assert backgrounder.wait_idle(timeout=0.1) is False
        assert not handle.done()
    finally:
        gate.set()
    assert backgrounder.wait_idle(timeout=WAIT) is True


def test_wait_idle_waits_for_queued_and_running_sync_calls(defaults):
    backgrounder.configure(max_workers=2)

    @backgrounder.background
    def slow(i):
        time.sleep(0.05)
        return i

    handles = [slow(i) for i in range(6)]
    assert backgrounder.wait_idle(timeout=WAIT) is True
    assert [h.done() for h in handles] == [True] * 6
    stats = backgrounder.stats()
    assert stats["queued"] == stats["running"] == 0


def test_wait_idle_waits_for_async_background_calls_on_the_loop_thread():
    done = threading.Event()

    @backgrounder.background
    async def later():
        await asyncio.sleep(0.1)
        done.set()

    handle = later()
    assert backgrounder.wait_idle(timeout=WAIT) is True
    assert done.is_set()
    assert handle.done()
    assert backgrounder.stats()["pending_async"] == 0


@pytest.mark.parametrize(
    "timeout, error",
    [("1", TypeError), (True, TypeError), (-1, ValueError), (math.nan, ValueError)],
)
def test_wait_idle_rejects_a_bad_timeout_naming_it(timeout, error):
    with pytest.raises(error) as info:
        backgrounder.wait_idle(timeout=timeout)
    assert repr(timeout) in str(info.value)


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, -math.inf])
def test_idle_timeout_not_above_zero_gets_one_rule_and_one_message(defaults, value):
    with pytest.raises(ValueError) as info:
        backgrounder.configure(idle_timeout=value)
    assert str(info.value) == f"configure() argument 'idle_timeout' must be > 0 seconds, not {value!r}"
