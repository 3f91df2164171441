/* module.c: backgrounder._backgrounder, its state, exec and functions.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> coro -> bridge
 *        -> task / tasks / handle -> background -> [module].
 * The only file that includes every header: nothing calls up into it.
 *
 * Multi-phase init (PEP 489): every module object has its own state and its
 * own pool.  Exec looks up what the engine needs from asyncio and functools,
 * makes the types, and registers the pool with the interpreter's lifecycle:
 * at exit, accepted work is finished before non-daemon threads are joined
 * and before concurrent.futures refuses new work (threading's own atexit,
 * registered after concurrent.futures' so that it runs first), and the
 * workers are gone before the interpreter finalizes (atexit); at fork, the
 * child gets a fresh pool (os.register_at_fork).
 */
#include "util.h"   /* first: Python.h sets the feature macros */
#include "platform.h"
#include "pool.h"
#include "report.h"
#include "coro.h"
#include "bridge.h"
#include "task.h"
#include "tasks.h"
#include "handle.h"
#include "background.h"

/* ---- module functions ------------------------------------------------------ */

static PyObject *
bg_configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"max_workers", "idle_timeout", "on_error", NULL};
    PyObject *max_workers = Py_None, *idle_timeout = Py_None, *on_error = NULL;
    bg_state *st = get_state(module);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOO:configure", kwlist,
                                     &max_workers, &idle_timeout, &on_error)) {
        return NULL;
    }
    Py_ssize_t workers = -1;
    double timeout = -1.0;
    if (max_workers != Py_None) {
        if (PyBool_Check(max_workers) || !PyLong_Check(max_workers)) {
            PyErr_Format(PyExc_TypeError, "configure() argument 'max_workers' must be an int, not %R",
                         max_workers);
            return NULL;
        }
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(max_workers, &overflow);
        if (n == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (overflow || n < 1 || n > 100000) {
            PyErr_Format(PyExc_ValueError,
                         "configure() argument 'max_workers' must be from 1 to 100000, not %R", max_workers);
            return NULL;
        }
        workers = (Py_ssize_t)n;
    }
    if (idle_timeout != Py_None) {
        /* One rule, one message: a number of seconds > 0 (inf: never retire). */
        if (bg_parse_timeout(idle_timeout, "configure() argument 'idle_timeout'", 1, &timeout) < 0) {
            return NULL;
        }
        if (timeout == 0) {   /* 0, or negative: clamped to 0 */
            PyErr_Format(PyExc_ValueError, "configure() argument 'idle_timeout' must be > 0 seconds, not %R",
                         idle_timeout);
            return NULL;
        }
        if (timeout < 0) {
            timeout = 1e7;   /* inf: workers never retire (in practice) */
        }
    }
    if (on_error != NULL && on_error != Py_None
        && bg_check_callable(on_error, "configure() argument 'on_error'") < 0) {
        return NULL;
    }
    if (on_error != NULL) {
        Py_XSETREF(st->on_error, on_error == Py_None ? NULL : Py_NewRef(on_error));
    }
    pool_configure(st->pool, workers, timeout);
    Py_RETURN_NONE;
}

static PyObject *
bg_shutdown(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"wait", "timeout", NULL};
    int wait = 1;
    PyObject *timeout_obj = Py_None;
    double timeout;
    bg_state *st = get_state(module);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p$O:shutdown", kwlist, &wait, &timeout_obj)
        || bg_parse_timeout(timeout_obj, "shutdown() argument 'timeout'", 0, &timeout) < 0) {
        return NULL;
    }
    double deadline = bg_deadline(timeout);   /* one deadline for both */
    /* The loop thread first: its coroutines may still hand sync work to the
       pool.  Not waited for when it awaits the very call that shuts down. */
    int r = background_stop_loop(st, wait && !background_caller_on_engine_loop(st), deadline);
    if (r < 0) {
        return NULL;
    }
    int r2 = pool_shutdown(st->pool, wait, deadline);
    if (r2 < 0) {
        return NULL;
    }
    return PyBool_FromLong(r && r2);
}

/* Waits until nothing is queued or running on the pool or the engine's
   loop, until `deadline`.  Returns 1, 0 on timeout, -1 with an exception
   set.  Async calls may queue sync work and the other way round: both are
   idle at once before it returns. */
static int
wait_idle(bg_state *st, double deadline)
{
    int exclude = background_caller_on_engine_loop(st);
    for (;;) {
        int r = background_wait_idle(st, deadline, exclude);
        if (r <= 0) {
            return r;
        }
        r = pool_wait_idle(st->pool, deadline);
        if (r <= 0) {
            return r;
        }
        double now = bg_monotonic();   /* both at once: look again, without waiting */
        r = background_wait_idle(st, now, exclude);
        if (r == 1) {
            r = pool_wait_idle(st->pool, now);
        }
        if (r != 0) {
            return r;
        }
        if (deadline >= 0 && now >= deadline) {
            return 0;
        }
    }
}

static PyObject *
bg_wait_idle(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout_obj = Py_None;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait_idle", kwlist, &timeout_obj)
        || bg_parse_timeout(timeout_obj, "wait_idle() argument 'timeout'", 0, &timeout) < 0) {
        return NULL;
    }
    int r = wait_idle(get_state(module), bg_deadline(timeout));
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
bg_wait_drained(PyObject *module, PyObject *args)
{
    PyObject *timeout_obj;
    int self_async;
    double timeout;
    if (!PyArg_ParseTuple(args, "Op:_wait_drained", &timeout_obj, &self_async)
        || bg_parse_timeout(timeout_obj, "drain() argument 'timeout'", 0, &timeout) < 0) {
        return NULL;
    }
    background_sweep_closed_loops(get_state(module));
    int r = pool_wait_drained(get_state(module)->pool, self_async, bg_deadline(timeout));
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
bg_check_timeout(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *timeout_obj;
    const char *what;
    double timeout;
    if (!PyArg_ParseTuple(args, "Os:_check_timeout", &timeout_obj, &what)
        || bg_parse_timeout(timeout_obj, what, 0, &timeout) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
bg_is_background_task(PyObject *module, PyObject *task)
{
    bg_state *st = get_state(module);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(st->async_calls, &pos, &key, &value)) {
        if (value == task) {
            Py_RETURN_TRUE;
        }
    }
    if (st->loop_runner == NULL) {
        Py_RETURN_FALSE;
    }
    PyObject *tasks = bg_getattr(st->loop_runner, "_tasks");
    if (tasks == NULL) {
        return NULL;
    }
    int r = PySequence_Contains(tasks, task);
    Py_DECREF(tasks);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

/* Returns a new list of the callables of the calls the exit waits for: on
   the pool, and async ones on the engine's loop.  NULL with an exception. */
static PyObject *
pending_funcs(bg_state *st)
{
    PyObject *funcs = pool_pending_funcs(st->pool);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (funcs != NULL && PyDict_Next(st->async_calls, &pos, &key, &value)) {
        if (value == Py_None && PyList_Append(funcs, handle_func((HandleObject *)key)) < 0) {
            Py_CLEAR(funcs);
        }
    }
    return funcs;
}

/* Logs, on the "backgrounder" logger (or stderr), one line: `fmt` with the
   number of pending calls and, with `names`, their functions. */
static void
say_pending(bg_state *st, PyObject *funcs, int names)
{
    Py_ssize_t n = PyList_GET_SIZE(funcs);
    PyObject *msg = NULL, *parts = NULL, *joined = NULL, *sep = NULL;
    if (names) {
        parts = PyList_New(0);
        for (Py_ssize_t i = 0; parts != NULL && i < n; i++) {
            PyObject *name = bg_callable_name(st, PyList_GET_ITEM(funcs, i));
            if (name == NULL || PyList_Append(parts, name) < 0) {
                Py_CLEAR(parts);
            }
            Py_XDECREF(name);
        }
        sep = PyUnicode_FromString(", ");
        joined = parts && sep ? PyUnicode_Join(sep, parts) : NULL;
        if (joined != NULL) {
            msg = PyUnicode_FromFormat("Abandoned %zd background call%s: %U", n, n == 1 ? "" : "s",
                                       joined);
        }
    }
    else {
        msg = PyUnicode_FromFormat("Waiting for %zd background call%s to complete. "
                                   "(CTRL+C again to abandon %s)", n, n == 1 ? "" : "s",
                                   n == 1 ? "it" : "them");
    }
    if (msg != NULL) {
        bg_report_warning(st, msg);
    }
    else {
        PyErr_WriteUnraisable(NULL);
    }
    Py_XDECREF(msg);
    Py_XDECREF(parts);
    Py_XDECREF(joined);
    Py_XDECREF(sep);
}

#define EXIT_QUIET 0.2   /* seconds the exit waits before it says what it waits for */

static PyObject *
bg_exit_drain(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
    background_sweep_closed_loops(st);
    PyObject *funcs = pending_funcs(st);
    if (funcs == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(funcs);
    Py_DECREF(funcs);
    /* Work that ends at once ends in silence; otherwise a person waiting at
       Ctrl-C is told why, early enough to read it before a supervisor's
       kill (Django's autoreloader kills its child after 0.25 s). */
    int r = n > 0 ? wait_idle(st, bg_deadline(EXIT_QUIET)) : 1;
    if (r == 0) {
        funcs = pending_funcs(st);
        if (funcs == NULL) {
            return NULL;
        }
        if (PyList_GET_SIZE(funcs) > 0) {
            say_pending(st, funcs, 0);
        }
        Py_DECREF(funcs);
        r = wait_idle(st, -1);
    }
    if (r < 0 && PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        /* Ctrl-C again: give up on what is left, saying what, no traceback. */
        PyErr_Clear();
        st->abandoned = 1;
        funcs = pending_funcs(st);
        if (funcs == NULL) {
            return NULL;
        }
        say_pending(st, funcs, 1);
        Py_DECREF(funcs);
        r = 0;
    }
    /* What failed and is still referenced (a global, say) is reported now,
       while logging still works. */
    report_all_kept(st);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
bg_at_exit(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
    /* The pool is shut down even if stopping the loop thread was interrupted:
       no worker may outlive the interpreter's exit, unless Ctrl-C at the
       exit drain abandoned them (then they end as daemon threads do). */
    int wait = !st->abandoned;
    int r = background_stop_loop(st, wait, -1);
    PyObject *exc = r < 0 ? bg_fetch_exception() : NULL;
    if (pool_shutdown(st->pool, wait, -1) < 0) {
        Py_XDECREF(exc);
        return NULL;
    }
    report_all_kept(st);
    if (exc != NULL) {
        bg_restore(exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
bg_stats(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
    background_sweep_closed_loops(st);
    bg_pool_stats s;
    pool_get_stats(st->pool, &s);
    return Py_BuildValue(
        "{snsnsnsnsnsKsKsKsKsKsKsKsn}",
        "queued", s.queued, "running", s.running, "workers", s.workers, "idle", s.idle,
        "max_workers", s.max_workers, "submitted", (unsigned long long)s.submitted,
        "done", (unsigned long long)s.done, "failed", (unsigned long long)s.failed,
        "cancelled", (unsigned long long)s.cancelled, "wakeups", (unsigned long long)s.wakeups,
        "completions", (unsigned long long)s.completions,
        "threads_started", (unsigned long long)s.threads_started,
        "pending_async", s.async_running);
}

static PyObject *
bg_run_in_threadpool(PyObject *module, PyObject *args, PyObject *kwargs)
{
    bg_state *st = get_state(module);
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_SetString(PyExc_TypeError, "run_in_threadpool() missing required argument 'func' (pos 1)");
        return NULL;
    }
    PyObject *func = PyTuple_GET_ITEM(args, 0);
    if (bg_check_callable(func, "run_in_threadpool() argument 'func'") < 0) {
        return NULL;
    }
    int is_async = bg_is_async_callable(st, func);
    if (is_async < 0) {
        return NULL;
    }
    PyObject *rest = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    PyObject *kw = kwargs && PyDict_GET_SIZE(kwargs) ? PyDict_Copy(kwargs) : NULL;
    PyObject *aw = NULL;
    if (rest != NULL && (kw != NULL || kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0)) {
        aw = task_start(st, func, rest, kw, is_async);
    }
    Py_XDECREF(rest);
    Py_XDECREF(kw);
    return aw;
}

static PyObject *
bg_is_async_callable_py(PyObject *module, PyObject *obj)
{
    int r = bg_is_async_callable(get_state(module), obj);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
bg_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
    pool_after_fork_child(st->pool);   /* the parent's sync calls settle as cancelled */
    background_after_fork_child(st);   /* and its calls on the engine's loop */
    PyDict_Clear(st->inboxes);         /* the parent's loops */
    Py_RETURN_NONE;
}

#ifdef BG_DEBUG
static PyObject *
bg_debug_counters(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    uint64_t c[4];
    pool_debug_counters(c);
    return Py_BuildValue("{sKsKsKsK}", "items_allocated", (unsigned long long)c[0],
                         "items_freed", (unsigned long long)c[1],
                         "threads_started", (unsigned long long)c[2],
                         "threads_ended", (unsigned long long)c[3]);
}
#endif

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))bg_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, max_workers=None, idle_timeout=None, on_error=None)\n--\n\n"
     "Sets the pool's size (max_workers, an int >= 1, default 40), how long an idle\n"
     "worker lives (idle_timeout, seconds > 0, default 30), and who gets the\n"
     "exceptions nobody retrieved (on_error, a callable taking the exception; None\n"
     "gives them back to the 'backgrounder' logger).  Arguments left out are unchanged."},
    {"shutdown", (PyCFunction)(void (*)(void))bg_shutdown, METH_VARARGS | METH_KEYWORDS,
     "shutdown(wait=True, *, timeout=None)\n--\n\n"
     "Stops accepting work; what was accepted still runs.  With wait, blocks until\n"
     "it is done (at most timeout seconds).  Returns True when everything finished,\n"
     "False on timeout or when not waiting for unfinished work."},
    {"wait_idle", (PyCFunction)(void (*)(void))bg_wait_idle, METH_VARARGS | METH_KEYWORDS,
     "wait_idle(timeout=None)\n--\n\n"
     "Blocks until no background work is queued or running (at most timeout\n"
     "seconds); the engine stays open.  Returns True when idle, False on timeout."},
    {"stats", bg_stats, METH_NOARGS,
     "stats()\n--\n\nCounters of the engine, a dict of ints: queued, running, done, failed,\n"
     "workers, idle, max_workers, submitted, cancelled, wakeups (loop wake-ups that\n"
     "delivered completions), completions, threads_started, pending_async."},
    {"run_in_threadpool", (PyCFunction)(void (*)(void))bg_run_in_threadpool, METH_VARARGS | METH_KEYWORDS,
     "run_in_threadpool(func, /, *args, **kwargs)\n--\n\n"
     "An awaitable of func(*args, **kwargs): a sync func runs on the native pool, in a\n"
     "copy of the caller's context; an async one is awaited."},
    {"is_async_callable", bg_is_async_callable_py, METH_O,
     "is_async_callable(obj, /)\n--\n\nTrue if calling obj gives a coroutine (functools.partial "
     "unwrapped, objects whose __call__ is async included)."},
    {"_wait_drained", bg_wait_drained, METH_VARARGS,
     "_wait_drained(timeout, self_async, /)\n--\n\nBlocks until nothing is queued or running anywhere "
     "(drain() runs it on a thread)."},
    {"_check_timeout", bg_check_timeout, METH_VARARGS,
     "_check_timeout(timeout, what, /)\n--\n\nRaises TypeError/ValueError for a bad timeout."},
    {"_is_background_task", bg_is_background_task, METH_O,
     "_is_background_task(task, /)\n--\n\nTrue if the asyncio task runs an async @background call."},
    {"_exit_drain", bg_exit_drain, METH_NOARGS,
     "Registered with threading's atexit: finishes accepted work, reports lost errors."},
    {"_at_exit", bg_at_exit, METH_NOARGS, "Registered with atexit: shuts the engine down, waiting."},
    {"_after_fork_child", bg_after_fork_child, METH_NOARGS, "os.register_at_fork(after_in_child=...)"},
#ifdef BG_DEBUG
    {"_debug_counters", bg_debug_counters, METH_NOARGS, "Debug builds: items and threads counted."},
#endif
    {NULL, NULL, 0, NULL},
};

/* ---- exec ---------------------------------------------------------------------- */

/* Sets *out to a new reference to module.attr.  Returns 0 or -1. */
static int
import_attr(const char *module, const char *attr, PyObject **out)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return -1;
    }
    *out = bg_getattr(mod, attr);
    Py_DECREF(mod);
    return *out ? 0 : -1;
}

/* Calls module.func(*args) with the hooks of this module.  Returns 0 or -1. */
static int
register_hooks(PyObject *module)
{
    PyObject *wait_idle = NULL, *at_exit = NULL, *register_atexit = NULL, *res = NULL;
    PyObject *child = NULL, *kwargs = NULL, *reg_fork = NULL;
    int r = -1;

    wait_idle = bg_getattr(module, "_exit_drain");
    at_exit = bg_getattr(module, "_at_exit");
    if (wait_idle == NULL || at_exit == NULL) {
        goto done;
    }
    /* First, before non-daemon threads are joined: finish accepted work.
       threading runs these in reverse order: concurrent.futures' own (which
       makes executors, asyncio.to_thread included, refuse new work) is
       registered first, so that ours runs before it. */
    PyObject *cf = PyImport_ImportModule("concurrent.futures.thread");
    if (cf == NULL) {
        goto done;
    }
    Py_DECREF(cf);
    /* threading._register_atexit (private, but the only hook that runs
       before non-daemon threads are joined; concurrent.futures uses it
       too); atexit's if a Python ever lacks it. */
    if (import_attr("threading", "_register_atexit", &register_atexit) < 0) {
        PyErr_Clear();
        if (import_attr("atexit", "register", &register_atexit) < 0) {
            goto done;
        }
    }
    res = PyObject_CallOneArg(register_atexit, wait_idle);
    if (res == NULL) {
        goto done;
    }
    Py_CLEAR(res);
    Py_CLEAR(register_atexit);
    /* Then, after them and before finalization: stop the workers. */
    if (import_attr("atexit", "register", &register_atexit) < 0) {
        goto done;
    }
    res = PyObject_CallOneArg(register_atexit, at_exit);
    if (res == NULL) {
        goto done;
    }
    Py_CLEAR(res);
#ifdef HAVE_FORK
    /* The pool's locks are handled inside fork() itself (pool.c); the child
       then drops what is the parent's. */
    child = bg_getattr(module, "_after_fork_child");
    if (child == NULL || import_attr("os", "register_at_fork", &reg_fork) < 0) {
        goto done;
    }
    kwargs = Py_BuildValue("{sO}", "after_in_child", child);
    if (kwargs == NULL) {
        goto done;
    }
    PyObject *empty = PyTuple_New(0);
    res = empty ? PyObject_Call(reg_fork, empty, kwargs) : NULL;
    Py_XDECREF(empty);
    if (res == NULL) {
        goto done;
    }
#endif
    r = 0;
done:
    Py_XDECREF(wait_idle);
    Py_XDECREF(at_exit);
    Py_XDECREF(register_atexit);
    Py_XDECREF(res);
    Py_XDECREF(child);
    Py_XDECREF(kwargs);
    Py_XDECREF(reg_fork);
    return r;
}

static int
intern_names(bg_state *st)
{
#define INTERN(field, text)                                  \
    do {                                                     \
        st->field = PyUnicode_InternFromString(text);        \
        if (st->field == NULL) {                             \
            return -1;                                       \
        }                                                    \
    } while (0)
    INTERN(str_create_future, "create_future");
    INTERN(str_call_soon_threadsafe, "call_soon_threadsafe");
    INTERN(str_set_result, "set_result");
    INTERN(str_set_exception, "set_exception");
    INTERN(str_cancelled, "cancelled");
    INTERN(str_cancel, "cancel");
    INTERN(str_done, "done");
    INTERN(str_result, "result");
    INTERN(str_exception, "exception");
    INTERN(str_add_done_callback, "add_done_callback");
    INTERN(str_future_blocking, "_asyncio_future_blocking");
    INTERN(str_throw, "throw");
    INTERN(str_close, "close");
    INTERN(str_func, "func");
    INTERN(str_call, "__call__");
    INTERN(str_name, "__name__");
    INTERN(str_loop, "loop");
    INTERN(str_create_task, "create_task");
    INTERN(str_submit, "submit");
    INTERN(str_is_closed, "is_closed");
    INTERN(str_wait_idle, "wait_idle");
#undef INTERN
    return 0;
}

static int
module_exec(PyObject *module)
{
    bg_state *st = get_state(module);
    st->pool = pool_new(PyInterpreterState_Get());
    if (st->pool == NULL) {
        return -1;
    }
    st->inboxes = PyDict_New();
    st->async_calls = PyDict_New();
    if (st->inboxes == NULL || st->async_calls == NULL || intern_names(st) < 0) {
        return -1;
    }
    if (import_attr("asyncio", "get_running_loop", &st->get_running_loop) < 0
        || import_attr("asyncio", "ensure_future", &st->ensure_future) < 0
#if PY_VERSION_HEX >= 0x030E0000
        /* asyncio's is deprecated from 3.14 (removed in 3.16). */
        || import_attr("inspect", "iscoroutinefunction", &st->iscoroutinefunction) < 0
#else
        /* inspect's, and the markers asgiref and mock set before 3.14. */
        || import_attr("asyncio", "iscoroutinefunction", &st->iscoroutinefunction) < 0
#endif
        || import_attr("asyncio", "CancelledError", &st->cancelled_error) < 0
        || import_attr("asyncio", "InvalidStateError", &st->invalid_state) < 0
        || import_attr("functools", "partial", &st->partial_type) < 0
        || import_attr("concurrent.futures", "CancelledError", &st->futures_cancelled) < 0
        || import_attr("concurrent.futures", "TimeoutError", &st->futures_timeout) < 0
        || report_init(st) < 0) {
        return -1;
    }
    if (task_init_types(module, st) < 0 || tasks_init_types(module, st) < 0
        || bridge_init_types(module, st) < 0 || background_init_types(module, st) < 0) {
        return -1;
    }
    return register_hooks(module);
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    bg_state *st = get_state(module);
    Py_VISIT(st->task_type);
    Py_VISIT(st->tasks_type);
    Py_VISIT(st->call_type);
    Py_VISIT(st->seq_type);
    Py_VISIT(st->group_type);
    Py_VISIT(st->inbox_type);
    Py_VISIT(st->drain_type);
    Py_VISIT(st->handle_type);
    Py_VISIT(st->wrapper_type);
    Py_VISIT(st->handle_wait_type);
    Py_VISIT(st->inboxes);
    Py_VISIT(st->async_calls);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->ensure_future);
    Py_VISIT(st->iscoroutinefunction);
    Py_VISIT(st->partial_type);
    Py_VISIT(st->invalid_state);
    Py_VISIT(st->fallback_format);
    Py_VISIT(st->loop_module);
    Py_VISIT(st->cancelled_error);
    Py_VISIT(st->futures_cancelled);
    Py_VISIT(st->futures_timeout);
    Py_VISIT(st->base_exception_group);
    Py_VISIT(st->logger);
    Py_VISIT(st->loop_runner);
    Py_VISIT(st->on_error);
    return 0;
}

static int
module_clear(PyObject *module)
{
    bg_state *st = get_state(module);
    Py_CLEAR(st->task_type);
    Py_CLEAR(st->tasks_type);
    Py_CLEAR(st->call_type);
    Py_CLEAR(st->seq_type);
    Py_CLEAR(st->group_type);
    Py_CLEAR(st->inbox_type);
    Py_CLEAR(st->drain_type);
    Py_CLEAR(st->handle_type);
    Py_CLEAR(st->wrapper_type);
    Py_CLEAR(st->handle_wait_type);
    Py_CLEAR(st->inboxes);
    Py_CLEAR(st->async_calls);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->ensure_future);
    Py_CLEAR(st->iscoroutinefunction);
    Py_CLEAR(st->partial_type);
    Py_CLEAR(st->invalid_state);
    Py_CLEAR(st->fallback_format);
    Py_CLEAR(st->loop_module);
    Py_CLEAR(st->cancelled_error);
    Py_CLEAR(st->futures_cancelled);
    Py_CLEAR(st->futures_timeout);
    Py_CLEAR(st->base_exception_group);
    Py_CLEAR(st->logger);
    Py_CLEAR(st->loop_runner);
    Py_CLEAR(st->on_error);
    Py_CLEAR(st->str_create_future);
    Py_CLEAR(st->str_call_soon_threadsafe);
    Py_CLEAR(st->str_set_result);
    Py_CLEAR(st->str_set_exception);
    Py_CLEAR(st->str_cancelled);
    Py_CLEAR(st->str_cancel);
    Py_CLEAR(st->str_done);
    Py_CLEAR(st->str_result);
    Py_CLEAR(st->str_exception);
    Py_CLEAR(st->str_add_done_callback);
    Py_CLEAR(st->str_future_blocking);
    Py_CLEAR(st->str_throw);
    Py_CLEAR(st->str_close);
    Py_CLEAR(st->str_func);
    Py_CLEAR(st->str_call);
    Py_CLEAR(st->str_loop);
    Py_CLEAR(st->str_create_task);
    Py_CLEAR(st->str_submit);
    Py_CLEAR(st->str_is_closed);
    Py_CLEAR(st->str_wait_idle);
    Py_CLEAR(st->str_name);
    return 0;
}

static void
module_free(void *module)
{
    bg_state *st = get_state((PyObject *)module);
    module_clear((PyObject *)module);
    if (st->pool != NULL) {
        /* Normally the pool was shut down at exit and its workers are gone;
           otherwise they finish on their own and the last one frees it. */
        pool_shutdown(st->pool, 0, 0);
        pool_decref(st->pool);
        st->pool = NULL;
    }
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

PyModuleDef bg_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "backgrounder._backgrounder",
    .m_doc = "backgrounder's native engine: a thread pool, the bridge back to asyncio, "
             "Task, Tasks and @background.",
    .m_size = sizeof(bg_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__backgrounder(void)
{
    return PyModuleDef_Init(&bg_module_def);
}
