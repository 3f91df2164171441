/* coro.c: the coroutine protocol and the waiting primitive.  See coro.h. */
#include "coro.h"

#define CORO(self) ((bg_coro *)(self))


static inline int
is_bg_coro(PyObject *obj)
{
    return Py_TYPE(obj)->tp_as_async != NULL
           && Py_TYPE(obj)->tp_as_async->am_send == bg_coro_am_send;
}

static PySendResult delegate_throw(bg_state *st, PyObject *iter, PyObject *exc, PyObject **result);
static int delegate_close(bg_state *st, PyObject *iter);

static inline bg_state *
coro_state(PyObject *self)
{
    return (bg_state *)PyType_GetModuleState(Py_TYPE(self));
}

/* The foreign coroutine answered: once it returned or raised, it is done. */
static PySendResult
foreign_answered(PyObject *self, PySendResult status)
{
    if (status != PYGEN_NEXT) {
        Py_CLEAR(CORO(self)->foreign);
    }
    return status;
}

PySendResult
bg_coro_reused(void)
{
    PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
    return PYGEN_ERROR;
}

/* Every send, throw and close of a bg_coro goes through these three: they
   keep `suspended` true while someone awaits it, and refuse re-entry (an
   entry of a Tasks run that closes the very run driving it, say): the
   coroutine it delegates to is held for the call's length. */
static int
enter(PyObject *self)
{
    if (CORO(self)->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return -1;
    }
    CORO(self)->running = 1;
    return 0;
}

static PySendResult
coro_do_send(PyObject *self, PyObject *value, PyObject **result)
{
    if (enter(self) < 0) {
        return PYGEN_ERROR;
    }
    PySendResult status;
    PyObject *foreign = Py_XNewRef(CORO(self)->foreign);
    if (foreign != NULL && value == Py_None) {
        /* trio resumes the coroutine it delegates to with an outcome, never
           None: this is another driver (a second task awaiting the same
           iterator).  Refused, and the waiting coroutine is left alone, as an
           early resume is under asyncio. */
        Py_DECREF(foreign);
        PyErr_SetString(PyExc_RuntimeError, "coroutine is being awaited already");
        CORO(self)->running = 0;   /* still suspended: its awaiter waits on */
        return PYGEN_ERROR;
    }
    else if (foreign != NULL) {
        status = foreign_answered(self, PyIter_Send(foreign, value, result));
        Py_DECREF(foreign);
    }
    else {
        status = CORO(self)->ops->send(self, value, result);
    }
    CORO(self)->running = 0;
    CORO(self)->suspended = status == PYGEN_NEXT;
    return status;
}

static PySendResult
coro_do_throw(PyObject *self, PyObject *exc, PyObject **result)
{
    if (enter(self) < 0) {
        return PYGEN_ERROR;
    }
    PySendResult status;
    PyObject *foreign = Py_XNewRef(CORO(self)->foreign);
    if (foreign != NULL) {
        status = foreign_answered(self, delegate_throw(coro_state(self), foreign, exc, result));
        Py_DECREF(foreign);
    }
    else {
        status = CORO(self)->ops->throw_(self, exc, result);
    }
    CORO(self)->running = 0;
    CORO(self)->suspended = status == PYGEN_NEXT;
    return status;
}

static int
coro_do_close(PyObject *self)
{
    if (enter(self) < 0) {
        return -1;
    }
    CORO(self)->suspended = 0;
    int r;
    PyObject *foreign = CORO(self)->foreign;
    if (foreign != NULL) {
        CORO(self)->foreign = NULL;
        r = delegate_close(coro_state(self), foreign);
        Py_DECREF(foreign);
    }
    else {
        r = CORO(self)->ops->close(self);
    }
    CORO(self)->running = 0;
    return r;
}

PySendResult
bg_coro_go_foreign(PyObject *self, const char *name, PyObject *args, PyObject *no_loop,
                   PyObject **result)
{
    PyObject *mod = NULL, *func = NULL, *coro = NULL;
    PyObject *trio_name = PyUnicode_FromString("trio");
    PyObject *trio = trio_name ? PyImport_GetModule(trio_name) : NULL;   /* never imports it */
    Py_XDECREF(trio_name);
    if (trio == Py_None) {   /* sys.modules["trio"] = None: its import is blocked */
        Py_CLEAR(trio);
    }
    if (trio == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(no_loop);
            return PYGEN_ERROR;
        }
        bg_restore(no_loop);   /* asyncio's "no running event loop" stays */
        return PYGEN_ERROR;
    }
    Py_DECREF(trio);
    mod = PyImport_ImportModule("backgrounder._trio");
    func = mod ? bg_getattr(mod, name) : NULL;
    coro = func ? PyObject_CallObject(func, args) : NULL;
    Py_XDECREF(func);
    Py_XDECREF(mod);
    if (coro == NULL) {
        if (PyErr_ExceptionMatches(PyExc_LookupError)) {
            /* No trio run here either: asyncio's error is the one to see. */
            PyErr_Clear();
            bg_restore(no_loop);
            return PYGEN_ERROR;
        }
        Py_DECREF(no_loop);
        return PYGEN_ERROR;
    }
    Py_DECREF(no_loop);
    Py_XSETREF(CORO(self)->foreign, Py_NewRef(coro));
    PySendResult status = foreign_answered(self, PyIter_Send(coro, Py_None, result));
    Py_DECREF(coro);
    return status;
}

int
bg_in_trio_run(void)
{
    PyObject *compat = PyImport_ImportModule("backgrounder._compat");
    PyObject *res = compat ? bg_call_method(compat, "in_trio_run", NULL) : NULL;
    int r = res ? PyObject_IsTrue(res) : -1;
    Py_XDECREF(res);
    Py_XDECREF(compat);
    return r;
}

PyObject *
bg_coro_await(PyObject *self)
{
    if (CORO(self)->suspended) {
        /* As for a native coroutine: the first awaiter keeps it. */
        PyErr_SetString(PyExc_RuntimeError, "coroutine is being awaited already");
        return NULL;
    }
    return Py_NewRef(self);
}

PySendResult
bg_coro_am_send(PyObject *self, PyObject *value, PyObject **result)
{
    return coro_do_send(self, value, result);
}

/* Turns a send result into what send()/__next__ return: the yielded value,
   or NULL with StopIteration(value) or the error set. */
static PyObject *
send_result_object(PySendResult status, PyObject *result)
{
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        bg_set_stop_iteration(result);
        Py_DECREF(result);
    }
    return NULL;
}

PyObject *
bg_coro_iternext(PyObject *self)
{
    PyObject *result = NULL;
    PySendResult status = coro_do_send(self, Py_None, &result);
    return send_result_object(status, result);
}

static PyObject *
coro_send(PyObject *self, PyObject *value)
{
    PyObject *result = NULL;
    PySendResult status = coro_do_send(self, value, &result);
    return send_result_object(status, result);
}

/* Returns a new reference to the exception instance that throw(typ, val, tb)
   stands for, as generator.throw() builds it; NULL with TypeError set. */
static PyObject *
make_thrown(PyObject *typ, PyObject *val, PyObject *tb)
{
    PyObject *exc = NULL;
    if (tb == Py_None) {
        tb = NULL;
    }
    if (tb != NULL && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (PyExceptionInstance_Check(typ)) {
        if (val != NULL && val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        if (val == NULL || val == Py_None) {
            exc = PyObject_CallNoArgs(typ);
        }
        else if (PyObject_TypeCheck(val, (PyTypeObject *)typ)) {
            exc = Py_NewRef(val);
        }
        else if (PyTuple_Check(val)) {
            exc = PyObject_Call(typ, val, NULL);
        }
        else {
            exc = PyObject_CallOneArg(typ, val);
        }
        if (exc == NULL) {
            return NULL;
        }
        if (!PyExceptionInstance_Check(exc)) {
            PyErr_Format(PyExc_TypeError, "calling %R should have returned an instance of "
                         "BaseException, not %R", typ, exc);
            Py_DECREF(exc);
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving "
                     "from BaseException, not %s", Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != NULL && PyException_SetTraceback(exc, tb) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

static PyObject *
coro_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected 1 to 3 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *exc = make_thrown(args[0], nargs > 1 ? args[1] : NULL, nargs > 2 ? args[2] : NULL);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    PySendResult status = coro_do_throw(self, exc, &result);
    Py_DECREF(exc);
    return send_result_object(status, result);
}

static PyObject *
coro_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (coro_do_close(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyMethodDef bg_coro_methods[] = {
    {"send", coro_send, METH_O,
     "send($self, value, /)\n--\n\nResumes the awaitable with a value."},
    {"throw", (PyCFunction)(void (*)(void))coro_throw, METH_FASTCALL,
     "throw(typ, val=None, tb=None)\n--\n\nRaises an exception inside the awaitable."},
    {"close", coro_close, METH_NOARGS,
     "close($self, /)\n--\n\nEnds the awaitable; a call not started yet never starts."},
    {NULL, NULL, 0, NULL},
};

#define RECURSION_WHERE " while awaiting a backgrounder awaitable"

PySendResult
bg_delegate_send(PyObject *iter, PyObject *value, PyObject **result)
{
    if (Py_EnterRecursiveCall(RECURSION_WHERE)) {
        return PYGEN_ERROR;
    }
    PySendResult status = is_bg_coro(iter) ? coro_do_send(iter, value, result)
                                           : PyIter_Send(iter, value, result);
    Py_LeaveRecursiveCall();
    return status;
}

/* An error is set: if it is StopIteration, the iterator returned; gets its
   value.  Returns PYGEN_RETURN with *result set, or PYGEN_ERROR. */
static PySendResult
stop_iteration_to_return(PyObject **result)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        return PYGEN_ERROR;
    }
    PyObject *exc = bg_fetch_exception();
    PyObject *value = bg_getattr(exc, "value");
    Py_DECREF(exc);
    if (value == NULL) {
        return PYGEN_ERROR;
    }
    *result = value;
    return PYGEN_RETURN;
}

static PySendResult
delegate_throw(bg_state *st, PyObject *iter, PyObject *exc, PyObject **result)
{
    if (is_bg_coro(iter)) {
        return coro_do_throw(iter, exc, result);
    }
    PyObject *meth;
    if (bg_getattr_optional(iter, st->str_throw, &meth) < 0) {
        return PYGEN_ERROR;
    }
    if (meth == NULL) {
        bg_restore(Py_NewRef(exc));   /* like `yield from`: no throw(), raise it here */
        return PYGEN_ERROR;
    }
    PyObject *res = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    if (res != NULL) {
        *result = res;
        return PYGEN_NEXT;
    }
    return stop_iteration_to_return(result);
}

PySendResult
bg_delegate_throw(bg_state *st, PyObject *iter, PyObject *exc, PyObject **result)
{
    if (Py_EnterRecursiveCall(RECURSION_WHERE)) {
        return PYGEN_ERROR;
    }
    PySendResult status = delegate_throw(st, iter, exc, result);
    Py_LeaveRecursiveCall();
    return status;
}

static int
delegate_close(bg_state *st, PyObject *iter)
{
    if (is_bg_coro(iter)) {
        return coro_do_close(iter);
    }
    PyObject *meth;
    if (bg_getattr_optional(iter, st->str_close, &meth) < 0) {
        return -1;
    }
    if (meth == NULL) {
        return 0;
    }
    PyObject *res = PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

int
bg_delegate_close(bg_state *st, PyObject *iter)
{
    if (Py_EnterRecursiveCall(RECURSION_WHERE)) {
        return -1;
    }
    int r = delegate_close(st, iter);
    Py_LeaveRecursiveCall();
    return r;
}

PyObject *
bg_await_iter(PyObject *obj)
{
    if (PyCoro_CheckExact(obj)) {
        return Py_NewRef(obj);
    }
    if (PyGen_CheckExact(obj)) {
        /* A generator-based coroutine (types.coroutine) is its own iterator. */
        PyObject *code = bg_getattr(obj, "gi_code");
        if (code == NULL) {
            return NULL;
        }
        int flags = ((PyCodeObject *)code)->co_flags;
        Py_DECREF(code);
        if (flags & CO_ITERABLE_COROUTINE) {
            return Py_NewRef(obj);
        }
    }
    unaryfunc am_await = Py_TYPE(obj)->tp_as_async ? Py_TYPE(obj)->tp_as_async->am_await : NULL;
    if (am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %R can't be used in 'await' expression", obj);
        return NULL;
    }
    PyObject *iter = am_await(obj);
    if (iter == NULL) {
        return NULL;
    }
    if (PyCoro_CheckExact(iter) || !PyIter_Check(iter)) {
        PyErr_Format(PyExc_TypeError, "__await__() of %R returned %R, not an iterator", obj, iter);
        Py_DECREF(iter);
        return NULL;
    }
    return iter;
}

/* ---- waiting on a loop future ------------------------------------------- */

PyObject *
bg_new_future(bg_state *st, PyObject *loop)
{
    return PyObject_CallMethodNoArgs(loop, st->str_create_future);
}

PySendResult
bg_wait_yield(bg_state *st, bg_wait *w, PyObject *fut, PyObject **result)
{
    if (PyObject_SetAttr(fut, st->str_future_blocking, Py_True) < 0) {
        return PYGEN_ERROR;
    }
    Py_XSETREF(w->fut, Py_NewRef(fut));
    *result = Py_NewRef(fut);
    return PYGEN_NEXT;
}

PySendResult
bg_wait_resume(bg_state *st, bg_wait *w, PyObject **result)
{
    PyObject *fut = w->fut;
    assert(fut != NULL);
    PyObject *res = PyObject_CallMethodNoArgs(fut, st->str_result);
    if (res != NULL) {
        Py_CLEAR(w->fut);
        *result = res;
        return PYGEN_RETURN;
    }
    if (PyErr_ExceptionMatches(st->invalid_state)) {
        /* Not done, unless the call itself raised InvalidStateError. */
        PyObject *exc = bg_fetch_exception();
        PyObject *done = PyObject_CallMethodNoArgs(fut, st->str_done);
        int is_done = done ? PyObject_IsTrue(done) : -1;
        Py_XDECREF(done);
        if (is_done != 0) {
            Py_CLEAR(w->fut);
            if (is_done > 0) {
                bg_restore(exc);
            }
            else {
                Py_DECREF(exc);
            }
            return PYGEN_ERROR;
        }
        Py_DECREF(exc);
    }
    else {
        Py_CLEAR(w->fut);   /* done: its exception (or cancellation) is the outcome */
        return PYGEN_ERROR;
    }
    /* Not done: resumed by someone else than the future (a second driver). */
    PyObject *blocking = PyObject_GetAttr(fut, st->str_future_blocking);
    int is_blocking = blocking ? PyObject_IsTrue(blocking) : -1;
    Py_XDECREF(blocking);
    if (is_blocking < 0) {
        Py_CLEAR(w->fut);
        return PYGEN_ERROR;
    }
    if (!is_blocking) {
        return bg_wait_yield(st, w, fut, result);
    }
    Py_CLEAR(w->fut);
    PyErr_SetString(PyExc_RuntimeError, "await wasn't used with future");
    return PYGEN_ERROR;
}

int
bg_cancel_future(bg_state *st, PyObject *fut)
{
    PyObject *res = PyObject_CallMethodNoArgs(fut, st->str_cancel);
    if (res == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            return -1;
        }
        PyErr_Clear();   /* "Event loop is closed" */
        return 0;
    }
    Py_DECREF(res);
    return 0;
}

int
bg_wait_cancel(bg_state *st, bg_wait *w)
{
    PyObject *fut = bg_wait_take(w);
    if (fut == NULL) {
        return 0;
    }
    int r = bg_cancel_future(st, fut);
    Py_DECREF(fut);
    return r;
}
