/* compat.h: the few CPython API calls whose spelling depends on the version.
 *
 * Chain (each file calls only those before it):
 *   platform.h -> [compat.h] -> pool -> util -> report -> coro -> bridge
 *   -> task / tasks / handle -> background -> module
 * Header only; public C API only (no _Py*, no pycore headers).
 */
#ifndef BG_COMPAT_H
#define BG_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>   /* offsetof, for PyMemberDef */

/* PyMemberDef's type and flag names, spelled as from 3.12 on. */
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#endif

/* The exception currently raised, normalized, with its traceback; clears it.
   A new reference, or NULL when no exception is set. */
static inline PyObject *
bg_fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raises `exc` (an exception instance, borrowed), keeping its traceback. */
static inline void
bg_raise(PyObject *exc)
{
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
}

/* Sets `exc` (an exception instance, stolen) as the current exception as
   it is, where bg_raise would chain the exception being handled to it: for
   putting back an exception fetched earlier. */
static inline void
bg_restore(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore((PyObject *)Py_NewRef(Py_TYPE(exc)), exc, tb);
#endif
}

/* getattr that tells "no such attribute" apart: returns 1 with *result a new
   reference, 0 with *result NULL (AttributeError cleared), -1 on error. */
static inline int
bg_getattr_optional(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    *result = PyObject_GetAttr(obj, name);
    if (*result != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
#endif
}

/* obj.<name>, what PyObject_GetAttrString does, but with the name interned.
   CPython's type attribute cache keeps a reference to the name it was last
   asked for in each slot: a fresh string made per lookup stays alive there
   until the slot is reused (which a debug build's sys.gettotalrefcount()
   counts as a slow leak), and never hits the cache.  `name` is a literal:
   an interned string lives as long as the interpreter (on 3.12, always). */
static inline PyObject *
bg_getattr(PyObject *obj, const char *name)
{
    PyObject *key = PyUnicode_InternFromString(name);
    if (key == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_GetAttr(obj, key);
    Py_DECREF(key);
    return res;
}

/* A short type name for reprs and messages: a new reference, or NULL. */
static inline PyObject *
bg_type_name(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyType_GetName(tp);
#else
    return bg_getattr((PyObject *)tp, "__name__");
#endif
}

#endif /* BG_COMPAT_H */
