/* pool_sync.c: waiting on the pool, shutting it down, its statistics, and
 * fork.  See pool.h; the struct is pool_impl.h's.
 */
#include "pool_impl.h"

#define WAIT_SLICE 0.05      /* seconds between checks for signals while waiting */

bg_tls bg_worker_key;

/* ---- fork -------------------------------------------------------------------
 *
 * Handlers registered with pthread_atfork run inside fork(), after Python's
 * own fork hooks, while the forking thread holds the GIL: no other thread
 * holds the GIL then, and none holds a pool's lock while waiting for it, so
 * taking every pool's lock there cannot deadlock, and the child inherits
 * consistent queues.  The child, where only the forking thread exists, gets
 * fresh locks and no workers; its copy of the queue (the parent's work, run
 * by the parent) is kept aside and freed, with the GIL, on the pool's next
 * use.  All of it plain C: the registry holds no Python object.
 */

static bg_mutex registry_mu = BG_MUTEX_INITIALIZER;
static bg_pool *registry;

#if BG_HAVE_FORK
static void
atfork_prepare(void)
{
    bg_mutex_lock(&registry_mu);
    for (bg_pool *p = registry; p; p = p->next_pool) {
        bg_mutex_lock(&p->mu);
    }
}

static void
atfork_parent(void)
{
    for (bg_pool *p = registry; p; p = p->next_pool) {
        bg_mutex_unlock(&p->mu);
    }
    bg_mutex_unlock(&registry_mu);
}

static void
atfork_child(void)
{
    bg_worker *me = current_worker();
    for (bg_pool *p = registry; p; p = p->next_pool) {
        int self = me != NULL && me->pool == p;   /* forked from inside a task */
        if (pool_init_sync(p) != 0) {
            abort();   /* no locks, no pool: nothing sane to go on with */
        }
        /* The parent's queued and running items: nobody runs them here.
           pool_after_fork_child settles them as cancelled, with the GIL. */
        if (p->head) {
            p->tail->next = p->orphans;
            p->orphans = p->head;
        }
        /* The items the parent's workers run (read from the copies of
           their stacks; written under mu or the GIL, both held by fork). */
        for (bg_worker *w = p->workers_list; w; w = w->next) {
            if (w != me && w->item != NULL) {
                w->item->next = p->orphans;
                p->orphans = w->item;
            }
        }
        p->workers_list = NULL;
        if (self) {
            me->next = me->prev = NULL;   /* this very thread goes on with its item */
            p->workers_list = me;
        }
        p->head = p->tail = NULL;
        p->queued = 0;
        p->running = self;
        p->nworkers = p->nthreads = self;
        p->nidle = p->nsearching = p->tokens = p->nwaiters = p->nspinning = 0;
        p->nworker_waits = p->nasync = p->nasync_waits = 0;
        p->spin_skipped = 0;
        atomic_store(&p->has_work, 0);
        p->refcnt = 1 + self;   /* the module's, and this thread's if a worker */
    }
    memset(&registry_mu, 0, sizeof(registry_mu));
    bg_mutex_init(&registry_mu);
}
#endif /* BG_HAVE_FORK */

static bg_once atfork_once = BG_ONCE_INIT;
static int atfork_err;

static void
atfork_register(void)
{
    atfork_err = bg_tls_create(&bg_worker_key);
#if BG_HAVE_FORK
    if (atfork_err == 0) {
        atfork_err = bg_atfork(atfork_prepare, atfork_parent, atfork_child);
    }
#endif
}

int
pool_sync_register(bg_pool *pool)
{
    bg_call_once(&atfork_once, atfork_register);
    if (atfork_err) {
        return atfork_err;
    }
    bg_mutex_lock(&registry_mu);
    pool->next_pool = registry;
    registry = pool;
    bg_mutex_unlock(&registry_mu);
    return 0;
}

void
pool_sync_unregister(bg_pool *pool)
{
    bg_mutex_lock(&registry_mu);
    for (bg_pool **p = &registry; *p; p = &(*p)->next_pool) {
        if (*p == pool) {
            *p = pool->next_pool;
            break;
        }
    }
    bg_mutex_unlock(&registry_mu);
}

/* ---- waiting, shutdown ------------------------------------------------------ */

/* What a thread in pool_wait waits for. */
enum { WAIT_IDLE, WAIT_DRAINED, WAIT_GONE, WAIT_FLAG };

typedef struct {
    int kind;
    int worker;               /* the waiter is one of the pool's workers */
    Py_ssize_t async;         /* 1 if the waiter is itself an async call (WAIT_DRAINED) */
    int *flag;                /* WAIT_FLAG: read under mu */
} wait_spec;

/* mu held.  Is what `w` waits for there?  A worker waiting on its own pool
   leaves out every worker that is itself in such a wait (itself included),
   so that it never waits for its own caller and two such callers never
   wait for each other; a thread that is not a worker waits for them all. */
static int
wait_met(bg_pool *pool, const wait_spec *w)
{
    Py_ssize_t busy_waiting = w->worker ? pool->nworker_waits : 0;
    switch (w->kind) {
    case WAIT_IDLE:
        return pool->head == NULL && pool->running <= busy_waiting;
    case WAIT_DRAINED:
        return pool->head == NULL && pool->running <= busy_waiting
               && pool->nasync <= pool->nasync_waits;
    case WAIT_GONE:
        return pool->nthreads <= busy_waiting;
    default:
        return *(volatile int *)w->flag;
    }
}

/* GIL held; released while waiting.  Waits until what `w` waits for is
   there or the bg_monotonic() time `deadline` passes (< 0: no limit),
   checking for signals between slices.  Returns 1, 0 on timeout, -1 with an
   exception set (a signal handler raised: Ctrl-C). */
static int
pool_wait(bg_pool *pool, wait_spec *w, double deadline)
{
    int counted = w->kind != WAIT_FLAG;   /* an engine wait, left out by the others */
    for (;;) {
        int met;
        Py_BEGIN_ALLOW_THREADS
        bg_mutex_lock(&pool->mu);
        double slice_end = bg_monotonic() + WAIT_SLICE;
        if (deadline >= 0 && deadline < slice_end) {
            slice_end = deadline;
        }
        pool->nwaiters++;
        if (counted) {
            pool->nworker_waits += w->worker;
            pool->nasync_waits += w->async;
            notify_waiters(pool);   /* another worker's wait may be met now */
        }
        while (!(met = wait_met(pool, w))) {
            if (bg_cond_wait_until(&pool->idle_cv, &pool->mu, slice_end) == ETIMEDOUT) {
                met = wait_met(pool, w);
                break;
            }
        }
        pool->nwaiters--;
        if (counted) {
            pool->nworker_waits -= w->worker;
            pool->nasync_waits -= w->async;
        }
        bg_mutex_unlock(&pool->mu);
        Py_END_ALLOW_THREADS
        if (met) {
            return 1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (deadline >= 0 && bg_monotonic() >= deadline) {
            return 0;
        }
    }
}

int
pool_wait_idle(bg_pool *pool, double deadline)
{
    wait_spec w = {WAIT_IDLE, is_worker_of(pool), 0, NULL};
    return pool_wait(pool, &w, deadline);
}

int
pool_wait_drained(bg_pool *pool, int self_async, double deadline)
{
    wait_spec w = {WAIT_DRAINED, is_worker_of(pool), self_async ? 1 : 0, NULL};
    return pool_wait(pool, &w, deadline);
}

int
pool_shutdown(bg_pool *pool, int wait, double deadline)
{
    wait_spec w = {WAIT_GONE, is_worker_of(pool), 0, NULL};
    bg_mutex_lock(&pool->mu);
    pool->closed = 1;
    bg_cond_broadcast(&pool->work_cv);
    int gone = wait_met(pool, &w);
    bg_mutex_unlock(&pool->mu);
    if (!wait || gone) {
        return gone;
    }
    return pool_wait(pool, &w, deadline);
}

int
pool_wait_flag(bg_pool *pool, int *flag, double deadline)
{
    wait_spec w = {WAIT_FLAG, 0, 0, flag};
    return pool_wait(pool, &w, deadline);
}

/* For handles: see pool.h. */
void
pool_lock(bg_pool *pool)
{
    bg_mutex_lock(&pool->mu);
}

void
pool_unlock_notify(bg_pool *pool)
{
    notify_waiters(pool);
    bg_mutex_unlock(&pool->mu);
}

void
pool_unlock(bg_pool *pool)
{
    bg_mutex_unlock(&pool->mu);
}

void
pool_async_begin(bg_pool *pool)
{
    bg_mutex_lock(&pool->mu);
    pool->nasync++;
    bg_mutex_unlock(&pool->mu);
    pool->submitted++;
}

void
pool_async_end(bg_pool *pool)
{
    bg_mutex_lock(&pool->mu);
    pool->nasync--;
    notify_waiters(pool);
    bg_mutex_unlock(&pool->mu);
}

int
pool_is_closed(bg_pool *pool)
{
    bg_mutex_lock(&pool->mu);
    int closed = pool->closed;
    bg_mutex_unlock(&pool->mu);
    return closed;
}

void
pool_get_stats(bg_pool *pool, bg_pool_stats *out)
{
    bg_mutex_lock(&pool->mu);
    out->queued = pool->queued;
    out->running = pool->running;
    out->workers = pool->nworkers;
    out->idle = pool->nidle;
    out->max_workers = pool->max_workers;
    out->async_running = pool->nasync;
    out->threads_started = pool->threads_started;
    bg_mutex_unlock(&pool->mu);
    out->submitted = pool->submitted;
    out->done = pool->done;
    out->failed = pool->failed;
    out->cancelled = pool->cancelled;
    out->wakeups = pool->wakeups;
    out->completions = pool->completions;
}

bg_item *
pool_current_item(bg_pool *pool)
{
    bg_worker *me = current_worker();
    return me != NULL && me->pool == pool ? me->item : NULL;
}

PyObject *
pool_pending_funcs(bg_pool *pool)
{
    PyObject *funcs = PyList_New(0);
    if (funcs == NULL) {
        return NULL;
    }
    /* Collected under mu, where every listed item is alive and holds its
       callable; appended after (appending may allocate). */
    Py_ssize_t n = 0, cap = 64;
    PyObject *found[64];
    bg_mutex_lock(&pool->mu);
    for (bg_worker *w = pool->workers_list; w && n < cap; w = w->next) {
        if (w->item != NULL) {
            found[n++] = Py_NewRef(w->item->func);
        }
    }
    for (bg_item *it = pool->head; it && n < cap; it = it->next) {
        found[n++] = Py_NewRef(it->func);
    }
    bg_mutex_unlock(&pool->mu);
    int r = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (r == 0 && PyList_Append(funcs, found[i]) < 0) {
            r = -1;
        }
        Py_DECREF(found[i]);
    }
    if (r < 0) {
        Py_CLEAR(funcs);
    }
    return funcs;
}

void
pool_count_wakeup(bg_pool *pool)
{
    pool->wakeups++;
}

void
pool_count_completion(bg_pool *pool)
{
    pool->completions++;
}

/* ---- fork, the Python side ---------------------------------------------------- */

void
pool_after_fork_child(bg_pool *pool)
{
    /* The locks and counts were reset inside fork() (atfork_child); what is
       left needs the GIL: drop the child's copy of the parent's queue. */
    /* The parent's queued and running items never run here: each goes to
       its owner as skipped (a @background handle then settles as
       cancelled, so nobody in the child waits for it for ever). */
    bg_item *orphans = pool->orphans;
    pool->orphans = NULL;
    while (orphans) {
        bg_item *next = orphans->next;
        orphans->next = NULL;
        Py_CLEAR(orphans->result);
        Py_CLEAR(orphans->exc);
        orphans->ops->finish(orphans);
        orphans = next;
    }
    /* A child starts from zero: the parent's counts are the parent's. */
    pool->submitted = pool->done = pool->failed = pool->cancelled = 0;
    pool->wakeups = pool->completions = 0;
    bg_mutex_lock(&pool->mu);
    pool->threads_started = 0;
    pool->serial = 0;
    bg_mutex_unlock(&pool->mu);
}
