"""The tasks: plain Django task code, whatever the backend."""

import asyncio
import time

try:
    from django.tasks import task  # Django >= 6.0
except ImportError:
    from django_tasks import task  # the django-tasks backport


# --8<-- [start:tasks]
@task
def make_invoice(order_id: int, cents: int) -> dict:
    """Sync: runs on a pool thread, or in a worker process."""
    return {"order": order_id, "total": f"{cents / 100:.2f}"}


@task
async def send_welcome(email: str) -> str:
    """Async: runs on an event loop, here or in the worker."""
    await asyncio.sleep(0.01)
    return f"welcome mail to {email}"


@task
def charge(order_id: int, cents: int) -> int:
    if cents <= 0:
        raise ValueError(f"order {order_id}: cannot charge {cents} cents")
    return cents


@task
def rebuild_report(seconds: float) -> str:
    time.sleep(seconds)  # a long job that keeps a worker busy
    return "report rebuilt"


@task
def label(text: str) -> str:
    return text
# --8<-- [end:tasks]
