/* tasks.c: Tasks, and its two ways to run: one entry after another (Seq) or
 * all at once as a group (Group).
 *
 * Seq delegates to each entry's awaitable in turn, the way `for t in tasks:
 * await t()` would, so sends and throws reach the entry being awaited.  Group
 * starts every entry as an asyncio task, waits on one future that the last
 * child to finish settles, cancels the others at the first failure, and
 * raises the failures together as an ExceptionGroup, as a task group does.
 */
#include "tasks.h"

typedef struct {
    TaskObject base;       /* func/args/kwargs stay NULL: a Tasks has none */
    PyObject *tasks;       /* strong: a list */
    int as_group;
} TasksObject;

/* Returns 0 if every entry of `list` is a Task or a callable, else -1 with
   TypeError naming the first that is not. */
static int
check_entries(bg_state *st, PyObject *list)
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

/* Returns 0 if a run of `entry` ends in its nesting: every Tasks reachable
   from it (as an entry, or as a Task's func) is nested less deep than the
   recursion limit.  Else -1 with RecursionError: a Tasks that contains
   itself, or one nested too deep to run without exhausting the C stack.
   Runs no Python code, so the lists cannot change under it. */
static int
check_nesting(bg_state *st, PyObject *entry)
{
    if (PyObject_TypeCheck(entry, st->tasks_type)) {
        PyObject *list = ((TasksObject *)entry)->tasks;
        if (list == NULL) {
            return 0;
        }
        if (Py_EnterRecursiveCall(" while running a Tasks nested in itself or too deep")) {
            return -1;
        }
        int r = 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list) && r == 0; i++) {
            r = check_nesting(st, PyList_GET_ITEM(list, i));
        }
        Py_LeaveRecursiveCall();
        return r;
    }
    if (PyObject_TypeCheck(entry, st->task_type)) {
        PyObject *func = ((TaskObject *)entry)->func;
        if (func != NULL && PyObject_TypeCheck(func, st->task_type)) {
            if (Py_EnterRecursiveCall(" while running a Tasks nested in itself or too deep")) {
                return -1;
            }
            int r = check_nesting(st, func);
            Py_LeaveRecursiveCall();
            return r;
        }
    }
    return 0;
}

/* ---- Seq ------------------------------------------------------------------- */

typedef struct {
    bg_coro base;
    PyObject *tasks;       /* strong: the list, read as it is when each entry starts */
    PyObject *sub;         /* strong: the iterator of the entry being awaited */
    Py_ssize_t index;
    int done;
} SeqObject;

static inline bg_state *
coro_state(PyObject *self)
{
    return (bg_state *)PyType_GetModuleState(Py_TYPE(self));
}

/* Drives the entries from the one being awaited on, given how it answered
   (status, *result); returns when one yields, all have run, or one fails. */
static PySendResult
seq_advance(SeqObject *self, PySendResult status, PyObject **result)
{
    bg_state *st = coro_state((PyObject *)self);
    for (;;) {
        if (self->sub != NULL) {
            if (status == PYGEN_NEXT) {
                return PYGEN_NEXT;
            }
            Py_CLEAR(self->sub);
            if (status == PYGEN_ERROR) {
                self->done = 1;
                return PYGEN_ERROR;
            }
            Py_DECREF(*result);   /* an entry's value is not kept */
            *result = NULL;
        }
        if (self->index >= PyList_GET_SIZE(self->tasks)) {
            self->done = 1;
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        PyObject *entry = Py_NewRef(PyList_GET_ITEM(self->tasks, self->index));
        self->index++;
        PyObject *aw = task_entry_call(st, entry);
        Py_DECREF(entry);
        if (aw == NULL) {
            self->done = 1;
            return PYGEN_ERROR;
        }
        self->sub = bg_await_iter(aw);
        Py_DECREF(aw);
        if (self->sub == NULL) {
            self->done = 1;
            return PYGEN_ERROR;
        }
        status = bg_delegate_send(self->sub, Py_None, result);
    }
}

static PySendResult
seq_send(PyObject *op, PyObject *value, PyObject **result)
{
    SeqObject *self = (SeqObject *)op;
    if (self->done) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited Tasks run");
        return PYGEN_ERROR;
    }
    if (self->sub == NULL) {
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        *result = NULL;
        return seq_advance(self, PYGEN_RETURN, result);
    }
    PySendResult status = bg_delegate_send(self->sub, value, result);
    return seq_advance(self, status, result);
}

static PySendResult
seq_throw(PyObject *op, PyObject *exc, PyObject **result)
{
    SeqObject *self = (SeqObject *)op;
    if (self->sub == NULL) {
        self->done = 1;
        bg_raise(exc);
        return PYGEN_ERROR;
    }
    PySendResult status = bg_delegate_throw(coro_state(op), self->sub, exc, result);
    return seq_advance(self, status, result);
}

static int
seq_close(PyObject *op)
{
    SeqObject *self = (SeqObject *)op;
    PyObject *sub = self->sub;
    self->sub = NULL;
    self->done = 1;
    if (sub == NULL) {
        return 0;
    }
    int r = bg_delegate_close(coro_state(op), sub);
    Py_DECREF(sub);
    return r;
}

static const bg_coro_ops seq_ops = {seq_send, seq_throw, seq_close};

static int
seq_traverse(SeqObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->tasks);
    Py_VISIT(self->sub);
    return 0;
}

static int
seq_clear(SeqObject *self)
{
    Py_CLEAR(self->tasks);
    Py_CLEAR(self->sub);
    return 0;
}

static PyType_Slot seq_slots[] = {
    BG_CORO_SLOTS,
    {Py_tp_traverse, seq_traverse},
    {Py_tp_clear, seq_clear},
    {Py_tp_dealloc, bg_gc_dealloc},
    {Py_tp_doc, "A run of a Tasks, one entry after another."},
    {0, NULL},
};

static PyType_Spec seq_spec = {
    .name = "backgrounder.TasksRun",
    .basicsize = sizeof(SeqObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = seq_slots,
};

static PyObject *
seq_new(bg_state *st, TasksObject *tasks)
{
    SeqObject *self = PyObject_GC_New(SeqObject, st->seq_type);
    if (self == NULL) {
        return NULL;
    }
    bg_coro_init((PyObject *)self, &seq_ops);
    self->tasks = Py_NewRef(tasks->tasks);
    self->sub = NULL;
    self->index = 0;
    self->done = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* ---- Group ----------------------------------------------------------------- */

enum { GROUP_INIT, GROUP_WAITING, GROUP_DONE };

typedef struct {
    bg_coro base;
    PyObject *tasks;       /* strong: the list */
    PyObject *loop;        /* strong, once started */
    PyObject *children;    /* strong: list of asyncio tasks */
    bg_wait wait;          /* on a future settled when the last child is done */
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
    PySendResult status = bg_wait_yield(st, &self->wait, fut, result);
    Py_DECREF(fut);
    return status;
}

/* A child's done callback (bound to the group). */
static PyObject *
group_child_done(PyObject *op, PyObject *child)
{
    GroupObject *self = (GroupObject *)op;
    bg_state *st = coro_state(op);
    self->remaining--;
    if (self->state != GROUP_WAITING) {
        Py_RETURN_NONE;
    }
    if (!self->failing) {
        PyObject *cancelled = PyObject_CallMethodNoArgs(child, st->str_cancelled);
        if (cancelled == NULL) {
            return NULL;
        }
        int was_cancelled = cancelled == Py_True;
        Py_DECREF(cancelled);
        if (!was_cancelled) {
            PyObject *exc = PyObject_CallMethodNoArgs(child, st->str_exception);
            if (exc == NULL) {
                return NULL;
            }
            int failed = exc != Py_None;
            Py_DECREF(exc);
            if (failed) {
                self->failing = 1;
                if (group_cancel_children(st, self) < 0) {
                    return NULL;
                }
            }
        }
    }
    if (self->remaining == 0 && self->wait.fut != NULL) {
        PyObject *waiter = Py_NewRef(self->wait.fut);
        PyObject *done = PyObject_CallMethodNoArgs(waiter, st->str_done);
        PyObject *res = done == Py_False
                            ? PyObject_CallMethodOneArg(waiter, st->str_set_result, Py_None)
                            : Py_XNewRef(done);
        Py_XDECREF(done);
        Py_DECREF(waiter);
        if (res == NULL) {
            return NULL;
        }
        Py_DECREF(res);
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
        st->base_exception_group = PyObject_GetAttrString(mod, "BaseExceptionGroup");
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
        bg_raise(thrown);
        Py_DECREF(thrown);
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
    if (tasks == NULL || check_entries(st, tasks) < 0) {
        goto error;
    }
    if (PyList_GET_SIZE(tasks) == 0) {
        Py_DECREF(tasks);
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    self->loop = PyObject_CallNoArgs(st->get_running_loop);
    if (self->loop == NULL) {
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
        bg_raise(exc);
        Py_DECREF(exc);
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
        if (status == PYGEN_ERROR && self->wait.fut == NULL) {
            /* The future itself failed (cancelled under us): as if thrown in. */
            PyObject *exc = bg_fetch_exception();
            status = group_throw(op, exc, result);
            Py_DECREF(exc);
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
    if (self->state != GROUP_WAITING) {
        self->state = GROUP_DONE;
        bg_raise(exc);
        return PYGEN_ERROR;
    }
    /* Cancelled (or anything else thrown in): the children are cancelled and
       waited for, then it is raised. */
    if (self->thrown == NULL) {
        self->thrown = Py_NewRef(exc);
    }
    if (group_cancel_children(st, self) < 0) {
        return PYGEN_ERROR;
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
group_traverse(GroupObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->tasks);
    Py_VISIT(self->loop);
    Py_VISIT(self->children);
    Py_VISIT(self->wait.fut);
    Py_VISIT(self->thrown);
    return 0;
}

static int
group_clear(GroupObject *self)
{
    Py_CLEAR(self->tasks);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->children);
    Py_CLEAR(self->wait.fut);
    Py_CLEAR(self->thrown);
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

static PyObject *
group_new(bg_state *st, TasksObject *tasks)
{
    GroupObject *self = PyObject_GC_New(GroupObject, st->group_type);
    if (self == NULL) {
        return NULL;
    }
    bg_coro_init((PyObject *)self, &group_ops);
    self->tasks = Py_NewRef(tasks->tasks);
    self->loop = self->children = self->thrown = NULL;
    self->wait.fut = NULL;
    self->remaining = 0;
    self->failing = 0;
    self->state = GROUP_INIT;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* ---- Tasks ----------------------------------------------------------------- */

static int
tasks_init(TasksObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"tasks", "as_group", NULL};
    PyObject *tasks = Py_None;
    int as_group = 0;
    bg_state *st = get_state_by_type(Py_TYPE(self));
    if (st == NULL || !PyArg_ParseTupleAndKeywords(args, kwargs, "|Op:Tasks", kwlist, &tasks, &as_group)) {
        return -1;
    }
    int truth = PyObject_IsTrue(tasks);
    if (truth < 0) {
        return -1;
    }
    PyObject *list = truth ? PySequence_List(tasks) : PyList_New(0);
    if (list == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "Tasks() argument 'tasks' must be a list of tasks, not %R", tasks);
        }
        return -1;
    }
    if (check_entries(st, list) < 0) {
        Py_DECREF(list);
        return -1;
    }
    Py_XSETREF(self->tasks, list);
    self->as_group = as_group;
    return 0;
}

static PyObject *
tasks_run(TasksObject *self, int as_group)
{
    bg_state *st = get_state_by_type(Py_TYPE(self));
    if (st == NULL) {
        return NULL;
    }
    if (self->tasks == NULL) {
        PyErr_SetString(PyExc_TypeError, "the Tasks was not initialized: Tasks.__init__ was not called");
        return NULL;
    }
    if (check_nesting(st, (PyObject *)self) < 0) {
        return NULL;
    }
    return as_group ? group_new(st, self) : seq_new(st, self);
}

static PyObject *
tasks_call(TasksObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "a Tasks is called with no arguments: tasks()");
        return NULL;
    }
    return tasks_run(self, self->as_group);
}

static PyObject *
tasks_run_single(TasksObject *self, PyObject *Py_UNUSED(ignored))
{
    return tasks_run(self, 0);
}

static PyObject *
tasks_run_as_group(TasksObject *self, PyObject *Py_UNUSED(ignored))
{
    return tasks_run(self, 1);
}

static PyObject *
tasks_add_task(TasksObject *self, PyObject *args, PyObject *kwargs)
{
    bg_state *st = get_state_by_type(Py_TYPE(self));
    if (st == NULL) {
        return NULL;
    }
    if (self->tasks == NULL) {
        PyErr_SetString(PyExc_TypeError, "the Tasks was not initialized: Tasks.__init__ was not called");
        return NULL;
    }
    PyObject *task = PyObject_Call((PyObject *)st->task_type, args, kwargs);
    if (task == NULL) {
        return NULL;
    }
    int r = PyList_Append(self->tasks, task);
    Py_DECREF(task);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
tasks_get_tasks(TasksObject *self, void *Py_UNUSED(closure))
{
    if (self->tasks == NULL) {
        PyErr_SetString(PyExc_AttributeError, "tasks");
        return NULL;
    }
    return Py_NewRef(self->tasks);
}

static int
tasks_set_tasks(TasksObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    bg_state *st = get_state_by_type(Py_TYPE(self));
    if (st == NULL) {
        return -1;
    }
    if (value == NULL || !PyList_Check(value)) {
        PyErr_Format(PyExc_TypeError, "Tasks.tasks must be a list, not %R", value ? value : Py_None);
        return -1;
    }
    if (check_entries(st, value) < 0) {
        return -1;
    }
    Py_XSETREF(self->tasks, Py_NewRef(value));
    return 0;
}

static PyObject *
tasks_get_as_group(TasksObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->as_group);
}

static int
tasks_set_as_group(TasksObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    int truth = value ? PyObject_IsTrue(value) : 0;
    if (truth < 0) {
        return -1;
    }
    self->as_group = truth;
    return 0;
}

static PyGetSetDef tasks_getset[] = {
    {"tasks", (getter)tasks_get_tasks, (setter)tasks_set_tasks, "The entries to run (a list).", NULL},
    {"as_group", (getter)tasks_get_as_group, (setter)tasks_set_as_group,
     "Run every entry at once (True) or one after another (False).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef tasks_methods[] = {
    {"add_task", (PyCFunction)(void (*)(void))tasks_add_task, METH_VARARGS | METH_KEYWORDS,
     "add_task($self, func, /, *args, **kwargs)\n--\n\nAppends Task(func, *args, **kwargs)."},
    {"run_single", (PyCFunction)tasks_run_single, METH_NOARGS,
     "run_single($self, /)\n--\n\nAn awaitable that runs the entries one after another; "
     "the first failure stops the rest."},
    {"run_as_group", (PyCFunction)tasks_run_as_group, METH_NOARGS,
     "run_as_group($self, /)\n--\n\nAn awaitable that runs every entry at once; at the first "
     "failure the others are cancelled and the failures raised as an ExceptionGroup."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
tasks_repr(TasksObject *self)
{
    PyObject *name = bg_type_name(Py_TYPE(self));
    if (name == NULL) {
        return NULL;
    }
    PyObject *repr = PyUnicode_FromFormat("%U(tasks=%R, as_group=%s)", name,
                                          self->tasks ? self->tasks : Py_None,
                                          self->as_group ? "True" : "False");
    Py_DECREF(name);
    return repr;
}

static int
tasks_traverse(TasksObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->base.func);
    Py_VISIT(self->base.args);
    Py_VISIT(self->base.kwargs);
    Py_VISIT(self->tasks);
    return 0;
}

static int
tasks_clear(TasksObject *self)
{
    Py_CLEAR(self->base.func);
    Py_CLEAR(self->base.args);
    Py_CLEAR(self->base.kwargs);
    Py_CLEAR(self->tasks);
    return 0;
}

static void
tasks_dealloc(TasksObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tasks_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot tasks_slots[] = {
    {Py_tp_init, tasks_init},
    {Py_tp_call, tasks_call},
    {Py_tp_repr, tasks_repr},
    {Py_tp_getset, tasks_getset},
    {Py_tp_methods, tasks_methods},
    {Py_tp_traverse, tasks_traverse},
    {Py_tp_clear, tasks_clear},
    {Py_tp_dealloc, tasks_dealloc},
    {Py_tp_doc,
     "Tasks(tasks=None, as_group=False)\n--\n\n"
     "Several tasks run as one background: ``await tasks()`` runs them in order\n"
     "(the first failure stops the rest), or, with ``as_group=True``, all at once\n"
     "(at the first failure the others are cancelled; the failures are raised\n"
     "together as an ExceptionGroup)."},
    {0, NULL},
};

static PyType_Spec tasks_spec = {
    .name = "backgrounder.Tasks",
    .basicsize = sizeof(TasksObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = tasks_slots,
};

int
tasks_init_types(PyObject *module, bg_state *st)
{
    st->tasks_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &tasks_spec, (PyObject *)st->task_type);
    if (st->tasks_type == NULL || PyModule_AddType(module, st->tasks_type) < 0) {
        return -1;
    }
    st->seq_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &seq_spec, NULL);
    if (st->seq_type == NULL) {
        return -1;
    }
    st->group_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &group_spec, NULL);
    if (st->group_type == NULL) {
        return -1;
    }
    return 0;
}
