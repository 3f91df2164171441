/* task.c: Task, the Call that `await task()` drives for a sync callable, and
 * the coroutine protocol shared by every awaitable of the module (task.h).
 *
 * A Call on its first send: creates a future on the running loop, queues a
 * pool item holding the callable, its arguments, a copy of the caller's
 * context and the future, and yields the future.  The pool runs the item and
 * the bridge settles the future on the loop; the awaiting asyncio task then
 * sends again and the Call returns the future's result (or raises its
 * exception, traceback included).
 */
#include "task.h"
#include "bridge.h"
#include "report.h"

/* ---- Call: one await of a sync callable ------------------------------------ */

enum { CALL_INIT, CALL_WAITING, CALL_DONE };

typedef struct {
    bg_coro base;
    PyObject *func;     /* strong until done (named if the call fails unawaited) */
    PyObject *args;     /* strong until submitted: the item takes them over */
    PyObject *kwargs;
    bg_wait wait;       /* the future the pool's item settles, while waiting */
    int state;
} CallObject;

static inline bg_state *
call_state(CallObject *self)
{
    return (bg_state *)PyType_GetModuleState(Py_TYPE(self));
}

/* Ends the call: a future still waited on is cancelled, so a call not yet
   started never starts.  If the call already failed (its future settled
   with an exception nobody will now read), the exception is reported: when
   the call is closed (`thrown` NULL), or when a cancellation is thrown in.
   Any other exception thrown in is what the awaiting task is handed, the
   call's own included.  Returns 0, or -1 with an exception set. */
static int
call_abandon(CallObject *self, PyObject *thrown)
{
    bg_state *st = call_state(self);
    PyObject *fut = bg_wait_take(&self->wait), *func = self->func;
    self->func = NULL;
    self->state = CALL_DONE;
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    int r = 0;
    if (fut != NULL) {
        PyObject *res = PyObject_CallMethodNoArgs(fut, st->str_cancel);
        if (res == NULL) {
            /* Its loop is closed ("Event loop is closed"): nothing to cancel. */
            r = PyErr_ExceptionMatches(PyExc_RuntimeError) ? (PyErr_Clear(), 0) : -1;
        }
        else if (res == Py_False) {
            /* Already done: settled, or cancelled. */
            PyObject *cancelled = PyObject_CallMethodNoArgs(fut, st->str_cancelled);
            PyObject *exc = cancelled == Py_False ? PyObject_CallMethodNoArgs(fut, st->str_exception) : NULL;
            /* Closed: lost, unless it is a GeneratorExit, which a task
               delivers by throwing it into the coroutine awaiting this call
               (and `yield from` turns that throw into this close). */
            int lost = thrown == NULL
                       ? exc != NULL && !PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)
                       : PyObject_TypeCheck(thrown, (PyTypeObject *)st->cancelled_error);
            if (exc != NULL && exc != Py_None && exc != thrown && lost) {
                bg_report_error(st, BG_CALL_FAILED, func ? func : Py_None, exc);
            }
            if (cancelled == NULL || (cancelled == Py_False && exc == NULL)) {
                r = -1;
            }
            Py_XDECREF(exc);
            Py_XDECREF(cancelled);
        }
        Py_XDECREF(res);
        Py_DECREF(fut);
    }
    Py_XDECREF(func);
    return r;
}

/* Submits the call to the pool and yields the future it will settle. */
static PySendResult
call_submit(CallObject *self, PyObject **result)
{
    bg_state *st = call_state(self);
    PyObject *loop = NULL, *fut = NULL;
    bg_item *item = NULL;

    self->state = CALL_DONE;   /* whatever fails below ends the call */
    loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            /* No asyncio loop: trio's way, if trio runs (a foreign wait). */
            PyObject *no_loop = bg_fetch_exception();
            PyObject *args = PyTuple_Pack(3, self->func, self->args,
                                          self->kwargs ? self->kwargs : Py_None);
            if (args == NULL) {
                Py_DECREF(no_loop);
                goto error;
            }
            PySendResult status = bg_coro_go_foreign((PyObject *)self, "call", args, no_loop, result);
            Py_DECREF(args);
            Py_CLEAR(self->func);
            Py_CLEAR(self->args);
            Py_CLEAR(self->kwargs);
            return status;
        }
        goto error;
    }
    fut = bg_new_future(st, loop);
    if (fut == NULL) {
        goto error;
    }
    item = pool_item_new(st->pool);
    if (item == NULL) {
        goto error;
    }
    item->inbox = bridge_inbox_for(st, loop);
    if (item->inbox == NULL) {
        pool_item_free(item);
        goto error;
    }
    item->ops = &bridge_future_ops;
    item->context = PyContext_CopyCurrent();
    if (item->context == NULL) {
        bridge_forget(item);
        goto error;
    }
    item->target = Py_NewRef(fut);
    item->func = Py_NewRef(self->func);   /* kept here too: named if the call fails unawaited */
    item->args = self->args;              /* the item takes the call's references */
    item->kwargs = self->kwargs;
    self->args = self->kwargs = NULL;
    if (pool_submit(st->pool, item) < 0) {
        bridge_forget(item);
        goto error;
    }
    Py_DECREF(loop);
    self->state = CALL_WAITING;
    /* Only fails on no memory: the item is the pool's now, and settles a
       future nobody waits on; the call ends here with the error. */
    PySendResult status = bg_wait_yield(st, &self->wait, fut, result);
    Py_DECREF(fut);
    if (status == PYGEN_ERROR) {
        self->state = CALL_DONE;
        Py_CLEAR(self->func);
    }
    return status;

error:
    Py_XDECREF(loop);
    Py_XDECREF(fut);
    Py_CLEAR(self->func);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    return PYGEN_ERROR;
}

static PySendResult
call_send(PyObject *op, PyObject *value, PyObject **result)
{
    CallObject *self = (CallObject *)op;
    switch (self->state) {
    case CALL_INIT:
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        return call_submit(self, result);
    case CALL_WAITING: {
        PySendResult status = bg_wait_resume(call_state(self), &self->wait, result);
        if (self->wait.fut == NULL) {
            /* Its outcome, returned or raised: the call is over. */
            self->state = CALL_DONE;
            Py_CLEAR(self->func);
        }
        return status;
    }
    default:
        return bg_coro_reused();
    }
}

static PySendResult
call_throw(PyObject *op, PyObject *exc, PyObject **result)
{
    (void)result;
    if (((CallObject *)op)->state == CALL_DONE) {
        return bg_coro_reused();
    }
    if (call_abandon((CallObject *)op, exc) < 0) {
        PyErr_WriteUnraisable(op);
    }
    bg_restore(Py_NewRef(exc));
    return PYGEN_ERROR;
}

static int
call_close(PyObject *op)
{
    return call_abandon((CallObject *)op, NULL);
}

static const bg_coro_ops call_ops = {call_send, call_throw, call_close};

static int
call_traverse(PyObject *op, visitproc visit, void *arg)
{
    CallObject *self = (CallObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->func);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->wait.fut);
    BG_CORO_VISIT(self);
    return 0;
}

static int
call_clear(PyObject *op)
{
    CallObject *self = (CallObject *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->wait.fut);
    BG_CORO_CLEAR(self);
    return 0;
}

static void
call_finalize(PyObject *op)
{
    CallObject *self = (CallObject *)op;
    if (self->state == CALL_DONE) {
        return;
    }
    PyObject *exc = bg_fetch_exception();
    if (self->state == CALL_INIT) {
        /* As for a coroutine: work handed over and dropped unawaited is a bug
           in the caller, not something to lose without a word. */
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "backgrounder call of %R was never awaited",
                             self->func) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        self->state = CALL_DONE;
    }
    else if (call_abandon(self, NULL) < 0) {
        /* Its loop is closed ("Event loop is closed"): nothing to cancel. */
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            PyErr_Clear();
        }
        else {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    if (exc) {
        bg_restore(exc);
    }
}

static void
call_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;   /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    call_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot call_slots[] = {
    BG_CORO_SLOTS,
    {Py_tp_traverse, call_traverse},
    {Py_tp_clear, call_clear},
    {Py_tp_finalize, call_finalize},
    {Py_tp_dealloc, call_dealloc},
    {Py_tp_doc, "One await of a Task of a sync callable: runs it on the pool."},
    {0, NULL},
};

static PyType_Spec call_spec = {
    .name = "backgrounder.TaskCall",
    .basicsize = sizeof(CallObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = call_slots,
};

PyObject *
task_start(bg_state *st, PyObject *func, PyObject *args, PyObject *kwargs, int is_async)
{
    if (is_async) {
        return PyObject_Call(func, args, kwargs);
    }
    if (pool_is_closed(st->pool)) {
        PyErr_SetString(PyExc_RuntimeError, "backgrounder is shut down: it accepts no new work");
        return NULL;
    }
    CallObject *call = PyObject_GC_New(CallObject, st->call_type);
    if (call == NULL) {
        return NULL;
    }
    bg_coro_init((PyObject *)call, &call_ops);
    call->func = Py_NewRef(func);
    call->args = Py_NewRef(args);
    call->kwargs = kwargs && PyDict_GET_SIZE(kwargs) ? Py_NewRef(kwargs) : NULL;
    call->wait.fut = NULL;
    call->state = CALL_INIT;
    PyObject_GC_Track(call);
    return (PyObject *)call;
}

/* ---- Task ------------------------------------------------------------------ */

static inline bg_state *
task_state(PyObject *self)
{
    return get_state_by_type(Py_TYPE(self));
}

static int
task_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    TaskObject *self = (TaskObject *)op;
    bg_state *st = task_state((PyObject *)self);
    if (st == NULL) {
        return -1;
    }
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_SetString(PyExc_TypeError, "Task() missing required argument 'func' (pos 1)");
        return -1;
    }
    PyObject *func = PyTuple_GET_ITEM(args, 0);
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "Task() argument 'func' must be callable, not %R", func);
        return -1;
    }
    int is_async = bg_is_async_callable(st, func);
    if (is_async < 0) {
        return -1;
    }
    PyObject *rest = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    if (rest == NULL) {
        return -1;
    }
    PyObject *kw = NULL;
    if (kwargs && PyDict_GET_SIZE(kwargs)) {
        kw = PyDict_Copy(kwargs);   /* Task(f, **d) must not alias d */
        if (kw == NULL) {
            Py_DECREF(rest);
            return -1;
        }
    }
    Py_XSETREF(self->func, Py_NewRef(func));
    Py_XSETREF(self->args, rest);
    Py_XSETREF(self->kwargs, kw);
    self->is_async = is_async;
    return 0;
}

static PyObject *
task_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    TaskObject *self = (TaskObject *)op;
    if (PyTuple_GET_SIZE(args) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "a Task is called with no arguments: task()");
        return NULL;
    }
    if (self->func == NULL) {
        PyErr_SetString(PyExc_TypeError, "the Task was not initialized: Task.__init__ was not called");
        return NULL;
    }
    bg_state *st = task_state((PyObject *)self);
    if (st == NULL) {
        return NULL;
    }
    return task_start(st, self->func, self->args, self->kwargs, self->is_async);
}

/* task() through vectorcall (exact Task instances): no tuple, no dict. */
static PyObject *
task_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    (void)args;
    TaskObject *self = (TaskObject *)op;
    if (PyVectorcall_NARGS(nargsf) || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a Task is called with no arguments: task()");
        return NULL;
    }
    if (self->func == NULL) {
        PyErr_SetString(PyExc_TypeError, "the Task was cleared: it has no func");
        return NULL;
    }
    bg_state *st = (bg_state *)PyType_GetModuleState(Py_TYPE(self));
    return task_start(st, self->func, self->args, self->kwargs, self->is_async);
}

/* Task(func, *args, **kwargs) through vectorcall.  Set on the Task type
   alone (tp_vectorcall is not inherited): subclasses go through tp_new and
   __init__ as usual. */
static PyObject *
task_vectorcall_new(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyTypeObject *tp = (PyTypeObject *)type;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *rest = NULL, *kw = NULL;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "Task() missing required argument 'func' (pos 1)");
        return NULL;
    }
    PyObject *func = args[0];
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "Task() argument 'func' must be callable, not %R", func);
        return NULL;
    }
    bg_state *st = (bg_state *)PyType_GetModuleState(tp);
    int is_async = bg_is_async_callable(st, func);
    if (is_async < 0) {
        return NULL;
    }
    rest = PyTuple_New(nargs - 1);
    if (rest == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(rest, i - 1, Py_NewRef(args[i]));
    }
    if (nkw) {
        kw = PyDict_New();
        if (kw == NULL) {
            goto error;
        }
        for (Py_ssize_t i = 0; i < nkw; i++) {
            if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                goto error;
            }
        }
    }
    TaskObject *self = (TaskObject *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        goto error;
    }
    self->vectorcall = task_vectorcall;
    self->func = Py_NewRef(func);
    self->args = rest;
    self->kwargs = kw;
    self->is_async = is_async;
    return (PyObject *)self;

error:
    Py_XDECREF(rest);
    Py_XDECREF(kw);
    return NULL;
}

/* Returns 0 if every entry of `list` is a Task or a callable, else -1 with
   TypeError naming the first that is not. */
int
task_check_entries(bg_state *st, PyObject *list)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *entry = PyList_GET_ITEM(list, i);
        if (!PyObject_TypeCheck(entry, st->task_type) && !PyCallable_Check(entry)) {
            PyErr_Format(PyExc_TypeError,
                         "Tasks entries must be Task objects or callables, not %R", entry);
            return -1;
        }
    }
    return 0;
}

PyObject *
task_entry_call(bg_state *st, PyObject *entry)
{
    if (PyObject_TypeCheck(entry, st->task_type)) {
        return PyObject_CallNoArgs(entry);
    }
    if (!PyCallable_Check(entry)) {
        PyErr_Format(PyExc_TypeError, "Tasks entries must be Task objects or callables, not %R", entry);
        return NULL;
    }
    PyObject *task = PyObject_CallOneArg((PyObject *)st->task_type, entry);
    if (task == NULL) {
        return NULL;
    }
    PyObject *aw = PyObject_CallNoArgs(task);
    Py_DECREF(task);
    return aw;
}

static PyObject *
task_get_func(PyObject *op, void *Py_UNUSED(closure))
{
    TaskObject *self = (TaskObject *)op;
    if (self->func == NULL) {
        PyErr_SetString(PyExc_AttributeError, "func");
        return NULL;
    }
    return Py_NewRef(self->func);
}

static int
task_set_func(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    TaskObject *self = (TaskObject *)op;
    if (value == NULL || !PyCallable_Check(value)) {
        PyErr_Format(PyExc_TypeError, "Task.func must be callable, not %R", value ? value : Py_None);
        return -1;
    }
    bg_state *st = task_state((PyObject *)self);
    int is_async = st ? bg_is_async_callable(st, value) : -1;
    if (is_async < 0) {
        return -1;
    }
    Py_XSETREF(self->func, Py_NewRef(value));
    self->is_async = is_async;
    return 0;
}

static PyObject *
task_get_args(PyObject *op, void *Py_UNUSED(closure))
{
    TaskObject *self = (TaskObject *)op;
    if (self->args == NULL) {
        PyErr_SetString(PyExc_AttributeError, "args");
        return NULL;
    }
    return Py_NewRef(self->args);
}

static int
task_set_args(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    TaskObject *self = (TaskObject *)op;
    if (value == NULL || !PyTuple_Check(value)) {
        PyErr_Format(PyExc_TypeError, "Task.args must be a tuple, not %R", value ? value : Py_None);
        return -1;
    }
    Py_XSETREF(self->args, Py_NewRef(value));
    return 0;
}

static PyObject *
task_get_kwargs(PyObject *op, void *Py_UNUSED(closure))
{
    TaskObject *self = (TaskObject *)op;
    if (self->args == NULL) {   /* not a Task's fields: a Tasks has none */
        PyErr_SetString(PyExc_AttributeError, "kwargs");
        return NULL;
    }
    if (self->kwargs == NULL) {
        self->kwargs = PyDict_New();   /* kept: the caller may fill it in */
        if (self->kwargs == NULL) {
            return NULL;
        }
    }
    return Py_NewRef(self->kwargs);
}

static int
task_set_kwargs(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    TaskObject *self = (TaskObject *)op;
    if (value == NULL || !PyDict_Check(value)) {
        PyErr_Format(PyExc_TypeError, "Task.kwargs must be a dict, not %R", value ? value : Py_None);
        return -1;
    }
    Py_XSETREF(self->kwargs, Py_NewRef(value));
    return 0;
}

static PyObject *
task_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    TaskObject *self = (TaskObject *)op;
    bg_state *st = task_state((PyObject *)self);
    if (st == NULL) {
        return NULL;
    }
    if (self->func != NULL) {
        PyObject *name;
        int r = bg_getattr_optional(self->func, st->str_name, &name);
        if (r < 0 || (r > 0 && PyUnicode_Check(name))) {
            return name;
        }
        Py_XDECREF(name);
    }
    return bg_type_name(Py_TYPE(self));
}

static PyGetSetDef task_getset[] = {
    {"func", task_get_func, task_set_func, "The callable the task runs.", NULL},
    {"args", task_get_args, task_set_args, "Its positional arguments (a tuple).", NULL},
    {"kwargs", task_get_kwargs, task_set_kwargs, "Its keyword arguments (a dict).", NULL},
    {"__name__", task_get_name, NULL, "The name of the callable (for inspect).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *
task_repr(PyObject *op)
{
    TaskObject *self = (TaskObject *)op;
    PyObject *name = bg_type_name(Py_TYPE(self));
    if (name == NULL) {
        return NULL;
    }
    PyObject *kwargs = self->kwargs ? Py_NewRef(self->kwargs) : PyDict_New();
    if (kwargs == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    PyObject *func = Py_NewRef(self->func ? self->func : Py_None);
    PyObject *args = Py_NewRef(self->args ? self->args : Py_None);
    PyObject *repr = PyUnicode_FromFormat("%U(func=%R, args=%R, kwargs=%R)", name, func, args, kwargs);
    Py_DECREF(func);
    Py_DECREF(args);
    Py_DECREF(kwargs);
    Py_DECREF(name);
    return repr;
}

static int
task_traverse(PyObject *op, visitproc visit, void *arg)
{
    TaskObject *self = (TaskObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->func);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    return 0;
}

static int
task_clear(PyObject *op)
{
    TaskObject *self = (TaskObject *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    return 0;
}

static void
task_dealloc(PyObject *op)
{
    TaskObject *self = (TaskObject *)op;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    task_clear(op);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMemberDef task_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(TaskObject, vectorcall), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef task_methods[] = {
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "See PEP 585: Task[int] in annotations."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot task_slots[] = {
    {Py_tp_init, task_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_call, task_call},
    {Py_tp_repr, task_repr},
    {Py_tp_getset, task_getset},
    {Py_tp_members, task_members},
    {Py_tp_methods, task_methods},
    {Py_tp_traverse, task_traverse},
    {Py_tp_clear, task_clear},
    {Py_tp_dealloc, task_dealloc},
    {Py_tp_doc,
     "Task(func, /, *args, **kwargs)\n--\n\n"
     "A call to run in the background: ``await task()`` runs ``func(*args, **kwargs)``\n"
     "once and returns its value.  A sync callable runs on backgrounder's native\n"
     "thread pool, in a copy of the caller's contextvars context; an async one\n"
     "runs in the awaiting task.  Pass it as a response's ``background``."},
    {0, NULL},
};

static PyType_Spec task_spec = {
    .name = "backgrounder.Task",
    .basicsize = sizeof(TaskObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = task_slots,
};

/* Makes a Task look like an `async def` function to inspect and asyncio
   (inspect.iscoroutinefunction, asyncio.iscoroutinefunction), as 0.2.0's
   `async def __call__` did: frameworks use those to decide to await
   task() rather than run it in a thread and drop what it returns.  inspect
   takes an object with __name__, __code__, __defaults__ and __kwdefaults__
   for a function; the code is that of `async def __call__(self)`.
   Returns 0 or -1. */
static int
task_mark_coroutine_function(PyTypeObject *tp)
{
    PyObject *module_code = NULL, *consts = NULL;
    int r = -1;
    module_code = Py_CompileString("async def __call__():\n    pass\n", "<backgrounder.Task>",
                                   Py_file_input);
    if (module_code == NULL) {
        return -1;
    }
    consts = bg_getattr(module_code, "co_consts");
    if (consts == NULL || !PyTuple_Check(consts)) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(consts); i++) {
        PyObject *code = PyTuple_GET_ITEM(consts, i);
        if (PyCode_Check(code)) {
            if (PyObject_SetAttrString((PyObject *)tp, "__code__", code) < 0
                || PyObject_SetAttrString((PyObject *)tp, "__defaults__", Py_None) < 0
                || PyObject_SetAttrString((PyObject *)tp, "__kwdefaults__", Py_None) < 0) {
                goto done;
            }
            r = 0;
            break;
        }
    }
    if (r < 0) {
        PyErr_SetString(PyExc_SystemError, "backgrounder: no code object to mark Task with");
    }
done:
    Py_XDECREF(consts);
    Py_DECREF(module_code);
    return r;
}

int
task_init_types(PyObject *module, bg_state *st)
{
    st->task_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &task_spec, NULL);
    if (st->task_type == NULL || task_mark_coroutine_function(st->task_type) < 0
        || PyModule_AddType(module, st->task_type) < 0) {
        return -1;
    }
    st->task_type->tp_vectorcall = task_vectorcall_new;
    st->call_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &call_spec, NULL);
    if (st->call_type == NULL) {
        return -1;
    }
    return 0;
}
