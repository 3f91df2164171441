"""A Django Tasks backend that runs tasks in this process on backgrounder.

For ``django.tasks`` (Django >= 6.0) and for the ``django-tasks`` backport
(import name ``django_tasks``) on older Django::

    TASKS = {
        "default": {
            "BACKEND": "backgrounder.django.BackgrounderBackend",
            "OPTIONS": {              # all optional, defaults shown
                "MAX_RUNNING": 20,
                "MAX_RESULTS": 1000,
                "ENQUEUE_ON_COMMIT": True,
                "DATABASE": "default",
            },
        }
    }

``enqueue()`` returns at once.  The task runs through ``backgrounder.background``:
a sync function on backgrounder's thread pool, an async function on
backgrounder's own event loop thread.  Its ``TaskResult`` goes READY -> RUNNING
-> SUCCESSFUL or FAILED, and ``get_result()`` / ``TaskResult.refresh()`` read it
from any thread of this process.  Nothing is persisted: results live in memory,
in this process only, and work not finished when the process exits is lost
(backgrounder finishes the work it has already accepted at exit; tasks still
waiting for ``run_after`` or for a free ``MAX_RUNNING`` slot are dropped).

- ``MAX_RUNNING``: at most this many tasks of this backend run at once; the
  others wait, READY, and start in priority order (higher ``priority`` first,
  first enqueued first among equals).  This is what ``supports_priority``
  means here: priorities order the start of waiting tasks; while fewer than
  ``MAX_RUNNING`` run, every task starts at once, whatever its priority.
- ``MAX_RESULTS``: the store keeps every unfinished result (they are the
  queue) and at most this many others: finished results and results still
  waiting for their transaction to commit.  Past the bound the oldest of those
  is evicted first, and ``get_result()`` of an evicted id raises
  ``TaskResultDoesNotExist``.
- ``ENQUEUE_ON_COMMIT``: a task enqueued inside ``transaction.atomic()`` (on
  ``DATABASE``) starts only when the outermost transaction commits, through
  ``transaction.on_commit``; if it rolls back, the task never runs and its
  result stays READY until evicted.  The task runs on another thread with
  another database connection, so it could not see uncommitted rows anyway.
  Django's ``TestCase`` never commits: use ``captureOnCommitCallbacks`` there.
- ``run_after`` is supported: a deferred task waits on one scheduler thread
  (started only while deferred tasks exist) and then joins the queue.

Where it differs from a database or queue backend: Django lets any process
read a result by its id; here only the process that enqueued the task can.
Result ids carry a prefix of the process that made them, and
``get_result()`` of an id from another process (another web worker, this
process before a restart or a fork) raises ``ResultInAnotherProcess``, a
``TaskResultDoesNotExist`` that says so, instead of a bare "does not exist".
"""

import asyncio
import heapq
import itertools
import os
import re
import threading
import time
import traceback
from collections import OrderedDict
from functools import partial
from inspect import iscoroutinefunction

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections, transaction
from django.utils import timezone
from django.utils.crypto import get_random_string

try:  # Django >= 6.0
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskContext, TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:  # Django < 6.0: the django-tasks backport
    try:
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import TaskContext, TaskError, TaskResult, TaskResultStatus
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json
    except ImportError as exc:
        raise ImportError(
            "backgrounder.django needs Django >= 6.0 (django.tasks) or the "
            "django-tasks package (django_tasks)"
        ) from exc

from backgrounder import background

__all__ = ["BackgrounderBackend", "ResultInAnotherProcess"]

DEFAULT_MAX_RUNNING = 20
DEFAULT_MAX_RESULTS = 1000

READY = TaskResultStatus.READY
RUNNING = TaskResultStatus.RUNNING
FAILED = TaskResultStatus.FAILED
SUCCESSFUL = TaskResultStatus.SUCCESSFUL
FINISHED = (FAILED, SUCCESSFUL)


class _Record:
    """The live state of one task result; only ``_Queue`` changes it."""

    __slots__ = (
        "task",
        "id",
        "args",
        "kwargs",
        "status",
        "enqueued_at",
        "started_at",
        "finished_at",
        "last_attempted_at",
        "errors",
        "worker_ids",
        "return_value",
    )

    def __init__(self, task, result_id, args, kwargs):
        self.task = task
        self.id = result_id
        self.args = args
        self.kwargs = kwargs
        self.status = READY
        self.enqueued_at = None
        self.started_at = None
        self.finished_at = None
        self.last_attempted_at = None
        self.errors = []
        self.worker_ids = []
        self.return_value = None


class ResultInAnotherProcess(TaskResultDoesNotExist):
    """``get_result()`` of an id that another process enqueued.

    Django's contract lets any process read a result by its id; this backend
    keeps results in the memory of the process that enqueued the task, so it
    cannot.  Raised instead of a plain ``TaskResultDoesNotExist`` when the id
    has this backend's form but another process's prefix (another worker of
    the server, a management command, this process before a restart, the
    parent before a fork).  A subclass, so code that catches
    ``TaskResultDoesNotExist`` still does.
    """


# A result id: the enqueuing process's prefix, "-", then a random part.
_ID_PREFIX_LENGTH = 12
_ID_RANDOM_LENGTH = 20
_RESULT_ID = re.compile(rf"([A-Za-z0-9]{{{_ID_PREFIX_LENGTH}}})-[A-Za-z0-9]{{{_ID_RANDOM_LENGTH}}}")


def _task_error(exc):
    kind = type(exc)
    return TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback="".join(traceback.format_exception(exc)),
    )


def _loop_running_here():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Queue:
    """Results, waiting tasks and limits of one backend alias, process-wide.

    Django creates a backend instance per thread (``task_backends`` is a
    thread-local connection handler), so all that ``get_result()`` from
    another thread must see lives here, one per alias.
    """

    def __init__(self, alias, max_running, max_results):
        self.alias = alias
        self.max_running = max_running
        self.max_results = max_results
        self.worker_id = get_random_string(32)
        self.id_prefix = get_random_string(_ID_PREFIX_LENGTH)
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.results = {}  # id -> _Record, every result still kept
        self.evictable = OrderedDict()  # ids of finished / awaiting-commit results
        self.ready = []  # heap of (-priority, seq, _Record)
        self.deferred = []  # heap of (run_at timestamp, seq, _Record)
        self.seq = itertools.count()
        self.running = 0
        self.scheduler = None
        self.pumping = threading.local()

    # -- the store ---------------------------------------------------------

    def add(self, rec, awaiting_commit):
        with self.lock:
            self.results[rec.id] = rec
            if awaiting_commit:
                self.evictable[rec.id] = None
                self._evict()

    def _evict(self):
        while len(self.evictable) > self.max_results:
            result_id, _ = self.evictable.popitem(last=False)
            self.results.pop(result_id, None)

    def snapshot(self, rec):
        with self.lock:
            return self._snapshot(rec)

    def _snapshot(self, rec):
        result = TaskResult(
            task=rec.task,
            id=rec.id,
            status=rec.status,
            enqueued_at=rec.enqueued_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            last_attempted_at=rec.last_attempted_at,
            args=rec.args,
            kwargs=rec.kwargs,
            backend=self.alias,
            errors=list(rec.errors),
            worker_ids=list(rec.worker_ids),
        )
        object.__setattr__(result, "_return_value", rec.return_value)
        return result

    def new_id(self):
        return f"{self.id_prefix}-{get_random_string(_ID_RANDOM_LENGTH)}"

    def get(self, result_id):
        with self.lock:
            rec = self.results.get(result_id)
            if rec is not None:
                return self._snapshot(rec)
            prefix = self.id_prefix
        match = _RESULT_ID.fullmatch(result_id) if isinstance(result_id, str) else None
        if match is not None and match[1] != prefix:
            raise ResultInAnotherProcess(
                f"task result {result_id!r} was enqueued by another process (or by "
                "this one before a restart or a fork): BackgrounderBackend keeps "
                "results in the memory of the process that enqueued the task, and "
                "only that process can read them. To read results from any process, "
                "use a backend that stores them, such as django_tasks_db.DatabaseBackend."
            )
        raise TaskResultDoesNotExist(result_id)

    # -- the lifecycle -----------------------------------------------------

    def enqueue(self, rec):
        """Hand ``rec`` to the queue now (at enqueue, or at commit)."""
        run_at = rec.task.run_after
        with self.lock:
            self.evictable.pop(rec.id, None)  # unfinished again: not evictable
            self.results[rec.id] = rec  # back in, if evicted while awaiting commit
            rec.enqueued_at = timezone.now()
            snapshot = self._snapshot(rec)
            deferred = run_at is not None and run_at.timestamp() > time.time()
            if deferred:
                heapq.heappush(self.deferred, (run_at.timestamp(), next(self.seq), rec))
                if self.scheduler is None:
                    self.scheduler = threading.Thread(
                        target=self._schedule,
                        name="backgrounder-django-scheduler",
                        daemon=True,
                    )
                    self.scheduler.start()
                self.wakeup.notify()
            else:
                heapq.heappush(self.ready, (-rec.task.priority, next(self.seq), rec))
        task_enqueued.send(BackgrounderBackend, task_result=snapshot)
        if not deferred:
            self.pump()

    def _schedule(self):
        """Scheduler thread: move deferred tasks to the queue when they are due."""
        while True:
            with self.lock:
                while True:
                    if not self.deferred:
                        self.scheduler = None
                        return
                    delay = self.deferred[0][0] - time.time()
                    if delay <= 0:
                        break
                    self.wakeup.wait(delay)
                while self.deferred and self.deferred[0][0] <= time.time():
                    _, _, rec = heapq.heappop(self.deferred)
                    heapq.heappush(self.ready, (-rec.task.priority, next(self.seq), rec))
            self.pump()

    def pump(self):
        """Start waiting tasks, highest priority first, up to ``max_running``."""
        if getattr(self.pumping, "active", False):
            return  # re-entered from a done callback run inline: the outer loop goes on
        self.pumping.active = True
        try:
            while True:
                with self.lock:
                    if self.running >= self.max_running or not self.ready:
                        return
                    _, _, rec = heapq.heappop(self.ready)
                    self.running += 1
                self.launch(rec)
        finally:
            self.pumping.active = False

    def launch(self, rec):
        try:
            if iscoroutinefunction(rec.task.func):
                if _loop_running_here():
                    # Called inside a loop (an async view, backgrounder's loop):
                    # start from a pool thread, so that the task runs on
                    # backgrounder's own loop, not on a loop that may end first.
                    _start_from_pool(self, rec)
                    return
                handle = _run_async_in_background(self, rec)
            else:
                handle = _run_sync_in_background(self, rec)
        except BaseException as exc:  # e.g. RuntimeError after backgrounder.shutdown()
            self.fail_to_start(rec, exc)
            return
        handle.add_done_callback(partial(self.handle_done, rec))

    def fail_to_start(self, rec, exc):
        with self.lock:
            self.running -= 1
        self.finish(rec, error=exc)
        self.pump()

    def handle_done(self, rec, handle):
        with self.lock:
            self.running -= 1
            finished = rec.status in FINISHED
        if not finished:  # cancelled, or ended before the runner could record it
            if handle.cancelled():
                error = asyncio.CancelledError("the background work was cancelled")
            else:
                error = handle.exception() or RuntimeError("the task ended without a result")
            self.finish(rec, error=error)
        self.pump()

    def begin(self, rec):
        with self.lock:
            now = timezone.now()
            rec.status = RUNNING
            rec.started_at = now
            rec.last_attempted_at = now
            rec.worker_ids.append(self.worker_id)
            snapshot = self._snapshot(rec)
        task_started.send(BackgrounderBackend, task_result=snapshot)
        return snapshot

    def finish(self, rec, value=None, error=None):
        """Record the outcome and send ``task_finished``.

        Called inside the ``except`` block on failure, so that Django's log
        receiver finds the exception in ``sys.exc_info()``.
        """
        with self.lock:
            rec.finished_at = timezone.now()
            if error is None:
                rec.status = SUCCESSFUL
                rec.return_value = value
            else:
                rec.status = FAILED
                rec.errors.append(_task_error(error))
            if rec.id in self.results:
                self.evictable[rec.id] = None
                self._evict()
            snapshot = self._snapshot(rec)
        task_finished.send(BackgrounderBackend, task_result=snapshot)

    def reset_after_fork(self):
        # The child inherits the parent's queue but none of its threads: the
        # parent runs that work; the child starts empty.
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.results = {}
        self.evictable = OrderedDict()
        self.ready = []
        self.deferred = []
        self.running = 0
        self.scheduler = None
        self.pumping = threading.local()
        self.worker_id = get_random_string(32)
        self.id_prefix = get_random_string(_ID_PREFIX_LENGTH)


def _call_args(rec, snapshot):
    if rec.task.takes_context:
        return (TaskContext(task_result=snapshot), *snapshot.args), snapshot.kwargs
    return snapshot.args, snapshot.kwargs


def _run_sync(queue, rec):
    """Runs on a backgrounder pool thread."""
    try:
        close_old_connections()
        snapshot = queue.begin(rec)
        args, kwargs = _call_args(rec, snapshot)
        value = normalize_json(rec.task.func(*args, **kwargs))
    except BaseException as exc:
        queue.finish(rec, error=exc)
        if not isinstance(exc, Exception):
            raise
    else:
        queue.finish(rec, value=value)
    finally:
        close_old_connections()


async def _run_async(queue, rec):
    """Runs on backgrounder's event loop thread."""
    try:
        snapshot = queue.begin(rec)
        args, kwargs = _call_args(rec, snapshot)
        value = normalize_json(await rec.task.func(*args, **kwargs))
    except BaseException as exc:
        queue.finish(rec, error=exc)
        if not isinstance(exc, Exception):
            raise
    else:
        queue.finish(rec, value=value)


def _start_async_on_pool_thread(queue, rec):
    queue.launch(rec)


_run_sync_in_background = background(_run_sync)
_run_async_in_background = background(_run_async)
_start_from_pool = background(_start_async_on_pool_thread)

_queues = {}
_queues_lock = threading.Lock()


def _queue_for(alias, max_running, max_results):
    with _queues_lock:
        queue = _queues.get(alias)
        if queue is None:
            queue = _queues[alias] = _Queue(alias, max_running, max_results)
        return queue


def _reset_after_fork():
    global _queues_lock
    _queues_lock = threading.Lock()
    for queue in _queues.values():
        queue.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _option(options, name, default, check, expected):
    value = options.get(name, default)
    if not check(value):
        raise ImproperlyConfigured(
            f"BackgrounderBackend OPTIONS[{name!r}] must be {expected}, got {value!r}"
        )
    return value


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class BackgrounderBackend(BaseTaskBackend):
    """Runs Django Tasks in this process on backgrounder (see the module doc)."""

    supports_defer = True  # run_after: a scheduler thread starts the task when due
    supports_async_task = True  # on backgrounder's event loop thread
    supports_get_result = True  # from any thread of this process (in-memory store)
    supports_priority = True  # orders the start of tasks waiting for MAX_RUNNING

    OPTION_NAMES = frozenset({"MAX_RUNNING", "MAX_RESULTS", "ENQUEUE_ON_COMMIT", "DATABASE"})

    def __init__(self, alias, params):
        super().__init__(alias, params)
        unknown = set(self.options) - self.OPTION_NAMES
        if unknown:
            raise ImproperlyConfigured(
                f"BackgrounderBackend got unknown OPTIONS {sorted(unknown)!r}; "
                f"known: {sorted(self.OPTION_NAMES)!r}"
            )
        self.max_running = _option(
            self.options, "MAX_RUNNING", DEFAULT_MAX_RUNNING, _positive_int, "an int >= 1"
        )
        self.max_results = _option(
            self.options, "MAX_RESULTS", DEFAULT_MAX_RESULTS, _positive_int, "an int >= 1"
        )
        self.enqueue_on_commit = _option(
            self.options, "ENQUEUE_ON_COMMIT", True, lambda v: isinstance(v, bool), "a bool"
        )
        self.database = _option(
            self.options, "DATABASE", DEFAULT_DB_ALIAS, lambda v: isinstance(v, str), "a str"
        )
        queue = self._queue
        with queue.lock:  # the latest settings win (override_settings in tests)
            queue.max_running = self.max_running
            queue.max_results = self.max_results

    @property
    def _queue(self):
        return _queue_for(self.alias, self.max_running, self.max_results)

    def _awaits_commit(self):
        # A plain attribute read: safe in async code, opens no connection.
        return self.enqueue_on_commit and connections[self.database].in_atomic_block

    def enqueue(self, task, args, kwargs):
        self.validate_task(task)
        # Building the result checks that args and kwargs are JSON-serializable.
        queue = self._queue
        initial = TaskResult(
            task=task,
            id=queue.new_id(),
            status=READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        rec = _Record(task, initial.id, initial.args, initial.kwargs)
        awaits_commit = self._awaits_commit()
        queue.add(rec, awaiting_commit=awaits_commit)
        if awaits_commit:
            transaction.on_commit(partial(queue.enqueue, rec), using=self.database, robust=True)
            return initial
        queue.enqueue(rec)
        return queue.snapshot(rec)

    async def aenqueue(self, task, args, kwargs):
        # enqueue() neither blocks nor touches the database: no thread hop.
        return self.enqueue(task, args, kwargs)

    def get_result(self, result_id):
        return self._queue.get(result_id)

    async def aget_result(self, result_id):
        return self._queue.get(result_id)
