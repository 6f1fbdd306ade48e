/* internal.h: the runtime's shared internal types. Never installed. */
#ifndef WEFT_INTERNAL_H
#define WEFT_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "weft.h"
#include "park.h"
#include "queue.h"

#define CACHE_LINE 64

/* ---- tasks (task.c) --------------------------------------------------------
 * The state word packs the flags below and, from bit 6 up, the reference
 * count. References are held by: the task being unfinished (one, released at
 * completion), the one queue entry or poller of a notified task, the join
 * handle, and every waker. The transitions are Tokio's (tokio/src/runtime/task/state.rs), written
 * anew; docs/design.md walks through them. */
#define TASK_RUNNING       (UINT64_C(1) << 0) /* a worker is polling the future */
#define TASK_COMPLETE      (UINT64_C(1) << 1) /* finished or cancelled; never polled again */
#define TASK_NOTIFIED      (UINT64_C(1) << 2) /* woken: queued, or to be requeued after the poll */
#define TASK_JOIN_INTEREST (UINT64_C(1) << 3) /* a join handle exists */
#define TASK_JOIN_WAKER    (UINT64_C(1) << 4) /* join_waker is set and owned by the task side */
#define TASK_CANCELLED     (UINT64_C(1) << 5) /* abort requested */
#define TASK_REF_ONE       (UINT64_C(1) << 6)

struct weft_task {
    _Atomic uint64_t state;
    struct weft_task *next;          /* global queue link */
    struct weft_task *owned_prev;    /* owned-list links, under the shard lock */
    struct weft_task *owned_next;
    struct weft_runtime *rt;
    struct weft_waker join_waker;    /* see TASK_JOIN_WAKER */
    uint64_t id;
    const char *name;                /* weft_spawn_named's, or NULL */
    uint32_t alloc_size;
    int32_t result;                  /* 0 or -ECANCELED; published by COMPLETE */
    uint16_t shard;                  /* owned-list shard */
    uint8_t owned;                   /* on the owned list; changed only under RUNNING */
    /* Metrics, 32 bits each so that the header stays at 96 bytes (a task
     * with a 24-byte future then fits glibc's fastbins: 128 B chunks).
     * sched_stamp: STAMP_SHIFT units of CLOCK_MONOTONIC when a sampled wake
     * queued it (0: not sampled); written by the holder of the NOTIFIED
     * reference, read by the next poller. polled_ms: the worker's `clock`
     * at its last poll's start (refreshed at every timed poll and every
     * park, so behind by at most WEFT_METRICS_SAMPLE polls); written by the
     * poller, read by weft_task_dump (relaxed, under the owned-list lock). */
    uint32_t sched_stamp;
    _Atomic uint32_t polled_ms;
    alignas(max_align_t) unsigned char future[];
};

/* sched_stamp: 32 ns units, wrapping every 137 s (longer latencies than that
 * would be misread; a histogram of them would say little anyway). */
#define STAMP_SHIFT 5
/* polled_ms: about 1.05 ms units (2^20 ns), wrapping every 52 days. */
#define POLLED_SHIFT 20

static inline struct weft_future *task_future(struct weft_task *t)
{
    return (struct weft_future *)t->future;
}

/* Polls a notified task taken from a queue (consumes that reference). */
void weft__task_run(struct weft_task *t, struct weft__worker *w);
/* Takes / releases a reference (to take one, the caller holds one already, or
 * the owned-list lock). */
void weft__task_ref(struct weft_task *t);
void weft__task_unref(struct weft_task *t);
/* A task that will never run (shutdown): cancels it unless it finished, and
 * releases the caller's reference (a queue's, or one from weft__task_ref).
 * Returns whether it cancelled the task. */
bool weft__task_drop_notified(struct weft_task *t);

/* ---- owned list (runtime.c): every task that may sit idle, for shutdown -----
 * A task joins it the first time its poll returns PENDING (a task that
 * finishes in its first poll never does: no lock on the spawn-and-run path)
 * and leaves it when it completes. Queued tasks are found through the queues. */
/* Padded (not aligned: the allocator hook promises only malloc's alignment)
 * so that two shards never share a cache line. */
struct owned_shard {
    atomic_flag lock;
    struct weft_task *head;
    char pad[CACHE_LINE - sizeof(atomic_flag) - sizeof(struct weft_task *)];
};

/* The shard's spinlock: held for a few pointer writes (and weft_task_dump's copy). */
void weft__owned_lock(struct owned_shard *s);
void weft__owned_unlock(struct owned_shard *s);
/* Adds a running task; returns -ESHUTDOWN once the runtime closed the list. */
int weft__owned_insert(struct weft_runtime *rt, struct weft_task *t, uint32_t shard);
void weft__owned_remove(struct weft_runtime *rt, struct weft_task *t);

/* ---- the global (inject) queue (sched.c) ---------------------------------- */
struct inject {
    pthread_mutex_t lock;
    struct weft_task *head, *tail;
    _Atomic size_t len;  /* written under the lock; read without it as a hint */
    bool closed;         /* under the lock: pushes release their reference */
};

/* ---- idle workers (idle.c) -------------------------------------------------
 * The count of searching and unparked workers, and the list of parked ones.
 * The protocol that keeps a wakeup from being lost is in idle.c's comment. */
struct idle {
    _Atomic uint32_t state;      /* searching in the low 16 bits, unparked above */
    pthread_mutex_t lock;        /* guards sleepers */
    uint32_t nsleepers;
    uint32_t nworkers;
    uint32_t *sleepers;
    uint8_t *taken_busy;         /* per worker, under the lock: taken off the list
                                  * while it ran, so counted unparked, not searching */
};

bool weft__idle_to_searching(struct idle *idle);
bool weft__idle_from_searching(struct idle *idle);
bool weft__idle_to_parked(struct idle *idle, uint32_t worker, bool searching);
enum idle_wake { IDLE_STILL_PARKED, IDLE_NOTIFIED, IDLE_TAKEN_BUSY, IDLE_SELF };
enum idle_wake weft__idle_wake_self(struct idle *idle, uint32_t worker, bool has_work);
/* A parked worker to wake, other than `skip` (or -1); one asleep rather
 * than one still listed while it runs (*asleep: found asleep and marked,
 * to be kicked; else to be unparked). */
struct weft__worker;
int64_t weft__idle_worker_to_notify(struct idle *idle, const struct weft__worker *workers,
                                    uint32_t skip, bool *asleep);

/* ---- metrics (metrics.c) ---------------------------------------------------
 * Per-worker counters, written only by their worker with a relaxed load and
 * store (a plain add on x86, no lock prefix) and read by any thread. */
#define HIST_BUCKETS WEFT_HIST_BUCKETS
struct hist {
    _Atomic uint64_t buckets[HIST_BUCKETS];
};

struct wstats {
    _Atomic uint64_t polls, steals, steal_ops, parks, local_schedules, overflows,
        budget_yields, lifo_hits, busy_ns, sqes, cqes, enters, cq_overflows, spawns;
    _Atomic uint64_t live_delta;   /* task allocations - frees on this worker (read as int64_t) */
    _Atomic uint64_t busy_since;   /* when it last left its park; 0 while parked */
    _Atomic uint64_t busy_seq;     /* odd while a park moves busy_since into busy_ns */
    /* The poll in progress, for the stall monitor: a seqlock whose sequence
     * is odd during a poll (sched.c's poll_begin/poll_end, metrics.c). */
    _Atomic uint64_t poll_seq;
    _Atomic uint64_t poll_task;
    _Atomic(const char *) poll_name;
    /* The monitor's first sighting of the poll in progress (its odd sequence,
     * and when), and the last poll whose stall was reported: a poll the
     * monitor saw but could not look at again in time (starved of CPU) is
     * reported by the worker itself as it ends (metrics.c). */
    _Atomic uint64_t seen_seq, seen_ns, reported_seq;
    struct hist poll_ns, sched_latency;
    char pad[CACHE_LINE];
    _Atomic uint64_t unparks;      /* RMW by the unparking threads: own line */
    char pad2[CACHE_LINE];
};

static inline void stat_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void weft__hist_record(struct hist *h, uint64_t ns);

/* Around every poll (task.c): the counters, the sampled timings, and the
 * stall monitor's seqlock. */
struct poll_timing {
    uint64_t seq;
    uint64_t start;  /* ns, when this poll is timed; else 0 */
};

static inline struct poll_timing weft__poll_begin(struct weft__worker *w, struct weft_task *t);
static inline void weft__poll_end(struct weft__worker *w, const struct poll_timing *pt,
                                  bool budget_spent);

/* The worker's report of a stall the monitor saw start but missed the end of
 * (called by weft__poll_end, rarely: only for polls the monitor saw). */
void weft__stall_late(struct weft__worker *w, uint64_t seq);

struct weft__monitor;
/* Starts the stall monitor thread (unless the config turns it off). */
int weft__monitor_start(struct weft_runtime *rt, const struct weft_runtime_config *cfg);
void weft__monitor_stop(struct weft_runtime *rt);
struct blocking_pool;
/* Wakes a monitor dozing on p->monitor_dozing (metrics.c); one load when it
 * does not doze. */
void weft__monitor_rouse(struct blocking_pool *p);

/* ---- the blocking pool (blocking.c) ----------------------------------------- */
struct weft__jobq {
    struct weft__job *head, *tail;
};

struct blocking_pool {
    pthread_mutex_t lock;
    pthread_cond_t work;           /* idle threads wait here for a job */
    pthread_cond_t gone;           /* shutdown waits here for threads to exit */
    struct weft__jobq jobs;        /* queued jobs */
    struct weft__jobq cpu_jobs;    /* queued compute jobs (weft_spawn_compute) */
    struct weft_spawn_blocking_wait *whead, *wtail; /* spawns waiting for room */
    struct pool_slot *slots;       /* the threads, for the monitor's demotions */
    uint32_t queued, threads, idle; /* queued: in both queues */
    uint32_t cpu_queued;           /* of which compute jobs (not under queue_max) */
    uint32_t computing, compute_max; /* compute jobs running; at most this many */
    uint64_t compute_slice_ns;     /* a lowered compute job yields this often; 0: never */
    uint32_t starting;             /* threads started and not yet running their loop */
    uint32_t telling;              /* threads past their job, telling its handle (job_finish) */
    _Atomic uint32_t notified;     /* changed under the lock; a spinning idle thread peeks */
    uint32_t max_threads, queue_max, priority;
    bool demotes;                  /* the monitor lowers long jobs (blocking.c) */
    _Atomic uint32_t monitor_dozing; /* futex word: 1 while the monitor sleeps longer
                                      * than its demotion pace (metrics.c) */
    int base_policy, base_nice;    /* the workers' priority: their creator's */
    struct sched_param base_param;
    uint64_t keepalive_ns;
    uint64_t jobs_done;
    uint32_t gone_holds;           /* threads that exited after the close, their holds on rt
                                    * left for destroy to release */
    bool closed;
    bool abandoned;                /* destroy stopped waiting: threads release their own */
};

/* A pool thread as the monitor sees it; on the pool's list, under its lock. */
struct pool_slot {
    struct pool_slot *next, **pprev;
    pid_t tid;
    _Atomic uint64_t job_start; /* ns, from just before the job's fn runs (after the
                             * pool's own work, which never runs lowered); 0
                             * between jobs (cleared under the lock) */
    _Atomic bool demoted;   /* lowered by the monitor during this job: set under
                             * the lock, cleared by the thread */
    _Atomic bool ending;    /* the job's fn returned: the monitor lowers it no
                             * more (narrows the window in which it would lower
                             * a thread about to take the lock; the second
                             * exchange of `demoted` closes it) */
};

/* ---- the pool's priorities (blocking_prio.c) ---- */
/* Saves the workers' priority (the calling thread's: the runtime's creator). */
void weft__prio_init(struct blocking_pool *p);
/* Whether the process may raise a thread back to the workers' priority. */
bool weft__prio_may_raise(const struct blocking_pool *p);
/* Lowers thread `tid` (0: the caller) as `prio` says; false if that failed. */
bool weft__prio_lower(pid_t tid, uint32_t prio);
/* The calling thread back to the workers' priority; false if that failed. */
bool weft__prio_restore(const struct blocking_pool *p);
void weft__blocking_init(struct weft_runtime *rt, const struct weft_runtime_config *cfg);
/* The monitor's call: lowers the priority of jobs running for over 1 ms.
 * Returns whether a job runs still unlowered (the monitor then looks again
 * soon; lowered ones need no more looks). */
bool weft__blocking_demote(struct weft_runtime *rt, uint64_t now);
/* Closes the pool, cancels queued jobs, waits up to `timeout_ms` for the
 * threads to exit; returns how many still run a job. *gone_holds: the holds
 * on rt of the threads that exited, for the caller to release. */
uint32_t weft__blocking_shutdown(struct weft_runtime *rt, uint32_t timeout_ms,
                                 uint32_t *gone_holds);
void weft__blocking_fini(struct weft_runtime *rt);
/* ---- hand-over (handover.c) ------------------------------------------------
 * A thread running a lowered job looks at the workers now and then (a
 * compute job at each slice's end); a worker seen waiting for a CPU is moved
 * to the looker's. The looker's memory of its last looks: */
struct weft__looker {
    struct weft_runtime *rt;
    struct weft__seen *seen;       /* nworkers entries */
    uint32_t next;                 /* the worker the next look starts at */
};
/* Allocates the looker's memory and opens the runtime's /proc files of the
 * workers not open yet (before the job is lowered): false without memory. */
bool weft__looker_init(struct weft__looker *l, struct weft_runtime *rt);
void weft__looker_fini(struct weft__looker *l);
/* One look (async-signal-safe) at up to a few workers: the first seen
 * runnable at its last look and this one without having run in between, on
 * a CPU other than `cpu`, is moved to `cpu` (counted in weft__handovers). */
void weft__looker_look(struct weft__looker *l, int cpu);
/* The worker: takes its own affinity back if a looker narrowed it. */
void weft__handover_undo(struct weft__worker *w);
/* The worker, about to start a thread: *mask becomes its affinity as it is
 * apart from a looker's narrowing, even one made meanwhile. False when the
 * affinity cannot be read (the new thread then inherits). */
bool weft__handover_own_mask(struct weft__worker *w, cpu_set_t *mask);
/* Narrows worker w (thread tid) to `cpu`, saving its affinity for undo; false
 * when another looker holds it or the affinity excludes cpu. */
bool weft__handover_move(struct weft__worker *w, pid_t tid, int cpu);
/* Times a worker was moved, in the whole process. */
uint64_t weft__handovers(void);
/* The runtime's copy of the workers' /proc stat files (opened by the first
 * looker, closed with the runtime). */
struct stat_files {
    pthread_mutex_t lock;          /* taken by lookers opening files */
    _Atomic int *fds;              /* nworkers entries, -1 until opened */
};
void weft__stat_files_close(struct weft_runtime *rt);

/* slice.c: a lowered compute job yields its CPU every slice (SIGURG from a
 * per-thread timer, a handler that looks at the workers, then yields). A pool
 * thread's slicer: ready (handler ours, timer made: false if it cannot be
 * sliced; called before the thread is lowered), start (every `ns`), stop,
 * fini (at the thread's exit). */
struct weft__slicer {
    timer_t timer;
    bool made;
    _Atomic bool on;               /* between start and stop (the handler's test) */
    uint64_t slice_ns;
    uint64_t ran_ns;               /* the thread's CPU time at the last slice's end */
    sigset_t mask;                 /* the thread's signal mask before the job's start */
    struct weft__looker looker;
};
bool weft__slice_ready(struct weft__slicer *s, struct weft_runtime *rt, pid_t tid);
bool weft__slice_start(struct weft__slicer *s, uint64_t ns);
void weft__slice_stop(struct weft__slicer *s);
void weft__slice_fini(struct weft__slicer *s);
/* True when the calling thread blocks SIGURG (its program reads it itself). */
bool weft__slice_urg_blocked(void);
/* Times a compute job yielded at a slice's end, in the whole process. */
uint64_t weft__compute_slices(void);

/* Jobs for the runtime's own use (io/stream.c's file fallback), a join
 * handle without the future. Start: as weft_spawn_blocking, unbounded. Poll:
 * true once finished, with res (0 or -ECANCELED) and fn's output; otherwise
 * `waker` is registered. Wait: sleeps until the job finished (whatever fn
 * uses stays in use until then); true if it ran. Release: drops the handle. */
int weft__job_start(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                    struct weft__job **jobp);
bool weft__job_poll(struct weft__job *j, const struct weft_waker *waker, int *res, void **out);
bool weft__job_wait(struct weft__job *j);
/* Takes the job off the queue if no thread started it yet (it then finishes
 * as cancelled, and a wait returns at once). Any thread, while the runtime
 * lives. */
void weft__job_cancel(struct weft__job *j);
void weft__job_release(struct weft__job *j);

/* ---- workers and the runtime ---------------------------------------------- */
struct weft__worker {
    struct queue run;              /* lock-free: owner pushes/pops, others steal */
    struct weft_task *lifo;        /* task woken by the running one; owner only */
    struct weft_runtime *rt;
    struct weft_task *running;     /* the task being polled, or NULL */
    bool self_woken;               /* `running` woke itself by ref during its poll */
    uint32_t index;
    uint32_t global_countdown;     /* polls left until the global queue goes first */
    uint32_t lifo_polls;
    uint32_t rand;                 /* xorshift state for victim choice */
    bool searching;
    bool listed;                   /* on the idle sleepers list (sched.c: park_worker) */
    bool draining;                 /* shutdown: wakes go to the global queue */
    uint32_t event_countdown;      /* polls left until the next reactor turn */
    pthread_t thread;
    void **overflow;               /* room for half the queue + 1 */
    struct weft__io *io;           /* the worker's ring (io/io.h); its park word
                                    * is what other threads write */
    _Atomic uint32_t clock;        /* POLLED_SHIFT units, read at timed polls and parks */
    struct wstats *stats;          /* its metrics, read by any thread */
    /* For handover.c: the worker's thread id (0 until it runs; release-
     * stored after cpu_clock), and while a looker has narrowed its affinity
     * to handed_cpu, what it was (`handed` says who holds the two). */
    _Atomic pid_t tid;
    clockid_t cpu_clock;
    _Atomic uint32_t handed;
    int handed_cpu;
    cpu_set_t handed_mask;
    char pad[CACHE_LINE];          /* keeps the next worker's queue off these lines */
};

struct weft_runtime {
    struct weft_allocator alloc;
    uint32_t nworkers;
    uint32_t global_interval;
    uint32_t event_interval;
    uint32_t queue_size;
    struct weft__worker *workers;
    struct owned_shard *shards;
    _Atomic bool owned_closed;
    _Atomic bool shutdown;
    /* The padding keeps the contended words on lines of their own. */
    char pad1[CACHE_LINE];
    _Atomic int64_t live;          /* LIVE_BIAS + foreign allocations - frees (runtime.c) */
    _Atomic uint64_t foreign_ids;
    char pad2[CACHE_LINE];
    struct inject inject;
    char pad3[CACHE_LINE];
    struct idle idle;
    struct stat_files stat_files;
    /* Shutdown (runtime.c): workers that dropped their queued tasks, and the
     * word that lets them stop once their rings are empty. */
    _Atomic uint32_t drained;
    _Atomic bool io_closing;
    _Atomic uint64_t remote_schedules; /* wakes and spawns from other threads */
    _Atomic uint64_t stalls;
    struct blocking_pool blocking;
    struct weft__monitor *monitor;     /* NULL: no monitor thread */
    /* The stall detector's settings, fixed before any worker polls. */
    uint64_t stall_threshold_ns;       /* 0: no detector */
    weft_stall_fn *stall_fn;
    void *stall_ctx;
    uint32_t blocking_shutdown_ms;
    uint32_t fork_gen;             /* the process's fork generation at create (runtime.c) */
};

/* The worker running on this thread, or NULL. */
extern _Thread_local struct weft__worker *weft__current;
/* The runtime whose blocking pool runs this thread, or NULL (blocking.c). */
extern _Thread_local const struct weft_runtime *weft__pool_of;
/* The runtime whose monitor thread this is, or NULL (metrics.c). */
extern _Thread_local const struct weft_runtime *weft__monitor_of;

/* Schedules a notified task (the caller hands over its reference). */
void weft__schedule(struct weft_task *t, bool yield);
/* Worker thread entry point. */
void *weft__worker_main(void *arg);
/* Counts a task allocation about to be made, keeping the runtime's memory
 * alive; false (nothing counted) once the runtime is shutting down. And the
 * matching count of a free (runtime.c). */
bool weft__runtime_pin(struct weft_runtime *rt);
void weft__runtime_task_free(struct weft_runtime *rt);
/* Keeps the runtime's memory alive: a blocking-pool thread while it runs
 * (hold: while the pool is open; release: its very last use of rt), and a
 * ring owner waking a worker that waits on it (io/op.c, signal_waiter). The
 * hold must come before destroy's final count (see weft__runtime_hold). */
void weft__runtime_hold(struct weft_runtime *rt);
/* Task allocations counted outside the workers (metrics: live tasks). */
int64_t weft__runtime_foreign_live(struct weft_runtime *rt);
void weft__runtime_release(struct weft_runtime *rt);

void weft__inject_push_batch(struct weft_runtime *rt, void **items, uint32_t n);
void weft__inject_close_and_drain(struct weft_runtime *rt);
/* Wakes a parked worker (if no worker is searching), other than `skip`:
 * a worker still listed while it runs (sched.c: park_worker) is no help to
 * the tasks queued behind its own long poll. */
void weft__notify_parked_except(struct weft_runtime *rt, uint32_t skip);
static inline void weft__notify_parked(struct weft_runtime *rt)
{
    weft__notify_parked_except(rt, UINT32_MAX);
}
/* Ends a worker's park (any thread). */
void weft__worker_unpark(struct weft__worker *w);
/* A stopping worker: drops its queued tasks, then keeps its ring going until
 * destroy lets it go and nothing is in flight (sched.c). */
void weft__worker_drain(struct weft__worker *w);

static inline void *rt_alloc(struct weft_runtime *rt, size_t size)
{
    return rt->alloc.alloc(rt->alloc.ctx, size);
}

static inline void rt_free(struct weft_runtime *rt, void *p, size_t size)
{
    rt->alloc.free(rt->alloc.ctx, p, size);
}

/* ---- the poll's metrics (after struct weft__worker) ---------------------------- */

static inline struct poll_timing weft__poll_begin(struct weft__worker *w, struct weft_task *t)
{
    struct wstats *st = w->stats;
    uint64_t polls = atomic_load_explicit(&st->polls, memory_order_relaxed);
    stat_add(&st->polls, 1);
    struct poll_timing pt = { atomic_load_explicit(&st->poll_seq, memory_order_relaxed), 0 };
    bool timed = polls % WEFT_METRICS_SAMPLE == 0;
    if (timed || t->sched_stamp) {
        uint64_t now = weft_now_ns();
        if (t->sched_stamp) {
            uint32_t waited = (uint32_t)(now >> STAMP_SHIFT) - t->sched_stamp;
            weft__hist_record(&st->sched_latency, (uint64_t)waited << STAMP_SHIFT);
            t->sched_stamp = 0;
        }
        pt.start = timed ? now : 0;
        atomic_store_explicit(&w->clock, (uint32_t)(now >> POLLED_SHIFT), memory_order_relaxed);
    }
    atomic_store_explicit(&t->polled_ms, atomic_load_explicit(&w->clock, memory_order_relaxed),
                          memory_order_relaxed);
    /* Seqlock write side (the reader is metrics.c's monitor). The release
     * fence orders the previous poll's even sequence before the new task's
     * fields: a reader that reads those fields then sees the sequence moved
     * on. The release store publishes the fields with the odd sequence. On
     * x86 all of this compiles to plain moves. */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&st->poll_task, t->id, memory_order_relaxed);
    atomic_store_explicit(&st->poll_name, t->name, memory_order_relaxed);
    atomic_store_explicit(&st->poll_seq, pt.seq + 1, memory_order_release);
    return pt;
}

static inline void weft__poll_end(struct weft__worker *w, const struct poll_timing *pt,
                                  bool budget_spent)
{
    struct wstats *st = w->stats;
    atomic_store_explicit(&st->poll_seq, pt->seq + 2, memory_order_release);
    if (atomic_load_explicit(&st->seen_seq, memory_order_relaxed) == pt->seq + 1)
        weft__stall_late(w, pt->seq + 1);
    if (pt->start)
        weft__hist_record(&st->poll_ns, weft_now_ns() - pt->start);
    if (budget_spent)
        stat_add(&st->budget_yields, 1);
}

#endif
