/* bridge.c: completions from pool threads back to their asyncio loop, one
 * loop wake-up per batch.  See bridge.h.
 */
#include "bridge.h"
#include "report.h"

typedef struct {
    PyObject_HEAD
    PyObject *loop;          /* strong */
    bg_item *head, *tail;    /* completions waiting for the drain */
    Py_ssize_t pending;      /* counted in by bridge_inbox_for, not yet settled or dropped */
    int armed;               /* a drain is scheduled on the loop */
} InboxObject;

/* The callable handed to loop.call_soon_threadsafe.  If the loop drops it
   without calling it (the loop was closed), its dealloc drops the inbox's
   completions instead. */
typedef struct {
    PyObject_HEAD
    InboxObject *inbox;      /* strong */
    int ran;
} DrainObject;

static inline bg_state *
inbox_state(InboxObject *inbox)
{
    return (bg_state *)PyType_GetModuleState(Py_TYPE(inbox));
}

/* Uncounts n settled or dropped completions; with none left pending, the loop
   no longer needs its inbox: it leaves the dict (which may free it, so the
   caller holds a reference). */
static void
inbox_uncount(bg_state *st, InboxObject *inbox, Py_ssize_t n)
{
    inbox->pending -= n;
    assert(inbox->pending >= 0);
    if (inbox->pending > 0 || inbox->loop == NULL) {
        return;
    }
    assert(inbox->head == NULL && !inbox->armed);
    PyObject *current = PyDict_GetItemWithError(st->inboxes, inbox->loop);
    if (current == (PyObject *)inbox) {
        if (PyDict_DelItem(st->inboxes, inbox->loop) < 0) {
            PyErr_WriteUnraisable((PyObject *)inbox);
        }
    }
    else if (current == NULL && PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)inbox);
    }
}

/* Drops every completion in the inbox: its loop is closed, nobody can await
   them.  An exception among them is reported, not lost. */
static void
inbox_discard(bg_state *st, InboxObject *inbox)
{
    bg_item *items = inbox->head;
    inbox->head = inbox->tail = NULL;
    inbox->armed = 0;
    Py_ssize_t n = 0;
    Py_INCREF(inbox);
    while (items) {
        bg_item *item = items;
        items = item->next;
        if (item->exc) {
            bg_report_error(st, BG_CALL_FAILED, item->func, item->exc);
        }
        pool_item_free(item);
        n++;
    }
    inbox_uncount(st, inbox, n);
    Py_DECREF(inbox);
}

PyObject *
bridge_inbox_for(bg_state *st, PyObject *loop)
{
    PyObject *found = PyDict_GetItemWithError(st->inboxes, loop);
    if (found) {
        ((InboxObject *)found)->pending++;
        return Py_NewRef(found);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    InboxObject *inbox = PyObject_GC_New(InboxObject, st->inbox_type);
    if (inbox == NULL) {
        return NULL;
    }
    inbox->loop = Py_NewRef(loop);
    inbox->head = inbox->tail = NULL;
    inbox->pending = 1;
    inbox->armed = 0;
    PyObject_GC_Track(inbox);
    if (PyDict_SetItem(st->inboxes, loop, (PyObject *)inbox) < 0) {
        inbox->pending = 0;
        Py_DECREF(inbox);
        return NULL;
    }
    return (PyObject *)inbox;
}

void
bridge_forget(bg_item *item)
{
    InboxObject *inbox = (InboxObject *)item->inbox;
    Py_INCREF(inbox);
    pool_item_free(item);
    inbox_uncount(inbox_state(inbox), inbox, 1);
    Py_DECREF(inbox);
}

/* Calls fut.set_result(item's result) or fut.set_exception(item's
   exception).  Returns 0, or -1 with an exception set. */
static int
set_outcome(bg_state *st, PyObject *fut, bg_item *item)
{
    PyObject *res;
    if (item->exc == NULL) {
        res = PyObject_CallMethodOneArg(fut, st->str_set_result, item->result);
    }
    else if (PyErr_GivenExceptionMatches(item->exc, PyExc_StopIteration)) {
        /* A future cannot hold StopIteration (it would end the awaiting
           coroutine): raise it as a RuntimeError, as PEP 479 does. */
        PyObject *wrapped = PyObject_CallFunction(
            PyExc_RuntimeError, "s", "the background call raised StopIteration");
        if (wrapped == NULL) {
            return -1;
        }
        PyException_SetCause(wrapped, Py_NewRef(item->exc));
        PyException_SetContext(wrapped, Py_NewRef(item->exc));
        res = PyObject_CallMethodOneArg(fut, st->str_set_exception, wrapped);
        Py_DECREF(wrapped);
    }
    else {
        res = PyObject_CallMethodOneArg(fut, st->str_set_exception, item->exc);
    }
    Py_XDECREF(res);
    return res ? 0 : -1;
}

/* 1 if fut.done(), 0 if not, -1 with an exception set. */
static int
future_is_done(bg_state *st, PyObject *fut)
{
    PyObject *done = PyObject_CallMethodNoArgs(fut, st->str_done);
    if (done == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(done);
    Py_DECREF(done);
    return r;
}

/* 1 if `exc` is a KeyboardInterrupt, SystemExit or the like: an exception
   that must reach the loop's caller rather than an awaiting task. */
static int
is_interrupt(PyObject *exc)
{
    return !PyErr_GivenExceptionMatches(exc, PyExc_Exception);
}

/* On the loop thread.  Settles the item's future with its result or
   exception; a future cancelled meanwhile drops it (its error reported).
   If settling fails, the awaiting task is still woken: the outcome is set
   again, or the failure is set in its place, or the future is cancelled.
   A KeyboardInterrupt or SystemExit met on the way is stored in
   *interrupt (if none is yet) for the drain to raise once the batch is
   settled: never swallowed. */
static void
settle(bg_state *st, bg_item *item, PyObject **interrupt)
{
    PyObject *fut = item->target;
    if (set_outcome(st, fut, item) == 0) {
        pool_count_completion(item->pool);
        return;
    }
    PyObject *err = bg_fetch_exception();
    int done = future_is_done(st, fut);
    if (done < 0) {
        PyErr_WriteUnraisable(fut);
    }
    if (done == 0) {
        /* Interrupted on the way (a signal, a failed allocation): once more,
           then the failure itself, then a cancellation: the task wakes. */
        if (set_outcome(st, fut, item) == 0) {
            pool_count_completion(item->pool);
        }
        else {
            PyErr_Clear();
            PyObject *res = PyObject_CallMethodOneArg(fut, st->str_set_exception, err);
            if (res == NULL) {
                PyErr_Clear();
                res = PyObject_CallMethodNoArgs(fut, st->str_cancel);
            }
            if (res == NULL) {
                PyErr_WriteUnraisable(fut);
            }
            Py_XDECREF(res);
        }
    }
    else if (done == 1) {
        PyObject *cancelled = PyObject_CallMethodNoArgs(fut, st->str_cancelled);
        if (cancelled == NULL) {
            PyErr_WriteUnraisable(fut);
        }
        else if (cancelled == Py_True && item->exc != NULL) {
            bg_report_error(st, BG_CALL_FAILED, item->func, item->exc);   /* nobody awaits it now */
        }
        Py_XDECREF(cancelled);
    }
    if (is_interrupt(err)) {
        if (*interrupt == NULL) {
            *interrupt = Py_NewRef(err);
        }
    }
    else if (done != 1 || !PyErr_GivenExceptionMatches(err, st->invalid_state)) {
        bg_raise(err);
        PyErr_WriteUnraisable(fut);
    }
    Py_DECREF(err);
}

void
bridge_post(bg_item *item)
{
    InboxObject *inbox = (InboxObject *)item->inbox;
    bg_state *st = inbox_state(inbox);
    if (item->result == NULL && item->exc == NULL) {
        bridge_forget(item);   /* skipped: its future was cancelled */
        return;
    }
    item->next = NULL;
    if (inbox->tail) {
        inbox->tail->next = item;
    }
    else {
        inbox->head = item;
    }
    inbox->tail = item;
    if (inbox->armed) {
        return;   /* the drain already scheduled will take it */
    }
    inbox->armed = 1;
    DrainObject *drain = PyObject_New(DrainObject, st->drain_type);
    if (drain == NULL) {
        /* The completions stay in the inbox: the next one tries again. */
        inbox->armed = 0;
        PyErr_WriteUnraisable((PyObject *)inbox);
        return;
    }
    drain->inbox = (InboxObject *)Py_NewRef(inbox);
    drain->ran = 0;
    PyObject *res = PyObject_CallMethodOneArg(
        inbox->loop, st->str_call_soon_threadsafe, (PyObject *)drain);
    if (res == NULL) {
        /* "Event loop is closed": expected, the completions are dropped by
           the drain's dealloc below.  Anything else (no memory): they stay,
           for the next completion to try again. */
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            inbox->armed = 0;
            PyErr_WriteUnraisable(inbox->loop);
        }
        PyErr_Clear();
    }
    Py_XDECREF(res);
    Py_DECREF(drain);
}

/* ---- pool ops for awaited futures ----------------------------------------- */

static int
future_start(bg_item *item)
{
    bg_state *st = inbox_state((InboxObject *)item->inbox);
    PyObject *done = PyObject_CallMethodNoArgs(item->target, st->str_done);
    if (done == NULL) {
        PyErr_WriteUnraisable(item->target);
        return 1;
    }
    int run = done != Py_True;
    Py_DECREF(done);
    return run;
}

const bg_item_ops bridge_future_ops = {future_start, bridge_post, 1};

/* ---- Inbox ------------------------------------------------------------------ */

static int
inbox_traverse(PyObject *op, visitproc visit, void *arg)
{
    InboxObject *self = (InboxObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    return 0;
}

static int
inbox_clear(PyObject *op)
{
    InboxObject *self = (InboxObject *)op;
    Py_CLEAR(self->loop);
    return 0;
}

static PyType_Slot inbox_slots[] = {
    {Py_tp_traverse, inbox_traverse},
    {Py_tp_clear, inbox_clear},
    {Py_tp_dealloc, bg_gc_dealloc},
    {Py_tp_doc, "Completions on their way to one event loop (internal)."},
    {0, NULL},
};

static PyType_Spec inbox_spec = {
    .name = "backgrounder._backgrounder.Inbox",
    .basicsize = sizeof(InboxObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = inbox_slots,
};

/* ---- Drain ------------------------------------------------------------------ */

static PyObject *
drain_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    DrainObject *self = (DrainObject *)op;
    InboxObject *inbox = self->inbox;
    bg_state *st = inbox_state(inbox);
    if (self->ran) {
        Py_RETURN_NONE;
    }
    self->ran = 1;
    inbox->armed = 0;
    bg_item *items = inbox->head;
    inbox->head = inbox->tail = NULL;
    pool_count_wakeup(st->pool);
    Py_INCREF(inbox);
    Py_ssize_t n = 0;
    PyObject *interrupt = NULL;
    while (items) {
        bg_item *item = items;
        items = item->next;
        settle(st, item, &interrupt);
        pool_item_free(item);
        n++;
    }
    inbox_uncount(st, inbox, n);
    Py_DECREF(inbox);
    if (interrupt != NULL) {
        bg_raise(interrupt);   /* Ctrl-C reaches the loop's caller */
        Py_DECREF(interrupt);
        return NULL;
    }
    Py_RETURN_NONE;
}

static void
drain_dealloc(PyObject *op)
{
    DrainObject *self = (DrainObject *)op;
    PyTypeObject *tp = Py_TYPE(self);
    InboxObject *inbox = self->inbox;
    if (!self->ran && inbox->armed) {
        inbox_discard(inbox_state(inbox), inbox);   /* the loop dropped us */
    }
    Py_DECREF(inbox);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot drain_slots[] = {
    {Py_tp_call, drain_call},
    {Py_tp_dealloc, drain_dealloc},
    {Py_tp_doc, "Settles the futures of one inbox on its loop (internal)."},
    {0, NULL},
};

static PyType_Spec drain_spec = {
    .name = "backgrounder._backgrounder.Drain",
    .basicsize = sizeof(DrainObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = drain_slots,
};

int
bridge_init_types(PyObject *module, bg_state *st)
{
    st->inbox_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &inbox_spec, NULL);
    if (st->inbox_type == NULL) {
        return -1;
    }
    st->drain_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &drain_spec, NULL);
    if (st->drain_type == NULL) {
        return -1;
    }
    return 0;
}
