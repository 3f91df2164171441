/* background.c: @background, its wrapper, and the handle a call returns.
 *
 * Calling a decorated function starts it at once and returns a
 * BackgroundHandle: a sync function goes to the pool (the handle is the pool
 * item's target and the worker settles it); an async one becomes an asyncio
 * task on the running loop, or on backgrounder's own loop thread
 * (backgrounder/_loop.py) when called from sync code.
 *
 * The handle has concurrent.futures.Future's methods.  Its state changes
 * under the pool's lock (pool_lock/pool_unlock_notify), so a thread blocked
 * in result() cannot miss it; callbacks and awaiting tasks are kept in plain C
 * lists for the same reason (appending to them allocates no Python object
 * while the lock is held).  An exception nobody retrieved is reported when
 * the handle dies.
 */
#include "bridge.h"
#include "task.h"
#include <math.h>
#include <structmember.h>

enum { H_PENDING, H_RUNNING, H_CANCELLED, H_FINISHED };

/* A done callback, or a task awaiting the handle. */
typedef struct bg_node {
    struct bg_node *next;
    PyObject *obj;        /* strong: the callback, or the future to settle */
    PyObject *inbox;      /* strong: the future's inbox; NULL for a callback */
} bg_node;

typedef struct {
    PyObject_HEAD
    int state;            /* written under the pool's lock */
    int is_done;          /* state is H_CANCELLED or H_FINISHED; the flag waits read */
    int retrieved;        /* the exception was handed to someone */
    PyObject *func;       /* strong: named in logs and repr */
    PyObject *result;     /* strong, once finished */
    PyObject *exc;        /* strong, once finished with an error */
    PyObject *loop;       /* strong: the loop an async call runs on, or NULL */
    bg_node *callbacks;   /* under the pool's lock */
    bg_node *waiters;     /* under the pool's lock */
    PyObject *weakreflist;
} HandleObject;

static inline bg_state *
handle_state(HandleObject *h)
{
    return (bg_state *)PyType_GetModuleState(Py_TYPE(h));
}

/* Returns a new node, or NULL with MemoryError set.  Steals nothing. */
static bg_node *
node_new(PyObject *obj, PyObject *inbox)
{
    bg_node *node = PyMem_RawMalloc(sizeof(bg_node));
    if (node == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    node->next = NULL;
    node->obj = Py_NewRef(obj);
    node->inbox = Py_XNewRef(inbox);
    return node;
}

/* Appends `node` to the list at *head.  Lock held. */
static void
node_append(bg_node **head, bg_node *node)
{
    while (*head) {
        head = &(*head)->next;
    }
    *head = node;
}

static void
node_free(bg_node *node)
{
    PyObject *obj = node->obj, *inbox = node->inbox;
    PyMem_RawFree(node);
    Py_XDECREF(obj);
    Py_XDECREF(inbox);
}

/* Drops a waiter node that will not be woken: its inbox's pending count
   is given back, through an item, as for any completion dropped. */
static void
waiter_forget(bg_state *st, bg_node *node)
{
    bg_item *item = (st != NULL && st->pool != NULL) ? pool_item_new(st->pool) : NULL;
    if (item == NULL) {
        PyErr_Clear();
        node_free(node);
        return;
    }
    item->target = node->obj;
    item->inbox = node->inbox;
    PyMem_RawFree(node);
    bridge_forget(item);
}

/* ---- settling --------------------------------------------------------------- */

/* Calls the callbacks with the handle and wakes the awaiting tasks; frees the
   nodes.  GIL held, lock not held. */
static void
handle_notify(bg_state *st, HandleObject *h, bg_node *callbacks, bg_node *waiters)
{
    while (callbacks) {
        bg_node *node = callbacks;
        callbacks = node->next;
        PyObject *res = PyObject_CallOneArg(node->obj, (PyObject *)h);
        if (res == NULL) {
            PyObject *exc = bg_fetch_exception();
            bg_report_error(st, "done callback %s of a background call failed", node->obj, exc);
            Py_DECREF(exc);
        }
        Py_XDECREF(res);
        node_free(node);
    }
    while (waiters) {
        bg_node *node = waiters;
        waiters = node->next;
        bg_item *item = pool_item_new(st->pool);
        if (item == NULL) {
            PyErr_WriteUnraisable((PyObject *)h);
            node->next = NULL;
            waiter_forget(st, node);
            continue;
        }
        /* Only a wake-up: the task reads the outcome from the handle. */
        item->target = node->obj;
        item->inbox = node->inbox;
        item->result = Py_NewRef(Py_None);
        PyMem_RawFree(node);
        bridge_post(item);
    }
}

/* Moves the handle to its final state (H_FINISHED with result or exc, both
   stolen, or H_CANCELLED with neither), then notifies.  GIL held. */
static void
handle_settle(bg_state *st, HandleObject *h, int state, PyObject *result, PyObject *exc)
{
    pool_lock(st->pool);
    h->state = state;
    h->is_done = 1;
    h->result = result;
    h->exc = exc;
    bg_node *callbacks = h->callbacks, *waiters = h->waiters;
    h->callbacks = h->waiters = NULL;
    pool_unlock_notify(st->pool);
    handle_notify(st, h, callbacks, waiters);
}

/* Pool ops: a sync call's handle is its item's target. */
static int
handle_item_start(bg_item *item)
{
    HandleObject *h = (HandleObject *)item->target;
    bg_state *st = handle_state(h);
    pool_lock(st->pool);
    int run = h->state == H_PENDING;
    if (run) {
        h->state = H_RUNNING;
    }
    pool_unlock(st->pool);
    return run;
}

static void
handle_item_finish(bg_item *item)
{
    HandleObject *h = (HandleObject *)Py_NewRef(item->target);
    if (item->result != NULL || item->exc != NULL) {
        PyObject *result = item->result, *exc = item->exc;
        item->result = item->exc = NULL;
        handle_settle(handle_state(h), h, H_FINISHED, result, exc);
    }
    pool_item_free(item);
    Py_DECREF(h);   /* may be the last reference: an unretrieved error is reported */
}

static const bg_item_ops handle_ops = {handle_item_start, handle_item_finish, 0};

/* The done callback of an async call's asyncio task (bound to the handle). */
static PyObject *
handle_settle_from(PyObject *op, PyObject *task)
{
    HandleObject *h = (HandleObject *)op;
    bg_state *st = handle_state(h);
    if (PySet_Discard(st->running_async, task) < 0) {
        PyErr_WriteUnraisable(task);
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
        bg_report_error(st, "background call %s was cancelled before it finished", h->func, exc);
        Py_DECREF(exc);
        handle_settle(st, h, H_CANCELLED, NULL, NULL);
        Py_RETURN_NONE;
    }
    PyObject *exc = PyObject_CallMethodNoArgs(task, st->str_exception);
    if (exc == NULL) {
        return NULL;
    }
    if (exc != Py_None) {
        handle_settle(st, h, H_FINISHED, NULL, exc);
        Py_RETURN_NONE;
    }
    Py_DECREF(exc);
    PyObject *result = PyObject_CallMethodNoArgs(task, st->str_result);
    if (result == NULL) {
        return NULL;
    }
    handle_settle(st, h, H_FINISHED, result, NULL);
    Py_RETURN_NONE;
}

static PyMethodDef handle_settle_from_def = {
    "_settle_from", handle_settle_from, METH_O, "Done callback of the call's asyncio task (internal).",
};

/* ---- the handle's methods ------------------------------------------------ */

/* Parses a timeout argument; see parse_timeout in module.c.  Returns 0 or -1. */
static int
handle_timeout(PyObject *value, double *out)
{
    if (value == NULL || value == Py_None) {
        *out = -1.0;
        return 0;
    }
    if (PyBool_Check(value) || !(PyLong_Check(value) || PyFloat_Check(value))) {
        PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds or None, not %R", value);
        return -1;
    }
    *out = PyFloat_AsDouble(value);
    if (*out == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(*out)) {
        PyErr_Format(PyExc_ValueError, "timeout must be a number of seconds, not %R", value);
        return -1;
    }
    if (isinf(*out)) {
        *out = *out > 0 ? -1.0 : 0.0;   /* inf: no limit */
    }
    else if (*out < 0) {
        *out = 0;   /* as concurrent.futures: a negative timeout does not wait */
    }
    return 0;
}

/* Blocks until the handle is done.  Returns 0, or -1 with TimeoutError (or
   the error a signal handler raised, or RuntimeError when waiting would
   block the very loop the call needs) set. */
static int
handle_wait(HandleObject *h, PyObject *timeout_obj)
{
    double timeout;
    if (handle_timeout(timeout_obj, &timeout) < 0) {
        return -1;
    }
    bg_state *st = handle_state(h);
    if (h->is_done) {
        return 0;
    }
    if (h->loop != NULL) {
        PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
        if (running == NULL) {
            PyErr_Clear();
        }
        int same = running == h->loop;
        Py_XDECREF(running);
        if (same) {
            PyErr_SetString(PyExc_RuntimeError,
                            "result() of a background call running on this very event loop "
                            "would block it forever: use 'await handle' instead");
            return -1;
        }
    }
    int r = pool_wait_flag(st->pool, &h->is_done, timeout);
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        PyErr_SetNone(st->futures_timeout);
        return -1;
    }
    return 0;
}

/* The handle is done: returns a new reference to its result, or NULL with
   its exception (or CancelledError) raised. */
static PyObject *
handle_outcome(HandleObject *h)
{
    if (h->state == H_CANCELLED) {
        PyErr_SetNone(handle_state(h)->futures_cancelled);
        return NULL;
    }
    if (h->exc != NULL) {
        h->retrieved = 1;
        bg_raise(h->exc);
        return NULL;
    }
    return Py_NewRef(h->result);
}

static PyObject *
handle_result(HandleObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:result", kwlist, &timeout)
        || handle_wait(self, timeout) < 0) {
        return NULL;
    }
    return handle_outcome(self);
}

static PyObject *
handle_exception(HandleObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:exception", kwlist, &timeout)
        || handle_wait(self, timeout) < 0) {
        return NULL;
    }
    if (self->state == H_CANCELLED) {
        PyErr_SetNone(handle_state(self)->futures_cancelled);
        return NULL;
    }
    self->retrieved = 1;
    return Py_NewRef(self->exc ? self->exc : Py_None);
}

static PyObject *
handle_done(HandleObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->is_done);
}

static PyObject *
handle_cancelled(HandleObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->state == H_CANCELLED);
}

static PyObject *
handle_running(HandleObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->state == H_RUNNING);
}

static PyObject *
handle_cancel(HandleObject *self, PyObject *Py_UNUSED(ignored))
{
    bg_state *st = handle_state(self);
    pool_lock(st->pool);
    int state = self->state;
    if (state != H_PENDING) {
        pool_unlock(st->pool);
        return PyBool_FromLong(state == H_CANCELLED);
    }
    self->state = H_CANCELLED;
    self->is_done = 1;
    bg_node *callbacks = self->callbacks, *waiters = self->waiters;
    self->callbacks = self->waiters = NULL;
    pool_unlock_notify(st->pool);
    handle_notify(st, self, callbacks, waiters);
    Py_RETURN_TRUE;
}

static PyObject *
handle_add_done_callback(HandleObject *self, PyObject *fn)
{
    bg_state *st = handle_state(self);
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "add_done_callback() argument must be callable, not %R", fn);
        return NULL;
    }
    bg_node *node = node_new(fn, NULL);
    if (node == NULL) {
        return NULL;
    }
    pool_lock(st->pool);
    int done = self->is_done;
    if (!done) {
        node_append(&self->callbacks, node);
    }
    pool_unlock(st->pool);
    if (done) {
        node->next = NULL;
        handle_notify(st, self, node, NULL);   /* at once, as concurrent.futures does */
    }
    Py_RETURN_NONE;
}

/* ---- await handle ------------------------------------------------------- */

enum { WAIT_INIT, WAIT_WAITING, WAIT_DONE };

typedef struct {
    bg_coro base;
    HandleObject *handle;  /* strong */
    PyObject *fut;         /* strong while waiting */
    int state;
} WaitObject;

static PySendResult
wait_outcome(WaitObject *self, PyObject **result)
{
    self->state = WAIT_DONE;
    Py_CLEAR(self->fut);
    *result = handle_outcome(self->handle);
    return *result ? PYGEN_RETURN : PYGEN_ERROR;
}

static PySendResult
wait_send(PyObject *op, PyObject *value, PyObject **result)
{
    WaitObject *self = (WaitObject *)op;
    HandleObject *h = self->handle;
    bg_state *st = handle_state(h);
    if (self->state == WAIT_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited handle");
        return PYGEN_ERROR;
    }
    if (self->state == WAIT_WAITING || h->is_done) {
        if (!h->is_done) {
            /* Woken early (not by asyncio): wait on. */
            *result = Py_NewRef(self->fut);
            return PYGEN_NEXT;
        }
        return wait_outcome(self, result);
    }
    if (value != Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
        return PYGEN_ERROR;
    }
    PyObject *loop = NULL, *fut = NULL, *inbox = NULL;
    bg_node *node = NULL;
    loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL) {
        goto error;
    }
    fut = PyObject_CallMethodNoArgs(loop, st->str_create_future);
    if (fut == NULL || PyObject_SetAttr(fut, st->str_future_blocking, Py_True) < 0) {
        goto error;
    }
    inbox = bridge_inbox_for(st, loop);
    if (inbox == NULL) {
        goto error;
    }
    node = node_new(fut, inbox);
    if (node == NULL) {
        goto error;
    }
    pool_lock(st->pool);
    int done = h->is_done;
    if (!done) {
        node_append(&h->waiters, node);
    }
    pool_unlock(st->pool);
    Py_DECREF(loop);
    if (done) {
        /* Settled meanwhile: the inbox's count is given back by posting. */
        bg_item *item = pool_item_new(st->pool);
        if (item != NULL) {
            item->target = Py_NewRef(fut);
            item->inbox = Py_NewRef(inbox);
            item->result = Py_NewRef(Py_None);
            bridge_forget(item);
        }
        node_free(node);
        Py_DECREF(inbox);
        Py_DECREF(fut);
        if (item == NULL) {
            return PYGEN_ERROR;
        }
        return wait_outcome(self, result);
    }
    Py_DECREF(inbox);
    self->fut = Py_NewRef(fut);
    self->state = WAIT_WAITING;
    *result = fut;
    return PYGEN_NEXT;

error:
    self->state = WAIT_DONE;
    Py_XDECREF(loop);
    Py_XDECREF(fut);
    if (inbox != NULL) {
        /* Counted in by bridge_inbox_for: give it back through an item. */
        bg_item *item = pool_item_new(st->pool);
        if (item != NULL) {
            item->inbox = inbox;
            bridge_forget(item);
        }
        else {
            Py_DECREF(inbox);
        }
    }
    return PYGEN_ERROR;
}

/* Stops waiting (the awaiting task was cancelled): the call itself goes on,
   others may be waiting for it too. */
static int
wait_abandon(WaitObject *self)
{
    PyObject *fut = self->fut;
    self->fut = NULL;
    self->state = WAIT_DONE;
    if (fut == NULL) {
        return 0;
    }
    PyObject *res = PyObject_CallMethodNoArgs(fut, handle_state(self->handle)->str_cancel);
    Py_DECREF(fut);
    Py_XDECREF(res);
    return res ? 0 : -1;
}

static PySendResult
wait_throw(PyObject *op, PyObject *exc, PyObject **result)
{
    (void)result;
    if (wait_abandon((WaitObject *)op) < 0) {
        PyErr_WriteUnraisable(op);
    }
    bg_raise(exc);
    return PYGEN_ERROR;
}

static int
wait_close(PyObject *op)
{
    return wait_abandon((WaitObject *)op);
}

static const bg_coro_ops wait_ops = {wait_send, wait_throw, wait_close};

static int
wait_traverse(WaitObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->handle);
    Py_VISIT(self->fut);
    return 0;
}

static int
wait_clear(WaitObject *self)
{
    Py_CLEAR(self->handle);
    Py_CLEAR(self->fut);
    return 0;
}

static PyType_Slot wait_slots[] = {
    BG_CORO_SLOTS,
    {Py_tp_traverse, wait_traverse},
    {Py_tp_clear, wait_clear},
    {Py_tp_dealloc, bg_gc_dealloc},
    {Py_tp_doc, "An await of a BackgroundHandle."},
    {0, NULL},
};

static PyType_Spec wait_spec = {
    .name = "backgrounder.BackgroundHandleWait",
    .basicsize = sizeof(WaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = wait_slots,
};

static PyObject *
handle_await(HandleObject *self)
{
    bg_state *st = handle_state(self);
    WaitObject *w = PyObject_GC_New(WaitObject, st->handle_wait_type);
    if (w == NULL) {
        return NULL;
    }
    w->base.ops = &wait_ops;
    w->handle = (HandleObject *)Py_NewRef(self);
    w->fut = NULL;
    w->state = WAIT_INIT;
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

/* ---- the handle type ---------------------------------------------------- */

static const char *const state_names[] = {"pending", "running", "cancelled", "finished"};

static PyObject *
handle_repr(HandleObject *self)
{
    PyObject *name = PyObject_GetAttrString(self->func, "__qualname__");
    if (name == NULL) {
        PyErr_Clear();
        name = bg_type_name(Py_TYPE(self->func));
        if (name == NULL) {
            return NULL;
        }
    }
    PyObject *repr;
    if (self->state == H_FINISHED && self->exc) {
        repr = PyUnicode_FromFormat("<BackgroundHandle of %S at %p state=finished raised %s>", name,
                                    (void *)self, Py_TYPE(self->exc)->tp_name);
    }
    else {
        repr = PyUnicode_FromFormat("<BackgroundHandle of %S at %p state=%s>", name, (void *)self,
                                    state_names[self->state]);
    }
    Py_DECREF(name);
    return repr;
}

static void
handle_finalize(HandleObject *self)
{
    if (self->exc == NULL || self->retrieved) {
        return;
    }
    PyObject *saved = bg_fetch_exception();
    self->retrieved = 1;
    bg_state *st = handle_state(self);
    if (st != NULL) {
        bg_report_error(st, BG_CALL_FAILED, self->func, self->exc);
    }
    if (saved) {
        bg_raise(saved);
        Py_DECREF(saved);
    }
}

static int
handle_traverse(HandleObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->func);
    Py_VISIT(self->result);
    Py_VISIT(self->exc);
    Py_VISIT(self->loop);
    for (bg_node *n = self->callbacks; n; n = n->next) {
        Py_VISIT(n->obj);
    }
    for (bg_node *n = self->waiters; n; n = n->next) {
        Py_VISIT(n->obj);
        Py_VISIT(n->inbox);
    }
    return 0;
}

static int
handle_clear(HandleObject *self)
{
    Py_CLEAR(self->func);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->loop);
    bg_node *callbacks = self->callbacks, *waiters = self->waiters;
    self->callbacks = self->waiters = NULL;
    while (callbacks) {
        bg_node *next = callbacks->next;
        node_free(callbacks);
        callbacks = next;
    }
    while (waiters) {
        bg_node *next = waiters->next;
        waiter_forget(handle_state(self), waiters);
        waiters = next;
    }
    return 0;
}

static void
handle_dealloc(HandleObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;   /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    handle_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef handle_methods[] = {
    {"result", (PyCFunction)(void (*)(void))handle_result, METH_VARARGS | METH_KEYWORDS,
     "result($self, /, timeout=None)\n--\n\n"
     "Waits for the call (at most timeout seconds) and returns its value, or raises\n"
     "its exception; CancelledError if it was cancelled, TimeoutError on timeout."},
    {"exception", (PyCFunction)(void (*)(void))handle_exception, METH_VARARGS | METH_KEYWORDS,
     "exception($self, /, timeout=None)\n--\n\nWaits for the call and returns its exception, or None."},
    {"done", (PyCFunction)handle_done, METH_NOARGS,
     "done($self, /)\n--\n\nTrue once the call finished or was cancelled."},
    {"cancelled", (PyCFunction)handle_cancelled, METH_NOARGS,
     "cancelled($self, /)\n--\n\nTrue if the call was cancelled."},
    {"running", (PyCFunction)handle_running, METH_NOARGS,
     "running($self, /)\n--\n\nTrue while the call runs."},
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS,
     "cancel($self, /)\n--\n\nCancels a call that has not started: True if it then never runs\n"
     "(or was cancelled already), False once it runs or ran."},
    {"add_done_callback", (PyCFunction)handle_add_done_callback, METH_O,
     "add_done_callback($self, fn, /)\n--\n\n"
     "Calls fn(handle) once the call is done, at once if it is done already."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "See PEP 585."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef handle_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(HandleObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_am_await, handle_await},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, handle_methods},
    {Py_tp_members, handle_members},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_finalize, handle_finalize},
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_doc,
     "The running call of a @background function.\n\n"
     "It has the methods of concurrent.futures.Future (result, exception, done,\n"
     "cancelled, running, cancel, add_done_callback) and can be awaited.  An\n"
     "exception that nobody retrieves is logged on the 'backgrounder' logger."},
    {0, NULL},
};

static PyType_Spec handle_spec = {
    .name = "backgrounder.BackgroundHandle",
    .basicsize = sizeof(HandleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = handle_slots,
};

static HandleObject *
handle_new(bg_state *st, PyObject *func)
{
    HandleObject *h = PyObject_GC_New(HandleObject, st->handle_type);
    if (h == NULL) {
        return NULL;
    }
    h->state = H_PENDING;
    h->is_done = 0;
    h->retrieved = 0;
    h->func = Py_NewRef(func);
    h->result = h->exc = h->loop = NULL;
    h->callbacks = h->waiters = NULL;
    h->weakreflist = NULL;
    PyObject_GC_Track(h);
    return h;
}

/* ---- starting a call ---------------------------------------------------- */

/* Returns a borrowed reference to backgrounder's own loop thread, started
   on first use, or NULL with an exception set. */
static PyObject *
loop_runner(bg_state *st)
{
    if (st->loop_runner == NULL) {
        PyObject *mod = PyImport_ImportModule("backgrounder._loop");
        if (mod == NULL) {
            return NULL;
        }
        PyObject *runner = PyObject_CallMethod(mod, "LoopThread", NULL);
        Py_DECREF(mod);
        if (runner == NULL) {
            return NULL;
        }
        if (st->loop_runner == NULL) {
            st->loop_runner = runner;
        }
        else {
            /* Another thread made one meanwhile: keep that one. */
            PyObject *res = PyObject_CallMethod(runner, "stop", "OO", Py_False, Py_None);
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
loop_ends_with_the_call(PyObject *loop)
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
    PyObject *res = NULL, *mod = PyImport_ImportModule("backgrounder._loop");
    if (mod != NULL) {
        res = PyObject_CallMethod(mod, "ends_with_the_call", "O", loop);
        Py_DECREF(mod);
    }
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

/* Starts an async call: on the running loop if there is one (unless that
   loop ends with the current call), else on backgrounder's loop thread.
   Returns 0, or -1 with an exception set. */
static int
start_async(bg_state *st, HandleObject *h, PyObject *func, PyObject *args, PyObject *kwargs)
{
    PyObject *loop = NULL, *coro = NULL, *done = NULL, *task = NULL, *ctx = NULL, *res = NULL;
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
            PyObject *own_loop = PyObject_GetAttrString(st->loop_runner, "loop");
            if (own_loop == NULL) {
                goto done;
            }
            own = own_loop == loop;
            Py_DECREF(own_loop);
        }
        int ends = own ? 1 : loop_ends_with_the_call(loop);
        if (ends < 0) {
            goto done;
        }
        if (ends) {
            Py_CLEAR(loop);
        }
    }
    coro = PyObject_Call(func, args, kwargs);
    done = PyCFunction_New(&handle_settle_from_def, (PyObject *)h);
    if (coro == NULL || done == NULL) {
        goto done;
    }
    h->state = H_RUNNING;   /* an asyncio task cannot be cancelled through the handle */
    if (loop != NULL) {
        h->loop = Py_NewRef(loop);
        task = PyObject_CallMethod(loop, "create_task", "O", coro);
        if (task == NULL || PySet_Add(st->running_async, task) < 0) {
            goto done;
        }
        res = PyObject_CallMethodOneArg(task, st->str_add_done_callback, done);
    }
    else {
        PyObject *runner = loop_runner(st);
        if (runner == NULL) {
            goto done;
        }
        h->loop = PyObject_GetAttrString(runner, "loop");
        ctx = PyContext_CopyCurrent();
        if (h->loop == NULL || ctx == NULL) {
            goto done;
        }
        res = PyObject_CallMethod(runner, "submit", "OOO", coro, ctx, done);
    }
    r = res ? 0 : -1;
done:
    if (r < 0 && coro != NULL && PyCoro_CheckExact(coro)) {
        /* Never scheduled: close it so that no "never awaited" warning fires. */
        PyObject *exc = bg_fetch_exception();
        PyObject *closed = PyObject_CallMethod(coro, "close", NULL);
        Py_XDECREF(closed);
        PyErr_Clear();
        bg_raise(exc);
        Py_DECREF(exc);
    }
    Py_XDECREF(loop);
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
    item->ops = &handle_ops;
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
wrapper_call(WrapperObject *self, PyObject *args, PyObject *kwargs)
{
    return background_start(get_state_by_type(Py_TYPE(self)), self->func, self->is_async, args, kwargs);
}

static PyObject *
wrapper_get(WrapperObject *self, PyObject *obj, PyObject *type)
{
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
wrapper_repr(WrapperObject *self)
{
    return PyUnicode_FromFormat("<background %R>", self->func);
}

static int
wrapper_traverse(WrapperObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->func);
    Py_VISIT(self->dict);
    return 0;
}

static int
wrapper_clear(WrapperObject *self)
{
    Py_CLEAR(self->func);
    Py_CLEAR(self->dict);
    return 0;
}

static void
wrapper_dealloc(WrapperObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    wrapper_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMemberDef wrapper_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(WrapperObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(WrapperObject, weakreflist), READONLY, NULL},
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
        func = PyObject_GetAttrString(fn, "__func__");
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
    update = PyObject_GetAttrString(functools, "update_wrapper");
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

static PyMethodDef background_functions[] = {
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
background_stop_loop(bg_state *st, int wait, double timeout)
{
    if (st->loop_runner == NULL) {
        return 1;
    }
    PyObject *t = timeout < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(timeout);
    if (t == NULL) {
        return -1;
    }
    PyObject *res = PyObject_CallMethod(st->loop_runner, "stop", "OO", wait ? Py_True : Py_False, t);
    Py_DECREF(t);
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

int
background_wait_idle(bg_state *st, double timeout)
{
    if (st->loop_runner == NULL) {
        return 1;
    }
    PyObject *t = timeout < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(timeout);
    if (t == NULL) {
        return -1;
    }
    PyObject *res = PyObject_CallMethod(st->loop_runner, "wait_idle", "O", t);
    Py_DECREF(t);
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

void
background_after_fork_child(bg_state *st)
{
    /* The parent's loop thread and its tasks do not exist here. */
    Py_CLEAR(st->loop_runner);
    if (st->running_async && PySet_Clear(st->running_async) < 0) {
        PyErr_WriteUnraisable(NULL);
    }
}

int
background_init_types(PyObject *module, bg_state *st)
{
    st->handle_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &handle_spec, NULL);
    if (st->handle_type == NULL || PyModule_AddType(module, st->handle_type) < 0) {
        return -1;
    }
    st->handle_wait_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &wait_spec, NULL);
    if (st->handle_wait_type == NULL) {
        return -1;
    }
    st->wrapper_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &wrapper_spec, NULL);
    if (st->wrapper_type == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(module, background_functions);
}
