"""backgrounder's Task and Tasks as the `background` of a response.

Each framework (Starlette, FastAPI, Lilya, Ravyn, Esmerald) awaits
`background()` after it has sent the response body. These tests drive real applications
through httpx's ASGITransport inside the `run` fixture (so under asyncio,
uvloop and trio) and through each framework's own test client (its anyio
portal on the same loop kind), and check that the work ran after the
response, with its arguments, on the right thread, and that its failures
reach the caller.  Every framework here runs under trio as well, through
anyio. The last tests use a Task with anyio's task groups directly, as
Lilya's `Tasks(as_group=True)` and many apps do.

Esmerald (3.9.4, the newest) works only with Lilya 0.23.3, and Ravyn (its
successor) needs the newest Lilya: the two cannot be installed together.
requirements/test.txt has Ravyn; requirements/esmerald.txt makes the
environment in which .ci/edges.sh runs the Esmerald tests (`-k esmerald`).
A framework named in BACKGROUNDER_TEST_FRAMEWORKS (by default all but
Esmerald) must be importable; the tests of one that is not named and not
installed are skipped, with the reason.
"""

# No `from __future__ import annotations` here: Esmerald reads the handler's
# return annotation at runtime, and a string annotation makes it replace the
# returned response's `background` with the route's (None).

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import fastapi
import fastapi.responses
import fastapi.testclient
import httpx
import lilya.apps
import lilya.background
import lilya.responses
import lilya.routing
import lilya.testclient
import pytest
import starlette.applications
import starlette.responses
import starlette.routing
import starlette.testclient

from backgrounder import Task, Tasks

# Ravyn 0.4.3 installs on Python 3.10 to 3.14.
DEFAULT_FRAMEWORKS = "starlette,fastapi,lilya" + (",ravyn" if sys.version_info < (3, 15) else "")
REQUIRED = os.environ.get("BACKGROUNDER_TEST_FRAMEWORKS", DEFAULT_FRAMEWORKS)

try:
    import ravyn
    import ravyn.testclient
except ImportError:
    if "ravyn" in REQUIRED.split(","):
        raise
    ravyn = None  # type: ignore[assignment]

try:
    import esmerald
    import esmerald.testclient
except ImportError:
    if "esmerald" in REQUIRED.split(","):
        raise
    esmerald = None  # type: ignore[assignment]

NOT_INSTALLED = {
    "ravyn": ravyn is None,
    "esmerald": esmerald is None,
}
WHY_NOT_INSTALLED = {
    "ravyn": "ravyn is not installed here (requirements/test.txt has it)",
    "esmerald": (
        "esmerald is not installed here: it needs lilya 0.23.3, so its tests run in "
        "a virtualenv of their own (requirements/esmerald.txt, .ci/edges.sh)"
    ),
}


def needs(name: str) -> pytest.MarkDecorator:
    """Skip the test when the optional framework `name` is not installed."""
    return pytest.mark.skipif(NOT_INSTALLED[name], reason=WHY_NOT_INSTALLED.get(name, ""))

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
MakeBackground = Callable[[], Any]

SENT = "response sent"
WAIT = 5.0  # seconds: bound on every wait between threads


# -- what the background work records ------------------------------------


@dataclass(frozen=True)
class ThreadInfo:
    ident: int
    comm: str  # the OS thread name, from /proc
    dummy: bool  # threading.current_thread() is a _DummyThread


def running_loop() -> Any:
    """What stands for the running event loop: asyncio's loop object, or,
    in a trio run (which has no loop object), that run's TrioToken."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token()


def loop_kind_of(loop: Any) -> str:
    """The loop kind ("asyncio", "uvloop", "trio") of what running_loop() gave."""
    module = type(loop).__module__
    if module.startswith("trio"):
        return "trio"
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def current_thread_info() -> ThreadInfo:
    native_id = threading.get_native_id()
    with open(f"/proc/self/task/{native_id}/comm") as f:
        comm = f.read().strip()
    return ThreadInfo(
        ident=threading.get_ident(),
        comm=comm,
        dummy=isinstance(threading.current_thread(), threading._DummyThread),
    )


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple
    kwargs: dict
    thread: ThreadInfo
    loop: Any  # running_loop(), for async work; None for sync work


class Boom(Exception):
    pass


class Recorder:
    """Background work that records its calls, and the request that made it."""

    def __init__(self) -> None:
        self.events: list[Any] = []  # SENT and Call entries, in order
        self.handler_thread: int | None = None
        self.handler_loop: Any = None  # running_loop() in the handler

    def sync(self, name: str, *args: Any, **kwargs: Any) -> str:
        self.events.append(Call(name, args, kwargs, current_thread_info(), None))
        return name

    async def async_(self, name: str, *args: Any, **kwargs: Any) -> str:
        await anyio.sleep(0)
        self.events.append(Call(name, args, kwargs, current_thread_info(), running_loop()))
        return name

    def fail(self, name: str) -> None:
        self.events.append(Call(name, (), {}, current_thread_info(), None))
        raise Boom(name)

    async def async_fail(self, name: str) -> None:
        await anyio.sleep(0)
        self.events.append(Call(name, (), {}, current_thread_info(), None))
        raise Boom(name)

    def names(self) -> list[str]:
        return [e if isinstance(e, str) else e.name for e in self.events]

    def calls(self) -> list[Call]:
        return [e for e in self.events if isinstance(e, Call)]

    def in_handler(self, make_background: MakeBackground) -> MakeBackground:
        """Wrap `make_background` to note the handler's thread and loop."""

        def make() -> Any:
            self.handler_thread = threading.get_ident()
            self.handler_loop = running_loop()
            return make_background()

        return make


def recording_sent(app: ASGIApp, recorder: Recorder) -> ASGIApp:
    """Wrap an ASGI app to record SENT once the last body message is sent."""

    async def wrapped(scope: dict, receive: Callable, send: Callable) -> None:
        async def send_and_record(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                recorder.events.append(SENT)

        await app(scope, receive, send_and_record)

    return wrapped


# -- one application per framework: GET / answers "ok" with a background --


def starlette_app(make_background: MakeBackground) -> ASGIApp:
    async def endpoint(request: Any) -> starlette.responses.Response:
        return starlette.responses.PlainTextResponse("ok", background=make_background())

    return starlette.applications.Starlette(routes=[starlette.routing.Route("/", endpoint)])


def fastapi_app(make_background: MakeBackground) -> ASGIApp:
    app = fastapi.FastAPI(openapi_url=None)

    @app.get("/")
    async def endpoint() -> fastapi.responses.PlainTextResponse:
        return fastapi.responses.PlainTextResponse("ok", background=make_background())

    return app


def ravyn_app(make_background: MakeBackground) -> ASGIApp:
    # As in Esmerald, a handler annotated with a Response class returns its
    # response as it is; the annotation must be a class, not a string.
    @ravyn.get("/")
    async def endpoint() -> ravyn.Response:
        return ravyn.Response("ok", media_type="text/plain", background=make_background())

    return ravyn.Ravyn(routes=[ravyn.Gateway(handler=endpoint)], enable_openapi=False)


def esmerald_app(make_background: MakeBackground) -> ASGIApp:
    # The return annotation matters: for a handler whose annotation is not a
    # Response class (none, or a string), Esmerald replaces the returned
    # response's `background` with the route's (`@get(background=...)`).
    @esmerald.get("/")
    async def endpoint() -> esmerald.Response:
        return esmerald.Response("ok", media_type="text/plain", background=make_background())

    return esmerald.Esmerald(routes=[esmerald.Gateway(handler=endpoint)], enable_openapi=False)


def lilya_app(make_background: MakeBackground) -> ASGIApp:
    async def endpoint() -> lilya.responses.Response:
        return lilya.responses.PlainText("ok", background=make_background())

    return lilya.apps.Lilya(routes=[lilya.routing.Path("/", endpoint)])


FRAMEWORKS: dict[str, Callable[[MakeBackground], ASGIApp]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "lilya": lilya_app,
    "ravyn": ravyn_app,
    "esmerald": esmerald_app,
}

TEST_CLIENTS: dict[str, Callable[..., Any]] = {
    "starlette": starlette.testclient.TestClient,
    "fastapi": fastapi.testclient.TestClient,
    "lilya": lilya.testclient.TestClient,
    "ravyn": lambda *a, **k: ravyn.testclient.RavynTestClient(*a, **k),
    "esmerald": lambda *a, **k: esmerald.testclient.EsmeraldTestClient(*a, **k),
}


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    # Building an Esmerald app runs logging.config.dictConfig: a stderr
    # handler and level INFO on the root logger. Undo it for later tests.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(
    params=[
        pytest.param(name, marks=needs(name)) if name in NOT_INSTALLED else name
        for name in FRAMEWORKS
    ]
)
def framework(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def serve(framework: str, recorder: Recorder) -> Callable[[MakeBackground], ASGIApp]:
    """`serve(make_background)`: this framework's app, recording SENT."""

    def serve(make_background: MakeBackground) -> ASGIApp:
        app = FRAMEWORKS[framework](recorder.in_handler(make_background))
        return recording_sent(app, recorder)

    return serve


def task_error(framework: str, excinfo: pytest.ExceptionInfo) -> BaseException:
    """The exception of the background work, as the app let it out."""
    exc = excinfo.value
    if framework in ("ravyn", "esmerald"):
        # Their exception middleware (RavynAPIException, EsmeraldAPIException)
        # answers every exception with a 500 response, also one raised after
        # the response was sent: the test client then fails on the second
        # "http.response.start" message (uvicorn raises RuntimeError, see
        # test_docs_examples), the task's exception chained to it as
        # __context__.
        assert isinstance(exc, AssertionError)
        exc = exc.__context__
    return exc


async def get(app: ASGIApp, path: str = "/", times: int = 1) -> list[httpx.Response]:
    """GET `path` `times` times through httpx's ASGITransport, on this loop."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return [await client.get(path) for _ in range(times)]


def assert_ok(responses: list[httpx.Response]) -> None:
    assert [(r.status_code, r.text) for r in responses] == [(200, "ok")] * len(responses)


# -- a Task as the background of a response ------------------------------


def test_sync_task_runs_after_response_with_its_args_and_kwargs(run, serve, recorder):
    app = serve(lambda: Task(recorder.sync, "welcome", 42, email="a@b.c"))

    assert_ok(run(get(app)))

    assert recorder.names() == [SENT, "welcome"]
    [call] = recorder.calls()
    assert (call.args, call.kwargs) == ((42,), {"email": "a@b.c"})


def test_async_task_runs_after_response_with_its_args_and_kwargs(run, serve, recorder):
    app = serve(lambda: Task(recorder.async_, "welcome", 42, email="a@b.c"))

    assert_ok(run(get(app)))

    assert recorder.names() == [SENT, "welcome"]
    [call] = recorder.calls()
    assert (call.args, call.kwargs) == ((42,), {"email": "a@b.c"})


def test_sync_task_runs_on_a_native_pool_thread(run, serve, recorder):
    app = serve(lambda: Task(recorder.sync, "work"))

    run(get(app))

    [call] = recorder.calls()
    assert call.thread.comm == "backgrounder"
    assert call.thread.dummy
    assert call.thread.ident != recorder.handler_thread


def test_async_task_runs_on_the_loop_thread(run, loop_kind, serve, recorder):
    app = serve(lambda: Task(recorder.async_, "work"))

    run(get(app))

    [call] = recorder.calls()
    assert call.thread.ident == recorder.handler_thread == threading.get_ident()
    assert call.loop is recorder.handler_loop
    assert loop_kind_of(call.loop) == loop_kind


def test_same_task_runs_once_per_response(run, serve, recorder):
    task = Task(recorder.sync, "work")
    app = serve(lambda: task)

    assert_ok(run(get(app, times=3)))

    assert recorder.names() == [SENT, "work"] * 3


def test_sync_task_error_propagates_out_of_the_app(run, framework, serve, recorder):
    app = serve(lambda: Task(recorder.fail, "failing work"))

    with pytest.raises(Exception) as excinfo:
        run(get(app))

    error = task_error(framework, excinfo)
    assert (type(error), str(error)) == (Boom, "failing work")

    assert recorder.names() == [SENT, "failing work"]


def test_async_task_error_propagates_out_of_the_app(run, framework, serve, recorder):
    app = serve(lambda: Task(recorder.async_fail, "failing work"))

    with pytest.raises(Exception) as excinfo:
        run(get(app))

    error = task_error(framework, excinfo)
    assert (type(error), str(error)) == (Boom, "failing work")

    assert recorder.names() == [SENT, "failing work"]


# -- Tasks as the background of a response -------------------------------


def test_tasks_run_in_order_after_response(run, serve, recorder):
    app = serve(
        lambda: Tasks(
            [
                Task(recorder.sync, "first", 1),
                Task(recorder.async_, "second", key="v"),
                Task(recorder.sync, "third"),
            ]
        )
    )

    assert_ok(run(get(app)))

    assert recorder.names() == [SENT, "first", "second", "third"]
    assert [(c.args, c.kwargs) for c in recorder.calls()] == [
        ((1,), {}),
        ((), {"key": "v"}),
        ((), {}),
    ]


def test_tasks_built_with_add_task_run_in_order_after_response(run, serve, recorder):
    def make() -> Tasks:
        tasks = Tasks()
        tasks.add_task(recorder.async_, "first", 1)
        tasks.add_task(recorder.sync, "second", key="v")
        return tasks

    app = serve(make)

    assert_ok(run(get(app)))

    assert recorder.names() == [SENT, "first", "second"]
    assert [(c.args, c.kwargs) for c in recorder.calls()] == [((1,), {}), ((), {"key": "v"})]


def test_tasks_error_stops_the_later_tasks_and_propagates(run, framework, serve, recorder):
    app = serve(
        lambda: Tasks(
            [
                Task(recorder.sync, "first"),
                Task(recorder.fail, "failing"),
                Task(recorder.sync, "never"),
            ]
        )
    )

    with pytest.raises(Exception) as excinfo:
        run(get(app))

    error = task_error(framework, excinfo)
    assert (type(error), str(error)) == (Boom, "failing")
    assert recorder.names() == [SENT, "first", "failing"]


def test_tasks_as_group_run_concurrently_after_response(run, serve, recorder):
    # Each task waits for the other at the barrier: run one after the
    # other, the first would break the barrier after WAIT seconds.
    def make() -> Tasks:
        barrier = threading.Barrier(2, timeout=WAIT)

        def meet(name: str) -> None:
            barrier.wait()
            recorder.sync(name)

        return Tasks([Task(meet, "left"), Task(meet, "right")], as_group=True)

    app = serve(make)

    assert_ok(run(get(app)))

    assert recorder.names()[0] == SENT
    assert sorted(recorder.names()[1:]) == ["left", "right"]
    assert all(c.thread.comm == "backgrounder" for c in recorder.calls())


def test_tasks_as_group_error_propagates_as_exception_group(run, framework, serve, recorder):
    app = serve(
        lambda: Tasks(
            [Task(recorder.async_, "fine"), Task(recorder.fail, "failing")], as_group=True
        )
    )

    with pytest.raises(Exception) as excinfo:
        run(get(app))

    error = task_error(framework, excinfo)
    assert isinstance(error, ExceptionGroup)
    assert [(type(e), str(e)) for e in error.exceptions] == [(Boom, "failing")]
    assert recorder.names()[0] == SENT


# -- through each framework's own (synchronous) test client --------------


@pytest.fixture
def framework_client(
    framework: str, loop_kind: str, loop_factory: Callable[[], Any] | None
) -> Callable[[ASGIApp], Any]:
    """`framework_client(app)`: the framework's TestClient, on this loop kind
    (its anyio portal runs trio's backend for "trio")."""

    def make(app: ASGIApp) -> Any:
        if loop_kind == "trio":
            return TEST_CLIENTS[framework](app, backend="trio")
        options = {"loop_factory": loop_factory}
        return TEST_CLIENTS[framework](app, backend="asyncio", backend_options=options)

    return make


def test_test_client_response_is_followed_by_sync_task_on_pool_thread(
    framework_client, serve, recorder
):
    app = serve(lambda: Task(recorder.sync, "welcome", email="a@b.c"))

    response = framework_client(app).get("/")

    assert (response.status_code, response.text) == (200, "ok")
    assert recorder.names() == [SENT, "welcome"]
    [call] = recorder.calls()
    assert call.kwargs == {"email": "a@b.c"}
    assert call.thread.comm == "backgrounder"
    assert call.thread.ident not in (recorder.handler_thread, threading.get_ident())


def test_test_client_response_is_followed_by_async_task_on_loop_thread(
    framework_client, loop_kind, serve, recorder
):
    app = serve(lambda: Task(recorder.async_, "welcome", email="a@b.c"))

    response = framework_client(app).get("/")

    assert (response.status_code, response.text) == (200, "ok")
    assert recorder.names() == [SENT, "welcome"]
    [call] = recorder.calls()
    assert call.kwargs == {"email": "a@b.c"}
    assert call.thread.ident == recorder.handler_thread
    assert call.loop is recorder.handler_loop
    assert loop_kind_of(call.loop) == loop_kind


def test_test_client_raises_the_task_error(framework, framework_client, serve, recorder):
    app = serve(lambda: Task(recorder.fail, "failing work"))

    with pytest.raises(Exception) as excinfo:
        framework_client(app).get("/")

    error = task_error(framework, excinfo)
    assert (type(error), str(error)) == (Boom, "failing work")

    assert recorder.names() == [SENT, "failing work"]


# -- framework-specific ways to attach background work -------------------


# -- Ravyn and Esmerald: the route's own background, @get(background=...) --
#
# Which of the route's background and the returned response's own runs
# depends on the handler's return annotation, read at run time:
#
# - annotated with a Response class (the framework's Response or
#   JSONResponse, Lilya's Response, ...) or a data container (JSON, ...):
#   the response is used as it is; the route's background never runs, so
#   backgrounder 0.2.0's README example (`@get(background=tasks)` on a
#   handler `-> Response`) never ran its tasks;
# - annotated otherwise (`-> dict`, `-> None`, `-> Any`, or any string
#   annotation, as under `from __future__ import annotations`): the route's
#   background runs. Ravyn runs the response's own instead when it has one;
#   Esmerald replaces the response's own with the route's.

ROUTE_FRAMEWORKS = [
    pytest.param("ravyn", marks=needs("ravyn")),
    pytest.param("esmerald", marks=needs("esmerald")),
]
RESPONSE_CLASS_ANNOTATIONS = ["Response", "JSONResponse", "lilya Response", "JSON"]
OTHER_ANNOTATIONS = ["dict", "None", "string"]
RESPONSES = ["response", "response with its own background"]
# A handler annotated with a Response class must return one; the others may
# return data too.
HANDLER_FORMS = [(a, r) for a in RESPONSE_CLASS_ANNOTATIONS for r in RESPONSES] + [
    (a, r) for a in OTHER_ANNOTATIONS for r in ["data", *RESPONSES]
]


def framework_module(framework: str) -> Any:
    return {"ravyn": ravyn, "esmerald": esmerald}[framework]


def app_of(fw: Any, handler: Any) -> ASGIApp:
    app_class = fw.Ravyn if fw is ravyn else fw.Esmerald
    return app_class(routes=[fw.Gateway(handler=handler)], enable_openapi=False)


def annotation_named(fw: Any, name: str) -> Any:
    return {
        "Response": fw.Response,
        "JSONResponse": fw.JSONResponse,
        "lilya Response": lilya.responses.Response,
        "JSON": fw.JSON,
        "dict": dict,
        "None": None,
        "string": "Response",  # as every annotation under `from __future__ import annotations`
    }[name]


def route_background_app(fw: Any, recorder: Recorder, annotation: str, returns: str) -> ASGIApp:
    async def endpoint() -> Any:
        if returns == "data":
            return {"ok": True}
        own = Task(recorder.sync, "own") if returns.endswith("background") else None
        return fw.Response({"ok": True}, media_type="application/json", background=own)

    endpoint.__annotations__["return"] = annotation_named(fw, annotation)
    route_tasks = Tasks([Task(recorder.sync, "route"), Task(recorder.async_, "route, async")])
    return recording_sent(app_of(fw, fw.get("/", background=route_tasks)(endpoint)), recorder)


def expected_route_background(framework: str, annotation: str, returns: str) -> list[str]:
    """What runs after each response: the rule the docs (esmerald.md) state."""
    route, own = [SENT, "route", "route, async"], [SENT, "own"]
    if annotation in RESPONSE_CLASS_ANNOTATIONS:
        return own if returns.endswith("background") else [SENT]
    if framework == "ravyn" and returns.endswith("background"):
        return own
    return route


@pytest.mark.parametrize(("annotation", "returns"), HANDLER_FORMS)
@pytest.mark.parametrize("framework", ROUTE_FRAMEWORKS)
def test_route_background_runs_only_for_handlers_not_annotated_with_a_response_class(
    run, framework, annotation, returns, recorder
):
    app = route_background_app(framework_module(framework), recorder, annotation, returns)

    responses = run(get(app, times=2))

    assert [(r.status_code, r.json()) for r in responses] == [(200, {"ok": True})] * 2
    assert recorder.names() == expected_route_background(framework, annotation, returns) * 2


@pytest.mark.parametrize("framework", ROUTE_FRAMEWORKS)
def test_original_readme_example_never_runs_the_route_background(run, framework, recorder):
    # backgrounder 0.2.0's README, word for word but for the recorder.
    fw = framework_module(framework)
    tasks = Tasks([Task(recorder.sync, "a"), Task(recorder.sync, "b")], as_group=True)

    @fw.get(background=tasks)
    async def home() -> fw.Response:
        return fw.Response("Task started", media_type="text/plain")

    app = app_of(fw, home)

    [response] = run(get(recording_sent(app, recorder)))

    assert (response.status_code, response.text) == (200, "Task started")
    assert recorder.names() == [SENT]


@pytest.mark.parametrize("framework", ROUTE_FRAMEWORKS)
def test_the_forms_the_page_gives_instead_run_the_tasks(run, framework, recorder):
    # docs/esmerald.md, under the warning about the example above.
    fw = framework_module(framework)
    tasks = Tasks([Task(recorder.sync, "a"), Task(recorder.sync, "b")], as_group=True)

    @fw.get()
    async def on_response() -> fw.Response:
        return fw.Response("Task started", media_type="text/plain", background=tasks)

    @fw.get(background=tasks)
    async def on_route() -> dict:
        return {"status": "Task started"}

    for handler in (on_response, on_route):
        recorder.events.clear()

        [response] = run(get(recording_sent(app_of(fw, handler), recorder)))

        assert response.status_code == 200
        assert recorder.names()[0] == SENT
        assert sorted(recorder.names()[1:]) == ["a", "b"]


@pytest.mark.parametrize("framework", ROUTE_FRAMEWORKS)
def test_data_containers_refuse_a_backgrounder_task(framework):
    # JSON, File, Redirect, Stream and Template check `background` with
    # pydantic: only Lilya's own Task and Tasks pass.
    fw = framework_module(framework)

    with pytest.raises(Exception, match="Input should be an instance of") as excinfo:
        fw.JSON(content={"ok": True}, background=Task(print))

    assert type(excinfo.value).__name__ == "ValidationError"


def test_fastapi_background_tasks_dependency_runs_a_task_added_to_it(run, recorder):
    # FastAPI wraps what add_task gets in Starlette's BackgroundTask, which
    # awaits it only if is_async_callable(task); otherwise it calls task()
    # in a thread and drops the result. backgrounder 0.2.0's Task passed.
    app = fastapi.FastAPI(openapi_url=None)

    @app.get("/")
    async def endpoint(background_tasks: fastapi.BackgroundTasks) -> dict:
        background_tasks.add_task(Task(recorder.sync, "work", key="v"))
        return {"ok": True}

    [response] = run(get(recording_sent(app, recorder)))

    assert response.json() == {"ok": True}
    assert recorder.names() == [SENT, "work"]


def test_lilya_tasks_add_task_runs_a_task_given_to_it(run, recorder):
    # Lilya's (and so Esmerald's) Task(func) awaits func() only if
    # lilya.compat.is_async_callable(func), i.e. inspect.iscoroutinefunction
    # of func or of func.__call__; otherwise it calls func() in a thread and
    # drops the result. backgrounder 0.2.0's Task passed.
    def make() -> Any:
        tasks = lilya.background.Tasks()
        tasks.add_task(Task(recorder.sync, "work", key="v"))
        return tasks

    app = lilya_app(make)

    assert_ok(run(get(recording_sent(app, recorder))))

    assert recorder.names() == [SENT, "work"]


def test_lilya_tasks_as_group_run_backgrounder_tasks(run, recorder):
    # Lilya's own Tasks(as_group=True) starts each item with anyio's
    # task_group.start_soon(item).
    def make() -> Any:
        barrier = threading.Barrier(2, timeout=WAIT)

        def meet(name: str) -> None:
            barrier.wait()
            recorder.sync(name)

        return lilya.background.Tasks([Task(meet, "left"), Task(meet, "right")], as_group=True)

    app = lilya_app(make)

    assert_ok(run(get(recording_sent(app, recorder))))

    assert recorder.names()[0] == SENT
    assert sorted(recorder.names()[1:]) == ["left", "right"]


# -- a failing Task under a real server (uvicorn) -------------------------

FAILING_APPS = {
    "starlette": """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
async def endpoint(request):
    return PlainTextResponse("ok", background=Task(fail))
app = Starlette(routes=[Route("/", endpoint)])
""",
    "fastapi": """
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
app = FastAPI()
@app.get("/")
async def endpoint() -> PlainTextResponse:
    return PlainTextResponse("ok", background=Task(fail))
""",
    "lilya": """
from lilya.apps import Lilya
from lilya.responses import PlainText
from lilya.routing import Path
async def endpoint():
    return PlainText("ok", background=Task(fail))
app = Lilya(routes=[Path("/", endpoint)])
""",
    "ravyn": """
from ravyn import Gateway, Ravyn, Response, get
@get("/")
async def endpoint() -> Response:
    return Response("ok", media_type="text/plain", background=Task(fail))
app = Ravyn(routes=[Gateway(handler=endpoint)])
""",
    "esmerald": """
from esmerald import Esmerald, Gateway, Response, get
@get("/")
async def endpoint() -> Response:
    return Response("ok", media_type="text/plain", background=Task(fail))
app = Esmerald(routes=[Gateway(handler=endpoint)])
""",
}
UNEXPECTED_START = "RuntimeError: Unexpected ASGI message 'http.response.start' sent"


@pytest.mark.parametrize(
    "framework",
    [
        "starlette",
        "fastapi",
        "lilya",
        pytest.param("ravyn", marks=needs("ravyn")),
        pytest.param("esmerald", marks=needs("esmerald")),
    ],
)
def test_uvicorn_logs_a_failing_task_once_or_with_a_second_response_error(
    framework, tmp_path
):
    # The failing task's error is logged by uvicorn ("Exception in ASGI
    # application"). Ravyn's and Esmerald's exception middleware then try to
    # send a 500 response after the response was sent, and uvicorn refuses
    # it with a RuntimeError, the task's error chained as its context: theirs,
    # not backgrounder's (docs/esmerald.md).
    source = "from backgrounder import Task\ndef fail():\n    raise ValueError('task failed')\n"
    (tmp_path / "failing_app.py").write_text(source + FAILING_APPS[framework])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "uvicorn", "failing_app:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    body = response.read()
                break
            except OSError:
                time.sleep(0.05)
        # The task runs after the response; at SIGINT uvicorn waits for the
        # requests in flight, background included, before it exits.
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert body == b"ok"
    assert err.count("Exception in ASGI application") == 1, err
    assert "ValueError: task failed" in err, err
    assert (UNEXPECTED_START in err) == (framework in ("ravyn", "esmerald")), err


# -- a Task started in an anyio task group -------------------------------


def test_anyio_start_soon_runs_a_sync_task_on_a_pool_thread(run, recorder):
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(recorder.sync, "work", 1, key="v"))

    run(main())

    [call] = recorder.calls()
    assert (call.name, call.args, call.kwargs) == ("work", (1,), {"key": "v"})
    assert call.thread.comm == "backgrounder"
    assert call.thread.ident != threading.get_ident()


def test_anyio_start_soon_runs_an_async_task_on_the_loop(run, recorder):
    async def main() -> Any:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(recorder.async_, "work", 1, key="v"))
        return running_loop()

    loop = run(main())

    [call] = recorder.calls()
    assert (call.name, call.args, call.kwargs) == ("work", (1,), {"key": "v"})
    assert call.thread.ident == threading.get_ident()
    assert call.loop is loop


def test_anyio_start_soon_runs_tasks(run, recorder):
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Tasks([Task(recorder.sync, "first"), Task(recorder.async_, "second")]))

    run(main())

    assert recorder.names() == ["first", "second"]


def test_anyio_task_group_raises_the_task_error_in_an_exception_group(run, recorder):
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(recorder.fail, "failing work"))

    with pytest.raises(ExceptionGroup) as excinfo:
        run(main())

    assert excinfo.group_contains(Boom, match="failing work")


# How long a trio test holds a running sync call after cancelling its task,
# so that the cancellation is known to have come while the call ran.
HOLD = 0.2


def test_anyio_cancel_of_a_running_sync_task_follows_the_backends_rule(run, loop_kind):
    # asyncio and uvloop: a sync call already running finishes on its
    # thread; the awaiting task is cancelled at once and the call's result
    # is dropped.  trio (docs/background.md, "## trio"; as
    # trio.to_thread.run_sync): the running call is waited for, and the
    # task group ends only once it has finished.
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    # Under trio, the call is let go HOLD seconds after the cancellation.
    release_later = threading.Timer(HOLD, release.set)

    def block() -> None:
        started.set()
        release.wait(WAIT)
        finished.set()

    async def main() -> tuple[float, bool]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(block))
            with anyio.fail_after(WAIT):
                assert await anyio.to_thread.run_sync(started.wait, WAIT)
            t0 = time.monotonic()
            if loop_kind == "trio":
                release_later.start()
            tg.cancel_scope.cancel()
        return time.monotonic() - t0, finished.is_set()

    try:
        elapsed, finished_at_exit = run(main())
    finally:
        release.set()
        if release_later.is_alive():
            release_later.join()
    assert elapsed < WAIT / 2
    if loop_kind == "trio":
        assert finished_at_exit
        assert elapsed >= HOLD
    else:
        assert not finished_at_exit
        assert finished.wait(WAIT)


def test_anyio_sibling_failure_cancels_a_running_sync_task(run, loop_kind):
    # The group raises the sibling's failure alone.  asyncio and uvloop: at
    # once, the running call left to finish on its thread.  trio: once the
    # running call has finished (as above).
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    release_later = threading.Timer(HOLD, release.set)
    failed_at: list[float] = []

    def block() -> None:
        started.set()
        release.wait(WAIT)
        finished.set()

    async def fail_when_started() -> None:
        with anyio.fail_after(WAIT):
            assert await anyio.to_thread.run_sync(started.wait, WAIT)
        failed_at.append(time.monotonic())
        if loop_kind == "trio":
            release_later.start()
        raise Boom("sibling")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Task(block))
            tg.start_soon(fail_when_started)

    try:
        with pytest.raises(ExceptionGroup) as excinfo:
            run(main())
        ended_at, finished_at_exit = time.monotonic(), finished.is_set()
    finally:
        release.set()
        if release_later.is_alive():
            release_later.join()
    [t0] = failed_at
    assert [type(e) for e in excinfo.value.exceptions] == [Boom]
    assert ended_at - t0 < WAIT / 2
    if loop_kind == "trio":
        assert finished_at_exit
        assert ended_at - t0 >= HOLD
    else:
        assert not finished_at_exit
        assert finished.wait(WAIT)
