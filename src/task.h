/* task.h: Task, and the Call that `await task()` drives for a sync callable.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> coro -> bridge
 *        -> [task] / tasks / handle -> background -> module.
 * Calls pool, util, report, coro and bridge.
 */
#ifndef BG_TASK_H
#define BG_TASK_H

#include "coro.h"

/* Task's fields, read by tasks.c. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;  /* task(): set for exact Task instances */
    PyObject *func;        /* strong; NULL only in a Tasks, which has no func */
    PyObject *args;        /* strong tuple, or NULL likewise */
    PyObject *kwargs;      /* strong dict, or NULL when there were none */
    int is_async;          /* func is an async callable */
} TaskObject;

/* Returns a new reference to what `await Task(func, *args, **kwargs)()` would
   drive: func's own coroutine for an async callable, a pool call for a sync
   one.  `kwargs` may be NULL.  NULL with an exception set. */
PyObject *task_start(bg_state *st, PyObject *func, PyObject *args, PyObject *kwargs,
                     int is_async);

/* Returns a new reference to the awaitable that one entry of a Tasks list
   stands for (a Task, or a bare callable run as Task(callable)), or NULL with
   TypeError set naming it. */
PyObject *task_entry_call(bg_state *st, PyObject *entry);

/* Returns 0 if every entry of `list` is a Task or a callable, else -1 with
   TypeError naming the first that is not. */
int task_check_entries(bg_state *st, PyObject *list);

/* Module exec: makes the Task and Call types.  Returns 0 or -1. */
int task_init_types(PyObject *module, bg_state *st);

#endif /* BG_TASK_H */
