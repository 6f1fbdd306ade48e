/* weft/metrics.h: runtime metrics, the stall detector and the task dump.
 *
 * Metrics are always on. Each worker counts into its own cache lines with
 * plain (relaxed) stores; weft_metrics_read sums them from any thread. The
 * snapshot is consistent enough, not atomic: counters read a few nanoseconds
 * apart may disagree by the work done meanwhile. Timing is sampled: one poll
 * in WEFT_METRICS_SAMPLE is timed for the poll-duration histogram, one wake in
 * WEFT_METRICS_SAMPLE for the schedule-latency one (a clock read costs about
 * as much as a whole yield); busy time is measured at every park.
 *
 * The stall detector is a monitor thread that looks at every worker each
 * threshold/4 (slowing to once per threshold while it finds no poll going
 * on) and reports a worker that has been inside one poll for longer than the
 * threshold, once per stall (never early; at most one look late, so a poll
 * shorter than 1.25x the threshold, 2.25x after a quiet spell, may go
 * unreported). docs/blocking.md explains how to read both.
 *
 * Included by <weft.h>; not meant to be included on its own. */
#ifndef WEFT_METRICS_H
#define WEFT_METRICS_H

#include <stdint.h>
#include <stdio.h>

struct weft_runtime;

#define WEFT_METRICS_SAMPLE 64u

/* ---- histograms ------------------------------------------------------------
 * Log-linear buckets of nanoseconds: bucket 0 holds [0, 128); then every power
 * of two from 128 ns up is split into 4 equal buckets (128, 160, 192, 224, 256,
 * 320, ...), up to the last bucket, which holds everything from about 69 s. */
#define WEFT_HIST_BUCKETS 118u

struct weft_histogram {
    uint64_t count;                     /* samples */
    uint64_t buckets[WEFT_HIST_BUCKETS];
};

/* The smallest value (ns) bucket `i` holds; UINT64_MAX for i out of range. */
uint64_t weft_histogram_bucket_min(uint32_t i);

/* An upper bound (ns) of the q-quantile (0 <= q <= 1) of `h`: the top of the
 * bucket holding it; 0 for an empty histogram or a NULL one. */
uint64_t weft_histogram_quantile(const struct weft_histogram *h, double q);

/* ---- the snapshot ---------------------------------------------------------- */

struct weft_worker_metrics {
    uint64_t polls;              /* futures polled (task polls) */
    uint64_t steals;             /* tasks this worker stole from others */
    uint64_t steal_ops;          /* steal operations that got at least one task */
    uint64_t parks;              /* times it went to sleep */
    uint64_t unparks;            /* wake-ups other threads sent it */
    uint64_t local_schedules;    /* wakes and spawns onto its own queue or LIFO slot */
    uint64_t overflows;          /* times its queue was full and spilled half to the global queue */
    uint64_t budget_yields;      /* polls that ended because the coop budget was spent */
    uint64_t lifo_hits;          /* tasks run from the LIFO slot */
    uint64_t busy_ns;            /* time not parked */
    uint64_t sqes;               /* SQEs submitted */
    uint64_t cqes;               /* CQEs reaped */
    uint64_t enters;             /* io_uring_enter calls */
    uint64_t cq_overflows;       /* enters that found its completion queue full, the kernel
                                  * holding completions back (none lost; a larger
                                  * config.io_entries avoids it) */
    uint64_t queue_depth;        /* tasks in its run queue now */
    uint32_t ring_flags;         /* the IORING_SETUP_* flags its ring was created with (the
                                  * best rung of docs/io.md's ladder this kernel takes, and
                                  * CQSIZE; CQSIZE alone: a plain ring); WEFT_NO_RING: none */
    uint32_t ring_buffers;       /* buffers of its provided-buffer ring (config.io_buffers); 0:
                                  * none (a kernel before 5.19: receives read into heap
                                  * buffers, docs/io.md) */
};

#define WEFT_NO_RING UINT32_MAX

struct weft_metrics {
    uint32_t workers;
    struct weft_worker_metrics worker[256]; /* [0, workers) are filled */
    /* global */
    uint64_t global_queue_depth;    /* tasks in the global (inject) queue */
    uint64_t remote_schedules;      /* wakes and spawns from outside the workers (each weft_block_on is one) */
    uint64_t live_tasks;            /* spawned and not yet freed */
    uint64_t spawned;               /* tasks spawned since creation (each weft_block_on is one) */
    uint64_t stalls;                /* stalls the detector reported */
    /* the blocking pool */
    uint64_t blocking_threads;      /* pool threads alive */
    uint64_t blocking_idle;         /* of which waiting for a job */
    uint64_t blocking_queue_depth;  /* jobs queued, not yet started */
    uint64_t blocking_jobs;         /* jobs run to completion */
    uint64_t compute_running;       /* of the pool's running jobs, weft_spawn_compute ones */
    uint64_t compute_slices;        /* times a compute job yielded its CPU (every runtime of the
                                     * process: the count is the signal handler's) */
    uint64_t compute_handovers;     /* times a compute job gave its CPU to a worker seen waiting
                                     * for one (every runtime of the process) */
    /* histograms, summed over the workers (sampled: see above) */
    struct weft_histogram poll_ns;        /* how long one poll took */
    struct weft_histogram sched_latency;  /* woken (or spawned) to polled */
};

/* Fills *m with a snapshot of `rt`'s metrics. Any thread, any time while rt
 * lives. Returns 0 or -EINVAL (NULL argument). */
/* (struct weft_metrics is about 30 KB, for up to 256 workers: a static or
 * heap one, not a local on a small stack.) */
int weft_metrics_read(struct weft_runtime *rt, struct weft_metrics *m);

/* Writes a snapshot as text a person can read (docs/blocking.md explains
 * every line) to `out`. Returns 0, -EINVAL or -EIO (the write failed). */
int weft_metrics_dump(struct weft_runtime *rt, FILE *out);

/* Writes one line per live task that has been polled at least once and has
 * not finished, or is being polled now: id, state, the time since its last
 * poll started (in ~1 ms units of a worker clock refreshed at every timed
 * poll and every park, so it may be short by up to WEFT_METRICS_SAMPLE polls'
 * time), and name. Tasks never polled yet, and finished tasks a join handle
 * still holds, are only counted, roughly, on a last line. Returns the number
 * of tasks listed, -EINVAL or -ENOMEM or -EIO. A diagnostic: it copies each
 * worker's task list under that list's lock, which the worker takes to add
 * or remove a task, so with a million tasks a worker may wait ~0.1-0.3 s;
 * call it from a thread at the workers' priority (a lowered one, such as a
 * long blocking job, holds the lock longer). */
int weft_task_dump(struct weft_runtime *rt, FILE *out);

/* ---- the stall detector ------------------------------------------------------ */

/* One stall: worker `worker` has been polling task `task_id` (named
 * `task_name`, or NULL) for at least `elapsed_ns` without returning. */
struct weft_stall {
    uint32_t worker;
    uint64_t task_id;
    const char *task_name;
    uint64_t elapsed_ns;
};

/* The stall callback: runs on the monitor thread, once per stall, as the
 * poll goes on (it may have ended just before the call, and the task with
 * it; or, when the monitor was starved of CPU, on the worker right after
 * that poll). Calls can overlap (the monitor's for one worker, a worker's
 * for its own stall), so it must be thread-safe; it must not block for long
 * (on a worker it holds that worker), nor destroy its runtime (refused:
 * weft_runtime_shutdown gives -EDEADLK there). */
typedef void weft_stall_fn(const struct weft_stall *stall, void *ctx);

#endif
