"""backgrounder.django.BackgrounderBackend, the Django Tasks backend (issue 7).

Runs on ``django.tasks`` (Django >= 6.0) or on the ``django-tasks`` backport
(``django_tasks``, Django < 6.0).  Django is set up by the module fixture
``project`` (``django_project.setup()``: DJANGO_SETTINGS_MODULE=
django_project.settings, ``django.setup()``; no pytest-django); the settings
make BackgrounderBackend the default TASKS backend, with an in-memory sqlite
database.  Backend options and the ImmediateBackend comparison use
``override_settings``.  Tasks that must be seen mid-run wait on a gate
(``tasks.gate(token)``) and mark ``tasks.started(token)``.
"""

import asyncio
import datetime
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import anyio
import pytest

pytest.importorskip("django")
try:
    import django.tasks  # noqa: F401
except ImportError:
    pytest.importorskip("django_tasks")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import django_project

WAIT = 5.0


@pytest.fixture(scope="module")
def project():
    settings = django_project.setup()
    from django_project import tasks

    return settings, tasks


@pytest.fixture
def tasks(project):
    return project[1]


@pytest.fixture
def api(project):
    """The task framework's names, from django.tasks or django_tasks."""
    try:
        from django.tasks import TaskResultStatus, default_task_backend, task_backends
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    except ImportError:
        from django_tasks import TaskResultStatus, default_task_backend, task_backends
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import TaskResultDoesNotExist

    class Api:
        pass

    api = Api()
    api.Status = TaskResultStatus
    api.default_task_backend = default_task_backend
    api.task_backends = task_backends
    api.InvalidTask = InvalidTask
    api.DoesNotExist = TaskResultDoesNotExist
    return api


def backend_settings(**options):
    from django.test import override_settings
    from django_project.settings import BACKGROUNDER_BACKEND

    return override_settings(
        TASKS={"default": {"BACKEND": BACKGROUNDER_BACKEND, "OPTIONS": options}}
    )


def immediate_settings():
    from django.test import override_settings
    from django_project.settings import IMMEDIATE_BACKEND

    return override_settings(TASKS={"default": {"BACKEND": IMMEDIATE_BACKEND}})


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def wait_finished(result, timeout=WAIT):
    """The same code for every backend: refresh only while unfinished."""
    deadline = time.monotonic() + timeout
    while not result.is_finished:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {result.id} still {result.status}")
        time.sleep(0.005)
        result.refresh()
    return result


def token():
    return uuid.uuid4().hex


# -- the backend ---------------------------------------------------------------


def test_default_backend_is_backgrounder(api):
    from backgrounder.django import BackgrounderBackend

    assert isinstance(api.task_backends["default"], BackgrounderBackend)


def test_backend_declares_what_it_supports(api):
    backend = api.default_task_backend
    assert backend.supports_defer is True
    assert backend.supports_async_task is True
    assert backend.supports_get_result is True
    assert backend.supports_priority is True


@pytest.mark.parametrize(
    "options",
    [{"MAX_RUNNING": 0}, {"MAX_RESULTS": "10"}, {"ENQUEUE_ON_COMMIT": 1}, {"NO_SUCH": 1}],
    ids=["max-running", "max-results", "on-commit", "unknown"],
)
def test_bad_options_are_refused_naming_them(api, options):
    from django.core.exceptions import ImproperlyConfigured

    with backend_settings(**options), pytest.raises(ImproperlyConfigured) as info:
        api.task_backends["default"]
    assert next(iter(options)) in str(info.value)


def test_invalid_queue_is_refused_with_djangos_error(api, tasks):
    with pytest.raises(api.InvalidTask):
        tasks.add.using(queue_name="nope")


# -- enqueue returns at once; the task runs in the background -------------------


@pytest.mark.parametrize("name", ["gated", "async_gated"])
def test_enqueue_returns_while_the_task_still_runs(api, tasks, name):
    t = token()
    try:
        result = getattr(tasks, name).enqueue(t)
        assert result.status in (api.Status.READY, api.Status.RUNNING)
        assert not result.is_finished
        assert tasks.started(t).wait(WAIT)
        result.refresh()
        assert result.status == api.Status.RUNNING
    finally:
        tasks.gate(t).set()
    assert wait_finished(result).return_value == {"token": t}


def test_enqueue_runs_the_task_on_another_thread(tasks):
    seen = {}

    def record(sender, task_result, **kwargs):
        seen["thread"] = threading.get_ident()

    signals = _signals()
    signals.task_started.connect(record)
    try:
        wait_finished(tasks.add.enqueue(1, 2))
    finally:
        signals.task_started.disconnect(record)
    assert seen["thread"] != threading.get_ident()


def _signals():
    try:
        from django.tasks import signals
    except ImportError:
        from django_tasks import signals
    return signals


# -- lifecycle -----------------------------------------------------------------


def test_result_moves_ready_running_successful(api, tasks):
    blocker, t = token(), token()
    with backend_settings(MAX_RUNNING=1):
        try:
            tasks.gated.enqueue(blocker)
            assert tasks.started(blocker).wait(WAIT)
            result = tasks.gated.enqueue(t)  # waits for the one running slot

            assert result.status == api.Status.READY
            assert result.enqueued_at is not None
            assert result.started_at is None
            with pytest.raises(ValueError, match="not finished"):
                _ = result.return_value

            tasks.gate(blocker).set()
            assert tasks.started(t).wait(WAIT)
            result.refresh()
            assert result.status == api.Status.RUNNING
            assert result.started_at is not None
            assert result.finished_at is None
            with pytest.raises(ValueError, match="not finished"):
                _ = result.return_value
        finally:
            tasks.gate(blocker).set()
            tasks.gate(t).set()
        wait_finished(result)

    assert result.status == api.Status.SUCCESSFUL
    assert result.return_value == {"token": t}
    assert result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert result.attempts == 1
    assert len(result.worker_ids) == 1


def test_lifecycle_signals_are_sent_in_order(tasks):
    signals = _signals()
    seen = []

    def on(name):
        def receiver(sender, task_result, **kwargs):
            seen.append((task_result.id, name, str(task_result.status)))

        return receiver

    receivers = {
        signals.task_enqueued: on("enqueued"),
        signals.task_started: on("started"),
        signals.task_finished: on("finished"),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    try:
        result = wait_finished(tasks.add.enqueue(1, 1))
        mine = lambda: [event for result_id, *event in seen if result_id == result.id]
        wait_until(lambda: len(mine()) == 3)
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver)
    assert [tuple(event) for event in mine()] == [
        ("enqueued", "READY"),
        ("started", "RUNNING"),
        ("finished", "SUCCESSFUL"),
    ]


@pytest.mark.parametrize("name", ["fail", "async_fail"])
def test_failure_is_recorded_with_exception_class_and_traceback(api, tasks, name):
    result = wait_finished(getattr(tasks, name).enqueue("boom " + name))
    assert result.status == api.Status.FAILED
    [error] = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert f"ValueError: boom {name}" in error.traceback
    assert f"in {name}" in error.traceback  # the task's own frame
    assert result.finished_at is not None
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


def test_unserializable_return_value_fails_the_task(api, tasks):
    result = wait_finished(tasks.unserializable.enqueue())
    assert result.status == api.Status.FAILED
    assert result.errors[0].exception_class is TypeError


def test_unserializable_arguments_are_refused_at_enqueue(tasks):
    with pytest.raises(TypeError):
        tasks.add.enqueue(object(), 1)


def test_failing_task_keeps_later_tasks_running(api, tasks):
    wait_finished(tasks.fail.enqueue("first"))
    assert wait_finished(tasks.add.enqueue(20, 22)).return_value == 42


def test_task_with_context_gets_its_result_and_attempt(api, tasks):
    t = token()
    result = wait_finished(tasks.with_context.enqueue(t))
    assert result.status == api.Status.SUCCESSFUL
    assert result.return_value == {
        "token": t,
        "attempt": 1,
        "id": result.id,
        "status": "RUNNING",
    }


# -- get_result and refresh ------------------------------------------------------


def test_get_result_finds_the_result_by_id(api, tasks):
    result = wait_finished(tasks.add.enqueue(2, 3))
    again = tasks.add.get_result(result.id)
    assert again.id == result.id
    assert again.return_value == 5
    assert api.default_task_backend.get_result(result.id).return_value == 5


def test_get_result_works_from_another_thread(api, tasks):
    result = wait_finished(tasks.add.enqueue(3, 4))
    found = {}

    def other_thread():
        found["value"] = api.task_backends["default"].get_result(result.id).return_value

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(WAIT)
    assert found["value"] == 7


def test_get_result_of_unknown_id_raises_does_not_exist(api):
    with pytest.raises(api.DoesNotExist):
        api.default_task_backend.get_result("no-such-id")


def test_result_is_a_snapshot_until_refreshed(api, tasks):
    t = token()
    try:
        result = tasks.gated.enqueue(t)
        assert tasks.started(t).wait(WAIT)
        status_before = result.status
    finally:
        tasks.gate(t).set()
    wait_until(lambda: tasks.gated.get_result(result.id).is_finished)
    assert result.status == status_before  # unchanged until refresh()
    result.refresh()
    assert result.status == api.Status.SUCCESSFUL


def test_store_evicts_the_oldest_finished_results_past_its_bound(api, tasks):
    with backend_settings(MAX_RESULTS=3):
        ids = [wait_finished(tasks.add.enqueue(i, i)).id for i in range(5)]
        backend = api.task_backends["default"]
        for evicted in ids[:2]:
            with pytest.raises(api.DoesNotExist):
                backend.get_result(evicted)
        assert [backend.get_result(i).return_value for i in ids[2:]] == [4, 6, 8]


def test_store_never_evicts_unfinished_results(api, tasks):
    t = token()
    with backend_settings(MAX_RESULTS=1):
        try:
            running = tasks.gated.enqueue(t)
            assert tasks.started(t).wait(WAIT)
            for i in range(3):
                wait_finished(tasks.add.enqueue(i, 1))
            assert api.task_backends["default"].get_result(running.id).status == (
                api.Status.RUNNING
            )
        finally:
            tasks.gate(t).set()
        assert wait_finished(running).return_value == {"token": t}


# -- async ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["add", "async_add"])
def test_aenqueue_and_aget_result_from_a_coroutine(api, tasks, run, name):
    async def main():
        result = await getattr(tasks, name).aenqueue(4, 5)
        deadline = time.monotonic() + WAIT
        while not result.is_finished and time.monotonic() < deadline:
            await anyio.sleep(0.005)
            await result.arefresh()
        again = await getattr(tasks, name).aget_result(result.id)
        return result, again

    result, again = run(main())
    assert result.status == api.Status.SUCCESSFUL
    assert result.return_value == 9
    assert again.return_value == 9


@pytest.mark.asyncio_only(
    "Django's AsyncClient (its ASGI handler, Signal.asend's asyncio.gather, asgiref's "
    "sync_to_async) awaits asyncio futures, which a trio run cannot wait on"
)
@pytest.mark.parametrize("name", ["gated", "async_gated"])
def test_async_view_aenqueue_returns_before_the_task_ends(api, tasks, run, name):
    from django.test import AsyncClient

    t = token()

    async def main():
        try:
            response = await AsyncClient().get(f"/tasks/aenqueue/{name}/?token={t}")
            assert response.status_code == 200
            body = response.json()
            assert body["status"] in ("READY", "RUNNING")
            assert tasks.gated.get_backend().get_result(body["id"]).is_finished is False
        finally:
            tasks.gate(t).set()
        return body["id"]

    result_id = run(main())
    # The task does not need the request's loop: it finishes after it closed.
    result = wait_finished(api.default_task_backend.get_result(result_id))
    assert result.return_value == {"token": t}


def test_async_task_enqueued_inside_a_loop_outlives_that_loop(api, tasks, run):
    t = token()

    async def main():
        result = tasks.async_gated.enqueue(t)  # plain enqueue(), inside a running loop
        assert await anyio.to_thread.run_sync(tasks.started(t).wait, WAIT)
        return result

    try:
        result = run(main())  # the loop is closed now, the task still waits
        result.refresh()
        assert result.status == api.Status.RUNNING
    finally:
        tasks.gate(t).set()
    assert wait_finished(result).return_value == {"token": t}


@pytest.mark.parametrize("name", ["gated", "async_gated"])
def test_sync_view_enqueue_returns_before_the_task_ends(api, tasks, name):
    from django.test import Client

    t = token()
    try:
        response = Client().get(f"/tasks/enqueue/{name}/?token={t}")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] in ("READY", "RUNNING")
        assert api.default_task_backend.get_result(body["id"]).is_finished is False
    finally:
        tasks.gate(t).set()
    result = wait_finished(api.default_task_backend.get_result(body["id"]))
    assert result.return_value == {"token": t}


# -- run_after and priority --------------------------------------------------------


def test_run_after_delays_the_start(api, tasks):
    from django.utils import timezone

    t = token()
    run_after = timezone.now() + datetime.timedelta(seconds=0.3)
    result = tasks.record.using(run_after=run_after).enqueue(t)
    time.sleep(0.1)
    result.refresh()
    assert result.status == api.Status.READY
    assert not tasks.started(t).is_set()
    wait_finished(result)
    assert result.status == api.Status.SUCCESSFUL
    assert result.started_at >= run_after


def test_run_after_in_the_past_starts_at_once(api, tasks):
    from django.utils import timezone

    run_after = timezone.now() - datetime.timedelta(seconds=10)
    result = wait_finished(tasks.add.using(run_after=run_after).enqueue(1, 1), timeout=2)
    assert result.return_value == 2


def test_deferred_tasks_start_in_run_after_order(api, tasks):
    from django.utils import timezone

    now = timezone.now()
    late, early = token(), token()
    results = [
        tasks.record.using(run_after=now + datetime.timedelta(seconds=0.4)).enqueue(late),
        tasks.record.using(run_after=now + datetime.timedelta(seconds=0.2)).enqueue(early),
    ]
    for result in results:
        wait_finished(result)
    assert tasks.ORDER.index(early) < tasks.ORDER.index(late)


def test_priority_orders_tasks_waiting_for_a_slot(api, tasks):
    blocker = token()
    low, mid, mid2, high = token(), token(), token(), token()
    with backend_settings(MAX_RUNNING=1):
        try:
            tasks.gated.enqueue(blocker)
            assert tasks.started(blocker).wait(WAIT)
            results = [
                tasks.record.using(priority=-10).enqueue(low),
                tasks.record.enqueue(mid),
                tasks.record.using(priority=10).enqueue(high),
                tasks.record.enqueue(mid2),
            ]
        finally:
            tasks.gate(blocker).set()
        for result in results:
            wait_finished(result)
    order = [x for x in tasks.ORDER if x in {low, mid, mid2, high}]
    assert order == [high, mid, mid2, low]


def test_max_running_bounds_concurrent_tasks(api, tasks):
    tokens = [token() for _ in range(3)]
    with backend_settings(MAX_RUNNING=2):
        try:
            results = [tasks.gated.enqueue(t) for t in tokens]
            assert tasks.started(tokens[0]).wait(WAIT)
            assert tasks.started(tokens[1]).wait(WAIT)
            time.sleep(0.1)
            assert not tasks.started(tokens[2]).is_set()
            tasks.gate(tokens[0]).set()
            assert tasks.started(tokens[2]).wait(WAIT)
        finally:
            for t in tokens:
                tasks.gate(t).set()
        for result in results:
            wait_finished(result)


# -- transactions -------------------------------------------------------------------


@pytest.fixture
def table(project):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS thing (num integer)")
    yield "thing"
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE thing")


def _insert(num):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO thing (num) VALUES (%s)", [num])


def test_enqueue_inside_atomic_starts_after_commit(api, tasks, table):
    from django.db import transaction

    t = token()
    with transaction.atomic():
        _insert(1)
        result = tasks.record.enqueue(t)
        time.sleep(0.2)
        assert not tasks.started(t).is_set()
        assert tasks.record.get_result(result.id).status == api.Status.READY
        assert result.enqueued_at is None  # enqueued at commit
        committing = time.time()
    assert tasks.started(t).wait(WAIT)
    wait_finished(result)
    assert result.status == api.Status.SUCCESSFUL
    assert result.enqueued_at.timestamp() >= committing


def test_enqueue_inside_rolled_back_atomic_never_runs(api, tasks, table):
    from django.db import transaction

    t = token()
    with pytest.raises(RuntimeError), transaction.atomic():
        _insert(1)
        result = tasks.record.enqueue(t)
        raise RuntimeError("roll back")
    time.sleep(0.2)
    assert not tasks.started(t).is_set()
    assert tasks.record.get_result(result.id).status == api.Status.READY


def test_enqueue_inside_rolled_back_savepoint_never_runs(api, tasks, table):
    from django.db import transaction

    kept, dropped = token(), token()
    with transaction.atomic():
        kept_result = tasks.record.enqueue(kept)
        try:
            with transaction.atomic():
                tasks.record.enqueue(dropped)
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
    wait_finished(kept_result)
    time.sleep(0.1)
    assert not tasks.started(dropped).is_set()


def test_enqueue_on_commit_can_be_turned_off(api, tasks, table):
    from django.db import transaction

    t = token()
    with backend_settings(ENQUEUE_ON_COMMIT=False):
        with transaction.atomic():
            _insert(1)
            result = tasks.record.enqueue(t)
            assert tasks.started(t).wait(WAIT)
        wait_finished(result)


def test_djangos_documented_on_commit_pattern_works(api, tasks, table):
    from functools import partial

    from django.db import transaction

    t = token()
    with backend_settings(ENQUEUE_ON_COMMIT=False):
        with transaction.atomic():
            _insert(1)
            transaction.on_commit(partial(tasks.record.enqueue, t))
            time.sleep(0.1)
            assert not tasks.started(t).is_set()
        assert tasks.started(t).wait(WAIT)


# -- the same task code on Django's ImmediateBackend --------------------------------


@pytest.fixture(params=["backgrounder", "immediate"])
def any_backend(request):
    chosen = backend_settings() if request.param == "backgrounder" else immediate_settings()
    with chosen:
        yield request.param


def test_same_code_sync_task_succeeds_on_both_backends(api, tasks, any_backend):
    assert wait_finished(tasks.add.enqueue(2, 3)).return_value == 5


def test_same_code_async_task_succeeds_on_both_backends(api, tasks, any_backend):
    assert wait_finished(tasks.async_add.enqueue(2, 3)).return_value == 5


def test_same_code_failure_is_recorded_on_both_backends(api, tasks, any_backend):
    result = wait_finished(tasks.fail.enqueue("same"))
    assert result.status == api.Status.FAILED
    assert result.errors[0].exception_class is ValueError


def test_same_code_context_task_on_both_backends(api, tasks, any_backend):
    t = token()
    result = wait_finished(tasks.with_context.enqueue(t))
    assert result.return_value["attempt"] == 1
    assert result.return_value["id"] == result.id


def test_immediate_backend_is_really_in_use(api, tasks):
    with immediate_settings():
        result = tasks.add.enqueue(1, 2)
        assert result.status == api.Status.SUCCESSFUL  # ran before enqueue returned
        assert not api.default_task_backend.supports_get_result


# -- process-wide events, in a fresh interpreter ------------------------------------


def run_script(body):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {HERE!r})
        import django_project
        django_project.setup()
        from django_project import tasks
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=HERE
    )


def test_enqueue_after_backgrounder_shutdown_records_a_failure():
    out = run_script(
        """
        import backgrounder
        backgrounder.shutdown()
        result = tasks.add.enqueue(1, 2)
        print(result.status, result.errors[0].exception_class_path)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FAILED", "builtins.RuntimeError"]


def test_task_running_at_exit_finishes_before_the_process_ends():
    out = run_script(
        """
        tasks.slow_echo.enqueue("finished")
        print("exiting", flush=True)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["exiting", "finished"]


# -- results live in the enqueuing process (docs/django.md) --------------------------


def test_get_result_of_an_id_from_another_process_raises_a_clear_error(api, tasks):
    out = run_script(
        """
        result = tasks.add.enqueue(2, 3)
        print(result.id)
        """
    )
    assert out.returncode == 0, out.stderr
    foreign_id = out.stdout.strip()
    from backgrounder.django import ResultInAnotherProcess

    with pytest.raises(ResultInAnotherProcess) as info:
        api.default_task_backend.get_result(foreign_id)
    with pytest.raises(api.DoesNotExist):  # still caught as "does not exist"
        tasks.add.get_result(foreign_id)

    message = str(info.value)
    assert repr(foreign_id) in message
    assert "another process" in message
    assert "django_tasks_db.DatabaseBackend" in message


def test_aget_result_of_an_id_from_another_process_raises_the_same_error(api, tasks):
    out = run_script("print(tasks.add.enqueue(2, 3).id)")
    assert out.returncode == 0, out.stderr
    from backgrounder.django import ResultInAnotherProcess

    with pytest.raises(ResultInAnotherProcess):
        asyncio.run(api.default_task_backend.aget_result(out.stdout.strip()))


def test_an_evicted_or_unknown_id_is_plainly_missing_not_in_another_process(api, tasks):
    from backgrounder.django import ResultInAnotherProcess

    with backend_settings(MAX_RESULTS=1):
        evicted = wait_finished(tasks.add.enqueue(1, 1)).id
        wait_finished(tasks.add.enqueue(2, 2))
        backend = api.task_backends["default"]
        for result_id in (evicted, "no-such-id", "x" * 12 + "-" + "y" * 20, 42):
            with pytest.raises(api.DoesNotExist) as info:
                backend.get_result(result_id)
            if result_id == evicted:
                assert not isinstance(info.value, ResultInAnotherProcess)


def test_result_ids_carry_this_process_prefix(api, tasks):
    first = tasks.add.enqueue(1, 2).id
    second = tasks.async_add.enqueue(1, 2).id

    assert first != second
    assert first.split("-")[0] == second.split("-")[0]
    assert [len(part) for part in first.split("-")] == [12, 20]
