/* platform.h: the thread, lock and clock calls the engine needs, in one place.
 *
 * Chain: [platform.h] -> compat.h -> pool -> util -> report -> coro -> bridge
 *        -> task / tasks / handle -> background -> module.
 * The bottom of the chain: calls no other file of the engine, and nothing here
 * touches the Python API.  Everything the engine asks of the OS goes through
 * these few inline functions, in two branches: POSIX threads (Linux, macOS,
 * the BSDs) and Windows (SRW locks, condition variables, _beginthreadex).
 * Both branches have the same names and the same contracts:
 *
 *   bg_mutex, bg_cond, bg_once, bg_tls     BG_MUTEX_INITIALIZER, BG_ONCE_INIT
 *   bg_monotonic()                         seconds on a clock that never jumps
 *   bg_cond_wait_until(c, m, deadline)     a timed wait on that same clock
 *   bg_thread_start(func, arg, stack)      a detached thread
 *   bg_thread_set_name(name)               the name the OS tools show
 *   BG_HAVE_FORK                           1 where fork() exists; then
 *   bg_atfork(prepare, parent, child)      pthread_atfork
 */
#ifndef BG_PLATFORM_H
#define BG_PLATFORM_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The longest single OS wait.  A wait for a later deadline wakes up after
   this long and reports a spurious wake-up (0): every caller loops until its
   condition holds or bg_monotonic() passes its deadline.  Keeps every
   conversion (to a timespec, to Windows' 32-bit milliseconds) in range
   whatever the deadline (a huge timeout, infinity). */
#define BG_WAIT_MAX 86400.0

#ifdef _WIN32
/* ==== Windows ============================================================= */

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <process.h>   /* _beginthreadex */
#include <stdlib.h>    /* malloc */

#define BG_HAVE_FORK 0

/* A slim reader/writer lock used exclusively: no init, no destroy, no failure.
   The condition variable waits on it with SleepConditionVariableSRW. */
typedef SRWLOCK bg_mutex;
typedef CONDITION_VARIABLE bg_cond;

#define BG_MUTEX_INITIALIZER SRWLOCK_INIT

typedef INIT_ONCE bg_once;
#define BG_ONCE_INIT INIT_ONCE_STATIC_INIT

static inline BOOL CALLBACK
bg_once_thunk(PINIT_ONCE once, PVOID param, PVOID *context)
{
    (void)once;
    (void)context;
    (*(void (**)(void))param)();
    return TRUE;
}
static inline void
bg_call_once(bg_once *once, void (*func)(void))
{
    InitOnceExecuteOnce(once, bg_once_thunk, (PVOID)&func, NULL);
}

/* Returns 0, or an errno value. */
static inline int bg_mutex_init(bg_mutex *m) { InitializeSRWLock(m); return 0; }
static inline void bg_mutex_destroy(bg_mutex *m) { (void)m; }
static inline void bg_mutex_lock(bg_mutex *m) { AcquireSRWLockExclusive(m); }
static inline void bg_mutex_unlock(bg_mutex *m) { ReleaseSRWLockExclusive(m); }

/* Returns 0, or an errno value. */
static inline int bg_cond_init(bg_cond *c) { InitializeConditionVariable(c); return 0; }
static inline void bg_cond_destroy(bg_cond *c) { (void)c; }
static inline void bg_cond_signal(bg_cond *c) { WakeConditionVariable(c); }
static inline void bg_cond_broadcast(bg_cond *c) { WakeAllConditionVariable(c); }
static inline void bg_cond_wait(bg_cond *c, bg_mutex *m) { SleepConditionVariableSRW(c, m, INFINITE, 0); }

/* Seconds on a clock that never jumps (the performance counter: monotonic,
   sub-microsecond, on every Windows since XP). */
static inline double
bg_monotonic(void)
{
    static LARGE_INTEGER freq;   /* fixed at boot: a benign race at worst */
    LARGE_INTEGER now;
    if (freq.QuadPart == 0) {
        QueryPerformanceFrequency(&freq);
    }
    QueryPerformanceCounter(&now);
    return (double)(now.QuadPart / freq.QuadPart)
           + (double)(now.QuadPart % freq.QuadPart) / (double)freq.QuadPart;
}

/* Waits until signalled or until the bg_monotonic() time `deadline`.
   Returns 0 when signalled (or woken spuriously), ETIMEDOUT past the deadline. */
static inline int
bg_cond_wait_until(bg_cond *c, bg_mutex *m, double deadline)
{
    double left = deadline - bg_monotonic();
    if (!(left > 0)) {
        return ETIMEDOUT;   /* NaN too: never an endless wait on garbage */
    }
    if (left > BG_WAIT_MAX) {
        left = BG_WAIT_MAX;
    }
    /* Rounded up: the timer's granularity (~15 ms) may still end the wait a
       little early, which the check below turns into a spurious wake-up. */
    DWORD ms = (DWORD)(left * 1000.0) + 1;
    if (SleepConditionVariableSRW(c, m, ms, 0)) {
        return 0;
    }
    return bg_monotonic() >= deadline ? ETIMEDOUT : 0;
}

/* A hint to the CPU inside a spin loop. */
static inline void bg_cpu_relax(void) { YieldProcessor(); }

/* A thread-local pointer. */
typedef DWORD bg_tls;
static inline int
bg_tls_create(bg_tls *key)
{
    *key = TlsAlloc();
    return *key == TLS_OUT_OF_INDEXES ? EAGAIN : 0;
}
static inline void *bg_tls_get(bg_tls key) { return TlsGetValue(key); }
static inline void bg_tls_set(bg_tls key, void *value) { TlsSetValue(key, value); }

typedef void *(*bg_thread_func)(void *);

typedef struct {
    bg_thread_func func;
    void *arg;
} bg_thread_boot;

static inline unsigned __stdcall
bg_thread_bootstrap(void *raw)
{
    bg_thread_boot boot = *(bg_thread_boot *)raw;
    free(raw);
    boot.func(boot.arg);
    return 0;
}

/* Starts a detached thread with a stack of `stack_size` bytes (0: the
   default of the executable, as CPython's threads get).  Returns 0, or an
   errno value. */
static inline int
bg_thread_start(bg_thread_func func, void *arg, size_t stack_size)
{
    bg_thread_boot *boot = malloc(sizeof(bg_thread_boot));
    if (boot == NULL) {
        return ENOMEM;
    }
    boot->func = func;
    boot->arg = arg;
    if (stack_size > 0xFFFFFFFFu) {
        free(boot);
        return EINVAL;
    }
    /* The size reserves address space, as the executable's own default does;
       pages are committed as the stack grows. */
    uintptr_t handle = _beginthreadex(NULL, (unsigned)stack_size, bg_thread_bootstrap, boot,
                                      stack_size ? STACK_SIZE_PARAM_IS_A_RESERVATION : 0, NULL);
    if (handle == 0) {
        int err = errno ? errno : EAGAIN;
        free(boot);
        return err;
    }
    CloseHandle((HANDLE)handle);   /* detached: nobody joins it */
    return 0;
}

/* Names the calling thread as the OS shows it (debuggers, Process Explorer):
   SetThreadDescription, looked up at run time since Windows 10 1607 has it
   and older Windows (and some Wine versions) do not. */
static inline void
bg_thread_set_name(const char *name)
{
    typedef HRESULT (WINAPI *set_description)(HANDLE, PCWSTR);
    HMODULE kernel32 = GetModuleHandleW(L"kernel32.dll");
    if (kernel32 == NULL) {
        return;
    }
    /* Through a generic function pointer type: no cast-function-type warning. */
    set_description set = (set_description)(void (*)(void))GetProcAddress(kernel32, "SetThreadDescription");
    if (set == NULL) {
        return;
    }
    wchar_t wide[64];
    size_t i = 0;
    for (; name[i] && i < 63; i++) {
        wide[i] = (wchar_t)(unsigned char)name[i];   /* the names are ASCII */
    }
    wide[i] = 0;
    set(GetCurrentThread(), wide);
}

#else
/* ==== POSIX threads ======================================================= */

#include <pthread.h>
#include <time.h>

#define BG_HAVE_FORK 1

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

/* macOS has no pthread_condattr_setclock: its condition variables wait on
   a relative timeout instead (pthread_cond_timedwait_relative_np), computed
   from the monotonic clock.  Elsewhere the condition variable itself waits
   on CLOCK_MONOTONIC until an absolute deadline. */
#if defined(__APPLE__)
#define BG_COND_RELATIVE 1
#else
#define BG_COND_RELATIVE 0
#endif

/* A condition variable whose timed waits run on the monotonic clock.
   Returns 0, or an errno value. */
static inline int
bg_cond_init(bg_cond *c)
{
#if BG_COND_RELATIVE
    return pthread_cond_init(c, NULL);
#else
    pthread_condattr_t attr;
    int err = pthread_condattr_init(&attr);
    if (err) {
        return err;
    }
    /* A failure here would make every timed wait measure a monotonic
       deadline on the wall clock: refuse rather than time out at once. */
    err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (err == 0) {
        err = pthread_cond_init(c, &attr);
    }
    pthread_condattr_destroy(&attr);
    return err;
#endif
}
static inline void bg_cond_destroy(bg_cond *c) { pthread_cond_destroy(c); }
static inline void bg_cond_signal(bg_cond *c) { pthread_cond_signal(c); }
static inline void bg_cond_broadcast(bg_cond *c) { pthread_cond_broadcast(c); }
static inline void bg_cond_wait(bg_cond *c, bg_mutex *m) { pthread_cond_wait(c, m); }

/* Seconds on a clock that never jumps (CLOCK_MONOTONIC: on macOS too, where
   it exists since 10.12, the oldest macOS CPython 3.10 wheels run on). */
static inline double
bg_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* `seconds` (finite, >= 0, at most BG_WAIT_MAX plus an uptime) as a timespec. */
static inline struct timespec
bg_timespec(double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    else if (ts.tv_nsec < 0) {
        ts.tv_nsec = 0;
    }
    return ts;
}

/* Waits until signalled or until the bg_monotonic() time `deadline`.
   Returns 0 when signalled (or woken spuriously), ETIMEDOUT past the deadline. */
static inline int
bg_cond_wait_until(bg_cond *c, bg_mutex *m, double deadline)
{
    double now = bg_monotonic();
    double left = deadline - now;
    if (!(left > 0)) {
        return ETIMEDOUT;   /* NaN too: never an endless wait on garbage */
    }
    if (left > BG_WAIT_MAX) {
        left = BG_WAIT_MAX;
    }
#if BG_COND_RELATIVE
    struct timespec ts = bg_timespec(left);
    int err = pthread_cond_timedwait_relative_np(c, m, &ts);
#else
    struct timespec ts = bg_timespec(now + left);
    int err = pthread_cond_timedwait(c, m, &ts);
#endif
    if (err == 0) {
        return 0;
    }
    /* ETIMEDOUT (or EINVAL: never spin on it) before the deadline is only the
       BG_WAIT_MAX cap or rounding: a spurious wake-up. */
    return bg_monotonic() >= deadline || err != ETIMEDOUT ? ETIMEDOUT : 0;
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

/* The stack a thread gets when threading.stack_size() is 0: CPython's own
   THREAD_STACK_SIZE (Python/thread_pthread.h), where the platform's default
   is too small for Python code (512 KiB for a macOS thread); 0 keeps the
   default (Linux's glibc: RLIMIT_STACK, 8 MiB as a rule). */
#if defined(__APPLE__)
#define BG_DEFAULT_STACK_SIZE 0x1000000   /* 16 MiB, as CPython's -Wl,-stack_size */
#elif defined(__FreeBSD__)
#define BG_DEFAULT_STACK_SIZE 0x400000
#else
#define BG_DEFAULT_STACK_SIZE 0
#endif

/* Starts a detached thread with a stack of `stack_size` bytes (0: the size
   CPython gives its own threads by default).  Returns 0, or an errno value. */
static inline int
bg_thread_start(bg_thread_func func, void *arg, size_t stack_size)
{
    pthread_t tid;
    pthread_attr_t attr;
    int err = pthread_attr_init(&attr);
    if (err) {
        return err;
    }
    if (stack_size == 0) {
        stack_size = BG_DEFAULT_STACK_SIZE;
    }
    if (stack_size != 0) {
        err = pthread_attr_setstacksize(&attr, stack_size);
    }
    if (err == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        err = pthread_create(&tid, &attr, func, arg);
    }
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

#endif /* _WIN32 */

#endif /* BG_PLATFORM_H */
