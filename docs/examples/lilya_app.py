"""Lilya: a Task or a Tasks as the background of a response, an async
@background call on the server's loop, and the drain at shutdown.

Run it with any ASGI server, for example ``uvicorn lilya_app:app``.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lilya.apps import Lilya
from lilya.responses import JSONResponse
from lilya.routing import Path

import backgrounder
from backgrounder import Task, Tasks, background

OUTBOX: list[str] = []  # stands in for a cache, a search index, a report store


def purge_cache(key: str) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"cache purged: {key}")


async def reindex(article_id: int) -> None:
    """Async: runs on the event loop after the response."""
    OUTBOX.append(f"article {article_id} reindexed")


@background
async def build_report(report_id: int) -> None:
    """Async @background, called in a handler: runs on the server's loop."""
    await asyncio.sleep(1)
    OUTBOX.append(f"report {report_id} built")


async def publish(article_id: int) -> JSONResponse:
    tasks = Tasks(
        [
            Task(purge_cache, f"article:{article_id}"),
            Task(reindex, article_id),
        ]
    )
    # The client gets the response first; then the tasks run, in order.
    return JSONResponse({"article": article_id, "published": True}, background=tasks)


async def request_report(report_id: int) -> JSONResponse:
    build_report(report_id)  # returns a handle at once
    return JSONResponse({"report": report_id, "status": "building"}, status_code=202)


async def outbox() -> JSONResponse:
    """What the background work did so far."""
    return JSONResponse({"outbox": OUTBOX})


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: Lilya) -> AsyncIterator[None]:
    yield
    # At Ctrl-C the server stops serving, then runs this. Without it, an
    # async @background call still running on the server's loop would be
    # cancelled when the loop closes.
    await backgrounder.drain(timeout=None)
# --8<-- [end:lifespan]


app = Lilya(
    routes=[
        Path("/articles/{article_id:int}/publish", publish, methods=["POST"]),
        Path("/reports/{report_id:int}", request_report, methods=["POST"]),
        Path("/outbox", outbox),
    ],
    lifespan=lifespan,
)
