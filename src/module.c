/* module.c: backgrounder._backgrounder, its state, exec and functions.
 *
 * Multi-phase init (PEP 489): every module object has its own state and its
 * own pool.  Exec looks up what the engine needs from asyncio and functools,
 * makes the types, and registers the pool with the interpreter's lifecycle:
 * at exit, accepted work is finished before non-daemon threads are joined
 * (threading's own atexit, as concurrent.futures does) and the workers are
 * gone before the interpreter finalizes (atexit); at fork, the child gets a
 * fresh pool (os.register_at_fork).
 */
#include "module.h"   /* first: Python.h sets the feature macros */
#include "platform.h"
#include "task.h"
#include <math.h>

/* ---- helpers the other files share ----------------------------------------- */

bg_state *
get_state_by_type(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *mod = PyType_GetModuleByDef(tp, &bg_module_def);
    return mod ? get_state(mod) : NULL;
#else
    PyObject *mro = tp->tp_mro;
    for (Py_ssize_t i = 0; mro && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (!PyType_HasFeature(base, Py_TPFLAGS_HEAPTYPE)) {
            continue;
        }
        PyObject *mod = ((PyHeapTypeObject *)base)->ht_module;
        if (mod != NULL && PyModule_GetDef(mod) == &bg_module_def) {
            return get_state(mod);
        }
    }
    PyErr_Format(PyExc_TypeError, "type %s is not defined by backgrounder", tp->tp_name);
    return NULL;
#endif
}

void
bg_gc_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tp->tp_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

PyObject *
bg_type_name(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyType_GetName(tp);
#else
    return PyObject_GetAttrString((PyObject *)tp, "__name__");
#endif
}

PyObject *
bg_fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

void
bg_raise(PyObject *exc)
{
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
}

void
bg_set_stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    /* StopIteration(value) built explicitly: a tuple must stay one value. */
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

/* Where iscoroutinefunction comes from.  asyncio's is deprecated from 3.14
   (DeprecationWarning at each call, removed in 3.16); before 3.14 it is
   inspect's plus the `_is_coroutine` marker that asgiref and mock set there. */
#if PY_VERSION_HEX >= 0x030E0000
#define ISCOROUTINEFUNCTION_MODULE "inspect"
#else
#define ISCOROUTINEFUNCTION_MODULE "asyncio"
#endif

/* 1 or 0 when the answer is plain from the object's type, -1 when it takes
   st->iscoroutinefunction (decorated functions, callable objects). */
static int
is_async_fast(PyObject *obj)
{
    if (PyMethod_Check(obj)) {
        obj = PyMethod_GET_FUNCTION(obj);
    }
    if (PyFunction_Check(obj)) {
        PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(obj);
        if (code->co_flags & CO_COROUTINE) {
            return 1;
        }
        PyObject *dict = ((PyFunctionObject *)obj)->func_dict;
        return (dict == NULL || PyDict_GET_SIZE(dict) == 0) ? 0 : -1;
    }
    if (PyCFunction_Check(obj)) {
        return 0;
    }
    return -1;
}

/* Returns st->iscoroutinefunction(obj) as 1/0, or -1 with an exception. */
static int
call_iscoroutinefunction(bg_state *st, PyObject *obj)
{
    PyObject *res = PyObject_CallOneArg(st->iscoroutinefunction, obj);
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

int
bg_is_async_callable(bg_state *st, PyObject *func)
{
    PyObject *obj = Py_NewRef(func);
    while (PyObject_TypeCheck(obj, (PyTypeObject *)st->partial_type)) {
        PyObject *inner = PyObject_GetAttr(obj, st->str_func);
        Py_DECREF(obj);
        if (inner == NULL) {
            return -1;
        }
        obj = inner;
    }
    int r = is_async_fast(obj);
    if (r < 0) {
        r = call_iscoroutinefunction(st, obj);
        if (r == 0 && PyCallable_Check(obj) && !PyType_Check(obj)) {
            PyObject *call = PyObject_GetAttr(obj, st->str_call);
            r = call ? call_iscoroutinefunction(st, call) : -1;
            Py_XDECREF(call);
        }
    }
    Py_DECREF(obj);
    return r;
}

/* Returns a new reference to a name for `func` fit for a log line: its
   module and qualified name, never its arguments. */
static PyObject *
callable_name(bg_state *st, PyObject *func)
{
    PyObject *obj = Py_NewRef(func);
    while (PyObject_TypeCheck(obj, (PyTypeObject *)st->partial_type)) {
        PyObject *inner = PyObject_GetAttr(obj, st->str_func);
        Py_DECREF(obj);
        if (inner == NULL) {
            PyErr_Clear();
            return PyUnicode_FromString("<partial>");
        }
        obj = inner;
    }
    PyObject *name = PyObject_GetAttrString(obj, "__qualname__");
    if (name == NULL || !PyUnicode_Check(name)) {
        PyErr_Clear();
        Py_XDECREF(name);
        name = bg_type_name(Py_TYPE(obj));
        if (name == NULL) {
            PyErr_Clear();
            name = PyUnicode_FromString("<callable>");
        }
    }
    PyObject *module = PyObject_GetAttrString(obj, "__module__");
    if (module != NULL && PyUnicode_Check(module) && name != NULL) {
        Py_SETREF(name, PyUnicode_FromFormat("%U.%U", module, name));
    }
    else {
        PyErr_Clear();
    }
    Py_XDECREF(module);
    Py_DECREF(obj);
    return name;
}

void
bg_report_error(bg_state *st, const char *what, PyObject *func, PyObject *exc)
{
    PyObject *saved = bg_fetch_exception();
    PyObject *res = NULL, *name = NULL, *logger = NULL, *kwargs = NULL;
    if (st->on_error != NULL) {
        PyObject *on_error = Py_NewRef(st->on_error);
        res = PyObject_CallOneArg(on_error, exc);
        if (res == NULL) {
            PyErr_WriteUnraisable(on_error);
        }
        Py_DECREF(on_error);
        goto done;
    }
    if (st->logger == NULL) {
        PyObject *logging = PyImport_ImportModule("logging");
        if (logging == NULL) {
            goto fail;
        }
        st->logger = PyObject_CallMethod(logging, "getLogger", "s", "backgrounder");
        Py_DECREF(logging);
        if (st->logger == NULL) {
            goto fail;
        }
    }
    logger = Py_NewRef(st->logger);
    name = callable_name(st, func);
    kwargs = Py_BuildValue("{sO}", "exc_info", exc);
    if (name == NULL || kwargs == NULL) {
        goto fail;
    }
    PyObject *error = PyObject_GetAttrString(logger, "error");
    if (error == NULL) {
        goto fail;
    }
    PyObject *args = Py_BuildValue("(sO)", what, name);
    res = args ? PyObject_Call(error, args, kwargs) : NULL;
    Py_XDECREF(args);
    Py_DECREF(error);
    if (res == NULL) {
        goto fail;
    }
    goto done;
fail:
    PyErr_WriteUnraisable(exc);
done:
    Py_XDECREF(res);
    Py_XDECREF(name);
    Py_XDECREF(logger);
    Py_XDECREF(kwargs);
    if (saved) {
        bg_raise(saved);
        Py_DECREF(saved);
    }
}

/* ---- module functions ------------------------------------------------------ */

/* Parses a timeout: None gives -1 (no limit); a real number >= 0 itself.
   Returns 0, or -1 with TypeError/ValueError naming the value. */
static int
parse_timeout(const char *func, const char *arg, PyObject *value, double *out)
{
    if (value == NULL || value == Py_None) {
        *out = -1.0;
        return 0;
    }
    if (PyBool_Check(value) || !(PyLong_Check(value) || PyFloat_Check(value))) {
        PyErr_Format(PyExc_TypeError, "%s() argument '%s' must be a number of seconds or None, not %R",
                     func, arg, value);
        return -1;
    }
    double d = PyFloat_AsDouble(value);
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(d >= 0) || isinf(d)) {
        if (isinf(d) && d > 0) {
            *out = -1.0;
            return 0;
        }
        PyErr_Format(PyExc_ValueError, "%s() argument '%s' must be >= 0, not %R", func, arg, value);
        return -1;
    }
    *out = d;
    return 0;
}

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
        if (parse_timeout("configure", "idle_timeout", idle_timeout, &timeout) < 0) {
            return NULL;
        }
        if (timeout < 0) {
            timeout = 1e7;   /* inf: workers never retire (in practice) */
        }
        else if (timeout == 0) {
            PyErr_Format(PyExc_ValueError, "configure() argument 'idle_timeout' must be > 0 seconds, not %R",
                         idle_timeout);
            return NULL;
        }
    }
    if (on_error != NULL && on_error != Py_None && !PyCallable_Check(on_error)) {
        PyErr_Format(PyExc_TypeError, "configure() argument 'on_error' must be callable or None, not %R",
                     on_error);
        return NULL;
    }
    if (on_error != NULL) {
        Py_XSETREF(st->on_error, on_error == Py_None ? NULL : Py_NewRef(on_error));
    }
    pool_configure(st->pool, workers, timeout);
    Py_RETURN_NONE;
}

/* Defined in background.c: stops backgrounder's own loop thread, if started.
   Returns 1 when it is gone, 0 on timeout, -1 with an exception set. */
int background_stop_loop(bg_state *st, int wait, double timeout);
/* Defined in background.c: waits until the async @background calls are done. */
int background_wait_idle(bg_state *st, double timeout);

static PyObject *
bg_shutdown(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"wait", "timeout", NULL};
    int wait = 1;
    PyObject *timeout_obj = Py_None;
    double timeout;
    bg_state *st = get_state(module);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p$O:shutdown", kwlist, &wait, &timeout_obj)
        || parse_timeout("shutdown", "timeout", timeout_obj, &timeout) < 0) {
        return NULL;
    }
    /* The loop thread first: its coroutines may still hand sync work to the pool. */
    int r = background_stop_loop(st, wait, timeout);
    if (r < 0) {
        return NULL;
    }
    int r2 = pool_shutdown(st->pool, wait, timeout);
    if (r2 < 0) {
        return NULL;
    }
    return PyBool_FromLong(r && r2);
}

static PyObject *
bg_wait_idle(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout_obj = Py_None;
    double timeout;
    bg_state *st = get_state(module);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait_idle", kwlist, &timeout_obj)
        || parse_timeout("wait_idle", "timeout", timeout_obj, &timeout) < 0) {
        return NULL;
    }
    /* Async calls may queue sync work and the other way round: settle both,
       within one deadline. */
    double deadline = timeout < 0 ? -1.0 : bg_monotonic() + timeout;
    for (;;) {
        double left = deadline < 0 ? -1.0 : deadline - bg_monotonic();
        if (deadline >= 0 && left < 0) {
            left = 0;
        }
        int r = background_wait_idle(st, left);
        if (r <= 0) {
            return r < 0 ? NULL : Py_NewRef(Py_False);
        }
        left = deadline < 0 ? -1.0 : deadline - bg_monotonic();
        if (deadline >= 0 && left < 0) {
            left = 0;
        }
        r = pool_wait_idle(st->pool, left);
        if (r <= 0) {
            return r < 0 ? NULL : Py_NewRef(Py_False);
        }
        bg_pool_stats s;
        pool_get_stats(st->pool, &s);
        r = background_wait_idle(st, 0);
        if (r < 0) {
            return NULL;
        }
        if (r == 1 && s.queued == 0 && s.running == 0) {
            Py_RETURN_TRUE;
        }
    }
}

static PyObject *
bg_at_exit(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
    /* The pool is shut down even if stopping the loop thread was interrupted:
       no worker may outlive the interpreter's exit. */
    int r = background_stop_loop(st, 1, -1);
    PyObject *exc = r < 0 ? bg_fetch_exception() : NULL;
    if (pool_shutdown(st->pool, 1, -1) < 0) {
        Py_XDECREF(exc);
        return NULL;
    }
    if (exc != NULL) {
        bg_raise(exc);
        Py_DECREF(exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
bg_stats(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
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
        "pending_async", st->running_async ? PySet_GET_SIZE(st->running_async) : 0);
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
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "run_in_threadpool() argument 'func' must be callable, not %R", func);
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

/* Defined in background.c: forgets the parent's loop thread in a child. */
void background_after_fork_child(bg_state *st);

static PyObject *
bg_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
    pool_after_fork_child(st->pool);
    PyDict_Clear(st->inboxes);   /* the parent's loops */
    background_after_fork_child(st);
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
    *out = PyObject_GetAttrString(mod, attr);
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

    wait_idle = PyObject_GetAttrString(module, "wait_idle");
    at_exit = PyObject_GetAttrString(module, "_at_exit");
    if (wait_idle == NULL || at_exit == NULL) {
        goto done;
    }
    /* First, before non-daemon threads are joined: finish accepted work. */
    if (import_attr("threading", "_register_atexit", &register_atexit) < 0) {
        goto done;
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
    child = PyObject_GetAttrString(module, "_after_fork_child");
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
    INTERN(str_discard, "discard");
    INTERN(str_name, "__name__");
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
    st->running_async = PySet_New(NULL);
    if (st->inboxes == NULL || st->running_async == NULL || intern_names(st) < 0) {
        return -1;
    }
    if (import_attr("asyncio", "get_running_loop", &st->get_running_loop) < 0
        || import_attr("asyncio", "ensure_future", &st->ensure_future) < 0
        || import_attr(ISCOROUTINEFUNCTION_MODULE, "iscoroutinefunction", &st->iscoroutinefunction) < 0
        || import_attr("asyncio", "CancelledError", &st->cancelled_error) < 0
        || import_attr("functools", "partial", &st->partial_type) < 0
        || import_attr("concurrent.futures", "CancelledError", &st->futures_cancelled) < 0
        || import_attr("concurrent.futures", "TimeoutError", &st->futures_timeout) < 0) {
        return -1;
    }
    if (task_init_types(module, st) < 0 || tasks_init_types(module, st) < 0
        || bridge_init_types(module, st) < 0 || background_init_types(module, st) < 0) {
        return -1;
    }
    /* Task's __code__ (task.c) is what inspect.iscoroutinefunction and
       asyncio.iscoroutinefunction see: no private asyncio marker. */
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
    Py_VISIT(st->running_async);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->ensure_future);
    Py_VISIT(st->iscoroutinefunction);
    Py_VISIT(st->partial_type);
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
    Py_CLEAR(st->running_async);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->ensure_future);
    Py_CLEAR(st->iscoroutinefunction);
    Py_CLEAR(st->partial_type);
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
    Py_CLEAR(st->str_discard);
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
