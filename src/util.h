/* util.h: the module state, and the small helpers every file above the pool
 * shares: state lookup, timeouts and deadlines, argument checks, telling
 * async callables from sync ones.
 *
 * Chain (each file calls only those before it):
 *   platform.h -> compat.h -> pool -> [util] -> report -> coro -> bridge
 *   -> task / tasks / handle -> background -> module
 * module.c defines bg_module_def (the identity of the state) and fills the
 * state in exec; no function here calls into a file after this one.
 */
#ifndef BG_UTIL_H
#define BG_UTIL_H

#include "compat.h"
#include "pool.h"

typedef struct HandleObject HandleObject;
typedef struct bg_lost bg_lost;

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
    PyObject *async_calls;         /* dict: handle -> its asyncio task (None on the engine's
                                      loop), for every async @background call running */
    bg_lost *lost;                 /* failures nobody read yet (report.h): a list of
                                      nodes inside their owners, each unlinked by it */

    /* From the standard library, looked up once. */
    PyObject *get_running_loop;    /* asyncio.get_running_loop */
    PyObject *ensure_future;       /* asyncio.ensure_future */
    PyObject *iscoroutinefunction; /* inspect's (3.14+) or asyncio's (before) */
    PyObject *partial_type;        /* functools.partial */
    PyObject *cancelled_error;     /* asyncio.CancelledError */
    PyObject *invalid_state;       /* asyncio.InvalidStateError */
    PyObject *futures_cancelled;   /* concurrent.futures.CancelledError */
    PyObject *futures_timeout;     /* TimeoutError */
    PyObject *base_exception_group;/* BaseExceptionGroup, looked up on first need */
    PyObject *logger;              /* logging.getLogger("backgrounder"), at import */
    PyObject *fallback_format;     /* a logging.Formatter for when logging is not set up */
    PyObject *loop_runner;         /* backgrounder's own loop thread: a LoopThread, on first need */
    PyObject *loop_module;         /* backgrounder._loop, on first need */

    PyObject *on_error;            /* configure(on_error=...), or NULL */
    int abandoned;                 /* Ctrl-C at exit gave up on the work left */

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
    PyObject *str_name;            /* "__name__" */
    PyObject *str_loop;            /* "loop" */
    PyObject *str_create_task;
    PyObject *str_submit;
    PyObject *str_is_closed;
    PyObject *str_wait_idle;
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

/* tp_dealloc of the module's internal GC types (not subclassable, no
   finalizer, no weak references): untracks, clears with the type's own
   tp_clear, frees, and drops the reference to the heap type. */
void bg_gc_dealloc(PyObject *self);

/* Raises StopIteration(value), the way a coroutine returns a value. */
void bg_set_stop_iteration(PyObject *value);

/* Returns 0 if `obj` is callable, else -1 with TypeError "<what> must be
   callable, not <repr(obj)>". */
int bg_check_callable(PyObject *obj, const char *what);

/* 1 if `func` is an async callable (0.2.0's is_async_callable: coroutine
   functions, partials of them, objects whose __call__ is one), 0 if not,
   -1 with an exception set. */
int bg_is_async_callable(bg_state *st, PyObject *func);

/* Parses a timeout: None (or +inf) gives -1, no limit; a real number >= 0
   itself.  A negative number is 0 with `clamp_negative` (as
   concurrent.futures does), else ValueError.  `what` names the argument in
   messages ("shutdown() argument 'timeout'").  Returns 0, or -1 with
   TypeError/ValueError naming the value. */
int bg_parse_timeout(PyObject *value, const char *what, int clamp_negative, double *out);

/* The bg_monotonic() time `timeout` seconds from now; -1 (no deadline) for
   a timeout < 0. */
double bg_deadline(double timeout);
/* Seconds left until `deadline` (>= 0), or -1 for no deadline. */
double bg_time_left(double deadline);

/* A new reference to a float of the seconds left until `deadline`, or to
   None for no deadline; NULL with an exception set. */
PyObject *bg_time_left_object(double deadline);

/* obj.<name>(...) with the name interned (bg_getattr, compat.h), else what
   PyObject_CallMethod does: `format` is its format (NULL for no arguments),
   and one value that is a tuple is the argument tuple, so a lone argument
   that may be a tuple is given as "(O)".  For calls off the hot paths; those
   use the names interned in the state (str_*). */
PyObject *bg_call_method(PyObject *obj, const char *name, const char *format, ...);

#endif /* BG_UTIL_H */
