/* blocking.c: the blocking pool (weft/blocking.h).
 *
 * One mutex guards the pool: the job queue, the thread counts and the list of
 * spawns waiting for room. It is taken once per job by the spawner and once
 * by the thread that runs it; a job is far longer than that (it would not be
 * here otherwise), and Tokio's pool is built the same way.
 *
 * Threads: a spawn that finds an idle thread hands it the job through
 * `notified` (idle--, notified++, signal: the idle count never promises the
 * same thread twice); otherwise it starts a thread, up to max_threads, unless
 * one is starting already: then the job waits in the queue, and each thread,
 * as it takes a job, starts the next one while jobs are left and none is
 * idle or starting. So a burst of jobs grows the pool one thread start at a
 * time (about 30 us each here), by the pool threads themselves, rather than
 * a thread per job by the spawner (spawn_blocking_batch: 10,000 trivial jobs
 * made 512 threads). Past max_threads jobs wait for a busy thread. An idle thread waits
 * keepalive_ns and exits unless it was handed a job. Every thread holds a
 * count on the runtime's memory (weft__runtime_hold), so a job still running
 * when destroy gives up on it can finish and its thread exit without touching
 * freed memory; the thread's very last act releases that count.
 *
 * Compute jobs (weft_spawn_compute) wait in a queue of their own while
 * compute_max of them run: a thread takes a blocking job first, and a compute
 * job only below the cap (`computing`, under the lock), so blocking jobs are
 * never held behind CPU-bound ones, and a thread that ends a compute job
 * takes the next one itself. A compute job is lowered by its own thread
 * before fn runs (blocking jobs wait for the monitor: blocking_prio.c).
 * Why the cap: measured with the stall demo (docs/blocking.md),
 * a lowered job on every CPU still delays the workers by milliseconds now
 * and then (the scheduler leaves a normal thread queued behind a SCHED_IDLE
 * one, or does not move it to the other CPU), while one CPU kept free of
 * them cut the light requests' p99 from about 14x to 4x the baseline.
 *
 * A job is one malloc'd block shared by the pool and the join handle (two
 * references). The runner stores the output, then the state (seq_cst), then
 * wakes the handle's awaker; the handle registers its waker, then loads the
 * state (seq_cst): the awaker's Dekker pairing (atomic_waker.h, contract 3)
 * means one of them sees the other, so the wake is never lost. The state's
 * seq_cst store also releases the output to the handle's load. */
#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "atomic_waker.h"

#define DEFAULT_MAX_THREADS 512u
#define DEFAULT_SLICE_US 250u
#define DEFAULT_KEEPALIVE_MS 10000u

enum { JOB_QUEUED, JOB_DONE, JOB_CANCELLED };

struct weft__job {
    struct weft__job *next;
    struct weft_runtime *rt;   /* for weft__job_cancel */
    weft_blocking_fn *fn;
    void *arg;
    void *output;
    _Atomic uint32_t state;
    _Atomic uint32_t refs;
    _Atomic uint32_t sleeper;  /* weft__job_wait sleeps on `state` */
    bool cpu;                  /* a compute job (weft_spawn_compute) */
    struct awaker joiner;
};

static void job_unref(struct weft__job *j)
{
    /* Acq_rel: the last one to let go sees the other's uses (the output
     * store, the awaker) before freeing. */
    if (atomic_fetch_sub_explicit(&j->refs, 1, memory_order_acq_rel) == 1) {
        awaker_fini(&j->joiner);
        free(j);
    }
}

/* Ends a job (any thread): publishes its state and wakes the joiner. */
static void job_finish(struct weft__job *j, uint32_t state)
{
    atomic_store(&j->state, state); /* seq_cst: see the top comment */
    awaker_wake(&j->joiner);
    /* Seq_cst, the other half of weft__job_wait's Dekker pair (sleeper
     * stored, then state loaded): one of the two sees the other. */
    if (atomic_load(&j->sleeper))
        syscall(SYS_futex, &j->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    job_unref(j);
}

/* ---- the queues ----------------------------------------------------------------- */

static void jobq_push(struct weft__jobq *q, struct weft__job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

static struct weft__job *jobq_pop(struct weft__jobq *q)
{
    struct weft__job *j = q->head;
    if (j && !(q->head = j->next))
        q->tail = NULL;
    return j;
}

/* Unlinks j if it is in q; whether it was. */
static bool jobq_remove(struct weft__jobq *q, struct weft__job *j)
{
    struct weft__job **pp = &q->head, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return false;
    *pp = j->next;
    if (q->tail == j)
        q->tail = prev;
    return true;
}

/* Under the lock: whether a thread could take a job now (compute jobs wait
 * while compute_max of them run). */
static bool has_runnable(const struct blocking_pool *p)
{
    return p->jobs.head || (p->cpu_jobs.head && p->computing < p->compute_max);
}

/* Under the lock: the next job a thread may run (blocking jobs first: they
 * are the ones someone waits on to make progress), or NULL. */
static struct weft__job *take_job(struct blocking_pool *p)
{
    struct weft__job *j = jobq_pop(&p->jobs);
    if (!j && p->computing < p->compute_max && (j = jobq_pop(&p->cpu_jobs))) {
        p->computing++;
        p->cpu_queued--;
    }
    if (j)
        p->queued--;
    return j;
}

/* Under the lock: empties both queues, returns their jobs as one list. */
static struct weft__job *take_all_jobs(struct blocking_pool *p)
{
    struct weft__job *j = p->jobs.head;
    if (j)
        p->jobs.tail->next = p->cpu_jobs.head;
    else
        j = p->cpu_jobs.head;
    p->jobs = p->cpu_jobs = (struct weft__jobq){ NULL, NULL };
    p->queued = p->cpu_queued = 0;
    return j;
}

/* ---- the pool ------------------------------------------------------------------- */

/* The CPUs this process may run on, less one for the workers; at least 1. */
static uint32_t default_compute_max(void)
{
    cpu_set_t set;
    int n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    return n > 1 ? (uint32_t)n - 1 : 1;
}

void weft__blocking_init(struct weft_runtime *rt, const struct weft_runtime_config *cfg)
{
    struct blocking_pool *p = &rt->blocking;
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->work, &ca);
    pthread_cond_init(&p->gone, &ca);
    pthread_condattr_destroy(&ca);
    p->max_threads = cfg->blocking_max_threads ? cfg->blocking_max_threads : DEFAULT_MAX_THREADS;
    p->keepalive_ns = (uint64_t)(cfg->blocking_keepalive_ms ? cfg->blocking_keepalive_ms
                                                            : DEFAULT_KEEPALIVE_MS) * 1000000u;
    p->queue_max = cfg->blocking_queue_max;
    /* A thread is always left to blocking jobs, when the pool has two. */
    uint32_t compute_max = cfg->compute_max_threads ? cfg->compute_max_threads
                                                    : default_compute_max();
    uint32_t room = p->max_threads > 1 ? p->max_threads - 1 : 1;
    p->compute_max = compute_max < room ? compute_max : room;
    uint32_t slice = cfg->compute_slice_us ? cfg->compute_slice_us : DEFAULT_SLICE_US;
    /* A creator that blocks SIGURG reads it itself (signalfd, sigwait): a
     * sliced job's thread, which must let SIGURG in, could take the
     * program's own. */
    p->compute_slice_ns = slice == WEFT_COMPUTE_SLICE_OFF || weft__slice_urg_blocked()
                              ? 0
                              : (uint64_t)slice * 1000u;
    p->priority = cfg->blocking_priority;
    atomic_init(&p->monitor_dozing, 0);
    weft__prio_init(p);
    /* Lowering is only done when a thread can come back up: a thread stuck
     * low would take the pool's and the runtime's locks at low priority. */
    p->demotes = p->priority != WEFT_BLOCKING_PRIO_NORMAL && weft__prio_may_raise(p);
}

void weft__blocking_fini(struct weft_runtime *rt)
{
    struct blocking_pool *p = &rt->blocking;
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->gone);
    pthread_mutex_destroy(&p->lock);
}

static struct timespec deadline_after(uint64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t t = (uint64_t)ts.tv_nsec + ns % 1000000000u;
    ts.tv_sec += (time_t)(ns / 1000000000u + t / 1000000000u);
    ts.tv_nsec = (long)(t % 1000000000u);
    return ts;
}

/* Gives room freed in the queue to the first spawn waiting for it (under the
 * lock); returns its waker to wake once the lock is dropped, or an empty one. */
static struct weft_waker take_room_waiter(struct blocking_pool *p)
{
    struct weft_spawn_blocking_wait *w = p->whead;
    /* Still full (jobs handed to idle threads count until taken): no room. */
    if (!w || p->queued - p->cpu_queued >= p->queue_max)
        return (struct weft_waker){ 0 };
    p->whead = w->wnext;
    if (p->whead)
        p->whead->wprev = NULL;
    else
        p->wtail = NULL;
    w->queued = 0;
    w->notified = 1;
    struct weft_waker k = w->waker;
    w->waker = (struct weft_waker){ 0 };
    return k;
}

static void wake_waiter(struct weft_waker *k)
{
    if (k->ops)
        weft_waker_wake(k);
}

/* Takes one hand-over (under the lock). */
static bool notified_take(struct blocking_pool *p)
{
    uint32_t n = atomic_load_explicit(&p->notified, memory_order_relaxed);
    if (n == 0)
        return false;
    atomic_store_explicit(&p->notified, n - 1, memory_order_relaxed);
    return true;
}

/* How long an idle pool thread watches for a job before it sleeps: about one
 * wakeup of a worker here, so that a task awaiting jobs one after another
 * finds its thread awake (spawn_blocking_seq: docs/performance.md). */
#define SPIN_NS 50000u

/* Spins (without the lock) until a job is handed over or SPIN_NS pass,
 * yielding the CPU at every turn: the worker this thread just woke is often
 * placed on this CPU, and a plain spin would keep it waiting (measured: a
 * pause-loop spin made spawn_blocking_seq 1.4x slower, a yielding one 3x
 * faster). The relaxed peek only decides when to stop: the hand-over itself
 * is taken under the lock. */
static void spin_for_notify(struct blocking_pool *p)
{
    uint64_t until = weft_now_ns() + SPIN_NS;
    for (uint32_t i = 1;; i++) {
        if (atomic_load_explicit(&p->notified, memory_order_relaxed))
            return;
        sched_yield();
        if (i % 8 == 0 && weft_now_ns() > until)
            return;
    }
}

static void *pool_thread(void *arg);

/* Under the lock: hands the queue to an idle thread (idle--, notified++,
 * signal: the idle count never promises the same thread twice). */
static void hand_to_idle(struct blocking_pool *p)
{
    p->idle--;
    atomic_store_explicit(&p->notified, atomic_load_explicit(&p->notified, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    pthread_cond_signal(&p->work);
}

/* Under the lock: whether to start a thread for `backlog` (jobs queued),
 * none being idle or starting; if so, counts it in `threads` and `starting`
 * and holds the runtime for it. */
static bool reserve_thread(struct weft_runtime *rt, bool backlog)
{
    struct blocking_pool *p = &rt->blocking;
    if (!backlog || p->idle > 0 || p->starting > 0 || p->threads >= p->max_threads || p->closed)
        return false;
    p->threads++;
    p->starting++;
    weft__runtime_hold(rt);
    return true;
}

/* Under the lock: gets a thread for the runnable jobs, if any (a compute job
 * behind compute_max running ones has none: the first of them to finish
 * takes it): hands them to an idle thread, or reserves a thread start,
 * which the caller then makes (true). */
static bool find_thread(struct weft_runtime *rt)
{
    struct blocking_pool *p = &rt->blocking;
    if (!has_runnable(p))
        return false;
    if (p->idle == 0)
        return reserve_thread(rt, true);
    hand_to_idle(p);
    return false;
}

/* After a reserved thread failed to start (under the lock, its reservation
 * given back): with no thread left, nothing would ever run the queued jobs,
 * so they are taken off the queue and returned, for the caller to cancel
 * outside the lock (their joiners see -ECANCELED); a waiting destroy is told. */
static struct weft__job *orphaned_jobs(struct blocking_pool *p)
{
    if (p->closed) /* a thread fewer, and one fewer starting */
        pthread_cond_broadcast(&p->gone);
    if (p->threads > 0)
        return NULL;
    return take_all_jobs(p);
}

/* Cancels a list of jobs taken off the queue, except `keep`. */
static void cancel_jobs(struct weft__job *j, const struct weft__job *keep)
{
    while (j) {
        struct weft__job *next = j->next;
        if (j != keep)
            job_finish(j, JOB_CANCELLED);
        j = next;
    }
}

/* Gives back a reservation whose thread could not start (takes the lock). */
static void unreserve_thread(struct weft_runtime *rt)
{
    struct blocking_pool *p = &rt->blocking;
    pthread_mutex_lock(&p->lock);
    p->threads--;
    p->starting--;
    struct weft__job *orphans = orphaned_jobs(p);
    struct weft_waker k = orphans ? take_room_waiter(p) : (struct weft_waker){ 0 };
    pthread_mutex_unlock(&p->lock);
    cancel_jobs(orphans, NULL);
    wake_waiter(&k);
    weft__runtime_release(rt); /* rt stays alive: the caller's own hold */
}

/* Starts a pool thread (the caller reserved it). 0 or -errno. */
static int start_thread(struct weft_runtime *rt)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* A worker a compute job narrowed to its own CPU (handover.c) may be
     * starting this thread mid-poll, or be narrowed while it does: give the
     * thread the worker's own affinity, or it inherits the one CPU for good. */
    cpu_set_t mask;
    bool own_mask = weft__current && weft__handover_own_mask(weft__current, &mask) &&
                    pthread_attr_setaffinity_np(&attr, sizeof mask, &mask) == 0;
    /* A creator running lowered (a compute job that spawns, a job the
     * monitor lowered) would hand the new thread SCHED_IDLE until its first
     * instruction raises it: on a busy CPU that start took ~240 ms per busy
     * thread, and a destroy waits for starting threads (a review). Start it
     * at the workers' policy instead, where the kernel allows it. */
    const struct blocking_pool *p = &rt->blocking;
    int pol = sched_getscheduler(0);
    bool explicit_sched = pol >= 0 && (pol & ~SCHED_RESET_ON_FORK) != p->base_policy &&
                          pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED) == 0 &&
                          pthread_attr_setschedpolicy(&attr, p->base_policy) == 0 &&
                          pthread_attr_setschedparam(&attr, &p->base_param) == 0;
    pthread_t th;
    int err = -pthread_create(&th, &attr, pool_thread, rt);
    if (err == -EINVAL && own_mask) {
        /* The mask is no longer allowed (a cpuset shrank): every CPU, which
         * the kernel cuts down to the allowed ones (as handover.c's undo). */
        for (int c = 0; c < CPU_SETSIZE; c++)
            CPU_SET(c, &mask);
        pthread_attr_setaffinity_np(&attr, sizeof mask, &mask);
        err = -pthread_create(&th, &attr, pool_thread, rt);
    }
    if (err == -EPERM && explicit_sched) { /* not allowed to raise it: inherit, as before */
        pthread_attr_setinheritsched(&attr, PTHREAD_INHERIT_SCHED);
        err = -pthread_create(&th, &attr, pool_thread, rt);
    }
    pthread_attr_destroy(&attr);
    return err; /* (th may be gone already: the thread names itself) */
}

/* A pool thread starts the next one (reserved under the lock). */
static void start_reserved(struct weft_runtime *rt)
{
    if (start_thread(rt))
        unreserve_thread(rt); /* the busy threads will get to the jobs */
}

_Thread_local const struct weft_runtime *weft__pool_of;

static void *pool_thread(void *arg)
{
    struct weft_runtime *rt = arg;
    weft__pool_of = rt;
    struct blocking_pool *p = &rt->blocking;
    pthread_setname_np(pthread_self(), "weft-blocking");
    struct pool_slot slot = { .tid = (pid_t)syscall(SYS_gettid) };
    struct weft__slicer slicer = { .made = false };
    /* A thread inherits its creator's policy, and the creator may be a pool
     * thread running lowered (a compute job that spawns), or a thread of the
     * program at another priority: start at the workers', before the first
     * lock. (Where it cannot be raised, nothing here could raise it; the
     * pool then lowers nothing, and a spawner above the workers' priority
     * keeps its own: a failure is not an error.) */
    weft__prio_restore(p);
    pthread_mutex_lock(&p->lock);
    slot.next = p->slots;
    slot.pprev = &p->slots;
    if (p->slots)
        p->slots->pprev = &slot.next;
    p->slots = &slot;
    p->starting--;
    bool retire = false;
    struct weft__job *untold = NULL; /* a job left running by destroy, told last */
    for (;;) {
        struct weft__job *j = take_job(p);
        if (j) {
            bool cpu = j->cpu;
            /* A compute job leaving its queue frees no room under queue_max. */
            struct weft_waker k = cpu ? (struct weft_waker){ 0 } : take_room_waiter(p);
            bool more = reserve_thread(rt, has_runnable(p));
            atomic_store_explicit(&slot.ending, false, memory_order_relaxed);
            pthread_mutex_unlock(&p->lock);
            wake_waiter(&k);
            if (more)
                start_reserved(rt);
            /* A compute job runs lowered from its first instruction, and
             * (lowered) in slices; what may allocate or lock (the handler's
             * install, the timer) is done before it is lowered. */
            bool sliced = false;
            if (cpu && p->demotes) {
                bool can_slice = p->compute_slice_ns && weft__slice_ready(&slicer, rt, slot.tid);
                if (weft__prio_lower(0, p->priority)) {
                    atomic_store_explicit(&slot.demoted, true, memory_order_relaxed);
                    sliced = can_slice && weft__slice_start(&slicer, p->compute_slice_ns);
                }
            }
            /* The job's time starts here, after the pool's own work above
             * (the waiter's wake, a thread start), which the monitor must
             * never find lowered: counted from the take, a wake or a
             * pthread_create held up past DEMOTE_NS ran at SCHED_IDLE (a
             * helper's review). A monitor asleep at the stall detector's
             * slower pace would look at this job late: wake it (metrics.c,
             * monitor_main). Seq_cst store, then the rouse's seq_cst load:
             * Dekker with the monitor's seq_cst store of the dozing word and
             * its seq_cst load of job_start (blocking_prio.c), so either it
             * sees this job or we see it dozing. One syscall for the first
             * job after a quiet spell, none for the jobs after it. */
            atomic_store(&slot.job_start, weft_now_ns());
            if (!cpu && p->demotes)
                weft__monitor_rouse(p);
            j->output = j->fn(j->arg);
            atomic_store_explicit(&slot.ending, true, memory_order_relaxed);
            if (sliced)
                weft__slice_stop(&slicer);
            /* Back up before taking any lock (a relaxed peek: the lock below
             * settles it), then once more if the monitor lowered us in the
             * meantime: the bookkeeping and the joiner's wake run at the
             * workers' priority. */
            bool low = atomic_exchange_explicit(&slot.demoted, false, memory_order_relaxed);
            if (low && !weft__prio_restore(p))
                retire = true; /* stuck low (capabilities dropped): a new thread takes over */
            pthread_mutex_lock(&p->lock);
            atomic_store_explicit(&slot.job_start, 0, memory_order_relaxed);
            low = atomic_exchange_explicit(&slot.demoted, false, memory_order_relaxed);
            if (p->abandoned) {
                /* Destroy gave up waiting for this job: leave the runtime
                 * first (its memory, through its allocator, may go with our
                 * hold), and only then tell the handle, so that a program
                 * that awaits the handle of a job left running knows the
                 * runtime is done with its allocator (a lifecycle review:
                 * the runtime was freed through it after the handle was
                 * ready, once the program had freed it). */
                p->jobs_done++;
                p->computing -= cpu;
                untold = j;
                break;
            }
            /* Destroy waits for us while we tell it (a bounded wait). */
            p->telling++;
            pthread_mutex_unlock(&p->lock);
            if (low && !weft__prio_restore(p))
                retire = true;
            job_finish(j, JOB_DONE);
            pthread_mutex_lock(&p->lock);
            p->telling--;
            if (p->closed)
                pthread_cond_broadcast(&p->gone);
            p->jobs_done++;
            p->computing -= cpu;
            if (retire)
                break;
            continue;
        }
        if (p->closed)
            break;
        /* Idle: wait to be handed a job, or for the keep-alive to run out;
         * spin a little first, as a task that awaited one job often spawns
         * the next a wakeup later. */
        p->idle++;
        pthread_mutex_unlock(&p->lock);
        spin_for_notify(p);
        pthread_mutex_lock(&p->lock);
        struct timespec until = deadline_after(p->keepalive_ns);
        bool handed = false;
        for (int rc = 0;; rc = pthread_cond_timedwait(&p->work, &p->lock, &until)) {
            if (notified_take(p)) {
                handed = true; /* the notifier took us off `idle` */
                break;
            }
            if (p->closed || rc == ETIMEDOUT) {
                p->idle--;
                break;
            }
        }
        if (!handed && !has_runnable(p))
            break;
    }
    /* Before rt may be freed (by destroy, or by our release below): what
     * runs on this thread from here on (its TLS destructors) is no longer
     * rt's, and a new runtime may get rt's address. */
    weft__pool_of = NULL;
    *slot.pprev = slot.next;
    if (slot.next)
        slot.next->pprev = slot.pprev;
    p->threads--;
    weft__slice_fini(&slicer); /* a syscall under the lock, once per thread */
    if (p->closed && !p->abandoned) {
        /* Destroy is waiting for us: it releases our hold on rt (so that the
         * runtime is freed on its thread, before it returns). Told at every
         * exit: past its timeout it still waits for the threads in no job. */
        p->gone_holds++;
        pthread_cond_broadcast(&p->gone);
        pthread_mutex_unlock(&p->lock);
        return NULL;
    }
    /* A retiring thread leaves no runnable job behind without a thread (a
     * compute job its end made runnable included). */
    bool more = find_thread(rt);
    pthread_mutex_unlock(&p->lock);
    if (more)
        start_reserved(rt);
    weft__runtime_release(rt); /* may free rt: nothing of it after this */
    if (untold)
        job_finish(untold, JOB_DONE); /* its own allocation */
    return NULL;
}

/* Queues a job. With `bounded`, a full queue gives -EAGAIN, and `waiter`
 * (when not NULL) is put on the waiting list with a clone of `waker` and
 * marked `waiting` (a thread that could not start gives -EAGAIN too). */
static int pool_push(struct weft_runtime *rt, struct weft__job *j, bool bounded,
                     struct weft_spawn_blocking_wait *waiter, const struct weft_waker *waker)
{
    struct blocking_pool *p = &rt->blocking;
    pthread_mutex_lock(&p->lock);
    if (p->closed) {
        pthread_mutex_unlock(&p->lock);
        return -ESHUTDOWN;
    }
    /* The bound counts blocking jobs waiting for a thread; a job an idle
     * thread is there to take is never refused (jobs handed to idle threads
     * that have not woken yet stay counted until they do, microseconds). */
    if (bounded && p->queue_max && p->idle == 0 && p->queued - p->cpu_queued >= p->queue_max) {
        if (waiter) {
            waiter->waker = weft_waker_clone(waker);
            waiter->wnext = NULL;
            waiter->wprev = p->wtail;
            if (p->wtail)
                p->wtail->wnext = waiter;
            else
                p->whead = waiter;
            p->wtail = waiter;
            waiter->queued = 1;
            waiter->waiting = 1;
        }
        pthread_mutex_unlock(&p->lock);
        return -EAGAIN;
    }
    jobq_push(j->cpu ? &p->cpu_jobs : &p->jobs, j);
    p->queued++;
    p->cpu_queued += j->cpu;
    bool start = find_thread(rt);
    pthread_mutex_unlock(&p->lock);
    if (!start)
        return 0;
    int err = start_thread(rt);
    if (!err)
        return 0;
    /* No thread: if none is left to run the jobs either, take ours back (if
     * still queued: a thread that existed may have taken it meanwhile, or a
     * shutdown cancelled it) and cancel the others queued behind it. */
    pthread_mutex_lock(&p->lock);
    p->threads--;
    p->starting--;
    struct weft__job *orphans = orphaned_jobs(p);
    bool take_back = false;
    for (struct weft__job *q = orphans; q && !take_back; q = q->next)
        take_back = q == j;
    struct weft_waker k = orphans ? take_room_waiter(p) : (struct weft_waker){ 0 };
    pthread_mutex_unlock(&p->lock);
    cancel_jobs(orphans, j);
    wake_waiter(&k);
    weft__runtime_release(rt); /* rt stays alive: its owner is calling us */
    return take_back ? err : 0;
}

static const struct weft_future_ops join_ops;

/* Queues fn(arg): the one path behind every spawn. */
static int spawn(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                 struct weft_blocking_join *join, bool bounded, bool cpu,
                 struct weft_spawn_blocking_wait *waiter, const struct weft_waker *waker)
{
    if (join)
        *join = (struct weft_blocking_join){ 0 };
    if (!rt || !fn)
        return -EINVAL;
    struct weft__job *j = malloc(sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->rt = rt;
    j->fn = fn;
    j->arg = arg;
    j->output = NULL;
    atomic_init(&j->state, JOB_QUEUED);
    atomic_init(&j->refs, join ? 2 : 1);
    atomic_init(&j->sleeper, 0);
    j->cpu = cpu;
    awaker_init(&j->joiner);
    int err = pool_push(rt, j, bounded, waiter, waker);
    if (err) {
        free(j);
        return err;
    }
    if (join)
        *join = (struct weft_blocking_join){ .base = { &join_ops, 0 }, .job = j };
    return 0;
}

int weft_spawn_blocking(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                        struct weft_blocking_join *join)
{
    return spawn(rt, fn, arg, join, false, false, NULL, NULL);
}

int weft_spawn_compute(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                       struct weft_blocking_join *join)
{
    return spawn(rt, fn, arg, join, false, true, NULL, NULL);
}

int weft_try_spawn_blocking(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                            struct weft_blocking_join *join)
{
    return spawn(rt, fn, arg, join, true, false, NULL, NULL);
}

uint32_t weft__blocking_shutdown(struct weft_runtime *rt, uint32_t timeout_ms,
                                 uint32_t *gone_holds)
{
    struct blocking_pool *p = &rt->blocking;
    pthread_mutex_lock(&p->lock);
    p->closed = true;
    struct weft__job *j = take_all_jobs(p);
    /* Waiting spawns belonged to tasks, all dropped by now (each took itself
     * off the list); a foreign thread's block_on ran as a task too. */
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    while (j) {
        struct weft__job *next = j->next;
        job_finish(j, JOB_CANCELLED);
        j = next;
    }
    /* Waits for every thread to exit, so that destroy frees the runtime
     * itself; the idle ones exit at once, the others after their job. */
    pthread_mutex_lock(&p->lock);
    struct timespec until = deadline_after((uint64_t)timeout_ms * 1000000u);
    while (p->threads > 0 && pthread_cond_timedwait(&p->gone, &p->lock, &until) != ETIMEDOUT)
        ;
    /* Idle threads (and those handed a job the close then cancelled, or not
     * started yet) are on their way out, running nothing of the program's:
     * wait for them past the timeout (they only need the lock), or they would
     * free the runtime, through its allocator, after a return that says
     * nothing is left (a lifecycle review: weft_runtime_shutdown(rt, 0) with
     * idle pool threads gave 0, and the allocator was used afterwards). The
     * rest are in a job. No thread becomes idle, notified or starting once
     * the pool is closed. Nor do we leave behind one that has run its job
     * and is telling its handle (`telling`): the handle would be ready
     * before the runtime is freed. */
    while (p->idle + atomic_load_explicit(&p->notified, memory_order_relaxed) + p->starting +
               p->telling > 0)
        pthread_cond_wait(&p->gone, &p->lock);
    uint32_t left = p->threads;
    p->abandoned = true; /* the rest release their own holds */
    *gone_holds = p->gone_holds;
    pthread_mutex_unlock(&p->lock);
    return left;
}

/* ---- the join handle ------------------------------------------------------------ */

bool weft__job_poll(struct weft__job *j, const struct weft_waker *waker, int *res, void **out)
{
    uint32_t s = atomic_load(&j->state);
    if (s == JOB_QUEUED) {
        awaker_register(&j->joiner, waker);
        s = atomic_load(&j->state); /* seq_cst: the Dekker re-check */
        if (s == JOB_QUEUED)
            return false;
    }
    *res = s == JOB_DONE ? 0 : -ECANCELED;
    *out = j->output;
    return true;
}

void weft__job_release(struct weft__job *j)
{
    awaker_unregister(&j->joiner);
    job_unref(j);
}

void weft__job_cancel(struct weft__job *j)
{
    struct blocking_pool *p = &j->rt->blocking;
    pthread_mutex_lock(&p->lock);
    bool queued = jobq_remove(j->cpu ? &p->cpu_jobs : &p->jobs, j);
    struct weft_waker k = { 0 };
    if (queued) {
        p->queued--;
        p->cpu_queued -= j->cpu;
        if (!j->cpu)
            k = take_room_waiter(p);
    }
    pthread_mutex_unlock(&p->lock);
    if (queued)
        job_finish(j, JOB_CANCELLED);
    wake_waiter(&k);
}

bool weft__job_wait(struct weft__job *j)
{
    atomic_store(&j->sleeper, 1);
    uint32_t s;
    while ((s = atomic_load(&j->state)) == JOB_QUEUED)
        syscall(SYS_futex, &j->state, FUTEX_WAIT_PRIVATE, JOB_QUEUED, NULL, NULL, 0);
    return s == JOB_DONE;
}

int weft__job_start(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                    struct weft__job **jobp)
{
    struct weft_blocking_join join;
    int err = spawn(rt, fn, arg, &join, false, false, NULL, NULL);
    *jobp = join.job;
    return err;
}

static enum weft_poll join_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_blocking_join *h = (struct weft_blocking_join *)f;
    if (!h->job) {
        h->res = -EINVAL;
        return WEFT_READY;
    }
    int res;
    if (!weft_coop_take(cx)) /* one unit of the budget, as the task's join handle */
        return WEFT_PENDING;
    if (!weft__job_poll(h->job, cx->waker, &res, &h->output)) {
        cx->budget++; /* no progress: give the unit back */
        return WEFT_PENDING;
    }
    h->res = res;
    weft__job_release(h->job);
    h->job = NULL;
    return WEFT_READY;
}

static void join_drop(struct weft_future *f)
{
    struct weft_blocking_join *h = (struct weft_blocking_join *)f;
    if (h->job) {
        weft__job_release(h->job);
        h->job = NULL;
    }
}

static const struct weft_future_ops join_ops = { join_poll, join_drop };

/* ---- the spawn that waits for room ------------------------------------------------ */

static enum weft_poll wait_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_spawn_blocking_wait *w = (struct weft_spawn_blocking_wait *)f;
    if (w->base.resume) /* polled again once ready: it stays so, spawning nothing more */
        return WEFT_READY;
    w->base.resume = 1; /* set back below while it waits */
    if (!w->rt || !w->fn) {
        w->res = -EINVAL;
        return WEFT_READY;
    }
    struct blocking_pool *p = &w->rt->blocking;
    bool given_room = false;
    if (w->waiting) {
        /* queued and notified change under the lock (a thread giving room). */
        pthread_mutex_lock(&p->lock);
        bool still = w->queued;
        if (still && !weft_waker_will_wake(&w->waker, cx->waker)) {
            weft_waker_drop(&w->waker);
            w->waker = weft_waker_clone(cx->waker);
        }
        w->notified = 0; /* the room is ours to take now (or lost to a try_) */
        pthread_mutex_unlock(&p->lock);
        if (still) {
            w->base.resume = 0;
            return WEFT_PENDING;
        }
        w->waiting = 0;
        given_room = true; /* only a thread giving room takes a waiter off */
    }
    int err = spawn(w->rt, w->fn, w->arg, &w->join, true, false, w, cx->waker);
    if (w->waiting) { /* on the list now (not -EAGAIN alone: a thread that
                       * could not start says so too, and nothing would wake us) */
        w->base.resume = 0;
        return WEFT_PENDING;
    }
    if (err && given_room) {
        /* Room given to us goes unused (no memory, no thread, shutdown):
         * pass it on, as a dropped waiter does. */
        pthread_mutex_lock(&p->lock);
        struct weft_waker next = take_room_waiter(p);
        pthread_mutex_unlock(&p->lock);
        wake_waiter(&next);
    }
    w->res = err;
    return WEFT_READY;
}

static void wait_drop(struct weft_future *f)
{
    struct weft_spawn_blocking_wait *w = (struct weft_spawn_blocking_wait *)f;
    if (!w->waiting)
        return;
    struct blocking_pool *p = &w->rt->blocking;
    struct weft_waker mine = { 0 }, next = { 0 };
    pthread_mutex_lock(&p->lock);
    if (w->queued) {
        if (w->wprev)
            w->wprev->wnext = w->wnext;
        else
            p->whead = w->wnext;
        if (w->wnext)
            w->wnext->wprev = w->wprev;
        else
            p->wtail = w->wprev;
        w->queued = 0;
        mine = w->waker;
        w->waker = (struct weft_waker){ 0 };
    } else if (w->notified) {
        /* Given room it will not use: pass it on. */
        w->notified = 0;
        next = take_room_waiter(p);
    }
    pthread_mutex_unlock(&p->lock);
    if (mine.ops)
        weft_waker_drop(&mine);
    wake_waiter(&next);
}

static const struct weft_future_ops wait_ops = { wait_poll, wait_drop };

void weft_spawn_blocking_wait_init(struct weft_spawn_blocking_wait *w, struct weft_runtime *rt,
                                   weft_blocking_fn *fn, void *arg)
{
    *w = (struct weft_spawn_blocking_wait){ .base = { &wait_ops, 0 }, .rt = rt, .fn = fn,
                                            .arg = arg };
}
