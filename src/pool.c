/* pool.c: the native thread pool.
 *
 * Workers are detached OS threads, each with a PyThreadState of its own made
 * once.  A worker waits for work without the GIL; when it has an item it takes
 * the GIL and runs items back to back for as long as the queue has some, so a
 * burst of short calls costs one GIL hand-off, not one per call.  Every
 * GIL_BATCH items it offers the GIL to whoever waits for it (the loop thread).
 *
 * How many workers: a worker counts as "searching" from the moment it is
 * woken until it runs an item with the GIL.  Whenever work is queued and no
 * worker is searching, one idle worker is woken, or a new one is started (up
 * to max_workers).  So a burst of cheap calls is served by one or two workers,
 * while calls that block (and release the GIL) quickly bring up as many
 * workers as there are blocked calls.  A worker idle for idle_timeout seconds
 * exits.
 */
#include "pool.h"
#include "compat.h"
#include "platform.h"
#include <stdatomic.h>

#define FREE_LIST_MAX 4096   /* items kept for reuse */
#define GIL_BATCH 64         /* items run back to back before offering the GIL */
#define WAIT_SLICE 0.05      /* seconds between checks for signals while waiting */
#define SPIN_MAX 100e-6      /* the longest a worker looks for work before sleeping */
#define SPIN_MIN 5e-6        /* below this, no spin at all */
#define SPIN_PROBE 32        /* when not spinning, try again every this many sleeps */

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
    bg_item *running_items;   /* items taken by workers, not yet finished (for fork) */
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
};

#ifdef BG_DEBUG
static atomic_ullong dbg_items_allocated, dbg_items_freed, dbg_threads_started, dbg_threads_ended;

void
pool_debug_counters(uint64_t out[4])
{
    out[0] = atomic_load(&dbg_items_allocated);
    out[1] = atomic_load(&dbg_items_freed);
    out[2] = atomic_load(&dbg_threads_started);
    out[3] = atomic_load(&dbg_threads_ended);
}
#define DBG_COUNT(c) atomic_fetch_add(&(c), 1)
/* mu held: the counts must add up. */
#define POOL_CHECK(p)                                                         \
    do {                                                                      \
        assert((p)->queued >= 0 && (p)->running >= 0);                        \
        assert((p)->nidle >= 0 && (p)->nsearching >= 0);                      \
        assert((p)->tokens >= 0 && (p)->tokens <= (p)->nidle);               \
        assert((p)->nworkers <= (p)->nthreads);                               \
        assert((p)->nsearching <= (p)->nworkers && (p)->nidle <= (p)->nworkers); \
        assert((p)->running <= (p)->nworkers && (p)->nspinning <= 1);        \
        assert(((p)->head == NULL) == ((p)->queued == 0));                    \
    } while (0)
#else
#define DBG_COUNT(c) ((void)0)
#define POOL_CHECK(p) ((void)0)
#endif

/* ---- the queue: plain C, mu held ---------------------------------------- */

static void
queue_push(bg_pool *pool, bg_item *item)
{
    item->next = NULL;
    if (pool->tail) {
        pool->tail->next = item;
    }
    else {
        pool->head = item;
    }
    pool->tail = item;
    pool->queued++;
    atomic_store_explicit(&pool->has_work, 1, memory_order_release);
}

/* Returns the oldest item, or NULL when the queue is empty. */
static bg_item *
queue_pop(bg_pool *pool)
{
    bg_item *item = pool->head;
    if (item) {
        pool->head = item->next;
        if (pool->head == NULL) {
            pool->tail = NULL;
        }
        item->next = NULL;
        pool->queued--;
        if (pool->head == NULL) {
            atomic_store_explicit(&pool->has_work, 0, memory_order_relaxed);
        }
    }
    return item;
}

/* Takes `item` out of the queue.  Returns 1 if it was there. */
static int
queue_remove(bg_pool *pool, bg_item *item)
{
    bg_item *prev = NULL;
    for (bg_item *it = pool->head; it; prev = it, it = it->next) {
        if (it == item) {
            if (prev) {
                prev->next = it->next;
            }
            else {
                pool->head = it->next;
            }
            if (pool->tail == it) {
                pool->tail = prev;
            }
            it->next = NULL;
            pool->queued--;
            if (pool->head == NULL) {
                atomic_store_explicit(&pool->has_work, 0, memory_order_relaxed);
            }
            return 1;
        }
    }
    return 0;
}

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

/* What a worker thread is: its pool, and the item it runs (plain C, no
   Python object).  Lets a task that waits on its own pool (calls shutdown,
   say) leave itself out of the wait, and a child forked from inside a task
   keep that task.  The key is created with the fork handlers, once per
   process; each worker keeps its bg_worker on its own stack. */
typedef struct {
    bg_pool *pool;
    bg_item *item;
} bg_worker;

static bg_tls worker_key;

static inline bg_worker *
current_worker(void)
{
    return (bg_worker *)bg_tls_get(worker_key);
}

/* 1 if the calling thread is one of `pool`'s workers. */
static inline int
is_worker_of(bg_pool *pool)
{
    bg_worker *w = current_worker();
    return w != NULL && w->pool == pool;
}

static int pool_init_sync(bg_pool *pool);

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
        bg_item *running = p->running_items;
        p->running_items = NULL;
        while (running) {
            bg_item *next = running->run_next;
            running->run_next = running->run_prev = NULL;
            if (self && running == me->item) {
                p->running_items = running;   /* this very thread goes on with it */
            }
            else {
                running->next = p->orphans;
                p->orphans = running;
            }
            running = next;
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

static bg_once atfork_once = BG_ONCE_INIT;
static int atfork_err;

static void
atfork_register(void)
{
    atfork_err = bg_tls_create(&worker_key);
    if (atfork_err == 0) {
        atfork_err = bg_atfork(atfork_prepare, atfork_parent, atfork_child);
    }
}

/* ---- lifetime -------------------------------------------------------------- */

/* Returns 0, or an errno value. */
static int
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

bg_pool *
pool_new(PyInterpreterState *interp)
{
    bg_pool *pool = PyMem_RawCalloc(1, sizeof(bg_pool));
    if (pool == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    int err = pool_init_sync(pool);
    if (err) {
        PyMem_RawFree(pool);
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    pool->max_workers = 40;
    pool->idle_timeout = 30.0;
    pool->spin_limit = SPIN_MAX;
    pool->refcnt = 1;
    pool->interp = interp;
    bg_call_once(&atfork_once, atfork_register);
    if (atfork_err) {
        pool_decref(pool);
        errno = atfork_err;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    bg_mutex_lock(&registry_mu);
    pool->next_pool = registry;
    registry = pool;
    bg_mutex_unlock(&registry_mu);
    return pool;
}

void
pool_decref(bg_pool *pool)
{
    bg_mutex_lock(&pool->mu);
    int last = --pool->refcnt == 0;
    bg_mutex_unlock(&pool->mu);
    if (!last) {
        return;
    }
    assert(pool->head == NULL && pool->nthreads == 0);
    bg_mutex_lock(&registry_mu);
    for (bg_pool **p = &registry; *p; p = &(*p)->next_pool) {
        if (*p == pool) {
            *p = pool->next_pool;
            break;
        }
    }
    bg_mutex_unlock(&registry_mu);
    bg_item *item = pool->free_items;
    while (item) {
        bg_item *next = item->next;
        PyMem_RawFree(item);
        DBG_COUNT(dbg_items_freed);
        item = next;
    }
    bg_cond_destroy(&pool->idle_cv);
    bg_cond_destroy(&pool->work_cv);
    bg_mutex_destroy(&pool->mu);
    PyMem_RawFree(pool);
}

bg_item *
pool_item_new(bg_pool *pool)
{
    bg_item *item = pool->free_items;
    if (item) {
        pool->free_items = item->next;
        pool->nfree--;
    }
    else {
        item = PyMem_RawMalloc(sizeof(bg_item));
        if (item == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        DBG_COUNT(dbg_items_allocated);
    }
    memset(item, 0, sizeof(bg_item));
    item->pool = pool;
    return item;
}

void
pool_item_free(bg_item *item)
{
    bg_pool *pool = item->pool;
    PyObject *refs[8] = {item->func, item->args, item->kwargs, item->context,
                         item->target, item->inbox, item->result, item->exc};
    memset(item, 0, sizeof(bg_item));
    if (pool->nfree < FREE_LIST_MAX) {
        item->next = pool->free_items;
        pool->free_items = item;
        pool->nfree++;
    }
    else {
        PyMem_RawFree(item);
        DBG_COUNT(dbg_items_freed);
    }
    for (size_t i = 0; i < sizeof(refs) / sizeof(refs[0]); i++) {
        Py_XDECREF(refs[i]);
    }
}

/* ---- waking and starting workers ------------------------------------------ */

static void *worker_main(void *arg);

/* mu held.  If work is queued and no worker is on its way to it, wakes an idle
   worker, or counts in a new one.  Returns 1 if the caller must then start
   that thread with start_worker (after unlocking mu). */
static int
wake_locked(bg_pool *pool)
{
    POOL_CHECK(pool);
    if (pool->head == NULL || pool->nsearching > 0) {
        return 0;
    }
    if (pool->nidle > pool->tokens) {
        pool->tokens++;
        pool->nsearching++;
        bg_cond_signal(&pool->work_cv);
        return 0;
    }
    if (pool->nworkers < pool->max_workers) {
        pool->nworkers++;
        pool->nthreads++;
        pool->nsearching++;
        pool->refcnt++;   /* the new thread's */
        pool->threads_started++;
        return 1;
    }
    return 0;
}

/* mu not held (the GIL need not be).  Starts the thread that wake_locked
   counted in.  Returns 0, or an errno value (the count is then taken back). */
static int
start_worker(bg_pool *pool)
{
    int err = bg_thread_start(worker_main, pool);
    if (err) {
        bg_mutex_lock(&pool->mu);
        pool->nworkers--;
        pool->nthreads--;
        pool->nsearching--;
        pool->threads_started--;
        pool->refcnt--;   /* never the last: the caller holds one */
        if (pool->nwaiters) {
            bg_cond_broadcast(&pool->idle_cv);
        }
        bg_mutex_unlock(&pool->mu);
        return err;
    }
    DBG_COUNT(dbg_threads_started);
    return 0;
}

int
pool_submit(bg_pool *pool, bg_item *item)
{
    if (pool->orphans) {
        pool_after_fork_child(pool);   /* forked without Python's fork hooks */
    }
    bg_mutex_lock(&pool->mu);
    if (pool->closed) {
        bg_mutex_unlock(&pool->mu);
        PyErr_SetString(PyExc_RuntimeError,
                        "backgrounder is shut down: it accepts no new work");
        return -1;
    }
    queue_push(pool, item);
    int must_start = wake_locked(pool);
    bg_mutex_unlock(&pool->mu);
    pool->submitted++;
    if (must_start) {
        int err = start_worker(pool);
        if (err) {
            /* With no worker at all, nobody would ever take the item. */
            bg_mutex_lock(&pool->mu);
            int orphan = pool->nworkers == 0 && queue_remove(pool, item);
            bg_mutex_unlock(&pool->mu);
            if (orphan) {
                pool->submitted--;
                PyErr_Format(PyExc_RuntimeError,
                             "backgrounder could not start a worker thread: %s",
                             strerror(err));
                return -1;
            }
        }
    }
    return 0;
}

/* ---- the worker ------------------------------------------------------------ */

/* mu held.  The item a worker takes from the queue is counted as running
   and kept on the running list until it is finished. */
static void
running_add(bg_pool *pool, bg_worker *me, bg_item *item)
{
    pool->running++;
    item->run_prev = NULL;
    item->run_next = pool->running_items;
    if (pool->running_items) {
        pool->running_items->run_prev = item;
    }
    pool->running_items = item;
    me->item = item;
}

/* mu held. */
static void
running_remove(bg_pool *pool, bg_worker *me, bg_item *item)
{
    pool->running--;
    if (item->run_prev) {
        item->run_prev->run_next = item->run_next;
    }
    else if (pool->running_items == item) {
        pool->running_items = item->run_next;
    }
    if (item->run_next) {
        item->run_next->run_prev = item->run_prev;
    }
    item->run_next = item->run_prev = NULL;
    me->item = NULL;
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

/* GIL held.  Runs one item (counted as running) in its context and hands it
   to its owner; by then it is no longer counted as running.  Returns 1 if
   the worker was counted as searching before the hand-over (quick_finish),
   0 if not. */
static int
run_item(bg_pool *pool, bg_worker *me, bg_item *item)
{
    int run = item->ops->start(item);
    if (run) {
        if (PyContext_Enter(item->context) < 0) {
            item->exc = bg_fetch_exception();
        }
        else {
            item->result = PyObject_Call(item->func, item->args, item->kwargs);
            if (item->result == NULL) {
                item->exc = bg_fetch_exception();
            }
            if (PyContext_Exit(item->context) < 0) {
                /* Only if the context was not the one entered: cannot happen. */
                PyErr_WriteUnraisable(item->context);
            }
        }
    }
    int early = run && item->ops->quick_finish;
    bg_mutex_lock(&pool->mu);
    running_remove(pool, me, item);
    if (early) {
        pool->nsearching++;
    }
    bg_mutex_unlock(&pool->mu);
    if (!run) {
        pool->cancelled++;
    }
    else {
        pool->done++;
        if (item->exc) {
            pool->failed++;
        }
    }
    item->ops->finish(item);
    return early;
}

/* GIL held.  Runs `item` (already counted as running), then every item the
   queue has, holding the GIL, for as long as the pool is not over its
   size.  Returns with the worker counted as searching again. */
static void
worker_run(bg_pool *pool, bg_worker *me, bg_item *item)
{
    bg_mutex_lock(&pool->mu);
    pool->nsearching--;
    int must_start = wake_locked(pool);
    bg_mutex_unlock(&pool->mu);
    if (must_start) {
        (void)start_worker(pool);   /* on failure this worker goes on alone */
    }
    for (int batch = 1;; batch++) {
        bg_item *done = item;
        /* run_item may free the item (finish): it is off the running list
           first, under mu, so that a fork meanwhile does not see it. */
        int searching = run_item(pool, me, done);
        bg_mutex_lock(&pool->mu);
        /* configure() made the pool smaller: a busy worker takes no more
           work either, so no more than max_workers calls run. */
        item = pool->nworkers > pool->max_workers ? NULL : queue_pop(pool);
        must_start = 0;
        if (item) {
            running_add(pool, me, item);
            if (searching) {
                pool->nsearching--;
            }
            must_start = wake_locked(pool);
        }
        else {
            /* Back to searching from here, before the GIL is released: a
               submit that comes while this worker gives up the GIL finds it
               on its way and wakes or starts no other. */
            if (!searching) {
                pool->nsearching++;
            }
        }
        notify_waiters(pool);
        bg_mutex_unlock(&pool->mu);
        if (must_start) {
            (void)start_worker(pool);
        }
        if (item == NULL) {
            return;
        }
        if (batch % GIL_BATCH == 0) {
            Py_BEGIN_ALLOW_THREADS
            Py_END_ALLOW_THREADS
        }
    }
}

/* mu held (released while spinning).  Before a worker sleeps, one at a time
   watches the queue for a moment: work that comes in then (the next call of
   a caller awaiting one call after another) is taken without a wake-up.
   Still counted as searching, so a submitter signals nobody meanwhile.
   The spin adapts: a spin that finds work lets the next one last twice as
   long (up to SPIN_MAX), one that does not halves it, down to no spin at
   all (with a short probe every SPIN_PROBE sleeps), so that work coming
   further apart than a spin costs no CPU.  Returns 1 if work came. */
static int
worker_spin(bg_pool *pool)
{
    if (pool->nspinning > 0 || pool->closed) {
        return 0;
    }
    double limit = pool->spin_limit;
    if (limit < SPIN_MIN) {
        if (++pool->spin_skipped < SPIN_PROBE) {
            return 0;
        }
        limit = SPIN_MIN * 2;
    }
    pool->spin_skipped = 0;
    pool->nspinning++;
    bg_mutex_unlock(&pool->mu);
    double end = bg_monotonic() + limit;
    int found = 0;
    do {
        for (int i = 0; i < 32 && !found; i++) {
            bg_cpu_relax();
            found = atomic_load_explicit(&pool->has_work, memory_order_acquire);
        }
    } while (!found && bg_monotonic() < end);
    bg_mutex_lock(&pool->mu);
    pool->nspinning--;
    found = pool->head != NULL;
    pool->spin_limit = found ? (limit * 2 > SPIN_MAX ? SPIN_MAX : limit * 2) : limit / 2;
    return found;
}

/* mu held.  The worker found no work: waits for a wake-up, for the pool to
   close, or for the idle timeout.  Returns 1 to look for work again, 0 to exit. */
static int
worker_sleep(bg_pool *pool)
{
    if (worker_spin(pool)) {
        return 1;
    }
    double since = bg_monotonic();
    int timed_out = 0;
    pool->nsearching--;
    pool->nidle++;
    while (pool->tokens == 0 && !pool->closed && !timed_out
           && pool->nworkers <= pool->max_workers) {
        /* idle_timeout is read anew each time: configure() may lower it */
        double deadline = since + pool->idle_timeout;
        timed_out = bg_cond_wait_until(&pool->work_cv, &pool->mu, deadline) == ETIMEDOUT
                    || bg_monotonic() >= deadline;
    }
    pool->nidle--;
    if (pool->tokens > 0) {
        pool->tokens--;   /* whoever sent it counted this worker as searching */
        return 1;
    }
    pool->nsearching++;
    return pool->closed || pool->head != NULL || pool->nworkers > pool->max_workers;
}

static void *
worker_main(void *arg)
{
    bg_pool *pool = arg;
    bg_worker me = {pool, NULL};
    bg_thread_set_name("backgrounder");
    bg_tls_set(worker_key, &me);
    PyThreadState *tstate = PyThreadState_New(pool->interp);

    bg_mutex_lock(&pool->mu);
    while (tstate != NULL) {
        if (pool->nworkers > pool->max_workers) {
            break;   /* configure() made the pool smaller */
        }
        bg_item *item = queue_pop(pool);
        if (item == NULL) {
            /* Closed and empty: done.  Idle too long with nothing queued: retire. */
            if (pool->closed || !worker_sleep(pool)) {
                break;
            }
            continue;
        }
        running_add(pool, &me, item);
        bg_mutex_unlock(&pool->mu);

        PyEval_RestoreThread(tstate);
        worker_run(pool, &me, item);   /* returns counted as searching again */
        PyEval_SaveThread();

        bg_mutex_lock(&pool->mu);
    }
    pool->nworkers--;
    pool->nsearching--;
    /* Leaving while counted as searching: a submitter may have left the
       wake-up to this worker.  Pass it on. */
    int must_start = pool->closed ? 0 : wake_locked(pool);
    bg_mutex_unlock(&pool->mu);
    if (must_start) {
        (void)start_worker(pool);
    }

    if (tstate != NULL) {
        PyEval_RestoreThread(tstate);
        PyThreadState_Clear(tstate);
        PyThreadState_DeleteCurrent();
    }
    bg_tls_set(worker_key, NULL);
    DBG_COUNT(dbg_threads_ended);

    bg_mutex_lock(&pool->mu);
    pool->nthreads--;
    notify_waiters(pool);
    bg_mutex_unlock(&pool->mu);
    pool_decref(pool);
    return NULL;
}

/* ---- configuration, waiting, shutdown -------------------------------------- */

void
pool_configure(bg_pool *pool, Py_ssize_t max_workers, double idle_timeout)
{
    bg_mutex_lock(&pool->mu);
    if (max_workers > 0) {
        pool->max_workers = max_workers;
        bg_cond_broadcast(&pool->work_cv);   /* workers above it retire */
    }
    if (idle_timeout > 0) {
        pool->idle_timeout = idle_timeout;
        bg_cond_broadcast(&pool->work_cv);   /* idle workers re-read it */
    }
    int must_start = wake_locked(pool);      /* a larger pool may start one more */
    bg_mutex_unlock(&pool->mu);
    if (must_start) {
        (void)start_worker(pool);
    }
}

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
    bg_mutex_unlock(&pool->mu);
}
