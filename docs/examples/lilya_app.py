"""Lilya: a Task or a Tasks as the background of a response.

Run it with any ASGI server, for example ``uvicorn lilya_app:app``.
"""

from lilya.apps import Lilya
from lilya.responses import JSONResponse
from lilya.routing import Path

from backgrounder import Task, Tasks

OUTBOX: list[str] = []  # stands in for a cache and a search index


def purge_cache(key: str) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"cache purged: {key}")


async def reindex(article_id: int) -> None:
    """Async: runs on the event loop after the response."""
    OUTBOX.append(f"article {article_id} reindexed")


async def publish(article_id: int) -> JSONResponse:
    tasks = Tasks(
        [
            Task(purge_cache, f"article:{article_id}"),
            Task(reindex, article_id),
        ]
    )
    # The client gets the response first; then the tasks run, in order.
    return JSONResponse({"article": article_id, "published": True}, background=tasks)


app = Lilya(
    routes=[Path("/articles/{article_id:int}/publish", publish, methods=["POST"])]
)
