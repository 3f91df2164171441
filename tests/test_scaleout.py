"""From one process to many: the same task code on backgrounder and on a
distributed engine, with real servers and worker processes (issue 13).

- Django: docs/examples/scaleout_django (its tasks module and calling code)
  runs with TASKS_BACKEND=backgrounder (BackgrounderBackend, in process) and
  with TASKS_BACKEND=database (django-tasks-db on PostgreSQL, a `db_worker`
  process running the tasks).  django-tasks-rq is not among them: see
  docs/scale-out.md for why.
- taskiq: docs/examples/taskiq_app.py (a FastAPI app and its tasks) runs
  with BackgrounderBroker and, with REDIS_URL set, with taskiq-redis and a
  `taskiq worker` process (two worker subprocesses).

Each run happens in fresh interpreters, as a deployment would; the only
difference between the two runs of a stack is one environment variable that
the example's settings read.  The servers come from .ci/scaleout.sh, which
sets PGHOST/PGPORT/PGUSER, REDIS_URL and BACKGROUNDER_SCALEOUT=1; without
that variable these tests are skipped (see conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.scaleout

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "docs", "examples")
RECORDING = os.path.join(HERE, "scaleout")
RUN_TIMEOUT = 120  # seconds for one run of the calling code; a hang fails


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through .ci/scaleout.sh")
    return value


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def start(args: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
    cwd = os.path.dirname(log_path)
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT (both workers stop gracefully on it), then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    proc.log.close()  # type: ignore[attr-defined]
    return proc.returncode


def tail(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-4000:]


# -- Django: BackgrounderBackend and django-tasks-db + PostgreSQL + db_worker -----------

DJANGO_RESULTS = {
    "welcome": {"status": "SUCCESSFUL", "value": "welcome mail to ada@example.com"},
    "invoice": {"status": "SUCCESSFUL", "value": {"order": 1, "total": "25.00"}},
    "refused": {"status": "FAILED", "error": "ValueError: order 2: cannot charge 0 cents"},
    "charged": {"status": "SUCCESSFUL", "value": 990},
    "later": {"status": "SUCCESSFUL", "value": "later"},
    "busy": {"status": "SUCCESSFUL", "value": "report rebuilt"},
    "low": {"status": "SUCCESSFUL", "value": "low"},
    "high": {"status": "SUCCESSFUL", "value": "high"},
}


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    required_env("PGHOST")
    name = f"scaleout_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def django_env(backend: str, database: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": EXAMPLES,
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": "scaleout_django.settings",
        "PGDATABASE": database,
        "TASKS_BACKEND": backend,
    }


def django_admin(*args: str) -> list[str]:
    """`django-admin <args>` of this interpreter (settings from the environment)."""
    return [sys.executable, "-m", "django", *args]


def run_django_calls(env: dict[str, str], cwd: Any) -> dict[str, Any]:
    start_time = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "scaleout_django"],
        env=env,
        cwd=cwd,  # not the source tree, which would shadow the installed package
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)
    out = json.loads(proc.stdout)
    out["seconds"] = time.monotonic() - start_time
    return out


def db_rows(database: str) -> Counter[tuple[str, str]]:
    import psycopg

    with psycopg.connect(dbname=database) as conn:
        rows = conn.execute(
            "SELECT task_path, status FROM django_tasks_database_dbtaskresult"
        ).fetchall()
    return Counter((path.rsplit(".", 1)[1], status) for path, status in rows)


def test_django_tasks_run_unchanged_on_backgrounder_and_on_a_db_worker_with_postgresql(
    database, tmp_path
):
    # 1. In process: BackgrounderBackend (the database is configured, unused).
    here = run_django_calls(django_env("backgrounder", database), tmp_path)

    # 2. Many processes: django-tasks-db, the same database server, a db_worker.
    env = django_env("database", database)
    migrate = subprocess.run(
        django_admin("migrate", "--verbosity", "0"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert migrate.returncode == 0, describe(migrate)
    log = str(tmp_path / "db_worker.log")
    worker = start(
        django_admin(
            "db_worker", "--worker-id", "swap-worker", "--interval", "0.05",
            "--no-startup-delay", "--no-reload",
        ),
        env,
        log,
    )
    try:
        there = run_django_calls(env, tmp_path)
        assert worker.poll() is None, tail(log)  # the worker ran throughout
    finally:
        returncode = stop(worker)
    assert returncode == 0, tail(log)

    # The same results, whichever backend ran the tasks.
    assert here["results"] == DJANGO_RESULTS
    assert there["results"] == DJANGO_RESULTS
    for out in (here, there):
        assert out["later started early by (s)"] == 0.0
        assert out["started first"] == "high"
    # Each task ran once: one attempt each, by this process's backgrounder
    # queue, or by the db_worker process (its --worker-id).
    [in_process_worker] = {ids[0] for ids in here["runs"].values()}
    assert here["runs"] == {name: [in_process_worker] for name in DJANGO_RESULTS}
    assert there["runs"] == {name: ["swap-worker"] for name in DJANGO_RESULTS}
    # And the database holds one row per task, each finished.
    assert db_rows(database) == Counter(
        {
            ("send_welcome", "SUCCESSFUL"): 1,
            ("make_invoice", "SUCCESSFUL"): 1,
            ("charge", "FAILED"): 1,
            ("charge", "SUCCESSFUL"): 1,
            ("label", "SUCCESSFUL"): 3,
            ("rebuild_report", "SUCCESSFUL"): 1,
        }
    )
    print(f"\nDjango swap: backgrounder {here['seconds']:.2f}s, db_worker {there['seconds']:.2f}s")


def test_a_backgrounder_result_id_read_by_another_process_raises_a_clear_error(database, tmp_path):
    """What a db_worker setup allows, and BackgrounderBackend refuses loudly."""
    code = (
        "import django, json, sys; django.setup()\n"
        "from scaleout_django import tasks\n"
        "if sys.argv[1] == 'enqueue':\n"
        "    print(tasks.label.enqueue('x').id)\n"
        "else:\n"
        "    try:\n"
        "        tasks.label.get_result(sys.argv[2])\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    env = django_env("backgrounder", database)

    def call(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True,
            text=True, timeout=RUN_TIMEOUT, check=False,
        )
        assert proc.returncode == 0, describe(proc)
        return proc.stdout.strip()

    result_id = call("enqueue")
    answer = call("read", result_id)

    assert answer.startswith(f"ResultInAnotherProcess task result {result_id!r} was enqueued by another process")


# -- taskiq: BackgrounderBroker and taskiq-redis + Redis + taskiq worker ----------------

N = 20


def taskiq_env(record: str, redis_url: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([EXAMPLES, RECORDING]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "TASKIQ_RECORD": record,
    }
    env.pop("REDIS_URL", None)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


def run_taskiq_driver(env: dict[str, str], cwd: Any) -> dict[str, Any]:
    start_time = time.monotonic()
    proc = subprocess.run(
        [sys.executable, os.path.join(RECORDING, "taskiq_driver.py"), str(N)],
        env=env,
        cwd=cwd,  # not the source tree, which would shadow the installed package
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)
    out = json.loads(proc.stdout.splitlines()[-1])
    out["seconds"] = time.monotonic() - start_time
    return out


def read_records(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def check_taskiq_run(out: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Every task ran once, with the right result."""
    assert out["photos"] == [{"thumbnail": f"p{i}.256.png"} for i in range(N)]
    assert list(out["signups"].values()) == [
        {"ready": True, "value": {"to": f"u{i}@example.com", "sent": True}} for i in range(N)
    ]
    assert list(out["charges"].values()) == [
        {"ready": True, "error": "ValueError('order 0: cannot charge 0 cents')"}
    ] + [{"ready": True, "value": {"order": i, "charged": 100 * i}} for i in range(1, N)]

    runs = Counter(r["task_id"] for r in records)
    assert all(count == 1 for count in runs.values()), runs.most_common(3)
    assert set(out["signups"]) | set(out["charges"]) <= set(runs)
    assert Counter(r["task"] for r in records) == {
        "taskiq_app:make_thumbnail": N,
        "taskiq_app:send_welcome": N,
        "taskiq_app:charge": N,
    }
    assert [r["task_id"] for r in records if r["is_err"]] == [next(iter(out["charges"]))]


def test_taskiq_app_runs_unchanged_on_backgrounder_and_on_redis_with_a_taskiq_worker(tmp_path):
    redis_url = required_env("REDIS_URL")
    import redis

    redis.Redis.from_url(redis_url).flushdb()

    # 1. In process: BackgrounderBroker.
    here_record = str(tmp_path / "here.jsonl")
    here = run_taskiq_driver(taskiq_env(here_record, None), tmp_path)

    # 2. Many processes: taskiq-redis, a `taskiq worker` with two worker processes.
    there_record = str(tmp_path / "there.jsonl")
    env = taskiq_env(there_record, redis_url)
    log = str(tmp_path / "taskiq_worker.log")
    worker = start(
        [sys.executable, "-m", "taskiq", "worker", "taskiq_recording:broker", "--workers", "2"],
        env,
        log,
    )
    try:
        there = run_taskiq_driver(env, tmp_path)
        assert worker.poll() is None, tail(log)
    finally:
        stop(worker)
    # A task killed half-way would show as a missing record: none may be.
    there_records = read_records(there_record)

    assert here["broker"] == "BackgrounderBroker"
    assert there["broker"] == "ListQueueBroker"
    here_records = read_records(here_record)
    check_taskiq_run(here, here_records)
    check_taskiq_run(there, there_records)
    # Where they ran: in the app's process, or only in the worker processes.
    assert {r["pid"] for r in here_records} == {here["pid"]}
    worker_pids = {r["pid"] for r in there_records}
    assert here["pid"] not in worker_pids and there["pid"] not in worker_pids
    assert worker.pid not in worker_pids  # the worker's children ran them
    print(
        f"\ntaskiq swap: backgrounder {here['seconds']:.2f}s, redis + taskiq worker "
        f"{there['seconds']:.2f}s ({len(worker_pids)} worker processes ran tasks)"
    )
