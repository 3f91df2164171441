/* handle.c: BackgroundHandle and `await handle`.  See handle.h. */
#include "handle.h"
#include "bridge.h"
#include "report.h"

/* A done callback. */
typedef struct bg_node {
    struct bg_node *next;
    PyObject *fn;         /* strong */
} bg_node;

struct HandleObject {
    PyObject_HEAD
    int state;            /* written under the pool's lock */
    int is_done;          /* state is H_CANCELLED or H_FINISHED; the flag waits read */
    PyObject *func;       /* strong: named in logs and repr */
    PyObject *result;     /* strong, once finished */
    PyObject *exc;        /* strong, once finished with an error */
    PyObject *loop;       /* strong: the loop an async call runs on, or NULL */
    bg_node *callbacks;   /* under the pool's lock */
    bg_item *waiters;     /* under the pool's lock: one item per awaiting task,
                             target its future, inbox that of its loop */
    bg_lost lost;         /* a failure nobody read yet, on st->lost (report.h) */
    PyObject *weakreflist;
};

static inline bg_state *
handle_state(HandleObject *h)
{
    return (bg_state *)PyType_GetModuleState(Py_TYPE(h));
}

/* The exception was handed to someone. */
static void
mark_retrieved(HandleObject *h)
{
    report_forget(handle_state(h), &h->lost);
}

/* ---- settling --------------------------------------------------------------- */

static void
callbacks_free(bg_node *callbacks)
{
    while (callbacks) {
        bg_node *node = callbacks;
        callbacks = node->next;
        PyObject *fn = node->fn;
        PyMem_RawFree(node);
        Py_DECREF(fn);
    }
}

/* Calls the callbacks with the handle and wakes the awaiting tasks (their
   items, made when they began to wait, are posted: no allocation here).  A
   callback's exception is logged, as concurrent.futures does, but for a
   KeyboardInterrupt or SystemExit (any non-Exception), which is returned
   (a new reference; the first one) for the caller to raise once every
   callback ran.  GIL held, lock not held. */
static PyObject *
handle_notify(bg_state *st, HandleObject *h, bg_node *callbacks, bg_item *waiters)
{
    PyObject *interrupt = NULL;
    while (callbacks) {
        bg_node *node = callbacks;
        callbacks = node->next;
        node->next = NULL;
        PyObject *res = PyObject_CallOneArg(node->fn, (PyObject *)h);
        if (res == NULL) {
            PyObject *exc = bg_fetch_exception();
            if (!PyErr_GivenExceptionMatches(exc, PyExc_Exception)) {
                if (interrupt == NULL) {
                    interrupt = Py_NewRef(exc);
                }
            }
            else {
                bg_report_error(st, "done callback %s of a background call failed", node->fn, exc);
            }
            Py_DECREF(exc);
        }
        Py_XDECREF(res);
        callbacks_free(node);
    }
    while (waiters) {
        bg_item *item = waiters;
        waiters = item->next;
        item->next = NULL;
        item->result = Py_NewRef(Py_None);   /* a wake-up: the task reads the handle */
        bridge_post(item);
    }
    return interrupt;
}

/* Raises what handle_notify returned (stolen): -1, or 0 if it was NULL. */
static int
raise_interrupt(PyObject *interrupt)
{
    if (interrupt == NULL) {
        return 0;
    }
    bg_restore(interrupt);
    return -1;
}

int
handle_settle(bg_state *st, HandleObject *h, int state, PyObject *result, PyObject *exc)
{
    pool_lock(st->pool);
    if (h->is_done) {
        pool_unlock(st->pool);
        Py_XDECREF(result);
        Py_XDECREF(exc);
        return 0;
    }
    h->state = state;
    h->is_done = 1;
    h->result = result;
    h->exc = exc;
    bg_node *callbacks = h->callbacks;
    bg_item *waiters = h->waiters;
    h->callbacks = NULL;
    h->waiters = NULL;
    pool_unlock_notify(st->pool);
    if (exc != NULL) {
        report_keep(st, &h->lost, (PyObject *)h, h->func, exc);
    }
    return raise_interrupt(handle_notify(st, h, callbacks, waiters));
}

int
handle_cancel_now(bg_state *st, HandleObject *h)
{
    return handle_settle(st, h, H_CANCELLED, NULL, NULL);
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
    PyObject *result = item->result, *exc = item->exc;
    item->result = item->exc = NULL;
    pool_item_free(item);
    bg_state *st = handle_state(h);
    int r = (result != NULL || exc != NULL) ? handle_settle(st, h, H_FINISHED, result, exc)
                                            : handle_cancel_now(st, h);   /* skipped: never ran */
    if (r < 0) {
        /* A done callback raised KeyboardInterrupt or SystemExit on this pool
           thread, where nobody can catch it: it is logged, not lost. */
        PyObject *interrupt = bg_fetch_exception();
        bg_report_error(st, "a done callback of background call %s raised", h->func, interrupt);
        Py_DECREF(interrupt);
    }
    Py_DECREF(h);   /* may be the last reference: an unretrieved error is reported */
}

const bg_item_ops handle_item_ops = {handle_item_start, handle_item_finish, 0};

PyObject *
handle_func(HandleObject *h)
{
    return h->func;
}

PyObject *
handle_loop(HandleObject *h)
{
    return h->loop;
}

void
handle_set_running(HandleObject *h, PyObject *loop)
{
    h->state = H_RUNNING;   /* an asyncio task cannot be cancelled through the handle */
    Py_XSETREF(h->loop, Py_NewRef(loop));
}

/* ---- the handle's methods ------------------------------------------------ */

/* Blocks until the handle is done, for at most `timeout` seconds (< 0: no
   limit).  Returns 0, or -1 with TimeoutError (or the error a signal
   handler raised, or RuntimeError when waiting would block the event loop
   of this thread) set. */
static int
handle_wait(HandleObject *h, double timeout)
{
    bg_state *st = handle_state(h);
    if (h->is_done) {
        return 0;
    }
    const char *blocks = NULL;
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running == NULL) {
        PyErr_Clear();
        int trio = timeout < 0 ? bg_in_trio_run() : 0;
        if (trio < 0) {
            return -1;
        }
        blocks = trio ? "result() without a timeout would block the trio run in this thread "
                        "until the background call ends: use 'await handle' instead" : NULL;
    }
    else {
        int same = running == h->loop;
        Py_DECREF(running);
        blocks = same ? "result() of a background call running on this very event loop would "
                        "block it forever: use 'await handle' instead"
               : timeout < 0 ? "result() without a timeout would block the event loop running in "
                               "this thread until the background call ends: use 'await handle' "
                               "instead"
                             : NULL;
    }
    if (blocks != NULL) {
        PyErr_SetString(PyExc_RuntimeError, blocks);
        return -1;
    }
    int r = pool_wait_flag(st->pool, &h->is_done, bg_deadline(timeout));
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        PyErr_SetNone(st->futures_timeout);
        return -1;
    }
    return 0;
}

/* Parses result()/exception()'s timeout and waits. */
static int
handle_wait_arg(HandleObject *h, PyObject *timeout_obj)
{
    double timeout;
    if (bg_parse_timeout(timeout_obj, "timeout", 1, &timeout) < 0) {
        return -1;
    }
    return handle_wait(h, timeout);
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
        mark_retrieved(h);
        bg_raise(h->exc);
        return NULL;
    }
    return Py_NewRef(h->result);
}

static PyObject *
handle_result(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    HandleObject *self = (HandleObject *)op;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:result", kwlist, &timeout)
        || handle_wait_arg(self, timeout) < 0) {
        return NULL;
    }
    return handle_outcome(self);
}

static PyObject *
handle_exception(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    HandleObject *self = (HandleObject *)op;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:exception", kwlist, &timeout)
        || handle_wait_arg(self, timeout) < 0) {
        return NULL;
    }
    if (self->state == H_CANCELLED) {
        PyErr_SetNone(handle_state(self)->futures_cancelled);
        return NULL;
    }
    mark_retrieved(self);
    return Py_NewRef(self->exc ? self->exc : Py_None);
}

static PyObject *
handle_done(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((HandleObject *)op)->is_done);
}

static PyObject *
handle_cancelled(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((HandleObject *)op)->state == H_CANCELLED);
}

static PyObject *
handle_running(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((HandleObject *)op)->state == H_RUNNING);
}

static PyObject *
handle_cancel(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    HandleObject *self = (HandleObject *)op;
    bg_state *st = handle_state(self);
    pool_lock(st->pool);
    int state = self->state;
    if (state != H_PENDING) {
        pool_unlock(st->pool);
        return PyBool_FromLong(state == H_CANCELLED);
    }
    /* Under the lock: a worker about to run it finds it cancelled and skips it. */
    self->state = H_CANCELLED;
    self->is_done = 1;
    bg_node *callbacks = self->callbacks;
    bg_item *waiters = self->waiters;
    self->callbacks = NULL;
    self->waiters = NULL;
    pool_unlock_notify(st->pool);
    if (raise_interrupt(handle_notify(st, self, callbacks, waiters)) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
handle_add_done_callback(PyObject *op, PyObject *fn)
{
    HandleObject *self = (HandleObject *)op;
    bg_state *st = handle_state(self);
    if (bg_check_callable(fn, "add_done_callback() argument") < 0) {
        return NULL;
    }
    bg_node *node = PyMem_RawMalloc(sizeof(bg_node));
    if (node == NULL) {
        return PyErr_NoMemory();
    }
    node->next = NULL;
    node->fn = Py_NewRef(fn);
    pool_lock(st->pool);
    int done = self->is_done;
    if (!done) {
        bg_node **tail = &self->callbacks;
        while (*tail) {
            tail = &(*tail)->next;
        }
        *tail = node;
    }
    pool_unlock(st->pool);
    if (done) {
        /* at once, as concurrent.futures does */
        if (raise_interrupt(handle_notify(st, self, node, NULL)) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* ---- await handle ------------------------------------------------------- */

enum { WAIT_INIT, WAIT_WAITING, WAIT_DONE };

typedef struct {
    bg_coro base;
    HandleObject *handle;  /* strong */
    bg_wait wait;          /* the future its waiter item settles */
    int state;
} WaitObject;

static PySendResult
wait_outcome(WaitObject *self, PyObject **result)
{
    self->state = WAIT_DONE;
    if (self->handle->state == H_CANCELLED) {
        /* In a task, a cancelled call is a cancellation (asyncio's, as
           asyncio.wrap_future gives), not an Exception. */
        PyErr_SetNone(handle_state(self->handle)->cancelled_error);
        return PYGEN_ERROR;
    }
    *result = handle_outcome(self->handle);
    return *result ? PYGEN_RETURN : PYGEN_ERROR;
}

/* Takes the waiter item of `fut` off the handle's list, if it is still
   there (not posted yet), and gives its inbox count back. */
static void
wait_unlink(bg_state *st, HandleObject *h, PyObject *fut)
{
    pool_lock(st->pool);
    bg_item *found = NULL;
    for (bg_item **p = &h->waiters; *p; p = &(*p)->next) {
        if ((*p)->target == fut) {
            found = *p;
            *p = found->next;
            found->next = NULL;
            break;
        }
    }
    pool_unlock(st->pool);
    if (found != NULL) {
        bridge_forget(found);
    }
}

/* Starts waiting: a future of the running loop, settled by an item put on
   the handle's waiter list now, so that settling allocates nothing. */
static PySendResult
wait_start(WaitObject *self, PyObject **result)
{
    HandleObject *h = self->handle;
    bg_state *st = handle_state(h);
    PyObject *loop = NULL, *fut = NULL;
    bg_item *item = NULL;
    PySendResult status = PYGEN_ERROR;
    self->state = WAIT_DONE;   /* whatever fails below ends the wait */
    loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            /* No asyncio loop: trio's way, if trio runs (a foreign wait). */
            PyObject *no_loop = bg_fetch_exception();
            PyObject *args = PyTuple_Pack(1, (PyObject *)h);
            if (args == NULL) {
                Py_DECREF(no_loop);
                goto done;
            }
            status = bg_coro_go_foreign((PyObject *)self, "wait_handle", args, no_loop, result);
            Py_DECREF(args);
        }
        goto done;
    }
    fut = bg_new_future(st, loop);
    if (fut == NULL) {
        goto done;
    }
    item = pool_item_new(st->pool);
    if (item == NULL) {
        goto done;
    }
    item->inbox = bridge_inbox_for(st, loop);
    if (item->inbox == NULL) {
        pool_item_free(item);
        goto done;
    }
    item->target = Py_NewRef(fut);
    pool_lock(st->pool);
    int is_done = h->is_done;
    if (!is_done) {
        item->next = h->waiters;
        h->waiters = item;
    }
    pool_unlock(st->pool);
    if (is_done) {
        bridge_forget(item);   /* settled meanwhile */
        status = wait_outcome(self, result);
        goto done;
    }
    self->state = WAIT_WAITING;
    status = bg_wait_yield(st, &self->wait, fut, result);
    if (status == PYGEN_ERROR) {
        self->state = WAIT_DONE;
        wait_unlink(st, h, fut);
    }
done:
    Py_XDECREF(loop);
    Py_XDECREF(fut);
    return status;
}

static PySendResult
wait_send(PyObject *op, PyObject *value, PyObject **result)
{
    WaitObject *self = (WaitObject *)op;
    switch (self->state) {
    case WAIT_INIT:
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        if (self->handle->is_done) {
            return wait_outcome(self, result);
        }
        return wait_start(self, result);
    case WAIT_WAITING: {
        PySendResult status = bg_wait_resume(handle_state(self->handle), &self->wait, result);
        if (status == PYGEN_RETURN) {
            Py_DECREF(*result);   /* None: a wake-up */
            return wait_outcome(self, result);
        }
        if (status == PYGEN_ERROR) {
            /* Resumed early twice, or its future was cancelled under it: the
               wait ends; its waiter item stays, so that whoever waits on the
               future still wakes when the call ends. */
            self->state = WAIT_DONE;
        }
        return status;
    }
    default:
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited handle");
        return PYGEN_ERROR;
    }
}

/* Stops waiting (the awaiting task was cancelled): the call itself goes on,
   others may be waiting for it too; nothing of this wait stays on the
   handle. */
static int
wait_abandon(WaitObject *self)
{
    bg_state *st = handle_state(self->handle);
    PyObject *fut = bg_wait_take(&self->wait);
    self->state = WAIT_DONE;
    if (fut == NULL) {
        return 0;
    }
    wait_unlink(st, self->handle, fut);
    int r = bg_cancel_future(st, fut);
    Py_DECREF(fut);
    return r;
}

static PySendResult
wait_throw(PyObject *op, PyObject *exc, PyObject **result)
{
    (void)result;
    if (wait_abandon((WaitObject *)op) < 0) {
        PyErr_WriteUnraisable(op);
    }
    bg_restore(Py_NewRef(exc));
    return PYGEN_ERROR;
}

static int
wait_close(PyObject *op)
{
    return wait_abandon((WaitObject *)op);
}

static const bg_coro_ops wait_ops = {wait_send, wait_throw, wait_close};

static int
wait_traverse(PyObject *op, visitproc visit, void *arg)
{
    WaitObject *self = (WaitObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->handle);
    Py_VISIT(self->wait.fut);
    BG_CORO_VISIT(self);
    return 0;
}

static int
wait_clear(PyObject *op)
{
    WaitObject *self = (WaitObject *)op;
    if (self->wait.fut != NULL && self->handle != NULL) {
        PyObject *fut = bg_wait_take(&self->wait);
        wait_unlink(handle_state(self->handle), self->handle, fut);
        Py_DECREF(fut);
    }
    Py_CLEAR(self->handle);
    Py_CLEAR(self->wait.fut);
    BG_CORO_CLEAR(self);
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
handle_await(PyObject *op)
{
    HandleObject *self = (HandleObject *)op;
    bg_state *st = handle_state(self);
    WaitObject *w = PyObject_GC_New(WaitObject, st->handle_wait_type);
    if (w == NULL) {
        return NULL;
    }
    bg_coro_init((PyObject *)w, &wait_ops);
    w->handle = (HandleObject *)Py_NewRef(self);
    w->wait.fut = NULL;
    w->state = WAIT_INIT;
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

/* ---- the handle type ---------------------------------------------------- */

static const char *const state_names[] = {"pending", "running", "cancelled", "finished"};

static PyObject *
handle_repr(PyObject *op)
{
    HandleObject *self = (HandleObject *)op;
    PyObject *name = bg_getattr(self->func, "__qualname__");
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
handle_finalize(PyObject *op)
{
    HandleObject *self = (HandleObject *)op;
    bg_state *st = handle_state(self);
    if (st != NULL) {
        report_now(st, &self->lost);   /* keeps an exception set on entry */
    }
}

static int
handle_traverse(PyObject *op, visitproc visit, void *arg)
{
    HandleObject *self = (HandleObject *)op;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->func);
    Py_VISIT(self->result);
    Py_VISIT(self->exc);
    Py_VISIT(self->loop);
    for (bg_node *n = self->callbacks; n; n = n->next) {
        Py_VISIT(n->fn);
    }
    for (bg_item *it = self->waiters; it; it = it->next) {
        Py_VISIT(it->target);
        Py_VISIT(it->inbox);
    }
    return 0;
}

static int
handle_clear(PyObject *op)
{
    HandleObject *self = (HandleObject *)op;
    report_forget(handle_state(self), &self->lost);   /* it borrows func and exc */
    Py_CLEAR(self->func);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->loop);
    bg_node *callbacks = self->callbacks;
    bg_item *waiters = self->waiters;
    self->callbacks = NULL;
    self->waiters = NULL;
    callbacks_free(callbacks);
    while (waiters) {
        bg_item *next = waiters->next;
        waiters->next = NULL;
        bridge_forget(waiters);
        waiters = next;
    }
    return 0;
}

static void
handle_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;   /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (((HandleObject *)self)->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    handle_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef handle_methods[] = {
    {"result", (PyCFunction)(void (*)(void))handle_result, METH_VARARGS | METH_KEYWORDS,
     "result($self, /, timeout=None)\n--\n\n"
     "Waits for the call (at most timeout seconds) and returns its value, or raises\n"
     "its exception; CancelledError if it was cancelled, TimeoutError on timeout.\n"
     "On a thread running an event loop it does not block that loop without a\n"
     "timeout: RuntimeError unless the call is done (use 'await handle')."},
    {"exception", (PyCFunction)(void (*)(void))handle_exception, METH_VARARGS | METH_KEYWORDS,
     "exception($self, /, timeout=None)\n--\n\nWaits for the call and returns its exception, or None."},
    {"done", handle_done, METH_NOARGS,
     "done($self, /)\n--\n\nTrue once the call finished or was cancelled."},
    {"cancelled", handle_cancelled, METH_NOARGS,
     "cancelled($self, /)\n--\n\nTrue if the call was cancelled."},
    {"running", handle_running, METH_NOARGS,
     "running($self, /)\n--\n\nTrue while the call runs."},
    {"cancel", handle_cancel, METH_NOARGS,
     "cancel($self, /)\n--\n\nCancels a call that has not started: True if it then never runs\n"
     "(or was cancelled already), False once it runs or ran."},
    {"add_done_callback", handle_add_done_callback, METH_O,
     "add_done_callback($self, fn, /)\n--\n\n"
     "Calls fn(handle) once the call is done, at once if it is done already."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "See PEP 585."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef handle_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(HandleObject, weakreflist), Py_READONLY, NULL},
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

HandleObject *
handle_new(bg_state *st, PyObject *func)
{
    HandleObject *h = PyObject_GC_New(HandleObject, st->handle_type);
    if (h == NULL) {
        return NULL;
    }
    h->state = H_PENDING;
    h->is_done = 0;
    h->func = Py_NewRef(func);
    h->result = h->exc = h->loop = NULL;
    h->callbacks = NULL;
    h->waiters = NULL;
    memset(&h->lost, 0, sizeof(h->lost));
    h->weakreflist = NULL;
    PyObject_GC_Track(h);
    return h;
}

int
handle_init_types(PyObject *module, bg_state *st)
{
    st->handle_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &handle_spec, NULL);
    if (st->handle_type == NULL || PyModule_AddType(module, st->handle_type) < 0) {
        return -1;
    }
    st->handle_wait_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &wait_spec, NULL);
    return st->handle_wait_type ? 0 : -1;
}
