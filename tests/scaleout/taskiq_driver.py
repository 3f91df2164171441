"""Drives docs/examples/taskiq_app.py through its HTTP API, as a user would.

Runs the app with its lifespan (broker.startup() ... broker.shutdown()),
sends N uploads, signups and charges, polls /tasks/{id} until every task is
ready, and prints one JSON object: this process's pid and what the API said.
Which broker serves the app is the example's own choice (REDIS_URL).
"""

import json
import os
import sys
import time

import taskiq_recording  # noqa: F401  (the example's broker, recording runs)
from fastapi.testclient import TestClient
from taskiq_app import app, broker

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
WAIT = 60.0


def ready(client, task_id):
    deadline = time.monotonic() + WAIT
    while True:
        body = client.get(f"/tasks/{task_id}").json()
        if body["ready"]:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} not ready after {WAIT}s")
        time.sleep(0.02)


with TestClient(app) as client:
    photos = [client.post(f"/photos/p{i}.jpg").json() for i in range(N)]
    signups = [client.post("/signup", params={"email": f"u{i}@example.com"}).json() for i in range(N)]
    charges = [
        client.post(f"/orders/{i}/charge", params={"cents": 100 * i}).json() for i in range(N)
    ]
    signup_ids = [s["task_id"] for s in signups]
    charge_ids = [c["task_id"] for c in charges]
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "broker": type(broker).__name__,
                "photos": photos,
                "signups": {i: ready(client, i) for i in signup_ids},
                "charges": {i: ready(client, i) for i in charge_ids},
            }
        )
    )
