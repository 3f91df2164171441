"""Esmerald: a Task on a Response, or on the route.

Run it with any ASGI server, for example ``uvicorn esmerald_app:app``.
"""

# No `from __future__ import annotations` in this module: Esmerald reads the
# handler's return annotation at run time (see the page).

from esmerald import Esmerald, Gateway, Response, get, post

from backgrounder import Task

OUTBOX: list[str] = []  # stands in for a mail server and a metrics service


def send_invoice(invoice_id: int) -> None:
    """Sync, maybe blocking: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"invoice {invoice_id} sent")


async def count_visit(page: str) -> None:
    """Async: runs on the event loop after the response."""
    OUTBOX.append(f"visit of {page}")


# 1. A handler annotated `-> Response` returns a Response with a background.
@post("/invoices/{invoice_id}")
async def create_invoice(invoice_id: int) -> Response:
    return Response(
        {"invoice": invoice_id, "status": "created"},
        media_type="application/json",
        background=Task(send_invoice, invoice_id),
    )


# 2. The route's own background: it runs after every response of the route.
@get("/home", background=Task(count_visit, "home"))
async def home() -> dict:
    return {"page": "home"}


app = Esmerald(routes=[Gateway(handler=create_invoice), Gateway(handler=home)])
