"""Django: views that start @background work, and a Django Task on
backgrounder's TASKS backend, in a one-file project.

In a real project the parts below live in settings.py, tasks.py and views.py.
``python django_app.py`` sends a few requests through Django's test client and
prints what the background work did. ``python django_app.py runserver
--noreload`` serves it (then ``curl localhost:8000/orders/1/`` and
``curl localhost:8000/outbox/``).
"""

import asyncio
import sys

import django
from django.conf import settings

try:  # Django >= 6.0 has django.tasks built in
    import django.tasks

    TASKS_APPS = []
except ImportError:  # older Django: the django-tasks backport
    TASKS_APPS = ["django_tasks"]

# --8<-- [start:settings]
TASKS = {
    "default": {
        "BACKEND": "backgrounder.django.BackgrounderBackend",
    }
}
# --8<-- [end:settings]

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["testserver", "localhost", "127.0.0.1"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=TASKS_APPS,
    TASKS=TASKS,
)
django.setup()

# --8<-- [start:views]
from django.http import JsonResponse
from django.urls import path

from backgrounder import background

OUTBOX = []  # stands in for a mail server and a warehouse service


@background
def send_receipt(order_id):
    """Sync: runs on backgrounder's native thread pool."""
    OUTBOX.append(f"receipt for order {order_id}")


@background
async def notify_warehouse(order_id):
    """Async, called from a sync view: runs on backgrounder's own loop thread."""
    await asyncio.sleep(0.01)
    OUTBOX.append(f"warehouse told about order {order_id}")


def place_order(request, order_id):  # a sync view
    send_receipt(order_id)  # returns a handle at once
    notify_warehouse(order_id)
    return JsonResponse({"order": order_id, "status": "accepted"})


async def cancel_order(request, order_id):  # an async view
    send_receipt(order_id)  # never blocks the event loop
    return JsonResponse({"order": order_id, "status": "cancelled"})
# --8<-- [end:views]


# --8<-- [start:report]
@background
async def build_report(report_id):
    """Async, called from an async view: runs on the loop that runs the view."""
    await asyncio.sleep(1)
    OUTBOX.append(f"report {report_id} built")


async def request_report(request, report_id):
    build_report(report_id)  # returns a handle at once
    return JsonResponse({"report": report_id, "status": "building"}, status=202)
# --8<-- [end:report]


# --8<-- [start:tasks]
try:
    from django.tasks import task  # Django >= 6.0
except ImportError:
    from django_tasks import task  # the django-tasks backport


@task
def send_newsletter(issue):
    OUTBOX.append(f"newsletter {issue} sent")
    return {"issue": issue, "recipients": 3}
# --8<-- [end:tasks]


# --8<-- [start:task_views]
def publish_newsletter(request, issue):
    result = send_newsletter.enqueue(issue)  # returns at once
    return JsonResponse({"task": result.id, "status": str(result.status)})


def newsletter_status(request, result_id):
    result = send_newsletter.get_result(result_id)
    return JsonResponse(
        {"status": str(result.status), "value": result.return_value}
    )
# --8<-- [end:task_views]


def outbox(request):
    """What the background work did so far."""
    return JsonResponse({"outbox": sorted(OUTBOX)})


urlpatterns = [
    path("outbox/", outbox),
    path("orders/<int:order_id>/", place_order),
    path("orders/<int:order_id>/cancel/", cancel_order),
    path("newsletters/<int:issue>/publish/", publish_newsletter),
    path("newsletters/status/<str:result_id>/", newsletter_status),
    path("reports/<int:report_id>/", request_report),
]


# --8<-- [start:asgi]
# asgi.py: serve with `uvicorn myproject.asgi:application`
import backgrounder
from django.core.asgi import get_asgi_application

django_application = get_asgi_application()


async def application(scope, receive, send):
    if scope["type"] != "lifespan":
        await django_application(scope, receive, send)
        return
    # Django does not speak the ASGI lifespan protocol: answer it here, and
    # at shutdown wait for the background work still running on this loop.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await backgrounder.drain(timeout=None)
            await send({"type": "lifespan.shutdown.complete"})
            return
# --8<-- [end:asgi]


def main():
    from django.test import Client

    client = Client()
    print(client.get("/orders/1/").json())
    print(client.get("/orders/2/cancel/").json())
    published = client.get("/newsletters/7/publish/").json()
    print(published)

    backgrounder.wait_idle(timeout=10)  # a server would just go on serving
    for line in client.get("/outbox/").json()["outbox"]:
        print(line)
    print(client.get(f"/newsletters/status/{published['task']}/").json())


if __name__ == "__main__":
    if len(sys.argv) > 1:  # a management command: runserver, check, ...
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    else:
        sys.exit(main())
