"""backgrounder: background work for Python on a native engine.

``Task`` and ``Tasks`` are what a Starlette, FastAPI, Esmerald or Lilya response
takes as its ``background``; ``@background`` starts a function at once and
hands back a handle, from sync or async code.  Sync callables run on a native
thread pool, async ones on the asyncio loop.
"""

from ._backgrounder import (
    BackgroundHandle,  # noqa
    Task,
    Tasks,
    background,
    configure,
    shutdown,
    stats,
    wait_idle,
)

__version__ = "1.0.0"

__all__ = [
    "BackgroundHandle",
    "Task",
    "Tasks",
    "background",
    "configure",
    "shutdown",
    "stats",
    "wait_idle",
]
