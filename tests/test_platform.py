"""What the engine gets from the OS (src/platform.h): stacks and timed waits.

A pool worker is a thread like the threads of CPython's `threading`: it gets
the stack `threading.stack_size()` asks for, and the same default stack as a
`threading.Thread` otherwise.  Timed waits run on a monotonic clock that the
OS wait really waits on: a timed wait neither returns at once nor outlives
its deadline.

The stack is read from inside the thread: `pthread_getattr_np` on Linux,
`pthread_get_stacksize_np` on macOS, `GetCurrentThreadStackLimits` on
Windows (through ctypes), in a fresh interpreter, so that the pool has no
worker started before the stack size was set.
"""

from __future__ import annotations

import concurrent.futures
import platform
import subprocess
import sys
import threading
import time

import pytest

import backgrounder

TIMEOUT = 60

# Prints the stack size of a pool worker and of a threading.Thread, each
# measured from inside the thread, after threading.stack_size(argv[1]) (if
# not "default").
STACK_SCRIPT = r"""
import ctypes, sys, threading
import backgrounder

def stack_size():
    if sys.platform == "win32":
        low, high = ctypes.c_size_t(), ctypes.c_size_t()
        ctypes.windll.kernel32.GetCurrentThreadStackLimits(ctypes.byref(low), ctypes.byref(high))
        return high.value - low.value
    libc = ctypes.CDLL(None)
    libc.pthread_self.restype = ctypes.c_void_p
    if sys.platform == "darwin":
        libc.pthread_get_stacksize_np.restype = ctypes.c_size_t
        return libc.pthread_get_stacksize_np(ctypes.c_void_p(libc.pthread_self()))
    attr = ctypes.create_string_buffer(256)   # pthread_attr_t: 56 bytes on glibc x86-64
    size = ctypes.c_size_t()
    assert libc.pthread_getattr_np(ctypes.c_void_p(libc.pthread_self()), attr) == 0
    assert libc.pthread_attr_getstacksize(attr, ctypes.byref(size)) == 0
    libc.pthread_attr_destroy(attr)
    return size.value

if sys.argv[1] != "default":
    threading.stack_size(int(sys.argv[1]))

worker = backgrounder.background(stack_size)().result(timeout=30)
seen = []
thread = threading.Thread(target=lambda: seen.append(stack_size()))
thread.start()
thread.join()
print(worker, seen[0])
"""

needs_stack_probe = pytest.mark.skipif(
    not (sys.platform in ("win32", "darwin") or (sys.platform == "linux" and platform.libc_ver()[0] == "glibc")),
    reason="the probe reads a thread's stack with glibc's pthread_getattr_np, macOS's pthread_get_stacksize_np"
    " or Windows' GetCurrentThreadStackLimits",
)


def worker_and_thread_stacks(size: str) -> tuple[int, int]:
    proc = subprocess.run(
        [sys.executable, "-c", STACK_SCRIPT, size], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    worker, thread = map(int, proc.stdout.split())
    return worker, thread


@needs_stack_probe
@pytest.mark.parametrize("mib", [3, 24])
def test_pool_worker_stack_honours_threading_stack_size(mib):
    # 3 MiB and 24 MiB: below and above every platform's default (8 MiB on
    # Linux, 16 MiB for CPython's threads on macOS, the executable's 2 MB or
    # so on Windows), so that a worker started with the default stack fails
    # one of the two.
    size = mib * 1024 * 1024
    worker, thread = worker_and_thread_stacks(str(size))
    assert thread >= size  # the probe itself reads what threading asked for
    assert size <= worker < size + 1024 * 1024, (worker, size)


@needs_stack_probe
def test_pool_worker_gets_the_default_stack_of_a_threading_thread():
    worker, thread = worker_and_thread_stacks("default")
    assert worker == thread
    assert worker >= 1024 * 1024


# ---- timed waits ----------------------------------------------------------------


@pytest.fixture
def fast_retire():
    yield
    backgrounder.configure(idle_timeout=30)


def test_result_with_timeout_waits_that_long_then_raises_timeout_error():
    release = threading.Event()
    handle = backgrounder.background(release.wait)(30)
    try:
        start = time.monotonic()
        with pytest.raises(concurrent.futures.TimeoutError):
            handle.result(timeout=0.5)
        waited = time.monotonic() - start
    finally:
        release.set()
    assert handle.result(timeout=30) is True
    assert 0.45 <= waited < 10, waited


def test_wait_idle_with_timeout_waits_that_long_then_returns_false():
    release = threading.Event()
    handle = backgrounder.background(release.wait)(30)
    try:
        start = time.monotonic()
        assert backgrounder.wait_idle(timeout=0.5) is False
        waited = time.monotonic() - start
    finally:
        release.set()
    handle.result(timeout=30)
    assert 0.45 <= waited < 10, waited


def test_an_idle_worker_lives_until_its_idle_timeout(fast_retire):
    # A timed wait that returned at once would retire the worker at once.
    backgrounder.configure(idle_timeout=1.5)
    backgrounder.background(lambda: None)().result(timeout=30)
    assert backgrounder.wait_idle(timeout=30) is True
    time.sleep(0.5)
    assert backgrounder.stats()["workers"] >= 1
    deadline = time.monotonic() + 30
    while backgrounder.stats()["workers"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backgrounder.stats()["workers"] == 0
