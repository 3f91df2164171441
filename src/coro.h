/* coro.h: the coroutine protocol every awaitable of the module shares, and
 * the one way any of them waits on a loop future.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> [coro] -> bridge
 *        -> task / tasks / handle -> background -> module.
 * Calls only util and compat.h.
 *
 * What Task() returns for a sync callable (a Call), what Tasks() returns (a
 * sequence run or a group run) and what `await handle` iterates all begin
 * with a bg_coro header.  Their send/throw/close live in a bg_coro_ops
 * table; the Python-visible methods (send, throw, close, __await__,
 * __next__) and the am_send slot are written once here and dispatch through
 * it.  That is what makes each of them a collections.abc.Coroutine that
 * asyncio, anyio and the frameworks accept, with a native coroutine's rules:
 * `await` of one that is suspended in another awaiter raises RuntimeError.
 *
 * bg_wait is the one primitive for "wait on a loop future", with
 * asyncio.Future.__await__'s rules (CPython's FutureIter): yield the future
 * marked as blocking; on a resume, return its outcome if it is done; if not
 * (a resume that did not come from the future), yield it again once, and
 * then raise RuntimeError, never cancelling or dropping the future.
 */
#ifndef BG_CORO_H
#define BG_CORO_H

#include "util.h"

typedef struct bg_coro_ops bg_coro_ops;

typedef struct {
    PyObject_HEAD
    const bg_coro_ops *ops;
    int suspended;        /* last answered PYGEN_NEXT: someone awaits it */
    int running;          /* inside a send, throw or close: re-entry raises, as
                             "generator already executing" does */
    PyObject *foreign;    /* strong: under a loop that is not asyncio's (trio), the
                             coroutine that does the waiting, which every send,
                             throw and close goes to */
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

/* Raises what a native coroutine raises when resumed after it finished.
   Returns PYGEN_ERROR. */
PySendResult bg_coro_reused(void);

/* Fills in the header of a new bg_coro. */
static inline void
bg_coro_init(PyObject *self, const bg_coro_ops *ops)
{
    ((bg_coro *)self)->ops = ops;
    ((bg_coro *)self)->suspended = 0;
    ((bg_coro *)self)->running = 0;
    ((bg_coro *)self)->foreign = NULL;
}

/* In each bg_coro type's traverse and clear. */
#define BG_CORO_VISIT(self) Py_VISIT(((bg_coro *)(self))->foreign)
#define BG_CORO_CLEAR(self) Py_CLEAR(((bg_coro *)(self))->foreign)

/* asyncio.get_running_loop() failed with `no_loop` (a RuntimeError, stolen;
   no exception set): if trio is what runs (trio imported, and
   backgrounder._trio finds its token), the rest of the await goes to
   backgrounder._trio.<name>(*args), a coroutine that waits trio's way; the
   caller has ended its own state.  Returns its first send's result, or
   PYGEN_ERROR with `no_loop` raised again (no trio) or the error met. */
PySendResult bg_coro_go_foreign(PyObject *self, const char *name, PyObject *args, PyObject *no_loop,
                                PyObject **result);

/* Slots every bg_coro type lists in its PyType_Spec. */
#define BG_CORO_SLOTS                                        \
    {Py_am_await, bg_coro_await},                            \
    {Py_am_send, bg_coro_am_send},                           \
    {Py_tp_iter, PyObject_SelfIter},                         \
    {Py_tp_iternext, bg_coro_iternext},                      \
    {Py_tp_methods, bg_coro_methods}

/* Whether this thread runs a trio run: 1, 0, or -1 with an error set. */
int bg_in_trio_run(void);

PyObject *bg_coro_await(PyObject *self);
PySendResult bg_coro_am_send(PyObject *self, PyObject *value, PyObject **result);
PyObject *bg_coro_iternext(PyObject *self);
extern PyMethodDef bg_coro_methods[];

/* Sends `value` into any awaitable's iterator: a bg_coro directly, anything
   else through PyIter_Send.  Guarded against unbounded recursion (a Tasks
   nested in itself): RecursionError, never a crash. */
PySendResult bg_delegate_send(PyObject *iter, PyObject *value, PyObject **result);
/* Throws `exc` (borrowed) into any awaitable's iterator: a bg_coro directly,
   anything else through its throw() method.  Guarded likewise. */
PySendResult bg_delegate_throw(bg_state *st, PyObject *iter, PyObject *exc, PyObject **result);
/* Closes any awaitable's iterator.  Returns 0 or -1. */
int bg_delegate_close(bg_state *st, PyObject *iter);
/* Returns a new reference to the iterator that `await obj` would drive, or
   NULL with TypeError set naming obj (RuntimeError if obj is a coroutine
   already being awaited). */
PyObject *bg_await_iter(PyObject *obj);

/* ---- waiting on a loop future ------------------------------------------- */

typedef struct {
    PyObject *fut;        /* strong while waiting, else NULL */
} bg_wait;

/* Returns a new reference to a fresh future of `loop` (create_future()), or
   NULL with an exception set. */
PyObject *bg_new_future(bg_state *st, PyObject *loop);

/* Starts waiting on `fut` (borrowed; a future of the running loop): marks it
   blocking and yields it.  Returns PYGEN_NEXT with *result a new reference,
   or PYGEN_ERROR. */
PySendResult bg_wait_yield(bg_state *st, bg_wait *w, PyObject *fut, PyObject **result);

/* The awaiting side resumed.  Future done: stops waiting and returns its
   result (PYGEN_RETURN, *result a new reference) or raises its exception
   (PYGEN_ERROR), CancelledError included.  Not done (a resume that did not
   come from the future): yields it again (PYGEN_NEXT) when it is not marked
   blocking; else stops waiting, leaving the future alone (not cancelled: the
   work goes on, and whoever waits on the future still wakes), and raises
   RuntimeError ("await wasn't used with future"), as a native coroutine
   awaiting it would.  PYGEN_ERROR always leaves `w` not waiting. */
PySendResult bg_wait_resume(bg_state *st, bg_wait *w, PyObject **result);

/* Stops waiting: a new reference to the future, which the caller then
   owns (NULL if not waiting). */
static inline PyObject *
bg_wait_take(bg_wait *w)
{
    PyObject *fut = w->fut;
    w->fut = NULL;
    return fut;
}

/* Cancels `fut` (borrowed).  A loop already closed (RuntimeError) cannot
   run its callbacks: nothing is left to cancel, and that is no error.
   Returns 0, or -1 with an exception set. */
int bg_cancel_future(bg_state *st, PyObject *fut);

/* Stops waiting and cancels the future if it is not done yet.  Returns 0,
   or -1 with an exception set. */
int bg_wait_cancel(bg_state *st, bg_wait *w);

#endif /* BG_CORO_H */
