/* slice.c: the slices of a lowered compute job (weft_spawn_compute; the pool
 * thread that runs it is in blocking.c).
 *
 * A lowered compute job yields its CPU every compute_slice_ns: a per-thread
 * timer sends its thread SIGURG, whose handler first looks at the workers
 * (handover.c: one waiting for a CPU elsewhere is moved to this one), then
 * calls sched_yield (Go's runtime preempts goroutines with SIGURG too). With
 * nothing else waiting for that CPU the yield returns at once and the job
 * goes on. Why: measured with the stall demo (docs/blocking.md), the kernel
 * here at times leaves a SCHED_IDLE thread running for 1-4 ms while a woken
 * worker waits on its CPU; yielding every 250 us took the demo's light p99
 * from 4x the baseline to 1.3x. Only compute jobs are sliced: they promise
 * not to block, so the signal (SA_RESTART) interrupts nothing a blocking job
 * could be in. The timer runs on CLOCK_MONOTONIC, not the thread's CPU
 * clock: CPU-time timers are checked at the scheduler tick (4 ms here), too
 * coarse for a slice. A signal that finds the job has had under half a slice
 * of CPU since the last one (it was waiting for a CPU) does nothing.
 *
 * The handler is installed once per process, and only where SIGURG still
 * has its default or ignored disposition (it means "out-of-band data" and
 * is ignored by default): a program with its own SIGURG handler keeps it,
 * and its compute jobs are not sliced; nor are those of a runtime created
 * by a thread that blocks SIGURG (blocking.c: the program reads it with
 * signalfd or sigwait). A pool thread keeps the mask it inherited (a
 * program that blocks SIGURG before creating the runtime has it blocked in
 * every runtime thread, none of which then takes its SIGURGs); a sliced job
 * lets SIGURG in while it runs and puts the thread's mask back after.
 * The handler stays installed; a SIGURG that no slice timer of the thread
 * it lands on sent does nothing (its payload is not trusted: a program's
 * own timer may send SIGURG with a payload of its own), but, being handled
 * rather than ignored, it interrupts a slow syscall of that thread with
 * EINTR (docs/blocking.md says so; Go's SIGURG has the same effect).
 * Blocking SIGURG in pool threads outside slices would spare blocking jobs,
 * but every process a job starts would inherit the blocked signal: not done. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#include "internal.h"

static _Atomic uint64_t slices;   /* yields done by the handler */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "the handler's counter must be lock-free");
static bool slicing;              /* the handler is ours (set once, under slice_once) */
static pthread_once_t slice_once = PTHREAD_ONCE_INIT;

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The slicer of the pool thread running this code, or NULL. Initial-exec: a
 * signal handler may read it (the general-dynamic model of a shared library
 * may allocate on a thread's first access); 8 bytes of static TLS. Written
 * by the thread itself only, ordered for its handler by a signal fence. */
static __thread struct weft__slicer *thread_slicer __attribute__((tls_model("initial-exec")));

/* A slice is a timer signal carrying this thread's own slicer; a SIGURG
 * from anywhere else (out-of-band data, kill, a program's own timer with a
 * payload that is not ours) is not one, and its payload is never read. */
static void slice_handler(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    struct weft__slicer *s = thread_slicer;
    if (!s || si->si_code != SI_TIMER || si->si_value.sival_ptr != s)
        return;
    /* Relaxed: set and cleared by this thread (a signal fence orders them). */
    if (!atomic_load_explicit(&s->on, memory_order_relaxed))
        return; /* the job ended with this signal pending */
    int saved = errno;
    /* A job that has had less than half a slice of CPU since its last slice
     * ended has been waiting, not running: it goes on (the timer counts wall
     * time, and a starved job would otherwise spend each of its turns here). */
    uint64_t ran = thread_cpu_ns();
    if (ran - s->ran_ns >= s->slice_ns / 2) {
        s->ran_ns = ran;
        weft__looker_look(&s->looker, sched_getcpu());
        sched_yield();
        /* Relaxed: a counter read for the metrics; lock-free, so signal-safe. */
        atomic_fetch_add_explicit(&slices, 1, memory_order_relaxed);
    }
    errno = saved;
}

static void install_slice_handler(void)
{
    struct sigaction old, sa = { 0 };
    if (sigaction(SIGURG, NULL, &old) != 0 || (old.sa_flags & SA_SIGINFO) ||
        (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN))
        return;
    sa.sa_sigaction = slice_handler;
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    slicing = sigaction(SIGURG, &sa, NULL) == 0;
}

uint64_t weft__compute_slices(void)
{
    return atomic_load_explicit(&slices, memory_order_relaxed);
}

bool weft__slice_ready(struct weft__slicer *s, struct weft_runtime *rt, pid_t tid)
{
    pthread_once(&slice_once, install_slice_handler);
    if (!slicing || !weft__looker_init(&s->looker, rt))
        return false;
    if (!s->made) {
        struct sigevent ev = { 0 };
        ev.sigev_notify = SIGEV_THREAD_ID;
        ev.sigev_signo = SIGURG;
        ev.sigev_value.sival_ptr = s;
        ev._sigev_un._tid = tid; /* sigev_notify_thread_id, which glibc 2.36 lacks */
        s->made = timer_create(CLOCK_MONOTONIC, &ev, &s->timer) == 0;
        if (s->made) {
            thread_slicer = s;
            atomic_signal_fence(memory_order_seq_cst); /* before any of its signals */
        }
    }
    return s->made;
}

bool weft__slice_start(struct weft__slicer *s, uint64_t ns)
{
    struct timespec every = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };
    struct itimerspec it = { every, every };
    s->slice_ns = ns;
    s->ran_ns = thread_cpu_ns();
    atomic_store_explicit(&s->on, true, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst); /* the fields above, before any signal */
    if (timer_settime(s->timer, 0, &it, NULL) == 0) {
        sigset_t urg;
        sigemptyset(&urg);
        sigaddset(&urg, SIGURG);
        pthread_sigmask(SIG_UNBLOCK, &urg, &s->mask); /* put back by slice_stop */
        return true;
    }
    atomic_store_explicit(&s->on, false, memory_order_relaxed);
    return false;
}

void weft__slice_stop(struct weft__slicer *s)
{
    struct itimerspec off = { { 0, 0 }, { 0, 0 } };
    timer_settime(s->timer, 0, &off, NULL);
    atomic_store_explicit(&s->on, false, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst); /* `on` clear before the mask: a
                                                * slice still pending does nothing */
    pthread_sigmask(SIG_SETMASK, &s->mask, NULL);
}

bool weft__slice_urg_blocked(void)
{
    sigset_t now;
    return pthread_sigmask(SIG_BLOCK, NULL, &now) == 0 && sigismember(&now, SIGURG) == 1;
}

void weft__slice_fini(struct weft__slicer *s)
{
    if (s->made) {
        timer_delete(s->timer);
        thread_slicer = NULL; /* a slice still pending finds no slicer */
    }
    s->made = false;
    weft__looker_fini(&s->looker);
}
