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
#include "pool_impl.h"

#define FREE_LIST_MAX 4096   /* items kept for reuse */
#define GIL_BATCH 64         /* items run back to back before offering the GIL */
#define SPIN_MAX 100e-6      /* the longest a worker looks for work before sleeping */
#define SPIN_MIN 5e-6        /* below this, no spin at all */
#define SPIN_PROBE 32        /* when not spinning, try again every this many sleeps */

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

/* ---- lifetime -------------------------------------------------------------- */

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
    err = pool_sync_register(pool);
    if (err) {
        pool_decref(pool);
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
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
    pool_sync_unregister(pool);
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
    bg_mutex_lock(&pool->mu);
    size_t stack_size = pool->stack_size;
    bg_mutex_unlock(&pool->mu);
    int err = bg_thread_start(worker_main, pool, stack_size);
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
    size_t stack_size = PyThread_get_stacksize();   /* threading.stack_size() */
    bg_mutex_lock(&pool->mu);
    pool->stack_size = stack_size;
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

/* mu held.  The item a worker takes from the queue is counted as running,
   and is the worker's item (what a fork child settles as cancelled) until
   its owner takes it over. */
static inline void
running_add(bg_pool *pool, bg_worker *me, bg_item *item)
{
    pool->running++;
    me->item = item;
}

/* GIL held.  Runs one item (counted as running) in its context and hands it
   to its owner; the caller then counts it out (after the owner settled it,
   so that a wait for idle sees the settled outcome).  Returns 1 if
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
    if (early) {
        bg_mutex_lock(&pool->mu);
        pool->nsearching++;
        bg_mutex_unlock(&pool->mu);
    }
    /* No longer the worker's before its owner may free it.  Written with
       the GIL held, which a fork's handlers run under too: no lock. */
    me->item = NULL;
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
        int searching = run_item(pool, me, item);
        bg_mutex_lock(&pool->mu);
        pool->running--;
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

/* GIL held.  Gives this thread its Python name, backgrounder-worker-N, what
   threading.current_thread().name and logging's %(threadName)s show (else
   "Dummy-N"): through the public API, so threading keeps the object it makes
   for a thread it did not start, as it does for any such thread that calls
   current_thread() or logs (CPython 3.13+ drops it when the thread ends).
   A failure (an interpreter shutting down) leaves the default name. */
static void
name_python_thread(uint64_t number)
{
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *getter = threading ? bg_getattr(threading, "current_thread") : NULL;
    PyObject *thread = getter ? PyObject_CallNoArgs(getter) : NULL;
    PyObject *name = thread ? PyUnicode_FromFormat("backgrounder-worker-%llu",
                                                   (unsigned long long)number) : NULL;
    if (name == NULL || PyObject_SetAttrString(thread, "name", name) < 0) {
        PyErr_Clear();   /* cosmetic: the worker runs its calls all the same */
    }
    Py_XDECREF(name);
    Py_XDECREF(thread);
    Py_XDECREF(getter);
    Py_XDECREF(threading);
}

static void *
worker_main(void *arg)
{
    bg_pool *pool = arg;
    bg_worker me = {pool, NULL, NULL, NULL};
    bg_thread_set_name("backgrounder");
    bg_tls_set(bg_worker_key, &me);
    PyThreadState *tstate = PyThreadState_New(pool->interp);
    int named = 0;

    bg_mutex_lock(&pool->mu);
    uint64_t number = ++pool->serial;
    worker_link(pool, &me);
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
        if (!named) {
            named = 1;
            name_python_thread(number);
            bg_thread_set_name("backgrounder");   /* 3.14+ gave the OS the Python name, cut short */
        }
        worker_run(pool, &me, item);   /* returns counted as searching again */
        PyEval_SaveThread();

        bg_mutex_lock(&pool->mu);
    }
    worker_unlink(pool, &me);
    pool->nworkers--;
    pool->nsearching--;
    /* Leaving while counted as searching: a submitter may have left the
       wake-up to this worker.  Pass it on, unless this thread could not get
       a thread state (no memory): its successor would fare no better. */
    int must_start = (pool->closed || tstate == NULL) ? 0 : wake_locked(pool);
    bg_mutex_unlock(&pool->mu);
    if (must_start) {
        (void)start_worker(pool);
    }

    if (tstate != NULL) {
        PyEval_RestoreThread(tstate);
        PyThreadState_Clear(tstate);
        PyThreadState_DeleteCurrent();
    }
    bg_tls_set(bg_worker_key, NULL);
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
    size_t stack_size = PyThread_get_stacksize();   /* threading.stack_size() */
    bg_mutex_lock(&pool->mu);
    pool->stack_size = stack_size;
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

