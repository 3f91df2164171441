"""A FastAPI app whose background work is taskiq tasks.

One process, tasks on backgrounder's engine:
    uvicorn taskiq_app:app
Many processes or machines, tasks in `taskiq worker` processes via Redis:
    REDIS_URL=redis://localhost:6379 uvicorn taskiq_app:app
    REDIS_URL=redis://localhost:6379 taskiq worker taskiq_app:broker

The tasks and the app are the same in both cases: only the broker changes.
"""

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

# --8<-- [start:broker]
REDIS_URL = os.environ.get("REDIS_URL")

if REDIS_URL:  # a Redis server; tasks run in `taskiq worker taskiq_app:broker`
    from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

    broker = ListQueueBroker(REDIS_URL).with_result_backend(RedisAsyncResultBackend(REDIS_URL))
else:  # this process; tasks run on backgrounder's engine
    from backgrounder.taskiq import BackgrounderBroker

    broker = BackgrounderBroker()
# --8<-- [end:broker]


# --8<-- [start:tasks]
@broker.task
def make_thumbnail(name: str, size: int = 128) -> str:
    """Sync: CPU work or blocking I/O. It runs on a thread."""
    stem = name.rsplit(".", 1)[0]
    return f"{stem}.{size}.png"


@broker.task
async def send_welcome(email: str) -> dict:
    """Async: it runs on an event loop."""
    await asyncio.sleep(0.2)  # talks to a mail service
    return {"to": email, "sent": True}


@broker.task
def charge(order_id: int, cents: int) -> dict:
    if cents <= 0:
        raise ValueError(f"order {order_id}: cannot charge {cents} cents")
    return {"order": order_id, "charged": cents}
# --8<-- [end:tasks]


# --8<-- [start:app]
@asynccontextmanager
async def lifespan(app: FastAPI):
    # The web process is a client of the broker; `taskiq worker` starts
    # and stops the broker itself in the worker processes.
    if not broker.is_worker_process:
        await broker.startup()
    yield
    if not broker.is_worker_process:
        await broker.shutdown()  # BackgrounderBroker: waits for every task


app = FastAPI(lifespan=lifespan)


@app.post("/signup")
async def signup(email: str) -> dict:
    task = await send_welcome.kiq(email)
    return {"task_id": task.task_id}


@app.post("/photos/{name}")
async def upload(name: str) -> dict:
    task = await make_thumbnail.kiq(name, size=256)
    result = await task.wait_result(check_interval=0.05, timeout=10)
    return {"thumbnail": result.return_value}


@app.post("/orders/{order_id}/charge")
async def charge_order(order_id: int, cents: int) -> dict:
    task = await charge.kiq(order_id, cents)
    return {"task_id": task.task_id}


@app.get("/tasks/{task_id}")
async def task_status(task_id: str) -> dict:
    if not await broker.result_backend.is_result_ready(task_id):
        return {"ready": False}
    result = await broker.result_backend.get_result(task_id)
    if result.is_err:
        return {"ready": True, "error": repr(result.error)}
    return {"ready": True, "value": result.return_value}
# --8<-- [end:app]
