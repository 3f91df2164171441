"""Starlette: a Task and a Tasks as the background of a response, an async
@background call on the server's loop, and the drain at shutdown.

Run it with any ASGI server, for example ``uvicorn starlette_app:app``.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import backgrounder
from backgrounder import Task, Tasks, background

OUTBOX: list[str] = []  # stands in for a mail server, an audit log, a report store


def send_welcome_email(to: str) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"welcome mail to {to}")


async def write_audit_log(event: str, user: str) -> None:
    """Async: runs on the event loop, in the task that sent the response."""
    OUTBOX.append(f"audit: {event} by {user}")


@background
async def build_report(report_id: int) -> None:
    """Async @background, called in a handler: runs on the server's loop."""
    await asyncio.sleep(1)
    OUTBOX.append(f"report {report_id} built")


async def signup(request: Request) -> JSONResponse:
    data = await request.json()
    tasks = Tasks(
        [
            Task(send_welcome_email, data["email"]),
            Task(write_audit_log, "signup", user=data["email"]),
        ]
    )
    # The client gets the response first; then the tasks run, in order.
    return JSONResponse({"ok": True}, background=tasks)


async def ping(request: Request) -> JSONResponse:
    task = Task(write_audit_log, "ping", user="-")
    return JSONResponse({"pong": True}, background=task)


async def request_report(request: Request) -> JSONResponse:
    report_id = request.path_params["report_id"]
    build_report(report_id)  # returns a handle at once
    return JSONResponse({"report": report_id, "status": "building"}, status_code=202)


async def outbox(request: Request) -> JSONResponse:
    """What the background work did so far."""
    return JSONResponse({"outbox": OUTBOX})


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    # At Ctrl-C the server stops serving, then runs this. Without it, an
    # async @background call still running on the server's loop would be
    # cancelled when the loop closes.
    await backgrounder.drain(timeout=None)
# --8<-- [end:lifespan]


app = Starlette(
    routes=[
        Route("/signup", signup, methods=["POST"]),
        Route("/ping", ping),
        Route("/reports/{report_id:int}", request_report, methods=["POST"]),
        Route("/outbox", outbox),
    ],
    lifespan=lifespan,
)
