"""FastAPI: a Task as a response's background, or added to BackgroundTasks.

Run it with any ASGI server, for example ``uvicorn fastapi_app:app``.
"""

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse

from backgrounder import Task

OUTBOX: list[str] = []  # stands in for a mail server


def send_receipt(order_id: int, email: str) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"receipt for order {order_id} to {email}")


async def notify_warehouse(order_id: int) -> None:
    """Async: runs on the event loop after the response."""
    OUTBOX.append(f"warehouse told about order {order_id}")


app = FastAPI()


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
