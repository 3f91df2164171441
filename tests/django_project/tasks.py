"""Django Tasks of the test project.

Plain Django task code: it runs unchanged on backgrounder's backend and on
Django's ImmediateBackend, chosen by the TASKS setting alone.  Tasks that must
be observed mid-run wait on a gate (``GATES[token]``) and mark ``STARTED``.
"""

import asyncio
import threading
import time

try:  # Django >= 6.0
    from django.tasks import task
except ImportError:  # Django < 6.0 with the django-tasks backport
    from django_tasks import task

WAIT_LIMIT = 5.0
GATES = {}
STARTED = {}
ORDER = []


def gate(token):
    return GATES.setdefault(token, threading.Event())


def started(token):
    return STARTED.setdefault(token, threading.Event())


@task
def add(a, b):
    return a + b


@task
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


@task
def gated(token):
    started(token).set()
    if not gate(token).wait(WAIT_LIMIT):
        raise TimeoutError(f"gate {token} stayed closed")
    return {"token": token}


@task
async def async_gated(token):
    started(token).set()
    deadline = time.monotonic() + WAIT_LIMIT
    while not gate(token).is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {token} stayed closed")
        await asyncio.sleep(0.005)
    return {"token": token}


@task
def fail(message):
    raise ValueError(message)


@task
async def async_fail(message):
    await asyncio.sleep(0)
    raise ValueError(message)


@task
def unserializable():
    return object()


@task(takes_context=True)
def with_context(context, token):
    return {
        "token": token,
        "attempt": context.attempt,
        "id": context.task_result.id,
        "status": str(context.task_result.status),
    }


@task
def record(token):
    started(token).set()
    ORDER.append(token)
    return token


@task
def slow_echo(text):
    time.sleep(0.3)
    print(text, flush=True)
    return text
