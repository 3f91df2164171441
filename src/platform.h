/* platform.h: the thread, lock and clock calls the engine needs, in one place.
 *
 * Everything the engine asks of the OS goes through these few inline functions,
 * so a port to another thread API (Windows) is this one file.  Nothing here
 * touches the Python API.
 */
#ifndef BG_PLATFORM_H
#define BG_PLATFORM_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef pthread_mutex_t bg_mutex;
typedef pthread_cond_t bg_cond;

#define BG_MUTEX_INITIALIZER PTHREAD_MUTEX_INITIALIZER

typedef pthread_once_t bg_once;
#define BG_ONCE_INIT PTHREAD_ONCE_INIT
static inline void bg_call_once(bg_once *once, void (*func)(void)) { pthread_once(once, func); }

/* Returns 0, or an errno value. */
static inline int bg_mutex_init(bg_mutex *m) { return pthread_mutex_init(m, NULL); }
static inline void bg_mutex_destroy(bg_mutex *m) { pthread_mutex_destroy(m); }
static inline void bg_mutex_lock(bg_mutex *m) { pthread_mutex_lock(m); }
static inline void bg_mutex_unlock(bg_mutex *m) { pthread_mutex_unlock(m); }

/* A condition variable whose timed waits run on the monotonic clock.
   Returns 0, or an errno value. */
static inline int
bg_cond_init(bg_cond *c)
{
    pthread_condattr_t attr;
    int err = pthread_condattr_init(&attr);
    if (err) {
        return err;
    }
#if !defined(__APPLE__)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
#endif
    err = pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
    return err;
}
static inline void bg_cond_destroy(bg_cond *c) { pthread_cond_destroy(c); }
static inline void bg_cond_signal(bg_cond *c) { pthread_cond_signal(c); }
static inline void bg_cond_broadcast(bg_cond *c) { pthread_cond_broadcast(c); }
static inline void bg_cond_wait(bg_cond *c, bg_mutex *m) { pthread_cond_wait(c, m); }

/* Seconds on a clock that never jumps. */
static inline double
bg_monotonic(void)
{
    struct timespec ts;
#if defined(__APPLE__)
    clock_gettime(CLOCK_REALTIME, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Waits until signalled or until the bg_monotonic() time `deadline`.
   Returns 0 when signalled (or woken spuriously), ETIMEDOUT past the deadline. */
static inline int
bg_cond_wait_until(bg_cond *c, bg_mutex *m, double deadline)
{
    struct timespec ts;
    if (!(deadline < 1e9)) {
        deadline = 1e9;   /* ~31 years of uptime: keeps tv_sec representable */
    }
    ts.tv_sec = (time_t)deadline;
    ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    int err = pthread_cond_timedwait(c, m, &ts);
    return err == 0 ? 0 : ETIMEDOUT;   /* EINVAL included: never spin on it */
}

/* A hint to the CPU inside a spin loop. */
static inline void
bg_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Registers handlers that run inside fork(): prepare in the parent before
   it, parent and child after it.  Returns 0, or an errno value. */
static inline int
bg_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void))
{
    return pthread_atfork(prepare, parent, child);
}

/* A thread-local pointer (a pthread key rather than _Thread_local, whose
   dynamic TLS in a dlopen()ed module glibc frees behind TSan's back). */
typedef pthread_key_t bg_tls;
static inline int bg_tls_create(bg_tls *key) { return pthread_key_create(key, NULL); }
static inline void *bg_tls_get(bg_tls key) { return pthread_getspecific(key); }
static inline void bg_tls_set(bg_tls key, void *value) { pthread_setspecific(key, value); }

typedef void *(*bg_thread_func)(void *);

/* Starts a detached thread.  Returns 0, or an errno value. */
static inline int
bg_thread_start(bg_thread_func func, void *arg)
{
    pthread_t tid;
    pthread_attr_t attr;
    int err = pthread_attr_init(&attr);
    if (err) {
        return err;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    err = pthread_create(&tid, &attr, func, arg);
    pthread_attr_destroy(&attr);
    return err;
}

/* Names the calling thread as the OS shows it (ps, top, /proc/.../comm). */
static inline void
bg_thread_set_name(const char *name)
{
#if defined(__APPLE__)
    pthread_setname_np(name);
#elif defined(__linux__)
    pthread_setname_np(pthread_self(), name);
#else
    (void)name;
#endif
}

#endif /* BG_PLATFORM_H */
