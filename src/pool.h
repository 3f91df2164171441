/* pool.h: the native thread pool that runs sync callables.
 *
 * Chain: platform.h -> compat.h -> [pool] -> util -> report -> coro -> bridge
 *        -> task / tasks / handle -> background -> module.
 * Calls only platform.h and compat.h.
 *
 * One pool per module object (so per interpreter).  Items are plain C structs
 * recycled through a free list; the pool runs each one on a worker thread, with
 * the GIL, inside the item's contextvars context, then hands it to its owner
 * (bridge.c for an awaited Task, background.c for a @background handle) through
 * the item's ops.
 *
 * Locking: the queue and the worker counts are guarded by pool->mu, which is
 * never held while waiting for the GIL.  The free list, the statistics and the
 * items' Python references are guarded by the GIL.
 */
#ifndef BG_POOL_H
#define BG_POOL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct bg_item bg_item;
typedef struct bg_pool bg_pool;

/* What the pool asks of an item's owner.  Both are called with the GIL held. */
typedef struct {
    /* Called just before the item runs: returns 1 to run it, 0 to skip it (its
       caller gave up on it).  Must not leave an exception set. */
    int (*start)(bg_item *item);
    /* Called once, after the item ran (item->result or item->exc is set) or was
       skipped (both NULL: its caller gave up on it, or it is the parent's in a
       forked child).  Takes the item over: it must end in pool_item_free. */
    void (*finish)(bg_item *item);
    /* 1 if finish runs only engine code (no user callback) and returns
       quickly: the worker then counts as looking for work while it runs, so
       that work submitted meanwhile (finish may release the GIL) wakes or
       starts no other worker. */
    int quick_finish;
} bg_item_ops;

struct bg_item {
    bg_item *next;             /* queue, inbox, waiter or free-list link */
    const bg_item_ops *ops;
    bg_pool *pool;             /* borrowed: the pool outlives its items */
    PyObject *func;            /* strong: the callable */
    PyObject *args;            /* strong: a tuple */
    PyObject *kwargs;          /* strong: a dict, or NULL */
    PyObject *context;         /* strong: the contextvars.Context to run in */
    PyObject *target;          /* strong: the asyncio future or the handle to settle */
    PyObject *inbox;           /* strong: the bridge inbox of target's loop, or NULL */
    PyObject *result;          /* strong: the value returned, once run */
    PyObject *exc;             /* strong: the exception raised, once run */
};

/* Counters, a snapshot. */
typedef struct {
    Py_ssize_t queued, running, workers, idle, max_workers, async_running;
    uint64_t submitted, done, failed, cancelled, wakeups, completions, threads_started;
} bg_pool_stats;

/* Returns a new pool (one reference, the caller's), or NULL with MemoryError
   or OSError set. */
bg_pool *pool_new(PyInterpreterState *interp);
/* Drops a reference; the last one frees the pool.  Needs no GIL. */
void pool_decref(bg_pool *pool);

/* GIL held.  Returns a zeroed item, or NULL with MemoryError set. */
bg_item *pool_item_new(bg_pool *pool);
/* GIL held.  Drops the item's references and recycles it.  The references are
   released after the item is back on the free list, so a finalizer that runs
   then may use the pool. */
void pool_item_free(bg_item *item);

/* GIL held.  Queues the item and makes sure a worker will take it; the pool
   owns it from then on.  Returns 0, or -1 with RuntimeError set (the pool is
   shut down, or no worker thread could be started) and the item still the
   caller's. */
int pool_submit(bg_pool *pool, bg_item *item);

/* GIL held.  max_workers >= 1, idle_timeout > 0 (seconds); -1 keeps a value. */
void pool_configure(bg_pool *pool, Py_ssize_t max_workers, double idle_timeout);

/* The waits below: GIL held, released while waiting.  `deadline` is a
   bg_monotonic() time (< 0: no limit), so that a caller made of several
   waits keeps one deadline.  Each returns 1 when what it waits for is there,
   0 at the deadline, -1 with an exception set if a signal handler raised
   (Ctrl-C).  Called from one of the pool's workers, the engine waits
   (idle, drained, gone) leave out every worker that is in such a wait
   itself: a task never waits for itself, and two never for each other. */

/* Until nothing is queued or running on the pool (the pool stays open;
   work submitted meanwhile is waited for too). */
int pool_wait_idle(bg_pool *pool, double deadline);
/* As pool_wait_idle, and until no async @background call is running on any
   loop (pool_async_begin/end count them).  `self_async` is 1 when the
   caller is such a call itself (it is left out, as a worker is). */
int pool_wait_drained(bg_pool *pool, int self_async, double deadline);

/* GIL held; released while waiting.  Stops accepting work; the workers finish
   what was accepted and exit.  With wait, waits for every worker thread to be
   gone.  Returns 1 when the workers are gone (without wait: already gone),
   0 otherwise, -1 with an exception set. */
int pool_shutdown(bg_pool *pool, int wait, double deadline);

/* A lock and a wake-up for the handles of @background calls: a handle's
   state changes between pool_lock and pool_unlock_notify (which wakes the
   threads blocked in pool_wait_flag), so that a thread blocked on it cannot
   miss the change.  No Python API may be called while the lock is held. */
void pool_lock(bg_pool *pool);
void pool_unlock(bg_pool *pool);
void pool_unlock_notify(bg_pool *pool);
/* Until *flag (read under the pool's lock) is non-zero. */
int pool_wait_flag(bg_pool *pool, int *flag, double deadline);

/* GIL held.  An async @background call started (counted as submitted) or
   ended, on any loop: pool_wait_drained waits for them. */
void pool_async_begin(bg_pool *pool);
void pool_async_end(bg_pool *pool);

/* Returns 1 once pool_shutdown was called. */
int pool_is_closed(bg_pool *pool);

/* GIL held. */
void pool_get_stats(bg_pool *pool, bg_pool_stats *out);
/* GIL held.  The item the calling thread runs, if it is one of the pool's
   workers (a borrowed pointer, valid while it runs), else NULL. */
bg_item *pool_current_item(bg_pool *pool);

/* GIL held.  Returns a new list of the callables of the items running and
   queued (the first 64), or NULL with MemoryError set. */
PyObject *pool_pending_funcs(bg_pool *pool);
/* GIL held: bridge.c counts loop wake-ups and delivered completions here. */
void pool_count_wakeup(bg_pool *pool);
void pool_count_completion(bg_pool *pool);

/* After os.fork(), in the child, GIL held: hands the child's copies of the
   parent's queued and running items to their owners as skipped, and starts
   the counts from zero (fork itself already gave the child fresh locks and
   no workers, through pthread_atfork handlers).  Also done on the first
   submit after a fork that did not go through os.fork(). */
void pool_after_fork_child(bg_pool *pool);

#ifdef BG_DEBUG
/* Debug builds: counts of items allocated/freed and threads started/ended,
   process-wide (plain C integers, not Python objects). */
void pool_debug_counters(uint64_t out[4]);
#endif

#endif /* BG_POOL_H */
