/* bridge.c: completions from pool threads back to their asyncio loop, one
 * loop wake-up per batch.  See bridge.h.
 */
#include "bridge.h"
#include "report.h"
#include <signal.h>

/* The module's `inboxes` dict maps a weak reference to each loop to a weak
 * reference to its inbox: what keeps an inbox alive is what needs it (the
 * items on their way to it, and the drain scheduled on its loop), so that a
 * loop stopped and dropped with completions pending is collected with them
 * (the cycle loop -> its ready queue -> drain -> inbox -> items -> futures
 * -> loop is visible to the GC), not kept for ever by the module. */
typedef struct {
    PyObject_HEAD
    PyObject *loop;          /* strong */
    bg_item *head, *tail;    /* completions waiting for the drain */
    Py_ssize_t pending;      /* counted in by bridge_inbox_for, not yet settled or dropped */
    int armed;               /* a drain is scheduled on the loop */
    PyObject *weakreflist;
} InboxObject;

/* The callable handed to loop.call_soon_threadsafe.  If the loop drops it
   without calling it (the loop was closed), its dealloc drops the inbox's
   completions instead. */
typedef struct {
    PyObject_HEAD
    InboxObject *inbox;      /* strong */
    int ran;
} DrainObject;

/* A new reference to the object `ref` (a weak reference) points to, or NULL
   (no exception) if it is dead. */
static PyObject *
deref(PyObject *ref)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(ref, &obj) < 0) {
        PyErr_Clear();
    }
    return obj;
#else
    PyObject *obj = PyWeakref_GetObject(ref);
    return obj == Py_None ? NULL : Py_NewRef(obj);
#endif
}

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
    PyObject *key = PyWeakref_NewRef(inbox->loop, NULL);
    PyObject *ref = key ? PyDict_GetItemWithError(st->inboxes, key) : NULL;   /* borrowed */
    PyObject *current = ref ? deref(ref) : NULL;
    if (current == (PyObject *)inbox || (ref != NULL && current == NULL)) {
        if (PyDict_DelItem(st->inboxes, key) < 0) {
            PyErr_WriteUnraisable((PyObject *)inbox);
        }
    }
    else if (PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)inbox);
    }
    Py_XDECREF(current);
    Py_XDECREF(key);
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
    PyObject *key = PyWeakref_NewRef(loop, NULL);   /* the loop's own (cached) weak reference */
    if (key == NULL) {
        return NULL;
    }
    PyObject *ref = PyDict_GetItemWithError(st->inboxes, key);   /* borrowed */
    PyObject *found = ref ? deref(ref) : NULL;
    if (found != NULL) {
        Py_DECREF(key);
        ((InboxObject *)found)->pending++;
        return found;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    InboxObject *inbox = PyObject_GC_New(InboxObject, st->inbox_type);
    if (inbox == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    inbox->loop = Py_NewRef(loop);
    inbox->head = inbox->tail = NULL;
    inbox->pending = 1;
    inbox->armed = 0;
    inbox->weakreflist = NULL;
    PyObject_GC_Track(inbox);
    ref = PyWeakref_NewRef((PyObject *)inbox, NULL);
    if (ref == NULL || PyDict_SetItem(st->inboxes, key, ref) < 0) {
        inbox->pending = 0;
        Py_XDECREF(ref);
        Py_DECREF(key);
        Py_DECREF(inbox);
        return NULL;
    }
    Py_DECREF(ref);
    Py_DECREF(key);
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
    if (done <= 0) {
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
        bg_restore(Py_NewRef(err));
        PyErr_WriteUnraisable(fut);
    }
    Py_DECREF(err);
}

/* Schedules the inbox's drain on its loop (one wake-up for the batch). */
static void
arm(bg_state *st, InboxObject *inbox)
{
    DrainObject *drain = PyObject_GC_New(DrainObject, st->drain_type);
    if (drain == NULL) {
        /* The completions stay in the inbox: the next one tries again. */
        inbox->armed = 0;
        PyErr_WriteUnraisable((PyObject *)inbox);
        return;
    }
    drain->inbox = (InboxObject *)Py_NewRef(inbox);
    drain->ran = 0;
    PyObject_GC_Track(drain);
    PyObject *res = NULL;
    int closed = 0;
    for (int attempt = 0; res == NULL && attempt < 2; attempt++) {
        res = PyObject_CallMethodOneArg(inbox->loop, st->str_call_soon_threadsafe, (PyObject *)drain);
        if (res != NULL) {
            break;
        }
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            /* "Event loop is closed": expected, the completions are dropped
               by the drain's dealloc below. */
            PyErr_Clear();
            closed = 1;
            break;
        }
        if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
            /* Ctrl-C landed in it: delivered again at the next chance,
               where this thread runs Python code; the drain is retried. */
            PyErr_Clear();
            PyErr_SetInterruptEx(SIGINT);
        }
        else if (attempt == 1) {
            PyErr_WriteUnraisable(inbox->loop);   /* no memory, twice */
        }
        else {
            PyErr_Clear();
        }
    }
    if (res == NULL && !closed) {
        inbox->armed = 0;   /* the completions stay, for the next one to try again */
    }
    Py_XDECREF(res);
    Py_DECREF(drain);
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
    /* Once the item is in the inbox, the inbox's only owner may be that
       item (a cycle to the GC) until the drain holds it: held here too, so
       that a collection meanwhile (allocating the drain) keeps it. */
    Py_INCREF(inbox);
    item->next = NULL;
    if (inbox->tail) {
        inbox->tail->next = item;
    }
    else {
        inbox->head = item;
    }
    inbox->tail = item;
    if (!inbox->armed) {   /* else the drain already scheduled will take it */
        inbox->armed = 1;
        arm(st, inbox);
    }
    Py_DECREF(inbox);
}

PyObject *
bridge_item_loop(bg_item *item)
{
    return item->inbox != NULL ? ((InboxObject *)item->inbox)->loop : NULL;
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
    for (bg_item *item = self->head; item; item = item->next) {
        Py_VISIT(item->func);
        Py_VISIT(item->args);
        Py_VISIT(item->kwargs);
        Py_VISIT(item->context);
        Py_VISIT(item->target);
        Py_VISIT(item->inbox);
        Py_VISIT(item->result);
        Py_VISIT(item->exc);
    }
    return 0;
}

/* Collected with completions still in it (its loop unreachable, stopped
   and dropped): nobody can await them; their failures are reported here,
   before the GC clears anything (PEP 442), not in tp_clear. */
static void
inbox_finalize(PyObject *op)
{
    InboxObject *self = (InboxObject *)op;
    if (self->head != NULL) {
        PyObject *saved = bg_fetch_exception();
        inbox_discard(inbox_state(self), self);
        if (saved != NULL) {
            bg_restore(saved);
        }
    }
}

static int
inbox_clear(PyObject *op)
{
    InboxObject *self = (InboxObject *)op;
    bg_item *items = self->head;
    self->head = self->tail = NULL;
    self->armed = 0;
    while (items) {
        bg_item *item = items;
        items = item->next;
        self->pending--;
        pool_item_free(item);
    }
    Py_CLEAR(self->loop);
    return 0;
}

static void
inbox_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;   /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (((InboxObject *)self)->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    inbox_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMemberDef inbox_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(InboxObject, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot inbox_slots[] = {
    {Py_tp_traverse, inbox_traverse},
    {Py_tp_clear, inbox_clear},
    {Py_tp_finalize, inbox_finalize},
    {Py_tp_dealloc, inbox_dealloc},
    {Py_tp_members, inbox_members},
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
    if (self->ran || inbox == NULL) {
        Py_RETURN_NONE;
    }
    bg_state *st = inbox_state(inbox);
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
        bg_restore(interrupt);   /* Ctrl-C reaches the loop's caller */
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
drain_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((DrainObject *)op)->inbox);
    return 0;
}

static int
drain_clear(PyObject *op)
{
    Py_CLEAR(((DrainObject *)op)->inbox);
    return 0;
}

static void
drain_dealloc(PyObject *op)
{
    DrainObject *self = (DrainObject *)op;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(op);
    InboxObject *inbox = self->inbox;
    if (inbox != NULL && !self->ran && inbox->armed) {
        inbox_discard(inbox_state(inbox), inbox);   /* the loop dropped us */
    }
    drain_clear(op);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot drain_slots[] = {
    {Py_tp_call, drain_call},
    {Py_tp_traverse, drain_traverse},
    {Py_tp_clear, drain_clear},
    {Py_tp_dealloc, drain_dealloc},
    {Py_tp_doc, "Settles the futures of one inbox on its loop (internal)."},
    {0, NULL},
};

static PyType_Spec drain_spec = {
    .name = "backgrounder._backgrounder.Drain",
    .basicsize = sizeof(DrainObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
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
