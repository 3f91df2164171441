"""is_async_callable, at backgrounder 0.2.0's import path; in_trio_run."""

import sys

from ._backgrounder import is_async_callable as is_async_callable

__all__ = ["is_async_callable"]


def in_trio_run() -> bool:
    """Whether this thread runs a trio run (trio is never imported here)."""
    if sys.modules.get("trio") is None:  # not imported, or its import blocked
        return False
    from ._trio import in_trio_run as in_run

    return in_run()
