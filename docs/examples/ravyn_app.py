"""Ravyn: a Task on a Response, or on the route; an async @background call
on the server's loop, and the drain at shutdown.

Run it with any ASGI server, for example ``uvicorn ravyn_app:app``.
"""

# No `from __future__ import annotations` in this module: Ravyn reads the
# handler's return annotation at run time (see the page).

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ravyn import Gateway, Ravyn, Response, get, post

import backgrounder
from backgrounder import Task, background

OUTBOX: list[str] = []  # stands in for a mail server, metrics, a report store


def send_invoice(invoice_id: int) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"invoice {invoice_id} sent")


async def count_visit(page: str) -> None:
    """Async: runs on the event loop after the response."""
    OUTBOX.append(f"visit of {page}")


@background
async def build_report(report_id: int) -> None:
    """Async @background, called in a handler: runs on the server's loop."""
    await asyncio.sleep(1)
    OUTBOX.append(f"report {report_id} built")


# 1. A handler annotated `-> Response` returns a Response with a background.
@post("/invoices/{invoice_id}")
async def create_invoice(invoice_id: int) -> Response:
    return Response(
        {"invoice": invoice_id, "status": "created"},
        media_type="application/json",
        background=Task(send_invoice, invoice_id),
    )


# 2. The route's own background: it runs after every response of the route,
#    because the handler is annotated with what it returns (data), not with a
#    Response class.
@get("/home", background=Task(count_visit, "home"))
async def home() -> dict:
    return {"page": "home"}


# 3. An async @background function: the handler does not wait for it.
@post("/reports/{report_id}", status_code=202)
async def request_report(report_id: int) -> dict:
    build_report(report_id)  # returns a handle at once
    return {"report": report_id, "status": "building"}


@get("/outbox")
async def outbox() -> dict:
    """What the background work did so far."""
    return {"outbox": OUTBOX}


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: Ravyn) -> AsyncIterator[None]:
    yield
    # At Ctrl-C the server stops serving, then runs this. Without it, an
    # async @background call still running on the server's loop would be
    # cancelled when the loop closes.
    await backgrounder.drain(timeout=None)
# --8<-- [end:lifespan]


app = Ravyn(
    routes=[
        Gateway(handler=create_invoice),
        Gateway(handler=home),
        Gateway(handler=request_report),
        Gateway(handler=outbox),
    ],
    lifespan=lifespan,
)
