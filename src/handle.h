/* handle.h: BackgroundHandle, what a @background call returns, and its await.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> coro -> bridge
 *        -> task / tasks / [handle] -> background -> module.
 * Calls pool, util, report, coro and bridge.
 *
 * The handle has concurrent.futures.Future's methods.  Its state changes
 * under the pool's lock (pool_lock/pool_unlock_notify), so a thread blocked
 * in result() cannot miss it; done callbacks and awaiting tasks are kept in
 * plain C lists, made when they are added, so that settling allocates
 * nothing: an awaiting task is woken whatever memory is left.  A failure
 * nobody retrieved is reported when the handle dies, or at exit.
 */
#ifndef BG_HANDLE_H
#define BG_HANDLE_H

#include "coro.h"

enum { H_PENDING, H_RUNNING, H_CANCELLED, H_FINISHED };

/* Returns a new pending handle for a call of `func`, or NULL with an
   exception set. */
HandleObject *handle_new(bg_state *st, PyObject *func);

/* Pool ops of a sync call's item, whose target is its handle: the item is
   skipped if the handle was cancelled; the handle settles with the item's
   outcome, or as cancelled if the item never ran. */
extern const bg_item_ops handle_item_ops;

/* GIL held.  Moves the handle to its final state (H_FINISHED with result or
   exc, both stolen, or H_CANCELLED with neither) if it is not there yet,
   then calls its done callbacks and wakes its awaiting tasks.  Returns 0,
   or -1 with the KeyboardInterrupt or SystemExit a callback raised (every
   callback ran, every task was woken). */
int handle_settle(bg_state *st, HandleObject *h, int state, PyObject *result, PyObject *exc);

/* GIL held.  The handle's async call runs on `loop`: the handle is running
   (it cannot be cancelled any more), and remembers the loop (result() on
   that loop's thread would block it). */
void handle_set_running(HandleObject *h, PyObject *loop);

/* The function `h` runs: a borrowed reference. */
PyObject *handle_func(HandleObject *h);
/* The loop its async call runs on (borrowed), or NULL. */
PyObject *handle_loop(HandleObject *h);

/* GIL held.  Settles `h` as cancelled if it is not done yet.  Returns as
   handle_settle. */
int handle_cancel_now(bg_state *st, HandleObject *h);

/* Module exec: makes the handle types.  Returns 0 or -1. */
int handle_init_types(PyObject *module, bg_state *st);

#endif /* BG_HANDLE_H */
