/* background.h: @background, how its calls start, and backgrounder's own
 * loop thread.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> coro -> bridge
 *        -> task / tasks / handle -> [background] -> module.
 * Calls pool, util, coro and handle.
 */
#ifndef BG_BACKGROUND_H
#define BG_BACKGROUND_H

#include "util.h"

/* Stops backgrounder's own loop thread, if started, once what runs there is
   done; with wait, waits for the thread until `deadline` (a bg_monotonic()
   time, < 0: none).  Returns 1 when it is gone (or never started), 0 if
   not, -1 with an exception set. */
int background_stop_loop(bg_state *st, int wait, double deadline);

/* Waits until nothing runs on backgrounder's own loop thread (its own
   caller left out when called there), until `deadline`.  With `exclude`,
   one coroutine there is left out: the one that awaits the calling pool
   worker's call.  Returns 1, 0 on timeout, -1 with an exception set. */
int background_wait_idle(bg_state *st, double deadline, int exclude);

/* 1 if the calling thread is a pool worker whose call a coroutine on
   backgrounder's own loop awaits (so waiting for that loop to be idle would
   wait for the caller itself), else 0. */
int background_caller_on_engine_loop(bg_state *st);

/* The async calls whose event loop was closed before they finished (a
   script's own loop, closed without cancelling its tasks) can never end:
   each is reported, as lost, and its handle settled as cancelled, so that
   drain() and the exit do not wait for it.  Never raises. */
void background_sweep_closed_loops(bg_state *st);

/* In a forked child: forgets the parent's loop thread; the calls that ran
   there settle as cancelled. */
void background_after_fork_child(bg_state *st);

/* Module exec: makes the wrapper type, and the handle types (handle.c); adds
   background() and _loop_runner().  Returns 0 or -1. */
int background_init_types(PyObject *module, bg_state *st);

#endif /* BG_BACKGROUND_H */
