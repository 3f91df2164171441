/* bridge.h: completions from pool threads back to an asyncio loop.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> coro -> [bridge]
 *        -> task / tasks / handle -> background -> module.
 * Calls pool, util and report.
 *
 * Each loop with completions pending has an Inbox (kept in the module state's
 * `inboxes` dict while it has some).  A pool thread that finishes an item
 * appends it to the inbox; only the append that finds no drain scheduled calls
 * loop.call_soon_threadsafe(drain), and that one drain, on the loop thread,
 * settles every future in the inbox.  All of it runs with the GIL held, which
 * guards the inbox: no lock of its own.
 */
#ifndef BG_BRIDGE_H
#define BG_BRIDGE_H

#include "util.h"

/* GIL held, on the loop's thread.  Returns a new reference to the inbox of
   `loop`, made if needed, with one more pending completion counted; NULL
   with an exception set. */
PyObject *bridge_inbox_for(bg_state *st, PyObject *loop);

/* GIL held.  The item will not be delivered after all (it was never
   submitted): uncounts its pending completion and frees it. */
void bridge_forget(bg_item *item);

/* GIL held, any thread.  Delivers `item` (target: an asyncio future of the
   inbox's loop; result or exc set, or neither for a cancelled call) and takes
   it over. */
void bridge_post(bg_item *item);

/* The loop whose task awaits `item` (borrowed), or NULL for an item nobody
   awaits through a loop (a @background call's). */
PyObject *bridge_item_loop(bg_item *item);

/* Pool ops for an item whose target is an asyncio future: it is skipped when
   the future is already done (cancelled), and posted to its inbox when run. */
extern const bg_item_ops bridge_future_ops;

/* Module exec: makes the Inbox and Drain types.  Returns 0 or -1. */
int bridge_init_types(PyObject *module, bg_state *st);

#endif /* BG_BRIDGE_H */
