"""Helpers for the scripts that tests/test_lifecycle.py and tests/test_config.py
run in subprocesses (their working directory is this folder, so that a script
can `import lcutil` and `import preloaded_app`, and cannot import the source
tree's backgrounder instead of the installed one).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable

# os.fork() in a process with threads warns on Python >= 3.12; the fork
# scripts do it on purpose.
warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks", category=DeprecationWarning)


def wait_until(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    """Polls `cond` until it is true; False if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def reap(pid: int, timeout: float = 20.0) -> int | str:
    """The exit code of child `pid` (negative: killed by that signal), or
    "hung" if it did not end within `timeout` seconds (it is killed then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


class Gauge:
    """Counts the calls running at once and remembers the highest count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0

    def __enter__(self) -> Gauge:
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.current -= 1
