/* task.h: Task, and the coroutine protocol its awaitables share.
 *
 * What Task() returns for a sync callable (a Call), what Tasks() returns (a
 * sequence run or a group run) and what `await handle` iterates all begin with
 * a bg_coro header.  Their send/throw/close live in a bg_coro_ops table; the
 * Python-visible methods (send, throw, close, __await__, __next__) and the
 * am_send slot are written once here and dispatch through it.  That is what
 * makes each of them a collections.abc.Coroutine that asyncio, anyio and the
 * frameworks accept.
 */
#ifndef BG_TASK_H
#define BG_TASK_H

#include "module.h"

typedef struct bg_coro_ops bg_coro_ops;

typedef struct {
    PyObject_HEAD
    const bg_coro_ops *ops;
} bg_coro;

struct bg_coro_ops {
    /* Like am_send: PYGEN_NEXT with *result the value to yield, PYGEN_RETURN
       with *result the value returned, PYGEN_ERROR with an exception set. */
    PySendResult (*send)(PyObject *self, PyObject *value, PyObject **result);
    /* `exc` (borrowed) is raised inside the coroutine; same results. */
    PySendResult (*throw_)(PyObject *self, PyObject *exc, PyObject **result);
    /* Ends the coroutine without waiting.  Returns 0, or -1 with an exception set. */
    int (*close)(PyObject *self);
};

/* Slots every bg_coro type lists in its PyType_Spec. */
#define BG_CORO_SLOTS                                        \
    {Py_am_await, bg_coro_await},                            \
    {Py_am_send, bg_coro_am_send},                           \
    {Py_tp_iter, PyObject_SelfIter},                         \
    {Py_tp_iternext, bg_coro_iternext},                      \
    {Py_tp_methods, bg_coro_methods}

PyObject *bg_coro_await(PyObject *self);
PySendResult bg_coro_am_send(PyObject *self, PyObject *value, PyObject **result);
PyObject *bg_coro_iternext(PyObject *self);
extern PyMethodDef bg_coro_methods[];

/* Sends `value` into any awaitable's iterator: a bg_coro directly, anything
   else through PyIter_Send. */
PySendResult bg_delegate_send(PyObject *iter, PyObject *value, PyObject **result);
/* Throws `exc` (borrowed) into any awaitable's iterator: a bg_coro directly,
   anything else through its throw() method. */
PySendResult bg_delegate_throw(bg_state *st, PyObject *iter, PyObject *exc, PyObject **result);
/* Closes any awaitable's iterator.  Returns 0 or -1. */
int bg_delegate_close(bg_state *st, PyObject *iter);
/* Returns a new reference to the iterator that `await obj` would drive, or
   NULL with TypeError set naming obj. */
PyObject *bg_await_iter(PyObject *obj);

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

#endif /* BG_TASK_H */
