/* util.c: state lookup, timeouts, argument checks, async callables.  See util.h. */
#include "util.h"
#include "platform.h"
#include <math.h>
#include <stdarg.h>

bg_state *
get_state_by_type(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *mod = PyType_GetModuleByDef(tp, &bg_module_def);
    return mod ? get_state(mod) : NULL;
#else
    PyObject *mro = tp->tp_mro;
    for (Py_ssize_t i = 0; mro && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (!PyType_HasFeature(base, Py_TPFLAGS_HEAPTYPE)) {
            continue;
        }
        PyObject *mod = ((PyHeapTypeObject *)base)->ht_module;
        if (mod != NULL && PyModule_GetDef(mod) == &bg_module_def) {
            return get_state(mod);
        }
    }
    PyErr_Format(PyExc_TypeError, "type %s is not defined by backgrounder", tp->tp_name);
    return NULL;
#endif
}

void
bg_gc_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tp->tp_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

void
bg_set_stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    /* StopIteration(value) built explicitly: a tuple must stay one value. */
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

int
bg_check_callable(PyObject *obj, const char *what)
{
    if (PyCallable_Check(obj)) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s must be callable, not %R", what, obj);
    return -1;
}

/* 1 or 0 when the answer is plain from the object's type, -1 when it takes
   iscoroutinefunction (decorated functions, callable objects). */
static int
is_async_fast(PyObject *obj)
{
    if (PyMethod_Check(obj)) {
        obj = PyMethod_GET_FUNCTION(obj);
    }
    if (PyFunction_Check(obj)) {
        PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(obj);
        if (code->co_flags & CO_COROUTINE) {
            return 1;
        }
        /* A marker (inspect.markcoroutinefunction) lives in the dict. */
        PyObject *dict = ((PyFunctionObject *)obj)->func_dict;
        return (dict == NULL || PyDict_GET_SIZE(dict) == 0) ? 0 : -1;
    }
    if (PyCFunction_Check(obj)) {
        return 0;
    }
    return -1;
}

/* Returns iscoroutinefunction(obj) as 1/0, or -1 with an exception. */
static int
call_iscoroutinefunction(bg_state *st, PyObject *obj)
{
    PyObject *res = PyObject_CallOneArg(st->iscoroutinefunction, obj);
    if (res == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(res);
    Py_DECREF(res);
    return r;
}

int
bg_is_async_callable(bg_state *st, PyObject *func)
{
    PyObject *obj = Py_NewRef(func);
    while (PyObject_TypeCheck(obj, (PyTypeObject *)st->partial_type)) {
        PyObject *inner = PyObject_GetAttr(obj, st->str_func);
        Py_DECREF(obj);
        if (inner == NULL) {
            return -1;
        }
        obj = inner;
    }
    int r = is_async_fast(obj);
    if (r < 0) {
        r = call_iscoroutinefunction(st, obj);
        if (r == 0 && PyCallable_Check(obj) && !PyType_Check(obj)) {
            PyObject *call = PyObject_GetAttr(obj, st->str_call);
            r = call ? call_iscoroutinefunction(st, call) : -1;
            Py_XDECREF(call);
        }
    }
    Py_DECREF(obj);
    return r;
}

int
bg_parse_timeout(PyObject *value, const char *what, int clamp_negative, double *out)
{
    if (value == NULL || value == Py_None) {
        *out = -1.0;
        return 0;
    }
    if (PyBool_Check(value) || !(PyLong_Check(value) || PyFloat_Check(value))) {
        PyErr_Format(PyExc_TypeError, "%s must be a number of seconds or None, not %R", what, value);
        return -1;
    }
    double d = PyFloat_AsDouble(value);
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(d)) {
        PyErr_Format(PyExc_ValueError, "%s must be a number of seconds, not %R", what, value);
        return -1;
    }
    if (d < 0) {
        if (!clamp_negative) {
            PyErr_Format(PyExc_ValueError, "%s must be >= 0, not %R", what, value);
            return -1;
        }
        d = 0;
    }
    *out = isinf(d) ? -1.0 : d;
    return 0;
}

double
bg_deadline(double timeout)
{
    return timeout < 0 ? -1.0 : bg_monotonic() + timeout;
}

double
bg_time_left(double deadline)
{
    if (deadline < 0) {
        return -1.0;
    }
    double left = deadline - bg_monotonic();
    return left > 0 ? left : 0.0;
}

PyObject *
bg_time_left_object(double deadline)
{
    double left = bg_time_left(deadline);
    return left < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(left);
}

PyObject *
bg_call_method(PyObject *obj, const char *name, const char *format, ...)
{
    if (obj == NULL || name == NULL) {
        PyErr_BadInternalCall();
        return NULL;
    }
    PyObject *meth = bg_getattr(obj, name);
    if (meth == NULL) {
        return NULL;
    }
    PyObject *args;
    if (format == NULL || *format == '\0') {
        args = PyTuple_New(0);
    }
    else {
        va_list va;
        va_start(va, format);
        args = Py_VaBuildValue(format, va);
        va_end(va);
        /* One value that is not a tuple is the one argument (a tuple is
           the arguments), as for PyObject_CallMethod. */
        if (args != NULL && !PyTuple_Check(args)) {
            Py_SETREF(args, PyTuple_Pack(1, args));
        }
    }
    PyObject *res = args != NULL ? PyObject_Call(meth, args, NULL) : NULL;
    Py_XDECREF(args);
    Py_DECREF(meth);
    return res;
}
