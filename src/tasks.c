/* tasks.c: Tasks, and its run one entry after another (Seq); the run as a
 * group is group.c's.
 *
 * Seq delegates to each entry's awaitable in turn, the way `for t in tasks:
 * await t()` would, so sends and throws reach the entry being awaited.
 */
#include "tasks.h"

typedef struct {
    TaskObject base;       /* func/args/kwargs stay NULL: a Tasks has none */
    PyObject *tasks;       /* strong: a list */
    int as_group;
} TasksObject;

/* Returns 0 if a run of `entry` ends in its nesting: every Tasks reachable
   from it (as an entry, or as a Task's func) is nested no deeper than the
   interpreter's recursion limit.  Else -1 with RecursionError: a Tasks
   that contains itself, or one nested too deep to run.  The depth is
   counted against sys.getrecursionlimit() (from 3.12 the C stack is no
   longer bounded by it), and Py_EnterRecursiveCall guards the C stack.
   Runs no Python code, so the lists cannot change under it. */
static int
check_nesting(bg_state *st, PyObject *entry, int depth)
{
    PyObject *list = NULL, *func = NULL;
    if (PyObject_TypeCheck(entry, st->tasks_type)) {
        list = ((TasksObject *)entry)->tasks;
        if (list == NULL) {
            return 0;
        }
    }
    else if (PyObject_TypeCheck(entry, st->task_type)) {
        func = ((TaskObject *)entry)->func;
        if (func == NULL || !PyObject_TypeCheck(func, st->task_type)) {
            return 0;
        }
    }
    else {
        return 0;
    }
    if (depth > Py_GetRecursionLimit()) {
        PyErr_SetString(PyExc_RecursionError,
                        "maximum recursion depth exceeded while running a Tasks nested in "
                        "itself or too deep");
        return -1;
    }
    if (Py_EnterRecursiveCall(" while running a Tasks nested in itself or too deep")) {
        return -1;
    }
    int r = 0;
    if (list != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list) && r == 0; i++) {
            r = check_nesting(st, PyList_GET_ITEM(list, i), depth + 1);
        }
    }
    else {
        r = check_nesting(st, func, depth + 1);
    }
    Py_LeaveRecursiveCall();
    return r;
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
    if (self->done) {
        return bg_coro_reused();
    }
    if (self->sub == NULL) {
        self->done = 1;
        bg_restore(Py_NewRef(exc));
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
seq_traverse(PyObject *op, visitproc visit, void *arg)
{
    SeqObject *self = (SeqObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->tasks);
    Py_VISIT(self->sub);
    BG_CORO_VISIT(self);
    return 0;
}

static int
seq_clear(PyObject *op)
{
    SeqObject *self = (SeqObject *)op;
    Py_CLEAR(self->tasks);
    Py_CLEAR(self->sub);
    BG_CORO_CLEAR(self);
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

/* ---- Tasks ----------------------------------------------------------------- */

static int
tasks_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    TasksObject *self = (TasksObject *)op;
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
    if (task_check_entries(st, list) < 0) {
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
    if (check_nesting(st, (PyObject *)self, 0) < 0) {
        return NULL;
    }
    return as_group ? group_new(st, self->tasks) : seq_new(st, self);
}

static PyObject *
tasks_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    TasksObject *self = (TasksObject *)op;
    if (PyTuple_GET_SIZE(args) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "a Tasks is called with no arguments: tasks()");
        return NULL;
    }
    return tasks_run(self, self->as_group);
}

static PyObject *
tasks_run_single(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TasksObject *self = (TasksObject *)op;
    return tasks_run(self, 0);
}

static PyObject *
tasks_run_as_group(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TasksObject *self = (TasksObject *)op;
    return tasks_run(self, 1);
}

static PyObject *
tasks_add_task(PyObject *op, PyObject *args, PyObject *kwargs)
{
    TasksObject *self = (TasksObject *)op;
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
tasks_get_tasks(PyObject *op, void *Py_UNUSED(closure))
{
    TasksObject *self = (TasksObject *)op;
    if (self->tasks == NULL) {
        PyErr_SetString(PyExc_AttributeError, "tasks");
        return NULL;
    }
    return Py_NewRef(self->tasks);
}

static int
tasks_set_tasks(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    TasksObject *self = (TasksObject *)op;
    bg_state *st = get_state_by_type(Py_TYPE(self));
    if (st == NULL) {
        return -1;
    }
    if (value == NULL || !PyList_Check(value)) {
        PyErr_Format(PyExc_TypeError, "Tasks.tasks must be a list, not %R", value ? value : Py_None);
        return -1;
    }
    if (task_check_entries(st, value) < 0) {
        return -1;
    }
    Py_XSETREF(self->tasks, Py_NewRef(value));
    return 0;
}

static PyObject *
tasks_get_as_group(PyObject *op, void *Py_UNUSED(closure))
{
    TasksObject *self = (TasksObject *)op;
    return PyBool_FromLong(self->as_group);
}

static int
tasks_set_as_group(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    TasksObject *self = (TasksObject *)op;
    int truth = value ? PyObject_IsTrue(value) : 0;
    if (truth < 0) {
        return -1;
    }
    self->as_group = truth;
    return 0;
}

static PyGetSetDef tasks_getset[] = {
    {"tasks", tasks_get_tasks, tasks_set_tasks, "The entries to run (a list).", NULL},
    {"as_group", tasks_get_as_group, tasks_set_as_group,
     "Run every entry at once (True) or one after another (False).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef tasks_methods[] = {
    {"add_task", (PyCFunction)(void (*)(void))tasks_add_task, METH_VARARGS | METH_KEYWORDS,
     "add_task($self, func, /, *args, **kwargs)\n--\n\nAppends Task(func, *args, **kwargs)."},
    {"run_single", tasks_run_single, METH_NOARGS,
     "run_single($self, /)\n--\n\nAn awaitable that runs the entries one after another; "
     "the first failure stops the rest."},
    {"run_as_group", tasks_run_as_group, METH_NOARGS,
     "run_as_group($self, /)\n--\n\nAn awaitable that runs every entry at once; at the first "
     "failure the others are cancelled and the failures raised as an ExceptionGroup."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
tasks_repr(PyObject *op)
{
    TasksObject *self = (TasksObject *)op;
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
tasks_traverse(PyObject *op, visitproc visit, void *arg)
{
    TasksObject *self = (TasksObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->base.func);
    Py_VISIT(self->base.args);
    Py_VISIT(self->base.kwargs);
    Py_VISIT(self->tasks);
    return 0;
}

static int
tasks_clear(PyObject *op)
{
    TasksObject *self = (TasksObject *)op;
    Py_CLEAR(self->base.func);
    Py_CLEAR(self->base.args);
    Py_CLEAR(self->base.kwargs);
    Py_CLEAR(self->tasks);
    return 0;
}

static void
tasks_dealloc(PyObject *op)
{
    TasksObject *self = (TasksObject *)op;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tasks_clear(op);
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
    return group_init_types(module, st);
}
