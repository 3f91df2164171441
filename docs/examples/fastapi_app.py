"""FastAPI: a Task as a response's background, or added to BackgroundTasks;
an async @background call on the server's loop, and the drain at shutdown.

Run it with any ASGI server, for example ``uvicorn fastapi_app:app``.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse

import backgrounder
from backgrounder import Task, background

OUTBOX: list[str] = []  # stands in for a mail server, a warehouse, a report store


def send_receipt(order_id: int, email: str) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"receipt for order {order_id} to {email}")


async def notify_warehouse(order_id: int) -> None:
    """Async: runs on the event loop after the response."""
    OUTBOX.append(f"warehouse told about order {order_id}")


@background
async def build_report(report_id: int) -> None:
    """Async @background, called in a handler: runs on the server's loop."""
    await asyncio.sleep(1)
    OUTBOX.append(f"report {report_id} built")


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # At Ctrl-C the server stops serving, then runs this. Without it, an
    # async @background call still running on the server's loop would be
    # cancelled when the loop closes.
    await backgrounder.drain(timeout=None)
# --8<-- [end:lifespan]


app = FastAPI(lifespan=lifespan)


@app.post("/orders/{order_id}")
async def place_order(order_id: int, email: str) -> JSONResponse:
    # A Task as the background of the response you return.
    return JSONResponse(
        {"order": order_id, "status": "accepted"},
        background=Task(send_receipt, order_id, email=email),
    )


@app.post("/orders/{order_id}/ship")
async def ship_order(order_id: int, background_tasks: BackgroundTasks) -> dict:
    # A Task added to FastAPI's BackgroundTasks: FastAPI awaits it, because a
    # Task counts as an async callable. Pass it with no extra arguments.
    background_tasks.add_task(Task(notify_warehouse, order_id))
    return {"order": order_id, "status": "shipping"}


@app.post("/reports/{report_id}", status_code=202)
async def request_report(report_id: int) -> dict:
    build_report(report_id)  # returns a handle at once
    return {"report": report_id, "status": "building"}


@app.get("/outbox")
async def outbox() -> dict:
    """What the background work did so far."""
    return {"outbox": OUTBOX}
