/* pool_impl.h: what the pool's two files share (not a header for the rest
 * of the engine, which sees pool.h): the pool's struct, what a worker
 * thread is, and the few inline helpers both need.
 *
 * pool_sync.c (waits, shutdown, statistics, fork) sits below pool.c (the
 * queue, the items, the workers): pool.c calls pool_sync.c, never the other
 * way.
 */
#ifndef BG_POOL_IMPL_H
#define BG_POOL_IMPL_H

#include "pool.h"
#include "compat.h"
#include "platform.h"
#include <stdatomic.h>

struct bg_pool {
    bg_mutex mu;
    bg_cond work_cv;          /* idle workers wait here */
    bg_cond idle_cv;          /* pool_wait_idle and pool_shutdown wait here */

    /* Written under mu; read without it by a spinning worker. */
    atomic_int has_work;

    /* Guarded by mu. */
    bg_item *head, *tail;
    Py_ssize_t queued;
    Py_ssize_t running;       /* items taken from the queue, not yet finished */
    Py_ssize_t nworkers;      /* threads that take items */
    Py_ssize_t nthreads;      /* threads alive, those on their way out included */
    Py_ssize_t nidle;         /* waiting on work_cv */
    Py_ssize_t nsearching;    /* awake and not yet running an item with the GIL */
    Py_ssize_t tokens;        /* wake-ups sent to idle workers, not yet taken */
    Py_ssize_t nwaiters;      /* threads waiting on idle_cv */
    Py_ssize_t nworker_waits; /* workers among them, in an engine wait (idle, drained, gone) */
    Py_ssize_t nasync;        /* async @background calls not finished, on any loop */
    Py_ssize_t nasync_waits;  /* async calls among them waiting in pool_wait_drained */
    struct bg_worker *workers_list; /* the worker threads, with the item each runs */
    Py_ssize_t nspinning;     /* workers spinning for work (at most one) */
    double spin_limit;        /* how long the next spin lasts, adapted to how spins fare */
    int spin_skipped;         /* sleeps without a spin since the last one */
    Py_ssize_t max_workers;
    double idle_timeout;
    int closed;
    Py_ssize_t refcnt;

    PyInterpreterState *interp;
    bg_pool *next_pool;       /* the registry of pools, for the fork handlers */
    bg_item *orphans;         /* a forked child's copy of the parent's queue, to free */

    /* Guarded by the GIL. */
    bg_item *free_items;
    Py_ssize_t nfree;
    uint64_t submitted, done, failed, cancelled, wakeups, completions;

    uint64_t threads_started;   /* guarded by mu */
    uint64_t serial;            /* the last worker's number (its thread's name), under mu */
    size_t stack_size;          /* guarded by mu: threading.stack_size() at the last submit */
};

/* What a worker thread is: its pool, and the item it runs (plain C, no
   Python object).  Lets a task that waits on its own pool (calls shutdown,
   say) leave itself out of the wait, and a child forked from inside a task
   keep that task.  The key is created with the fork handlers, once per
   process; each worker keeps its bg_worker on its own stack. */
typedef struct bg_worker {
    bg_pool *pool;
    bg_item *item;            /* the item it runs: set under mu, cleared with the GIL */
    struct bg_worker *next, *prev;   /* pool->workers_list, under mu */
} bg_worker;

/* mu held. */
static inline void
worker_link(bg_pool *pool, bg_worker *w)
{
    w->prev = NULL;
    w->next = pool->workers_list;
    if (pool->workers_list) {
        pool->workers_list->prev = w;
    }
    pool->workers_list = w;
}

/* mu held. */
static inline void
worker_unlink(bg_pool *pool, bg_worker *w)
{
    if (w->prev) {
        w->prev->next = w->next;
    }
    else {
        pool->workers_list = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    w->next = w->prev = NULL;
}

extern bg_tls bg_worker_key;   /* pool_sync.c; created once per process */

static inline bg_worker *
current_worker(void)
{
    return (bg_worker *)bg_tls_get(bg_worker_key);
}

/* 1 if the calling thread is one of `pool`'s workers. */
static inline int
is_worker_of(bg_pool *pool)
{
    bg_worker *w = current_worker();
    return w != NULL && w->pool == pool;
}

/* Returns 0, or an errno value. */
static inline int
pool_init_sync(bg_pool *pool)
{
    int err = bg_mutex_init(&pool->mu);
    if (err) {
        return err;
    }
    err = bg_cond_init(&pool->work_cv);
    if (err) {
        bg_mutex_destroy(&pool->mu);
        return err;
    }
    err = bg_cond_init(&pool->idle_cv);
    if (err) {
        bg_cond_destroy(&pool->work_cv);
        bg_mutex_destroy(&pool->mu);
        return err;
    }
    return 0;
}

/* mu held.  Wakes the threads in pool_wait when one of its conditions may
   have become true. */
static inline void
notify_waiters(bg_pool *pool)
{
    if (pool->nwaiters) {
        bg_cond_broadcast(&pool->idle_cv);
    }
}

/* Registers the pool for the fork handlers (installed on first use) and
   creates the worker key.  Returns 0, or an errno value. */
int pool_sync_register(bg_pool *pool);
/* The last reference is gone: the fork handlers forget the pool. */
void pool_sync_unregister(bg_pool *pool);

#endif /* BG_POOL_IMPL_H */
