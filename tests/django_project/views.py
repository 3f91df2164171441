"""Views that start background work, and the @background functions they call.

A test creates a gate for a token (``open_gate``/``gate``), requests a view
with ``?token=...``; the view sets the ``request_token`` context variable, starts
the work and keeps its handle in ``HANDLES[token]``; the work waits on the gate,
so it is still pending when the response comes back, and ends once the test
sets the gate.
"""

import asyncio
import contextvars
import threading
import time

from django.http import HttpResponse, JsonResponse

from backgrounder import background

WAIT_LIMIT = 5.0  # the work gives up (TimeoutError) if the gate stays closed

request_token = contextvars.ContextVar("request_token")
GATES = {}
HANDLES = {}


def gate(token):
    """The gate of ``token``, created closed on first use."""
    return GATES.setdefault(token, threading.Event())


@background
def sync_work(token):
    if not gate(token).wait(WAIT_LIMIT):
        raise TimeoutError(f"gate {token} stayed closed")
    return {"fn": "sync", "token": token, "seen": request_token.get(None)}


@background
async def async_work(token):
    deadline = time.monotonic() + WAIT_LIMIT
    while not gate(token).is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {token} stayed closed")
        await asyncio.sleep(0.005)
    return {"fn": "async", "token": token, "seen": request_token.get(None)}


@background
def sync_explode(token):
    raise ValueError("sync work failed")


@background
async def async_explode(token):
    await asyncio.sleep(0)
    raise ValueError("async work failed")


WORK = {"sync": sync_work, "async": async_work}
EXPLODE = {"sync": sync_explode, "async": async_explode}


def _start(request, kind):
    token = request.GET["token"]
    request_token.set(token)
    handle = HANDLES[token] = WORK[kind](token)
    return JsonResponse({"token": token, "done_at_response": handle.done()})


def sync_view(request, kind):
    return _start(request, kind)


async def async_view(request, kind):
    return _start(request, kind)


def sync_fail_view(request, kind):
    EXPLODE[kind](request.GET["token"])  # fire and forget: the handle is dropped
    return HttpResponse("still fine")


async def async_fail_view(request, kind):
    EXPLODE[kind](request.GET["token"])
    return HttpResponse("still fine")


def enqueue_view(request, name):
    from . import tasks

    result = getattr(tasks, name).enqueue(request.GET["token"])
    return JsonResponse({"id": result.id, "status": str(result.status)})


async def aenqueue_view(request, name):
    from . import tasks

    result = await getattr(tasks, name).aenqueue(request.GET["token"])
    return JsonResponse({"id": result.id, "status": str(result.status)})
