/* bridge.c: completions from pool threads back to their asyncio loop, one
 * loop wake-up per batch.  See bridge.h.
 */
#include "bridge.h"

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

/* On the loop thread.  Settles the item's future with its result or
   exception; a future cancelled meanwhile drops it. */
static void
settle(bg_state *st, bg_item *item)
{
    PyObject *fut = item->target;
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
            wrapped = bg_fetch_exception();   /* MemoryError: settle with it, never hang */
        }
        else {
            PyException_SetCause(wrapped, Py_NewRef(item->exc));
            PyException_SetContext(wrapped, Py_NewRef(item->exc));
        }
        res = PyObject_CallMethodOneArg(fut, st->str_set_exception, wrapped);
        Py_DECREF(wrapped);
    }
    else {
        res = PyObject_CallMethodOneArg(fut, st->str_set_exception, item->exc);
    }
    if (res != NULL) {
        Py_DECREF(res);
        pool_count_completion(item->pool);
        return;
    }
    /* Most likely the awaiting task was cancelled while the call ran. */
    PyObject *err = bg_fetch_exception();
    PyObject *cancelled = PyObject_CallMethodNoArgs(fut, st->str_cancelled);
    if (cancelled == Py_True) {
        if (item->exc) {
            bg_report_error(st, BG_CALL_FAILED, item->func, item->exc);   /* nobody awaits it now */
        }
    }
    else {
        if (cancelled == NULL) {
            PyErr_WriteUnraisable(fut);
        }
        bg_raise(err);
        PyErr_WriteUnraisable(fut);
    }
    Py_XDECREF(cancelled);
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
        PyErr_WriteUnraisable((PyObject *)inbox);
        inbox_discard(st, inbox);
        return;
    }
    drain->inbox = (InboxObject *)Py_NewRef(inbox);
    drain->ran = 0;
    PyObject *res = PyObject_CallMethodOneArg(
        inbox->loop, st->str_call_soon_threadsafe, (PyObject *)drain);
    if (res == NULL) {
        /* "Event loop is closed": expected, the completions are dropped by
           the drain's dealloc below.  Anything else is reported. */
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) {
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
inbox_traverse(InboxObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    return 0;
}

static int
inbox_clear(InboxObject *self)
{
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
drain_call(DrainObject *self, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
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
    while (items) {
        bg_item *item = items;
        items = item->next;
        settle(st, item);
        pool_item_free(item);
        n++;
    }
    inbox_uncount(st, inbox, n);
    Py_DECREF(inbox);
    Py_RETURN_NONE;
}

static void
drain_dealloc(DrainObject *self)
{
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
