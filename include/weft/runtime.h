/* weft/runtime.h: the runtime, tasks and join handles, and the basic combinators.
 *
 * Included by <weft.h>; not meant to be included on its own. */
#ifndef WEFT_RUNTIME_H
#define WEFT_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "future.h"
#include "metrics.h"

struct weft_runtime;
struct weft_task;

/* ---- configuration ------------------------------------------------------- */

/* Where the runtime gets its memory: the runtime itself, its queues, its
 * rings' operation slots and timer heaps, the heap buffers of receives that
 * find a ring's buffers all taken, and every task. `alloc` returns
 * memory aligned for any object (like malloc) or NULL; `free` gets back the
 * size that was asked for. (malloc serves the rest: channels, blocking jobs,
 * whose handles may outlive the runtime, a listener's accept queue, the
 * stall monitor, metrics snapshots and the task dump, the compute lane's
 * bookkeeping, the per-thread state of weft_block_on, and
 * weft_join_all_init's duplicate check over more than 16 children.) */
struct weft_allocator {
    void *(*alloc)(void *ctx, size_t size);
    void (*free)(void *ctx, void *p, size_t size);
    void *ctx;
};

#define WEFT_MAX_WORKERS 256u
#define WEFT_COMPUTE_SLICE_OFF UINT32_MAX /* config.compute_slice_us: no slices */

/* The OS priority of blocking-pool threads (config.blocking_priority). */
enum weft_blocking_priority {
    WEFT_BLOCKING_PRIO_DEFAULT = 0, /* = WEFT_BLOCKING_PRIO_IDLE (docs/blocking.md: measured);
                                     * jobs past 1 ms are lowered, and only when the process
                                     * may raise them back (CAP_SYS_NICE or RLIMIT_NICE) */
    WEFT_BLOCKING_PRIO_NORMAL,      /* the workers' own priority */
    WEFT_BLOCKING_PRIO_NICE,        /* nice 19: about 1.5% of a CPU against a busy worker */
    WEFT_BLOCKING_PRIO_IDLE,        /* SCHED_IDLE: runs when a CPU has nothing else to do */
};

struct weft_runtime_config {
    uint32_t workers;               /* worker threads; 0: one per online CPU; at most WEFT_MAX_WORKERS */
    const char *thread_name;        /* worker thread name prefix, at most 12 bytes; NULL: "weft-w" */
    uint32_t local_queue_size;      /* slots of each worker's run queue: a power of two in [16, 65536]; 0: 256 */
    uint32_t global_queue_interval; /* a worker checks the global queue at least every this many polls; 0: 61 */
    const struct weft_allocator *allocator; /* NULL: malloc/free; must outlive the runtime */
    /* I/O (weft/io.h): each worker's io_uring and provided buffers. */
    uint32_t io_entries;            /* SQ entries per ring: a power of two in [8, 4096]; 0: 256 (the CQ has 16x) */
    uint32_t io_buffers;            /* provided receive buffers per worker: a power of two in [1, 32768]; 0: 256 (all resident from a worker's first receive when io_buffers x io_buffer_size <= 16 MiB, on Linux 5.14 or later) */
    uint32_t io_buffer_size;        /* bytes per buffer, in [64, 1 MiB]; 0: 4096 */
    uint32_t event_interval;        /* a busy worker reaps completions at least every this many polls; 0: 61 */
    bool no_io_uring;               /* without io_uring: timers work, files go to the blocking pool, sockets give -EOPNOTSUPP */
    /* The blocking pool (weft/blocking.h). */
    uint32_t blocking_max_threads;  /* at most this many pool threads, in [1, 65536]; 0: 512 */
    uint32_t blocking_keepalive_ms; /* an idle pool thread exits after this; 0: 10000 */
    uint32_t blocking_queue_max;    /* bound seen by the try_ and waiting spawns; 0: none */
    uint32_t blocking_shutdown_ms;  /* destroy waits this long for running jobs; 0: 5000 */
    uint32_t blocking_priority;     /* enum weft_blocking_priority */
    uint32_t compute_max_threads;   /* weft_spawn_compute jobs running at once, in [1, 65536];
                                     * 0: the creating thread's CPUs less one, at least 1; never
                                     * above blocking_max_threads - 1 (or 1) */
    uint32_t compute_slice_us;      /* a lowered compute job yields its CPU (and hands it to a
                                     * waiting worker) every this many us (docs/blocking.md),
                                     * in [50, 1000000]; 0: 250;
                                     * WEFT_COMPUTE_SLICE_OFF: never */
    /* The stall detector (weft/metrics.h). */
    uint32_t stall_threshold_us;    /* a poll longer than this is a stall; 0: 10000 (10 ms) */
    bool no_stall_detector;         /* no stall reports (the monitor thread
                                     * stays if it lowers long blocking jobs:
                                     * blocking_priority not NORMAL) */
    weft_stall_fn *on_stall;        /* NULL: one line on stderr per stall */
    void *stall_ctx;                /* passed to on_stall */
};

/* Fills `cfg` with the defaults (every field zero or NULL). */
void weft_runtime_config_init(struct weft_runtime_config *cfg);

/* ---- runtime lifecycle ---------------------------------------------------- */

/* Creates a runtime and starts its workers; `cfg` may be NULL for the defaults.
 * Returns 0 and sets *out, or -EINVAL (bad config), -ENOMEM, an io_uring setup
 * error, or a thread creation error; on error nothing is left behind. Without
 * io_uring (ENOSYS/EPERM from the kernel) it still succeeds: see no_io_uring. */
int weft_runtime_create(struct weft_runtime **out, const struct weft_runtime_config *cfg);

/* Stops the workers, drops the future of every unfinished task exactly once
 * (their joiners see -ECANCELED), cancels the blocking jobs not yet started
 * (-ECANCELED), waits up to config.blocking_shutdown_ms for running ones (a
 * line on stderr says how many it left behind), and frees the runtime. On
 * one of the runtime's own threads (a worker, a blocking job, the stall
 * callback) it does nothing but say so on stderr (it would wait for itself);
 * likewise in a child process of fork() (the runtime's threads are the
 * parent's: a runtime does not survive fork, and the child must not use it;
 * so an atexit handler that destroys it is safe in a child that calls exit). */
void weft_runtime_destroy(struct weft_runtime *rt);

/* As weft_runtime_destroy, but waits at most `timeout_ms` (instead of
 * config.blocking_shutdown_ms) for blocking jobs still running, and returns
 * how many it left behind (0 when all finished: then nothing of the runtime
 * is left but what tasks held by handles and wakers keep, lifetimes rule 11;
 * otherwise their threads finish them and exit on their own, keeping the
 * runtime's memory, its allocator's use and the workers' eventfds until
 * then: a left job's join handle is ready only after its thread let go of
 * the runtime). Also prints nothing. -EINVAL for a NULL rt, -EDEADLK on one
 * of its own threads (a worker, a blocking job, the stall callback; nothing
 * done), -ECHILD in a child process of fork() (nothing done). */
int weft_runtime_shutdown(struct weft_runtime *rt, uint32_t timeout_ms);

/* Runs `f` to completion as a task on the workers (so its I/O has a ring)
 * while the calling thread sleeps. `f` stays at its address and is not
 * dropped when it finishes: drop it before destroying `rt` (a finished
 * weft_recv still holds one of the runtime's buffers). Returns 0, -EINVAL (NULL argument), -EDEADLK
 * (called on a worker thread, which must never block), -ECHILD (in a child
 * process of fork(): no worker there would poll it), -ENOMEM, -EAGAIN (the
 * process has no thread-specific key left: PTHREAD_KEYS_MAX), -ESHUTDOWN, or
 * -ECANCELED when the runtime was destroyed first (then `f` was dropped). */
int weft_block_on(struct weft_runtime *rt, struct weft_future *f);

/* The runtime whose worker is running the calling thread, or NULL. */
struct weft_runtime *weft_runtime_current(void);

/* Number of worker threads of `rt`. */
uint32_t weft_runtime_workers(const struct weft_runtime *rt);

/* ---- tasks and join handles ------------------------------------------------
 * A task owns a copy of a future and polls it on the workers until it is ready;
 * then the future is dropped at once (its drop releases what it holds but
 * leaves its output fields as they are). Its join handle is itself a future:
 * awaiting it yields 0 once the task finished (then weft_join_output gives the
 * finished future, where the output fields are), or -ECANCELED if it was
 * aborted or the runtime shut down first. Like every leaf it spends one unit
 * of the cooperative budget when ready (with none left it wakes its task and
 * is pending: a yield), as Tokio's JoinHandle does. */

struct weft_join {
    struct weft_future base;
    struct weft_task *task; /* NULL once detached */
    int32_t res;            /* set when the handle is ready: 0, -ECANCELED or -EINVAL */
    uint8_t joined;         /* the handle already returned ready once */
};

/* Spawns a task running a copy of `f` (`size` bytes, an initialised future
 * never polled; the caller's copy must not be used or dropped afterwards; the
 * copy is aligned for any standard type, max_align_t, and no more). Works
 * from workers and from any other thread; a spawn from another thread must
 * return before weft_runtime_destroy does (once destroy began it gives
 * -ESHUTDOWN). With `join` NULL the task is
 * detached; otherwise *join becomes its handle and must be dropped with
 * weft_future_drop (or detached) eventually. Returns 0, -EINVAL (NULL rt or f,
 * f without ops, size too small or over 1 MiB), -ENOMEM, or -ESHUTDOWN (the
 * runtime is shutting down); on error *join is left empty and nothing runs. */
int weft_spawn(struct weft_runtime *rt, const struct weft_future *f, size_t size,
               struct weft_join *join);

/* As weft_spawn, and names the task: the stall detector and weft_task_dump
 * show the name. `name` is not copied, and the stall monitor may read it
 * just after the task ended: it must live as long as the runtime (a string
 * literal, typically); NULL for none. */
int weft_spawn_named(struct weft_runtime *rt, const struct weft_future *f, size_t size,
                     struct weft_join *join, const char *name);

/* The finished (and dropped) future of a task whose handle returned 0, for
 * reading its output fields; valid until the handle is dropped. NULL before
 * that, or when the task was cancelled. */
void *weft_join_output(const struct weft_join *join);

/* Lets the task run on without a handle (as dropping the handle does: neither stops
 * the task; weft_join_abort does). The handle is left detached: polling it gives
 * -EINVAL. */
void weft_join_detach(struct weft_join *join);

/* Asks the task to stop: its future is dropped at its next scheduling point
 * (an idle task is queued for it; a worker drops it, or destroy's sweep), and
 * the joiner sees -ECANCELED, unless the poll in progress finished the task:
 * then 0 and its output. No effect on a finished task or a NULL, empty or
 * detached handle. Callable from any thread, but not racing a drop or detach
 * of the same handle on another thread (the handle is the caller's, as any
 * future; an abort handle has no such rule). */
void weft_join_abort(const struct weft_join *join);

/* True once the task finished or was cancelled (awaiting the handle is then ready at
 * once); false before that, and for a NULL, empty or detached handle. Any thread. */
bool weft_join_is_finished(const struct weft_join *join);

/* An abort handle (Tokio's AbortHandle): aborts a task from any thread, any number of
 * times, whatever becomes of its join handle meanwhile (dropped, detached, or dropped on
 * another thread at the same moment). It holds the task's memory, not its output, until
 * weft_abort_handle_drop. Abort, is_finished, clone and drop all stay valid after
 * weft_runtime_destroy (the task is then finished). One handle is one owner's, as any
 * future: give each thread its own clone rather than drop one handle while another thread
 * aborts through it. */
struct weft_abort_handle {
    struct weft_task *task; /* NULL: empty */
};

/* Makes *out an abort handle of join's task, called by the join handle's owner (not racing
 * its drop or detach). 0, or -EINVAL (NULL out; NULL, empty or detached join: *out is
 * then empty). */
int weft_join_abort_handle(const struct weft_join *join, struct weft_abort_handle *out);

/* Makes *out another handle of h's task (empty if h is NULL or empty; nothing if out
 * is NULL). Any thread. */
void weft_abort_handle_clone(const struct weft_abort_handle *h, struct weft_abort_handle *out);

/* As weft_join_abort, with no restriction on threads; no effect on a NULL or empty
 * handle, nor on a finished task. */
void weft_abort_handle_abort(const struct weft_abort_handle *h);

/* As weft_join_is_finished; false for a NULL or empty handle. */
bool weft_abort_handle_is_finished(const struct weft_abort_handle *h);

/* Gives up the handle's hold on the task and leaves it empty; no effect on a NULL or
 * empty one. */
void weft_abort_handle_drop(struct weft_abort_handle *h);

/* ---- task ids ----------------------------------------------------------------
 * Each task has an id (Tokio's task::Id): nonzero, never given to another task of the
 * same runtime (tasks of two runtimes may share one), the id weft_task_dump and the stall
 * reports print. */

/* The id of the task whose future the calling thread is polling now (a block_on's too),
 * or 0 outside a task's poll: a thread that is no worker, a future's drop, a blocking
 * job. */
uint64_t weft_task_id(void);

/* The id of the handle's task (what weft_task_id says inside it), from any thread but not
 * racing a drop or detach of the same handle; 0 for a NULL, empty or detached handle. */
uint64_t weft_join_id(const struct weft_join *join);

/* As weft_join_id, for an abort handle (not racing its drop); 0 for a NULL or empty one. */
uint64_t weft_abort_handle_id(const struct weft_abort_handle *h);

/* ---- basic futures --------------------------------------------------------- */

/* Ready on its second poll: the task goes to the back of its worker's queue
 * once, letting the others run. */
struct weft_yield_now {
    struct weft_future base;
};

/* Initialises a yield-now future. */
void weft_yield_now_init(struct weft_yield_now *y);

/* Ready when all of `n` futures are. Each poll polls every child not yet ready,
 * in turn, starting one child further along than the last poll did (so a
 * child that spends the cooperative budget at every poll cannot starve the
 * others); futs[i] is set to NULL once child i is ready. The children stay
 * owned by the caller (read their outputs, then drop them). */
struct weft_join_all {
    struct weft_future base;
    struct weft_future **futs;
    size_t n;
    size_t remaining;
    size_t next; /* the child the next poll starts at */
};

/* Initialises a join-all over futs[0..n) (the first poll starts at futs[0],
 * each later one a child further along). Returns 0,
 * -EINVAL for a NULL array with n > 0, a NULL / empty child or one listed
 * twice, or -ENOMEM (over 16 children, the duplicate check sorts a copy). */
int weft_join_all_init(struct weft_join_all *j, struct weft_future **futs, size_t n);

#endif
