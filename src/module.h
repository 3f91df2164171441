/* module.h: the module state, and what each source file gives the others.
 *
 * One bg_state per module object (multi-phase init, PEP 489/630).  No C global
 * holds a Python object: everything a type or a function needs is reached
 * from the module state, through the module or through a type defined by it.
 */
#ifndef BG_MODULE_H
#define BG_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "pool.h"

typedef struct {
    /* Types, all heap types made in module exec. */
    PyTypeObject *task_type;
    PyTypeObject *tasks_type;
    PyTypeObject *call_type;       /* what Task() returns for a sync callable */
    PyTypeObject *seq_type;        /* what Tasks() returns, in order */
    PyTypeObject *group_type;      /* what Tasks(as_group=True)() returns */
    PyTypeObject *inbox_type;
    PyTypeObject *drain_type;
    PyTypeObject *handle_type;     /* BackgroundHandle */
    PyTypeObject *wrapper_type;    /* what @background returns */
    PyTypeObject *handle_wait_type;/* what `await handle` iterates */

    bg_pool *pool;                 /* one reference, the module's */
    PyObject *inboxes;             /* dict: loop -> Inbox, while completions are pending */
    PyObject *running_async;       /* set of asyncio tasks started by @background */

    /* From the standard library, looked up once. */
    PyObject *get_running_loop;    /* asyncio.get_running_loop */
    PyObject *ensure_future;       /* asyncio.ensure_future */
    PyObject *iscoroutinefunction; /* inspect's from 3.14, asyncio's before */
    PyObject *partial_type;        /* functools.partial */
    PyObject *cancelled_error;     /* asyncio.CancelledError */
    PyObject *futures_cancelled;   /* concurrent.futures.CancelledError */
    PyObject *futures_timeout;     /* TimeoutError */
    PyObject *base_exception_group;/* BaseExceptionGroup, looked up on first need */
    PyObject *logger;              /* logging.getLogger("backgrounder"), on first need */
    PyObject *loop_runner;         /* backgrounder's own loop thread: a callable, on first need */

    PyObject *on_error;            /* configure(on_error=...), or NULL */

    /* Interned names. */
    PyObject *str_create_future;
    PyObject *str_call_soon_threadsafe;
    PyObject *str_set_result;
    PyObject *str_set_exception;
    PyObject *str_cancelled;
    PyObject *str_cancel;
    PyObject *str_done;
    PyObject *str_result;
    PyObject *str_exception;
    PyObject *str_add_done_callback;
    PyObject *str_future_blocking; /* "_asyncio_future_blocking" */
    PyObject *str_throw;
    PyObject *str_close;
    PyObject *str_func;
    PyObject *str_call;            /* "__call__" */
    PyObject *str_discard;
    PyObject *str_name;            /* "__name__" */
} bg_state;

extern PyModuleDef bg_module_def;

static inline bg_state *
get_state(PyObject *module)
{
    return (bg_state *)PyModule_GetState(module);
}

/* Returns the state of the module that defined `tp` or one of its bases
   (a borrowed pointer), or NULL with TypeError set. */
bg_state *get_state_by_type(PyTypeObject *tp);

/* A short type name for reprs and messages: a new reference, or NULL. */
PyObject *bg_type_name(PyTypeObject *tp);

/* The exception currently raised, normalized, with its traceback; clears it.
   A new reference, or NULL when no exception is set. */
PyObject *bg_fetch_exception(void);

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
/* Raises `exc` (an exception instance), keeping its traceback. */
void bg_raise(PyObject *exc);
/* Raises StopIteration(value), the way a coroutine returns a value. */
void bg_set_stop_iteration(PyObject *value);

/* 1 if `func` is an async callable (0.2.0's is_async_callable), 0 if not,
   -1 with an exception set. */
int bg_is_async_callable(bg_state *st, PyObject *func);

/* Logs `exc` on the "backgrounder" logger at ERROR with its traceback, or
   hands it to configure(on_error=...).  `what` is the message, a %s in it
   standing for the name of `func` (module and qualified name, never the
   arguments).  Never raises: a failure to log is reported as unraisable. */
#define BG_CALL_FAILED "background call %s failed"
void bg_report_error(bg_state *st, const char *what, PyObject *func, PyObject *exc);

/* tp_dealloc of the module's internal GC types (not subclassable, no
   finalizer, no weak references): untracks, clears with the type's own
   tp_clear, frees, and drops the reference to the heap type. */
void bg_gc_dealloc(PyObject *self);

/* Each file's types, added to the module in exec.  Return 0 or -1. */
int task_init_types(PyObject *module, bg_state *st);
int tasks_init_types(PyObject *module, bg_state *st);
int bridge_init_types(PyObject *module, bg_state *st);
int background_init_types(PyObject *module, bg_state *st);

#endif /* BG_MODULE_H */
