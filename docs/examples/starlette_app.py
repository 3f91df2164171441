"""Starlette: a Task and a Tasks as the background of a response.

Run it with any ASGI server, for example ``uvicorn starlette_app:app``.
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backgrounder import Task, Tasks

OUTBOX: list[str] = []  # stands in for a mail server and an audit log


def send_welcome_email(to: str) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"welcome mail to {to}")


async def write_audit_log(event: str, user: str) -> None:
    """Async: runs on the event loop, in the task that sent the response."""
    OUTBOX.append(f"audit: {event} by {user}")


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


app = Starlette(
    routes=[
        Route("/signup", signup, methods=["POST"]),
        Route("/ping", ping),
    ]
)
