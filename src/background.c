/* background.c: @background, its wrapper, how a call starts, and
 * backgrounder's own loop thread.
 *
 * Calling a decorated function starts it at once and returns a
 * BackgroundHandle (handle.c): a sync function goes to the pool (the handle
 * is the pool item's target and the worker settles it); an async one
 * becomes an asyncio task on the running loop, or on backgrounder's own
 * loop thread (backgrounder/_loop.py) when called from sync code.
 */
#include "background.h"
#include "handle.h"
#include "bridge.h"
#include "report.h"

/* ---- starting a call ---------------------------------------------------- */

/* Returns a borrowed reference to backgrounder._loop, imported on first
   use, or NULL with an exception set. */
static PyObject *
loop_module(bg_state *st)
{
    if (st->loop_module == NULL) {
        st->loop_module = PyImport_ImportModule("backgrounder._loop");
    }
    return st->loop_module;
}

/* Returns a borrowed reference to backgrounder's own loop thread, started
   on first use, or NULL with an exception set. */
static PyObject *
loop_runner(bg_state *st)
{
    if (st->loop_runner == NULL) {
        PyObject *mod = loop_module(st);
        if (mod == NULL) {
            return NULL;
        }
        PyObject *runner = bg_call_method(mod, "LoopThread", NULL);
        if (runner == NULL) {
            return NULL;
        }
        if (st->loop_runner == NULL) {
            st->loop_runner = runner;
        }
        else {
            /* Another thread made one meanwhile: keep that one. */
            PyObject *res = bg_call_method(runner, "stop", "OO", Py_False, Py_None);
            Py_XDECREF(res);
            Py_DECREF(runner);
            if (res == NULL) {
                return NULL;
            }
        }
    }
    return st->loop_runner;
}

/* Returns 1 if `loop` is one that asgiref's async_to_sync made for a single
   call (Django's sync handler running an async view), which dies with the
   request; 0 if not (always when asgiref is not imported); -1 on error. */
static int
loop_ends_with_the_call(bg_state *st, PyObject *loop)
{
    PyObject *name = PyUnicode_FromString("asgiref.sync");
    if (name == NULL) {
        return -1;
    }
    PyObject *asgiref = PyImport_GetModule(name);
    Py_DECREF(name);
    if (asgiref == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_DECREF(asgiref);
    PyObject *res = NULL, *mod = loop_module(st);
    if (mod != NULL) {
        res = bg_call_method(mod, "ends_with_the_call", "O", loop);
    }
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

/* ---- how an async call ends -------------------------------------------- */

/* The done callback of an async call's asyncio task (bound to the handle). */
static PyObject *
background_settle_from(PyObject *op, PyObject *task)
{
    HandleObject *h = (HandleObject *)op;
    bg_state *st = (bg_state *)PyType_GetModuleState(Py_TYPE(op));
    int r = PyDict_DelItem(st->async_calls, op);
    if (r < 0) {
        PyErr_Clear();   /* already gone: settled after a fork */
    }
    else {
        pool_async_end(st->pool);
    }
    PyObject *cancelled = PyObject_CallMethodNoArgs(task, st->str_cancelled);
    if (cancelled == NULL) {
        return NULL;
    }
    int was_cancelled = cancelled == Py_True;
    Py_DECREF(cancelled);
    if (was_cancelled) {
        /* Not by the handle (an async call cannot be cancelled through it):
           its loop was shut down under it.  That is work lost: say so. */
        PyObject *exc = PyObject_CallNoArgs(st->cancelled_error);
        if (exc == NULL) {
            return NULL;
        }
        bg_report_error(st, "background call %s was cancelled before it finished: its event "
                        "loop ended (await backgrounder.drain() before it ends)", handle_func(h), exc);
        Py_DECREF(exc);
        if (handle_cancel_now(st, h) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *exc = PyObject_CallMethodNoArgs(task, st->str_exception);
    if (exc == NULL) {
        return NULL;
    }
    if (exc != Py_None) {
        if (handle_settle(st, h, H_FINISHED, NULL, exc) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    Py_DECREF(exc);
    PyObject *result = PyObject_CallMethodNoArgs(task, st->str_result);
    if (result == NULL) {
        return NULL;
    }
    if (handle_settle(st, h, H_FINISHED, result, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef background_settle_from_def = {
    "_settle_from", background_settle_from, METH_O, "Done callback of the call's asyncio task (internal).",
};

static PyObject *
background_async_done(HandleObject *h)
{
    return PyCFunction_New(&background_settle_from_def, (PyObject *)h);
}

static int
background_async_started(bg_state *st, HandleObject *h, PyObject *loop, PyObject *task)
{
    if (PyDict_SetItem(st->async_calls, (PyObject *)h, task) < 0) {
        return -1;
    }
    pool_async_begin(st->pool);
    handle_set_running(h, loop);
    return 0;
}

static void
background_async_abort(bg_state *st, HandleObject *h)
{
    if (PyDict_DelItem(st->async_calls, (PyObject *)h) < 0) {
        PyErr_Clear();
        return;
    }
    pool_async_end(st->pool);
}

static void
background_forget_engine_calls(bg_state *st)
{
    /* The calls on the parent's engine loop (task None) never end here. */
    PyObject *items = PyDict_Items(st->async_calls);
    if (items == NULL) {
        PyErr_WriteUnraisable(NULL);
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        if (PyTuple_GET_ITEM(pair, 1) != Py_None) {
            continue;
        }
        PyObject *h = PyTuple_GET_ITEM(pair, 0);
        if (PyDict_DelItem(st->async_calls, h) < 0) {
            PyErr_WriteUnraisable(h);
        }
        if (handle_cancel_now(st, (HandleObject *)h) < 0) {
            PyErr_WriteUnraisable(h);
        }
    }
    Py_DECREF(items);
}

void
background_sweep_closed_loops(bg_state *st)
{
    PyObject *saved = bg_fetch_exception();
    PyObject *items = PyDict_Size(st->async_calls) ? PyDict_Items(st->async_calls) : NULL;
    for (Py_ssize_t i = 0; items != NULL && i < PyList_GET_SIZE(items); i++) {
        PyObject *h = PyTuple_GET_ITEM(PyList_GET_ITEM(items, i), 0);
        PyObject *loop = handle_loop((HandleObject *)h);
        if (PyTuple_GET_ITEM(PyList_GET_ITEM(items, i), 1) == Py_None || loop == NULL) {
            continue;   /* the engine's own loop: never closed under its calls */
        }
        PyObject *closed = PyObject_CallMethodNoArgs(loop, st->str_is_closed);
        int is_closed = closed ? PyObject_IsTrue(closed) : -1;
        Py_XDECREF(closed);
        if (is_closed <= 0) {
            if (is_closed < 0) {
                PyErr_WriteUnraisable(loop);
            }
            continue;
        }
        if (PyDict_DelItem(st->async_calls, h) < 0) {
            PyErr_WriteUnraisable(h);
            continue;
        }
        pool_async_end(st->pool);
        PyObject *exc = PyObject_CallNoArgs(st->cancelled_error);
        if (exc != NULL) {
            bg_report_error(st, "background call %s was lost: its event loop was closed before "
                            "it finished (await backgrounder.drain() before closing it)",
                            handle_func((HandleObject *)h), exc);
            Py_DECREF(exc);
        }
        if (exc == NULL || handle_cancel_now(st, (HandleObject *)h) < 0) {
            PyErr_WriteUnraisable(h);
        }
    }
    if (items == NULL && PyErr_Occurred()) {
        PyErr_WriteUnraisable(NULL);
    }
    Py_XDECREF(items);
    if (saved != NULL) {
        bg_restore(saved);
    }
}

/* Returns a new reference to func(*args, **kwargs) as a coroutine: what a
   function marked as a coroutine function returns may be any awaitable (or
   not one at all: awaiting it then raises TypeError in the call). */
static PyObject *
call_as_coroutine(bg_state *st, PyObject *func, PyObject *args, PyObject *kwargs)
{
    PyObject *aw = PyObject_Call(func, args, kwargs);
    if (aw == NULL || PyCoro_CheckExact(aw)) {
        return aw;
    }
    PyObject *mod = loop_module(st);
    PyObject *coro = mod ? bg_call_method(mod, "as_coroutine", "(O)", aw) : NULL;
    Py_DECREF(aw);
    return coro;
}

/* Starts an async call: on the running loop if there is one (unless that
   loop ends with the current call), else on backgrounder's loop thread.
   Returns 0, or -1 with an exception set. */
static int
start_async(bg_state *st, HandleObject *h, PyObject *func, PyObject *args, PyObject *kwargs)
{
    PyObject *loop = NULL, *coro = NULL, *done = NULL, *task = NULL, *ctx = NULL, *res = NULL;
    PyObject *own_loop = NULL;
    int r = -1;
    loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            goto done;
        }
        PyErr_Clear();
    }
    else {
        /* On the engine's own loop: through the runner too, which counts
           what it runs, so that the exit waits for it. */
        int own = 0;
        if (st->loop_runner != NULL) {
            own_loop = PyObject_GetAttr(st->loop_runner, st->str_loop);
            if (own_loop == NULL) {
                goto done;
            }
            own = own_loop == loop;
        }
        int ends = own ? 1 : loop_ends_with_the_call(st, loop);
        if (ends < 0) {
            goto done;
        }
        if (ends) {
            Py_CLEAR(loop);
        }
    }
    coro = call_as_coroutine(st, func, args, kwargs);
    if (coro == NULL) {
        goto done;
    }
    if (loop != NULL) {
        done = background_async_done(h);
        if (done == NULL) {
            goto done;
        }
        task = PyObject_CallMethodOneArg(loop, st->str_create_task, coro);
        if (task == NULL) {
            goto done;
        }
        int started = background_async_started(st, h, loop, task);
        res = started < 0 ? NULL : PyObject_CallMethodOneArg(task, st->str_add_done_callback, done);
        if (res == NULL) {
            /* Nobody would hear of its outcome: it does not run. */
            if (started == 0) {
                background_async_abort(st, h);
            }
            PyObject *exc = bg_fetch_exception();
            if (bg_cancel_future(st, task) < 0) {
                PyErr_WriteUnraisable(task);
            }
            bg_restore(exc);
        }
    }
    else {
        PyObject *runner = loop_runner(st);
        if (runner == NULL) {
            goto done;
        }
        Py_XSETREF(own_loop, PyObject_GetAttr(runner, st->str_loop));
        ctx = PyContext_CopyCurrent();
        if (own_loop == NULL || ctx == NULL) {
            goto done;
        }
        done = background_async_done(h);
        if (done == NULL || background_async_started(st, h, own_loop, Py_None) < 0) {
            goto done;
        }
        res = PyObject_CallMethodObjArgs(runner, st->str_submit, coro, ctx, done, NULL);
        if (res == NULL) {
            background_async_abort(st, h);   /* not accepted: done is never called */
        }
    }
    r = res ? 0 : -1;
done:
    if (r < 0 && coro != NULL && task == NULL && res == NULL && PyCoro_CheckExact(coro)) {
        /* Never scheduled: close it so that no "never awaited" warning fires. */
        PyObject *exc = bg_fetch_exception();
        PyObject *closed = PyObject_CallMethodNoArgs(coro, st->str_close);
        Py_XDECREF(closed);
        PyErr_Clear();
        bg_restore(exc);
    }
    Py_XDECREF(loop);
    Py_XDECREF(own_loop);
    Py_XDECREF(coro);
    Py_XDECREF(done);
    Py_XDECREF(task);
    Py_XDECREF(ctx);
    Py_XDECREF(res);
    return r;
}

/* Starts a call of func(*args, **kwargs) in the background.  Returns a new
   reference to its handle, or NULL with an exception set. */
static PyObject *
background_start(bg_state *st, PyObject *func, int is_async, PyObject *args, PyObject *kwargs)
{
    if (pool_is_closed(st->pool)) {
        PyErr_SetString(PyExc_RuntimeError, "backgrounder is shut down: it accepts no new work");
        return NULL;
    }
    HandleObject *h = handle_new(st, func);
    if (h == NULL) {
        return NULL;
    }
    if (is_async) {
        if (start_async(st, h, func, args, kwargs) < 0) {
            Py_DECREF(h);
            return NULL;
        }
        return (PyObject *)h;
    }
    bg_item *item = pool_item_new(st->pool);
    if (item == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    item->ops = &handle_item_ops;
    item->func = Py_NewRef(func);
    item->args = Py_NewRef(args);
    item->target = Py_NewRef(h);
    item->context = PyContext_CopyCurrent();
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        item->kwargs = PyDict_Copy(kwargs);
    }
    if (item->context == NULL || (kwargs != NULL && PyDict_GET_SIZE(kwargs) && item->kwargs == NULL)
        || pool_submit(st->pool, item) < 0) {
        pool_item_free(item);
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

/* ---- the wrapper @background returns ------------------------------------ */

enum { KIND_FUNCTION, KIND_STATIC, KIND_CLASS };

typedef struct {
    PyObject_HEAD
    PyObject *func;        /* strong: what a call runs */
    PyObject *dict;        /* the wrapper's __dict__: __name__, __wrapped__, ... */
    PyObject *weakreflist;
    int is_async;
    int kind;
} WrapperObject;

static PyObject *
wrapper_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    WrapperObject *self = (WrapperObject *)op;
    return background_start(get_state_by_type(Py_TYPE(self)), self->func, self->is_async, args, kwargs);
}

static PyObject *
wrapper_get(PyObject *op, PyObject *obj, PyObject *type)
{
    WrapperObject *self = (WrapperObject *)op;
    if (self->kind == KIND_STATIC) {
        return Py_NewRef(self);
    }
    if (self->kind == KIND_CLASS) {
        return PyMethod_New((PyObject *)self, type ? type : (PyObject *)Py_TYPE(obj));
    }
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New((PyObject *)self, obj);
}

static PyObject *
wrapper_repr(PyObject *op)
{
    WrapperObject *self = (WrapperObject *)op;
    return PyUnicode_FromFormat("<background %R>", self->func);
}

static int
wrapper_traverse(PyObject *op, visitproc visit, void *arg)
{
    WrapperObject *self = (WrapperObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->func);
    Py_VISIT(self->dict);
    return 0;
}

static int
wrapper_clear(PyObject *op)
{
    WrapperObject *self = (WrapperObject *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->dict);
    return 0;
}

static void
wrapper_dealloc(PyObject *op)
{
    WrapperObject *self = (WrapperObject *)op;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    wrapper_clear(op);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMemberDef wrapper_members[] = {
    {"__dictoffset__", Py_T_PYSSIZET, offsetof(WrapperObject, dict), Py_READONLY, NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(WrapperObject, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef wrapper_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot wrapper_slots[] = {
    {Py_tp_call, wrapper_call},
    {Py_tp_descr_get, wrapper_get},
    {Py_tp_repr, wrapper_repr},
    {Py_tp_members, wrapper_members},
    {Py_tp_getset, wrapper_getset},
    {Py_tp_traverse, wrapper_traverse},
    {Py_tp_clear, wrapper_clear},
    {Py_tp_dealloc, wrapper_dealloc},
    {Py_tp_doc, "A function decorated with @background: a call starts it and returns a handle."},
    {0, NULL},
};

static PyType_Spec wrapper_spec = {
    .name = "backgrounder.BackgroundFunction",
    .basicsize = sizeof(WrapperObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = wrapper_slots,
};

static PyObject *
bg_background(PyObject *module, PyObject *fn)
{
    bg_state *st = get_state(module);
    PyObject *func = NULL, *update = NULL, *res = NULL;
    WrapperObject *w = NULL;
    if (!PyCallable_Check(fn) && !PyObject_TypeCheck(fn, &PyStaticMethod_Type)
        && !PyObject_TypeCheck(fn, &PyClassMethod_Type)) {
        PyErr_Format(PyExc_TypeError, "background() argument must be a callable, not %R", fn);
        return NULL;
    }
    int kind = KIND_FUNCTION;
    if (PyObject_TypeCheck(fn, &PyStaticMethod_Type) || PyObject_TypeCheck(fn, &PyClassMethod_Type)) {
        kind = PyObject_TypeCheck(fn, &PyStaticMethod_Type) ? KIND_STATIC : KIND_CLASS;
        func = bg_getattr(fn, "__func__");
    }
    else {
        func = Py_NewRef(fn);
    }
    if (func == NULL) {
        return NULL;
    }
    int is_async = bg_is_async_callable(st, func);
    if (is_async < 0) {
        goto error;
    }
    w = PyObject_GC_New(WrapperObject, st->wrapper_type);
    if (w == NULL) {
        goto error;
    }
    w->func = func;
    func = NULL;
    w->dict = NULL;
    w->weakreflist = NULL;
    w->is_async = is_async;
    w->kind = kind;
    PyObject_GC_Track(w);
    /* __module__, __name__, __qualname__, __doc__, __dict__, __wrapped__ */
    PyObject *functools = PyImport_ImportModule("functools");
    if (functools == NULL) {
        goto error;
    }
    update = bg_getattr(functools, "update_wrapper");
    Py_DECREF(functools);
    if (update == NULL) {
        goto error;
    }
    res = PyObject_CallFunctionObjArgs(update, (PyObject *)w, w->func, NULL);
    if (res == NULL) {
        goto error;
    }
    Py_DECREF(update);
    Py_DECREF(res);
    return (PyObject *)w;

error:
    Py_XDECREF(func);
    Py_XDECREF(w);
    Py_XDECREF(update);
    return NULL;
}

static PyObject *
bg_loop_runner(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = get_state(module);
    if (pool_is_closed(st->pool)) {
        PyErr_SetString(PyExc_RuntimeError, "backgrounder is shut down: it accepts no new work");
        return NULL;
    }
    return Py_XNewRef(loop_runner(st));
}

/* _run_in_pool(func, args, kwargs): what backgrounder._trio submits. */
static PyObject *
bg_run_in_pool(PyObject *module, PyObject *args)
{
    PyObject *func, *fargs, *fkwargs;
    if (!PyArg_ParseTuple(args, "OO!O:_run_in_pool", &func, &PyTuple_Type, &fargs, &fkwargs)) {
        return NULL;
    }
    if (fkwargs != Py_None && !PyDict_Check(fkwargs)) {
        PyErr_Format(PyExc_TypeError, "_run_in_pool() kwargs must be a dict or None, not %R", fkwargs);
        return NULL;
    }
    return background_start(get_state(module), func, 0, fargs, fkwargs == Py_None ? NULL : fkwargs);
}

static PyMethodDef background_functions[] = {
    {"_run_in_pool", bg_run_in_pool, METH_VARARGS,
     "_run_in_pool(func, args, kwargs, /)\n--\n\nfunc(*args, **kwargs) on the pool: a BackgroundHandle "
     "(for backgrounder._trio)."},
    {"_loop_runner", bg_loop_runner, METH_NOARGS,
     "backgrounder's own loop thread (backgrounder._loop.LoopThread), started on first use."},
    {"background", bg_background, METH_O,
     "background(fn, /)\n--\n\n"
     "Decorator: calling fn starts it in the background at once and returns a\n"
     "BackgroundHandle.  A sync fn runs on the native pool; an async fn on the running\n"
     "event loop, or on backgrounder's own loop thread when called from sync code.\n"
     "An exception nobody retrieves from the handle is logged on the 'backgrounder' logger."},
    {NULL, NULL, 0, NULL},
};

/* ---- lifecycle ------------------------------------------------------------ */

int
background_stop_loop(bg_state *st, int wait, double deadline)
{
    if (st->loop_runner == NULL) {
        return 1;
    }
    PyObject *t = bg_time_left_object(deadline);
    if (t == NULL) {
        return -1;
    }
    PyObject *res = bg_call_method(st->loop_runner, "stop", "OO", wait ? Py_True : Py_False, t);
    Py_DECREF(t);
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

int
background_wait_idle(bg_state *st, double deadline, int exclude)
{
    if (st->loop_runner == NULL) {
        return 1;
    }
    PyObject *t = bg_time_left_object(deadline);
    if (t == NULL) {
        return -1;
    }
    PyObject *n = PyLong_FromLong(exclude);
    PyObject *res = n ? PyObject_CallMethodObjArgs(st->loop_runner, st->str_wait_idle, t, n, NULL) : NULL;
    Py_XDECREF(n);
    Py_DECREF(t);
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

int
background_caller_on_engine_loop(bg_state *st)
{
    bg_item *item = pool_current_item(st->pool);
    PyObject *loop = item != NULL ? bridge_item_loop(item) : NULL;
    if (loop == NULL || st->loop_runner == NULL) {
        return 0;
    }
    PyObject *own = PyObject_GetAttr(st->loop_runner, st->str_loop);
    if (own == NULL) {
        PyErr_Clear();
        return 0;
    }
    int r = own == loop;
    Py_DECREF(own);
    return r;
}

void
background_after_fork_child(bg_state *st)
{
    /* The parent's loop thread and its tasks do not exist here: their
       handles settle as cancelled. */
    background_forget_engine_calls(st);
    Py_CLEAR(st->loop_runner);
}

int
background_init_types(PyObject *module, bg_state *st)
{
    if (handle_init_types(module, st) < 0) {
        return -1;
    }
    st->wrapper_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &wrapper_spec, NULL);
    if (st->wrapper_type == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(module, background_functions);
}
