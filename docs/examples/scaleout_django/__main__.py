"""The calling code, as views or commands would run it: enqueue tasks, then
read their results by id, from sync and from async code.

``python -m scaleout_django`` prints one JSON object: what each task gave
("results", the same on every backend) and which worker ran each task how
many times ("runs").
"""

import asyncio
import datetime
import json
import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scaleout_django.settings")
django.setup()

from django.utils import timezone  # noqa: E402

from scaleout_django import tasks  # noqa: E402

WAIT = 60.0  # seconds a task may take to finish, worker start-up included


# --8<-- [start:calls]
def wait_finished(result):
    """Polls the backend until the task succeeded or failed."""
    deadline = time.monotonic() + WAIT
    while not result.is_finished:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{result.task.name} {result.id} is still {result.status}")
        time.sleep(0.02)
        result.refresh()  # reads the backend again: here, or the database
    return result


async def enqueue_from_async_code():
    result = await tasks.send_welcome.aenqueue("ada@example.com")
    while not result.is_finished:
        await asyncio.sleep(0.02)
        await result.arefresh()
    return await tasks.send_welcome.aget_result(result.id)


def outcome(result):
    if result.errors:
        return {"status": result.status, "error": result.errors[-1].traceback.splitlines()[-1]}
    return {"status": result.status, "value": result.return_value}


def main():
    finished = {}

    # Sync and async tasks, a failure, and a result read back by its id (as
    # another request would, which may be another process with a db_worker).
    invoice = tasks.make_invoice.enqueue(1, 2500)
    refused = tasks.charge.enqueue(2, 0)
    charged = tasks.charge.enqueue(3, 990)
    finished["welcome"] = asyncio.run(enqueue_from_async_code())
    for name, result in (("invoice", invoice), ("refused", refused), ("charged", charged)):
        wait_finished(result)
        finished[name] = result.task.get_result(result.id)

    # run_after: the task does not start before its time.
    run_after = timezone.now() + datetime.timedelta(seconds=1)
    finished["later"] = wait_finished(tasks.label.using(run_after=run_after).enqueue("later"))
    early = max(0.0, (run_after - finished["later"].started_at).total_seconds())

    # Priorities: while the worker is busy, the higher priority starts first.
    # A backend says whether it orders by priority (RQ's does not).
    started_first = None
    if tasks.label.get_backend().supports_priority:
        busy = tasks.rebuild_report.enqueue(1.0)
        while busy.status == "READY":
            time.sleep(0.01)
            busy.refresh()
        low = tasks.label.using(priority=-10).enqueue("low")
        high = tasks.label.using(priority=10).enqueue("high")
        for name, result in (("busy", busy), ("low", low), ("high", high)):
            finished[name] = wait_finished(result)
        first = min((finished["low"], finished["high"]), key=lambda r: r.started_at)
        started_first = first.return_value

    return {
        "results": {name: outcome(result) for name, result in finished.items()},
        "later started early by (s)": early,
        "started first": started_first,
        "runs": {name: result.worker_ids for name, result in finished.items()},
    }
# --8<-- [end:calls]


if __name__ == "__main__":
    json.dump(main(), sys.stdout, indent=1, default=str)
    print()
