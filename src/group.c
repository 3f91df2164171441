/* group.c: a run of a Tasks as a group (Tasks(as_group=True)(), run_as_group()).
 *
 * Starts every entry as an asyncio task, waits on one future that the last
 * child to finish settles, cancels the others at the first failure, and
 * raises the failures together as an ExceptionGroup, as a task group does.
 */
#include "group.h"

static inline bg_state *
coro_state(PyObject *self)
{
    return (bg_state *)PyType_GetModuleState(Py_TYPE(self));
}

enum { GROUP_INIT, GROUP_WAITING, GROUP_DONE };

typedef struct {
    bg_coro base;
    PyObject *tasks;       /* strong: the list */
    PyObject *loop;        /* strong, once started */
    PyObject *children;    /* strong: list of asyncio tasks */
    bg_wait wait;          /* on `waiter`, while the run awaits it */
    PyObject *waiter;      /* strong: the future the last child to finish settles */
    PyObject *thrown;      /* strong: what was thrown in (a cancellation), re-raised at the end */
    Py_ssize_t remaining;  /* children not done yet */
    int failing;           /* a child failed: the others were cancelled */
    int state;
} GroupObject;

/* Cancels every child not done yet.  Returns 0 or -1. */
static int
group_cancel_children(bg_state *st, GroupObject *self)
{
    if (self->children == NULL) {
        return 0;
    }
    PyObject *children = Py_NewRef(self->children);
    int r = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(children) && r == 0; i++) {
        PyObject *res = PyObject_CallMethodNoArgs(PyList_GET_ITEM(children, i), st->str_cancel);
        if (res == NULL) {
            r = -1;
        }
        Py_XDECREF(res);
    }
    Py_DECREF(children);
    return r;
}

/* Waits on a fresh future of the group's loop, settled when the last child
   is done: PYGEN_NEXT with *result the future to yield, or PYGEN_ERROR. */
static PySendResult
group_wait(bg_state *st, GroupObject *self, PyObject **result)
{
    PyObject *fut = bg_new_future(st, self->loop);
    if (fut == NULL) {
        return PYGEN_ERROR;
    }
    Py_XSETREF(self->waiter, fut);
    return bg_wait_yield(st, &self->wait, fut, result);
}

/* A child's done callback (bound to the group). */
static PyObject *
group_child_done(PyObject *op, PyObject *child)
{
    GroupObject *self = (GroupObject *)op;
    bg_state *st = coro_state(op);
    self->remaining--;
    if (self->state == GROUP_WAITING && !self->failing) {
        /* The first failure cancels the others.  A failure to tell (no
           memory) is reported; the group still wakes below. */
        PyObject *cancelled = PyObject_CallMethodNoArgs(child, st->str_cancelled);
        PyObject *exc = cancelled == Py_False ? PyObject_CallMethodNoArgs(child, st->str_exception)
                                              : NULL;
        if (exc != NULL && exc != Py_None) {
            /* Not when a throw cancelled them already: once, as a TaskGroup. */
            self->failing = 1;
            if (self->thrown == NULL && group_cancel_children(st, self) < 0) {
                PyErr_WriteUnraisable(op);
            }
        }
        else if (cancelled == NULL || (cancelled == Py_False && exc == NULL)) {
            PyErr_WriteUnraisable(child);
        }
        Py_XDECREF(exc);
        Py_XDECREF(cancelled);
    }
    if (self->remaining == 0 && self->waiter != NULL) {
        /* Also when the run ended early (resumed early twice): whoever
           waits on the future still wakes. */
        PyObject *waiter = self->waiter;
        self->waiter = NULL;
        PyObject *done = PyObject_CallMethodNoArgs(waiter, st->str_done);
        PyObject *res = done == Py_False
                            ? PyObject_CallMethodOneArg(waiter, st->str_set_result, Py_None)
                            : Py_XNewRef(done);
        Py_XDECREF(done);
        if (res == NULL) {
            /* Woken another way: cancelled, the run then ends as cancelled. */
            PyErr_WriteUnraisable(waiter);
            if (bg_cancel_future(st, waiter) < 0) {
                PyErr_WriteUnraisable(op);   /* nothing more can wake it */
            }
        }
        Py_XDECREF(res);
        Py_DECREF(waiter);
    }
    Py_RETURN_NONE;
}

static PyMethodDef group_child_done_def = {
    "_child_done", group_child_done, METH_O, "Done callback of a child task (internal).",
};

/* Returns a new reference to BaseExceptionGroup (the exceptiongroup backport
   before 3.11), or NULL with an exception set. */
static PyObject *
base_exception_group(bg_state *st)
{
    if (st->base_exception_group == NULL) {
#if PY_VERSION_HEX >= 0x030B0000
        st->base_exception_group = Py_NewRef(PyExc_BaseExceptionGroup);
#else
        PyObject *mod = PyImport_ImportModule("exceptiongroup");
        if (mod == NULL) {
            return NULL;
        }
        st->base_exception_group = bg_getattr(mod, "BaseExceptionGroup");
        Py_DECREF(mod);
        if (st->base_exception_group == NULL) {
            return NULL;
        }
#endif
    }
    return Py_NewRef(st->base_exception_group);
}

/* Every child is done: the group returns None, or raises the children's
   failures as one exception group, or re-raises what was thrown in. */
static PySendResult
group_finish(bg_state *st, GroupObject *self, PyObject **result)
{
    PyObject *errors = NULL, *group_type = NULL, *group = NULL;
    self->state = GROUP_DONE;
    Py_CLEAR(self->wait.fut);
    errors = PyList_New(0);
    if (errors == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(self->children); i++) {
        PyObject *child = PyList_GET_ITEM(self->children, i);
        PyObject *cancelled = PyObject_CallMethodNoArgs(child, st->str_cancelled);
        if (cancelled == NULL) {
            goto error;
        }
        int was_cancelled = cancelled == Py_True;
        Py_DECREF(cancelled);
        if (was_cancelled) {
            continue;
        }
        PyObject *exc = PyObject_CallMethodNoArgs(child, st->str_exception);
        if (exc == NULL) {
            goto error;
        }
        int r = exc == Py_None ? 0 : PyList_Append(errors, exc);
        Py_DECREF(exc);
        if (r < 0) {
            goto error;
        }
    }
    Py_CLEAR(self->children);
    if (PyList_GET_SIZE(errors) > 0) {
        group_type = base_exception_group(st);
        if (group_type == NULL) {
            goto error;
        }
        group = PyObject_CallFunction(group_type, "sO", "unhandled errors in a Tasks group", errors);
        if (group == NULL) {
            goto error;
        }
        bg_raise(group);
        goto error;
    }
    Py_DECREF(errors);
    if (self->thrown != NULL) {
        PyObject *thrown = self->thrown;
        self->thrown = NULL;
        bg_restore(thrown);
        return PYGEN_ERROR;
    }
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;

error:
    Py_XDECREF(errors);
    Py_XDECREF(group_type);
    Py_XDECREF(group);
    Py_CLEAR(self->children);
    Py_CLEAR(self->thrown);
    return PYGEN_ERROR;
}

/* Starts every entry as a child task and yields the waiter. */
static PySendResult
group_start(bg_state *st, GroupObject *self, PyObject **result)
{
    PyObject *on_done = NULL, *tasks = NULL;
    self->state = GROUP_DONE;   /* whatever fails below ends the run */
    tasks = PySequence_List(self->tasks);   /* a snapshot: the entries start now */
    if (tasks == NULL || task_check_entries(st, tasks) < 0) {
        goto error;
    }
    if (PyList_GET_SIZE(tasks) == 0) {
        Py_DECREF(tasks);
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    self->loop = PyObject_CallNoArgs(st->get_running_loop);
    if (self->loop == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            /* No asyncio loop: a trio nursery, if trio runs (a foreign wait). */
            PyObject *no_loop = bg_fetch_exception();
            PyObject *args = PyTuple_Pack(1, tasks);
            if (args == NULL) {
                Py_DECREF(no_loop);
                goto error;
            }
            PySendResult status = bg_coro_go_foreign((PyObject *)self, "group", args, no_loop, result);
            Py_DECREF(args);
            Py_DECREF(tasks);
            return status;
        }
        goto error;
    }
    self->children = PyList_New(0);
    on_done = PyCFunction_New(&group_child_done_def, (PyObject *)self);
    if (self->children == NULL || on_done == NULL) {
        goto error;
    }
    self->state = GROUP_WAITING;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tasks); i++) {
        PyObject *aw = task_entry_call(st, PyList_GET_ITEM(tasks, i));
        if (aw == NULL) {
            goto fail_started;
        }
        PyObject *child = PyObject_CallOneArg(st->ensure_future, aw);
        Py_DECREF(aw);
        if (child == NULL) {
            goto fail_started;
        }
        int r = PyList_Append(self->children, child);
        PyObject *res = r < 0 ? NULL
                              : PyObject_CallMethodOneArg(child, st->str_add_done_callback, on_done);
        Py_DECREF(child);
        if (res == NULL) {
            goto fail_started;
        }
        Py_DECREF(res);
        self->remaining++;
    }
    Py_CLEAR(on_done);
    Py_CLEAR(tasks);
    if (group_wait(st, self, result) == PYGEN_ERROR) {
        goto fail_started;
    }
    return PYGEN_NEXT;

fail_started:
    /* Children already started are cancelled; they end on their own. */
    self->state = GROUP_DONE;
    {
        PyObject *exc = bg_fetch_exception();
        if (group_cancel_children(st, self) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        bg_restore(exc);
    }
error:
    self->state = GROUP_DONE;
    Py_XDECREF(on_done);
    Py_XDECREF(tasks);
    Py_CLEAR(self->children);
    return PYGEN_ERROR;
}

static PySendResult group_throw(PyObject *op, PyObject *exc, PyObject **result);

static PySendResult
group_send(PyObject *op, PyObject *value, PyObject **result)
{
    GroupObject *self = (GroupObject *)op;
    bg_state *st = coro_state(op);
    switch (self->state) {
    case GROUP_INIT:
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        return group_start(st, self, result);
    case GROUP_WAITING: {
        PySendResult status = bg_wait_resume(st, &self->wait, result);
        if (status == PYGEN_RETURN) {
            Py_DECREF(*result);   /* None: the last child is done */
            *result = NULL;
            return group_finish(st, self, result);
        }
        if (status == PYGEN_ERROR) {
            /* Resumed early twice, or its future failed under it: the run
               ends, as a native coroutine's would; the children go on. */
            self->state = GROUP_DONE;
        }
        return status;
    }
    default:
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited Tasks run");
        return PYGEN_ERROR;
    }
}

static PySendResult
group_throw(PyObject *op, PyObject *exc, PyObject **result)
{
    GroupObject *self = (GroupObject *)op;
    bg_state *st = coro_state(op);
    if (self->state == GROUP_DONE) {
        return bg_coro_reused();
    }
    if (self->state != GROUP_WAITING) {
        self->state = GROUP_DONE;
        bg_restore(Py_NewRef(exc));
        return PYGEN_ERROR;
    }
    /* Cancelled (or anything else thrown in): the children are cancelled
       once, as asyncio.TaskGroup and trio's nursery do, and waited for; then
       the first thing thrown is raised.  A throw while they wind down does
       not cancel them again (anyio's cancel scopes cancel the waiting task
       at every loop iteration): a child's cleanup that awaits runs to its end.
       Nor does one after a failure cancelled them. */
    if (self->thrown == NULL) {
        self->thrown = Py_NewRef(exc);
        if (!self->failing && group_cancel_children(st, self) < 0) {
            return PYGEN_ERROR;
        }
    }
    if (bg_wait_cancel(st, &self->wait) < 0) {
        return PYGEN_ERROR;
    }
    if (self->remaining == 0) {
        return group_finish(st, self, result);
    }
    return group_wait(st, self, result);
}

static int
group_close(PyObject *op)
{
    GroupObject *self = (GroupObject *)op;
    int r = 0;
    if (self->state == GROUP_WAITING) {
        r = group_cancel_children(coro_state(op), self);
    }
    self->state = GROUP_DONE;
    if (bg_wait_cancel(coro_state(op), &self->wait) < 0) {
        r = -1;
    }
    return r;
}

static const bg_coro_ops group_ops = {group_send, group_throw, group_close};

static int
group_traverse(PyObject *op, visitproc visit, void *arg)
{
    GroupObject *self = (GroupObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->tasks);
    Py_VISIT(self->loop);
    Py_VISIT(self->children);
    Py_VISIT(self->wait.fut);
    Py_VISIT(self->waiter);
    Py_VISIT(self->thrown);
    BG_CORO_VISIT(self);
    return 0;
}

static int
group_clear(PyObject *op)
{
    GroupObject *self = (GroupObject *)op;
    Py_CLEAR(self->tasks);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->children);
    Py_CLEAR(self->wait.fut);
    Py_CLEAR(self->waiter);
    Py_CLEAR(self->thrown);
    BG_CORO_CLEAR(self);
    return 0;
}

static PyType_Slot group_slots[] = {
    BG_CORO_SLOTS,
    {Py_tp_traverse, group_traverse},
    {Py_tp_clear, group_clear},
    {Py_tp_dealloc, bg_gc_dealloc},
    {Py_tp_doc, "A run of a Tasks as a group: every entry at once."},
    {0, NULL},
};

static PyType_Spec group_spec = {
    .name = "backgrounder.TasksGroupRun",
    .basicsize = sizeof(GroupObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = group_slots,
};

PyObject *
group_new(bg_state *st, PyObject *tasks)
{
    GroupObject *self = PyObject_GC_New(GroupObject, st->group_type);
    if (self == NULL) {
        return NULL;
    }
    bg_coro_init((PyObject *)self, &group_ops);
    self->tasks = Py_NewRef(tasks);
    self->loop = self->children = self->thrown = NULL;
    self->wait.fut = NULL;
    self->waiter = NULL;
    self->remaining = 0;
    self->failing = 0;
    self->state = GROUP_INIT;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

int
group_init_types(PyObject *module, bg_state *st)
{
    st->group_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &group_spec, NULL);
    return st->group_type ? 0 : -1;
}
