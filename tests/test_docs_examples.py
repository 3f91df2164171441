"""The examples of the documentation (docs/examples/*.py) do what their pages say.

The pages include these files verbatim (pymdownx.snippets, ``--8<--``), so
each one is tested here against the installed package:

- the ASGI apps (Starlette, FastAPI, Lilya, Ravyn, Esmerald) are imported
  from their files and driven through the framework's own test client, under
  each loop kind (trio through anyio's trio backend); each example's
  ``OUTBOX`` is swapped for a recorder that notes which thread the work ran
  on, and the app is wrapped to note when the response was sent, so the
  tests see that the work ran after the response, sync work on a pool thread
  and async work on the loop thread;
- each app's ``/outbox`` route shows what the work did, and its lifespan
  drains the async ``@background`` work at shutdown: tested through the test
  client and through a real uvicorn process stopped with SIGINT (Ctrl-C);
  the Django project is served by ``runserver`` and queried the same way;
- the scripts (plain, asyncio, lifecycle, the one-file Django project) run in
  a subprocess, with warnings as errors, and their output is checked.

The last tests check that every example is included by a page and tested
here, and that every include names an existing file and section.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
EXAMPLES = os.path.join(DOCS, "examples")

TIMEOUT = 60  # seconds for one example script; there to turn a hang into a failure

SENT = "response sent"

# Esmerald needs lilya 0.23.3 and Ravyn the newest Lilya: each is tested where
# it is installed (see tests/test_frameworks.py and .ci/edges.sh); a
# framework named in BACKGROUNDER_TEST_FRAMEWORKS must be there.
# Ravyn 0.4.3 installs on Python 3.10 to 3.14.
DEFAULT_FRAMEWORKS = "starlette,fastapi,lilya" + (",ravyn" if sys.version_info < (3, 15) else "")
REQUIRED = os.environ.get("BACKGROUNDER_TEST_FRAMEWORKS", DEFAULT_FRAMEWORKS)


def installed(name: str) -> bool:
    found = importlib.util.find_spec(name) is not None
    assert found or name not in REQUIRED.split(","), f"{name} must be installed"
    return found


needs_ravyn = pytest.mark.skipif(
    not installed("ravyn"), reason="ravyn is not installed here (requirements/test.txt has it)"
)
needs_esmerald = pytest.mark.skipif(
    not installed("esmerald"),
    reason="esmerald is not installed here: it needs lilya 0.23.3, so its tests run in "
    "a virtualenv of their own (requirements/esmerald.txt, .ci/edges.sh)",
)


# -- loading an example and watching its work --------------------------------


def load_example(name: str) -> ModuleType:
    """Import docs/examples/<name>.py as a fresh module, writing no bytecode."""
    path = os.path.join(EXAMPLES, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    # Registered while it runs, as an import would: taskiq's @broker.task
    # looks the module up in sys.modules.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
        del sys.modules[spec.name]
    return module


@dataclass(frozen=True)
class Entry:
    text: str
    thread: int  # threading.get_ident()
    pool_thread: bool  # a native thread: backgrounder's pool, not a threading.Thread


def on_pool_thread() -> bool:
    if not isinstance(threading.current_thread(), threading._DummyThread):
        return False
    comm = f"/proc/self/task/{threading.get_native_id()}/comm"
    if os.path.exists(comm):  # Linux: the OS thread name is "backgrounder"
        with open(comm) as f:
            return f.read().strip() == "backgrounder"
    return True


class Outbox:
    """Stands in for an example's OUTBOX list: records who appended what."""

    def __init__(self) -> None:
        self.events: list[Any] = []  # SENT markers (with the loop thread) and Entry objects
        self.lock = threading.Lock()

    def append(self, text: str) -> None:
        with self.lock:
            self.events.append(Entry(text, threading.get_ident(), on_pool_thread()))

    def sent(self) -> None:
        with self.lock:
            self.events.append((SENT, threading.get_ident()))

    def texts(self) -> list[str]:
        return [e[0] if isinstance(e, tuple) else e.text for e in self.events]

    def entry(self, text: str) -> Entry:
        [entry] = [e for e in self.events if isinstance(e, Entry) and e.text == text]
        return entry

    def loop_thread(self) -> int:
        threads = {e[1] for e in self.events if isinstance(e, tuple)}
        assert len(threads) == 1, threads
        return threads.pop()


def recording_sent(app: Any, outbox: Outbox) -> Any:
    """Wrap an ASGI app to record SENT once the last body message is sent."""

    async def wrapped(scope: dict, receive: Callable, send: Callable) -> None:
        async def send_and_record(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                outbox.sent()

        await app(scope, receive, send_and_record)

    return wrapped


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    # Building an Esmerald app configures the root logger: undo it afterwards.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def backend(loop_kind: str, loop_factory: Callable[[], Any] | None) -> dict[str, Any]:
    """The test client's keyword arguments that run the app on this loop kind:
    anyio's trio backend for trio (a trio run, as hypercorn with trio makes
    one), its asyncio backend on a loop of this kind otherwise."""
    if loop_kind == "trio":
        return {"backend": "trio"}
    return {"backend": "asyncio", "backend_options": {"loop_factory": loop_factory}}


@pytest.fixture
def client_for(backend: dict[str, Any]) -> Callable[..., Any]:
    """`client_for(TestClientClass, module)`: a test client of the example's app,
    on this loop kind, with the example's OUTBOX swapped for an Outbox."""

    def make(client_class: Any, module: ModuleType) -> tuple[Any, Outbox]:
        outbox = Outbox()
        module.OUTBOX = outbox
        app = recording_sent(module.app, outbox)
        client = client_class(app, **backend)
        return client, outbox

    return make


def assert_sync_on_pool(outbox: Outbox, text: str) -> None:
    entry = outbox.entry(text)
    assert entry.pool_thread, entry
    assert entry.thread != outbox.loop_thread()


def assert_async_on_loop(outbox: Outbox, text: str) -> None:
    entry = outbox.entry(text)
    assert not entry.pool_thread, entry
    assert entry.thread == outbox.loop_thread()


# -- the ASGI frameworks -------------------------------------------------------


def test_starlette_signup_answers_then_runs_the_tasks_in_order(client_for):
    from starlette.testclient import TestClient

    client, outbox = client_for(TestClient, load_example("starlette_app"))

    response = client.post("/signup", json={"email": "ada@example.com"})

    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert outbox.texts() == [
        SENT,
        "welcome mail to ada@example.com",
        "audit: signup by ada@example.com",
    ]
    assert_sync_on_pool(outbox, "welcome mail to ada@example.com")
    assert_async_on_loop(outbox, "audit: signup by ada@example.com")


def test_starlette_ping_runs_a_single_task_after_the_response(client_for):
    from starlette.testclient import TestClient

    client, outbox = client_for(TestClient, load_example("starlette_app"))

    response = client.get("/ping")

    assert (response.status_code, response.json()) == (200, {"pong": True})
    assert outbox.texts() == [SENT, "audit: ping by -"]


def test_fastapi_response_background_task_runs_on_the_pool_after_the_response(client_for):
    from fastapi.testclient import TestClient

    client, outbox = client_for(TestClient, load_example("fastapi_app"))

    response = client.post("/orders/7", params={"email": "ada@example.com"})

    assert (response.status_code, response.json()) == (200, {"order": 7, "status": "accepted"})
    assert outbox.texts() == [SENT, "receipt for order 7 to ada@example.com"]
    assert_sync_on_pool(outbox, "receipt for order 7 to ada@example.com")


def test_fastapi_background_tasks_runs_a_task_added_to_it(client_for):
    from fastapi.testclient import TestClient

    client, outbox = client_for(TestClient, load_example("fastapi_app"))

    response = client.post("/orders/7/ship")

    assert (response.status_code, response.json()) == (200, {"order": 7, "status": "shipping"})
    assert outbox.texts() == [SENT, "warehouse told about order 7"]
    assert_async_on_loop(outbox, "warehouse told about order 7")


@needs_ravyn
def test_ravyn_response_background_task_runs_on_the_pool_after_the_response(client_for):
    from ravyn.testclient import RavynTestClient

    client, outbox = client_for(RavynTestClient, load_example("ravyn_app"))

    response = client.post("/invoices/3")

    assert response.status_code == 201
    assert response.json() == {"invoice": 3, "status": "created"}
    assert outbox.texts() == [SENT, "invoice 3 sent"]
    assert_sync_on_pool(outbox, "invoice 3 sent")


@needs_ravyn
def test_ravyn_route_background_task_runs_after_every_response(client_for):
    from ravyn.testclient import RavynTestClient

    client, outbox = client_for(RavynTestClient, load_example("ravyn_app"))

    responses = [client.get("/home") for _ in range(2)]

    assert [(r.status_code, r.json()) for r in responses] == [(200, {"page": "home"})] * 2
    assert outbox.texts() == [SENT, "visit of home"] * 2
    assert all(not e.pool_thread for e in outbox.events if isinstance(e, Entry))


@needs_esmerald
def test_esmerald_response_background_task_runs_on_the_pool_after_the_response(client_for):
    from esmerald.testclient import EsmeraldTestClient

    client, outbox = client_for(EsmeraldTestClient, load_example("esmerald_app"))

    response = client.post("/invoices/3")

    assert response.status_code == 201
    assert response.json() == {"invoice": 3, "status": "created"}
    assert outbox.texts() == [SENT, "invoice 3 sent"]
    assert_sync_on_pool(outbox, "invoice 3 sent")


@needs_esmerald
def test_esmerald_route_background_task_runs_after_every_response(client_for):
    from esmerald.testclient import EsmeraldTestClient

    client, outbox = client_for(EsmeraldTestClient, load_example("esmerald_app"))

    responses = [client.get("/home") for _ in range(2)]

    assert [(r.status_code, r.json()) for r in responses] == [(200, {"page": "home"})] * 2
    assert outbox.texts() == [SENT, "visit of home"] * 2
    assert all(not e.pool_thread for e in outbox.events if isinstance(e, Entry))


def test_lilya_publish_answers_then_runs_the_tasks_in_order(client_for):
    from lilya.testclient import TestClient

    client, outbox = client_for(TestClient, load_example("lilya_app"))

    response = client.post("/articles/5/publish")

    assert (response.status_code, response.json()) == (200, {"article": 5, "published": True})
    assert outbox.texts() == [SENT, "cache purged: article:5", "article 5 reindexed"]
    assert_sync_on_pool(outbox, "cache purged: article:5")
    assert_async_on_loop(outbox, "article 5 reindexed")


# -- what the work did (/outbox) and the drain at shutdown (lifespan) ----------

# Each ASGI example: its test client, a first request and what it leaves in
# OUTBOX once its background work ran, then a report built by an async
# @background call that runs for a second on the server's loop.
ASGI_EXAMPLES = {
    "starlette_app": (
        "starlette.testclient:TestClient",
        ("POST", "/signup", {"json": {"email": "ada@example.com"}}),
        ["welcome mail to ada@example.com", "audit: signup by ada@example.com"],
    ),
    "fastapi_app": (
        "fastapi.testclient:TestClient",
        ("POST", "/orders/7", {"params": {"email": "ada@example.com"}}),
        ["receipt for order 7 to ada@example.com"],
    ),
    "lilya_app": (
        "lilya.testclient:TestClient",
        ("POST", "/articles/5/publish", {}),
        ["cache purged: article:5", "article 5 reindexed"],
    ),
    "ravyn_app": (
        "ravyn.testclient:RavynTestClient",
        ("POST", "/invoices/3", {}),
        ["invoice 3 sent"],
    ),
    "esmerald_app": (
        "esmerald.testclient:EsmeraldTestClient",
        ("POST", "/invoices/3", {}),
        ["invoice 3 sent"],
    ),
}
ASGI_PARAMS = [
    pytest.param("ravyn_app", marks=needs_ravyn)
    if name == "ravyn_app"
    else pytest.param("esmerald_app", marks=needs_esmerald)
    if name == "esmerald_app"
    else name
    for name in ASGI_EXAMPLES
]


def client_class_of(name: str) -> Any:
    module_name, class_name = ASGI_EXAMPLES[name][0].split(":")
    return getattr(importlib.import_module(module_name), class_name)


@pytest.mark.parametrize("name", ASGI_PARAMS)
def test_outbox_route_shows_what_the_background_work_did(name, backend):
    module = load_example(name)
    _, (method, path, options), expected = ASGI_EXAMPLES[name]
    client = client_class_of(name)(module.app, **backend)

    assert client.get("/outbox").json() == {"outbox": []}
    assert client.request(method, path, **options).status_code in (200, 201)

    # The test client returns once the app ended, background work included.
    assert client.get("/outbox").json() == {"outbox": expected}


@pytest.mark.parametrize("name", ASGI_PARAMS)
def test_lifespan_shutdown_drains_an_async_background_call(name, backend):
    from starlette.testclient import TestClient

    module = load_example(name)
    # Starlette's client for every app: Lilya's (and so Ravyn's and
    # Esmerald's), as a context manager, never closes the memory streams it
    # talks to the lifespan through (a ResourceWarning, an error here).
    with TestClient(module.app, **backend) as client:
        response = client.post("/reports/4")
        assert (response.status_code, response.json()) == (202, {"report": 4, "status": "building"})
    # Leaving the block ran the lifespan's shutdown, then closed the loop:
    # the report, a second's work on that loop, finished in between.
    assert module.OUTBOX == ["report 4 built"]


# A real server: uvicorn in a subprocess, serving the example's app, stopped
# with SIGINT as Ctrl-C does; it prints OUTBOX once uvicorn.run() returned.
SERVE = """
import importlib.util, json, sys
import uvicorn
import backgrounder

path, port, drain, attribute = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if drain == "without drain":
    async def no_drain(timeout=None):
        return True
    backgrounder.drain = no_drain
spec = importlib.util.spec_from_file_location("example", path)
module = sys.modules["example"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
uvicorn.run(getattr(module, attribute), host="127.0.0.1", port=port, log_level="info")
print("OUTBOX", json.dumps(module.OUTBOX), flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def answers(client: Any, path: str) -> bool:
    import httpx

    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def serve_and_interrupt(
    name: str, tmp_path: Any, drain: str = "with drain"
) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """Serve the example with uvicorn, use it as the page says, start a
    report, then SIGINT: the process's output, and what /outbox showed."""
    import httpx

    if name == "django_app":  # Django's URLs end with a slash
        attribute, slash = "application", "/"
        method, path, options = "GET", "/orders/1/", {}
        expected = ["receipt for order 1", "warehouse told about order 1"]
    else:
        attribute, slash = "app", ""
        _, (method, path, options), expected = ASGI_EXAMPLES[name]
    port = free_port()
    script = os.path.join(EXAMPLES, f"{name}.py")
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", SERVE, script, str(port), drain, attribute],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    seen: list[Any] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            outbox = "/outbox" + slash
            wait_until(lambda: proc.poll() is not None or answers(client, outbox), "the server")
            assert proc.poll() is None, "the server exited"
            assert client.request(method, path, **options).status_code in (200, 201)
            # The work runs after the response was sent: /outbox shows it soon.
            wait_until(lambda: client.get(outbox).json()["outbox"] == expected, outbox)
            seen.append(client.get(outbox).json())
            response = client.post("/reports/9" + slash)
            assert (response.status_code, response.json()) == (202, {"report": 9, "status": "building"})
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def printed_outbox(proc: subprocess.CompletedProcess[str]) -> list[str]:
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("OUTBOX ")]
    return json.loads(line[len("OUTBOX ") :])


@pytest.mark.parametrize("name", ASGI_PARAMS)
def test_uvicorn_serves_the_example_and_ctrl_c_drains_the_background_work(name, tmp_path):
    proc, seen = serve_and_interrupt(name, tmp_path)

    assert proc.returncode == 0, describe(proc)
    expected = ASGI_EXAMPLES[name][2]
    assert seen == [{"outbox": expected}]
    assert printed_outbox(proc) == [*expected, "report 9 built"], describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)


def test_django_under_uvicorn_drains_the_background_work_in_its_asgi_lifespan(tmp_path):
    pytest.importorskip("django")
    if importlib.util.find_spec("django.tasks") is None:
        pytest.importorskip("django_tasks")

    proc, seen = serve_and_interrupt("django_app", tmp_path)

    assert proc.returncode == 0, describe(proc)
    expected = ["receipt for order 1", "warehouse told about order 1"]
    assert seen == [{"outbox": expected}]
    assert sorted(printed_outbox(proc)) == sorted([*expected, "report 9 built"]), describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)


@pytest.mark.parametrize("name", ["starlette_app", "django_app"])
def test_uvicorn_ctrl_c_cancels_async_background_work_without_the_drain(name, tmp_path):
    # What the lifespan's drain is for: without it, the report still running
    # on the server's loop is cancelled when uvicorn closes the loop, and
    # backgrounder logs the cancellation.
    if name == "django_app":
        pytest.importorskip("django")
        if importlib.util.find_spec("django.tasks") is None:
            pytest.importorskip("django_tasks")
    proc, _ = serve_and_interrupt(name, tmp_path, drain="without drain")

    assert proc.returncode == 0, describe(proc)
    assert "report 9 built" not in printed_outbox(proc)
    assert re.search(r"build_report.*cancel", proc.stderr), describe(proc)


# -- taskiq on backgrounder (docs/scale-out.md) ---------------------------------


@pytest.mark.asyncio_only("taskiq's brokers and result backends run on asyncio only, never in a trio run")
def test_taskiq_app_runs_its_tasks_on_backgrounder_and_drains_them_at_shutdown(
    loop_factory, monkeypatch
):
    pytest.importorskip("taskiq")
    from fastapi.testclient import TestClient

    monkeypatch.delenv("REDIS_URL", raising=False)
    module = load_example("taskiq_app")
    from backgrounder.taskiq import BackgrounderBroker

    assert isinstance(module.broker, BackgrounderBroker)
    client = TestClient(module.app, backend="asyncio", backend_options={"loop_factory": loop_factory})

    def status(task_id: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while True:
            body = client.get(f"/tasks/{task_id}").json()
            if body["ready"] or time.monotonic() > deadline:
                return body
            time.sleep(0.01)

    with client:  # runs the lifespan: broker.startup() ... broker.shutdown()
        photo = client.post("/photos/cat.png")
        signup = client.post("/signup", params={"email": "ada@example.com"}).json()
        good = client.post("/orders/1/charge", params={"cents": 250}).json()
        bad = client.post("/orders/2/charge", params={"cents": 0}).json()
        statuses = [status(t["task_id"]) for t in (signup, good, bad)]
        late = client.post("/signup", params={"email": "bob@example.com"}).json()
    # Leaving the block ran broker.shutdown(), which waited for the last task
    # (had it not, the loop's end would have cancelled it).
    late_result = asyncio.run(module.broker.result_backend.get_result(late["task_id"]))

    assert (photo.status_code, photo.json()) == (200, {"thumbnail": "cat.256.png"})
    assert statuses == [
        {"ready": True, "value": {"to": "ada@example.com", "sent": True}},
        {"ready": True, "value": {"order": 1, "charged": 250}},
        {"ready": True, "error": "ValueError('order 2: cannot charge 0 cents')"},
    ]
    assert not late_result.is_err, late_result.error
    assert late_result.return_value == {"to": "bob@example.com", "sent": True}


# -- the scripts, each in its own interpreter ----------------------------------


def run_example(name: str, tmp_path: Any) -> subprocess.CompletedProcess[str]:
    """`python -I -W error docs/examples/<name>.py`, away from the source tree."""
    return subprocess.run(
        [sys.executable, "-I", "-W", "error", os.path.join(EXAMPLES, f"{name}.py")],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    out, err = proc.stdout[-3000:], proc.stderr[-3000:]
    return f"exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def test_script_returns_results_and_completes_every_unwaited_call_at_exit(tmp_path):
    proc = run_example("script", tmp_path)

    assert (proc.returncode, proc.stderr) == (0, ""), describe(proc)
    first, *rest = proc.stdout.splitlines()
    assert first == "['cat.thumb.png', 'dog.thumb.png', 'owl.thumb.png']"
    # An exit drain that takes over 0.2 s says so on the backgrounder logger,
    # which this script's logging prints: a loaded machine gets that line.
    waiting = [line for line in rest if line.startswith("Waiting for ")]
    assert all(
        re.fullmatch(r"Waiting for \d+ background calls? to complete\. \(CTRL\+C again to abandon (them|it)\)", line)
        for line in waiting
    ), waiting
    assert len(waiting) <= 1
    assert sorted(line for line in rest if line not in waiting) == sorted(f"line {i}" for i in range(1000))


def test_asyncio_script_prints_what_the_page_says(tmp_path):
    proc = run_example("asyncio_script", tmp_path)

    assert (proc.returncode, proc.stderr) == (0, ""), describe(proc)
    assert proc.stdout.splitlines() == [
        "2cf24dba5fb0",  # sha256(b"hello"), first 12 hex digits
        "b'index.html'",
        "100 checksums",
        "['first', 'second']",
        "warmed home",
    ]


def test_lifecycle_shows_errors_on_error_stats_and_shutdown(tmp_path):
    proc = run_example("lifecycle", tmp_path)

    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.splitlines() == [
        "handle.result() raised: cannot charge -1",
        "on_error got: [ValueError('cannot charge -3')]",
        "submitted 3 failed 3",
        "shut down cleanly: True",
        "after shutdown: backgrounder is shut down: it accepts no new work",
    ]
    # Only the exception nobody retrieved (-2) reaches the log: -1 was
    # retrieved from the handle, -3 went to on_error.
    log = proc.stderr
    assert log.count("ERROR backgrounder: background call __main__.charge failed") == 1, log
    assert "Traceback (most recent call last)" in log
    assert "ValueError: cannot charge -2" in log
    assert "cannot charge -1" not in log and "cannot charge -3" not in log


def test_django_app_views_start_background_work_and_the_task_backend_runs_tasks(tmp_path):
    pytest.importorskip("django")
    if importlib.util.find_spec("django.tasks") is None:
        pytest.importorskip("django_tasks")

    proc = run_example("django_app", tmp_path)

    assert (proc.returncode, proc.stderr) == (0, ""), describe(proc)
    lines = proc.stdout.splitlines()
    assert lines[:2] == [
        "{'order': 1, 'status': 'accepted'}",
        "{'order': 2, 'status': 'cancelled'}",
    ]
    # The status at enqueue depends on how far the task got meanwhile.
    assert re.fullmatch(r"\{'task': '[\w-]+', 'status': '(READY|RUNNING|SUCCESSFUL)'\}", lines[2])
    assert lines[3:] == [
        "newsletter 7 sent",
        "receipt for order 1",
        "receipt for order 2",
        "warehouse told about order 1",
        "{'status': 'SUCCESSFUL', 'value': {'issue': 7, 'recipients': 3}}",
    ]


def test_django_runserver_serves_the_views_and_outbox_shows_the_work(tmp_path):
    pytest.importorskip("django")
    if importlib.util.find_spec("django.tasks") is None:
        pytest.importorskip("django_tasks")
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-I", os.path.join(EXAMPLES, "django_app.py"), "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_until(lambda: proc.poll() is not None or answers(client, "/outbox/"), "runserver")
            assert proc.poll() is None, "runserver exited"
            assert client.get("/orders/1/").json() == {"order": 1, "status": "accepted"}
            assert client.get("/orders/2/cancel/").json() == {"order": 2, "status": "cancelled"}
            expected = ["receipt for order 1", "receipt for order 2", "warehouse told about order 1"]
            wait_until(lambda: client.get("/outbox/").json()["outbox"] == expected, "/outbox/")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert proc.returncode == 0, describe(done)
    assert "Traceback" not in err, describe(done)


def test_the_readme_demo_shows_a_failing_background_call_logged(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-I", "-W", "error", "-m", "backgrounder"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert (proc.returncode, proc.stderr) == (0, ""), describe(proc)
    out = proc.stdout
    assert "@background: resized cat.png" in out
    logged = out.index("ERROR backgrounder: background call __main__.charge_card failed")
    assert out.index("Traceback (most recent call last)", logged) < out.index(
        "ValueError: card declined for 42", logged
    )
    assert "'failed': 1" in out


def run_example_package(
    name: str, tmp_path: Any, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -W error -m <name>` for a package in docs/examples, away from the
    source tree, without the environment variables named in `unset`."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", name],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": EXAMPLES},
    )


def test_scaleout_django_runs_its_tasks_on_backgrounder_and_reads_their_results(tmp_path):
    pytest.importorskip("django")
    if importlib.util.find_spec("django.tasks") is None:
        pytest.importorskip("django_tasks")
    settings = ("PGDATABASE", "TASKS_BACKEND", "DJANGO_SETTINGS_MODULE")

    proc = run_example_package("scaleout_django", tmp_path, unset=settings)

    assert proc.returncode == 0, describe(proc)
    out = json.loads(proc.stdout)
    assert out["results"] == {
        "welcome": {"status": "SUCCESSFUL", "value": "welcome mail to ada@example.com"},
        "invoice": {"status": "SUCCESSFUL", "value": {"order": 1, "total": "25.00"}},
        "refused": {"status": "FAILED", "error": "ValueError: order 2: cannot charge 0 cents"},
        "charged": {"status": "SUCCESSFUL", "value": 990},
        "later": {"status": "SUCCESSFUL", "value": "later"},
        "busy": {"status": "SUCCESSFUL", "value": "report rebuilt"},
        "low": {"status": "SUCCESSFUL", "value": "low"},
        "high": {"status": "SUCCESSFUL", "value": "high"},
    }
    assert out["later started early by (s)"] == 0.0
    assert out["started first"] == "high"
    # One attempt each, all by this process's backend.
    assert len({tuple(ids) for ids in out["runs"].values()}) == 1
    assert all(len(ids) == 1 for ids in out["runs"].values())
    # Nothing reaches stderr but the one failure: the django-tasks backport's
    # logger prints it there; Django 6 logs it on "django.tasks", which
    # Django's default logging shows only with DEBUG = True.
    if proc.stderr:
        assert proc.stderr.count("Traceback (most recent call last)") == 1, proc.stderr
        assert "ValueError: order 2: cannot charge 0 cents" in proc.stderr


# -- the pages and the examples agree ------------------------------------------

INCLUDE = re.compile(r'^\s*--8<--\s+"([^":]+)(?::([\w-]+))?"\s*$', re.MULTILINE)


def includes() -> list[tuple[str, str, str | None]]:
    """(page, file, section or None) of every snippet include in docs/*.md."""
    found = []
    for page in sorted(os.listdir(DOCS)):
        if page.endswith(".md"):
            with open(os.path.join(DOCS, page)) as f:
                found += [(page, m[1], m[2]) for m in INCLUDE.finditer(f.read())]
    return found


def example_names() -> list[str]:
    """Example files, and example packages (folders with an __init__.py)."""
    names = [f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py")]
    names += [
        f for f in os.listdir(EXAMPLES) if os.path.isfile(os.path.join(EXAMPLES, f, "__init__.py"))
    ]
    return sorted(names)


def test_every_include_names_an_existing_example_and_section():
    assert includes()
    for page, file, section in includes():
        path = os.path.join(EXAMPLES, file)
        assert os.path.isfile(path), (page, file)
        if section is not None:
            with open(path) as f:
                text = f.read()
            assert f"# --8<-- [start:{section}]" in text, (page, file, section)
            assert f"# --8<-- [end:{section}]" in text, (page, file, section)


def test_every_example_is_included_by_a_page_and_tested_here():
    included = {file.split("/")[0].removesuffix(".py") for _, file, _ in includes()}
    with open(__file__) as f:
        this_file = f.read()
    for name in example_names():
        assert name in included, f"docs/examples/{name} is in no page"
        loaded = any(
            f'{runner}("{name}"' in this_file
            for runner in ("load_example", "run_example", "run_example_package")
        )
        assert loaded, f"docs/examples/{name} is not tested"
