/* weft/blocking.h: the blocking pool, for work that would stall a worker.
 *
 * Code between two awaits runs on a worker thread: a 5 ms computation (or a
 * blocking syscall) there holds up every other task of that worker. Hand such
 * work to weft_spawn_blocking: it runs `fn(arg)` on a pool thread and gives a
 * join handle that is a future, so the task waits without blocking its worker.
 *
 * The pool starts threads on demand (one at a time while jobs wait and none
 * is idle, up to config.blocking_max_threads), lets idle threads exit after
 * config.blocking_keepalive_ms, and lowers a job that has run for 1 ms (a
 * compute job from its start) below the workers' OS priority
 * (config.blocking_priority; where the process may raise it back: root, or
 * CAP_SYS_NICE / RLIMIT_NICE) so that on a busy machine the workers' short
 * polls go first. docs/blocking.md has the whole story.
 *
 * Included by <weft.h>; not meant to be included on its own. */
#ifndef WEFT_BLOCKING_H
#define WEFT_BLOCKING_H

#include <stdbool.h>
#include <stdint.h>

#include "future.h"

struct weft_runtime;
struct weft__job;

/* A blocking job: runs on a pool thread; its return value is the job's output. */
typedef void *weft_blocking_fn(void *arg);

/* The join handle of a blocking job, a future. Awaiting it yields once the job
 * ran: `res` is 0 and `output` what fn returned; or `res` is -ECANCELED when
 * the runtime shut down before the job started (fn never ran). It spends one
 * unit of the cooperative budget when ready, as a task's join handle. Dropping the
 * handle before that detaches the job: it still runs, its output is ignored.
 * A spawn that fails leaves the handle empty (ops NULL): check the spawn's
 * result, an empty handle must not be awaited (weft_block_on gives -EINVAL). */
struct weft_blocking_join {
    struct weft_future base;
    struct weft__job *job;  /* NULL once finished or dropped */
    int32_t res;            /* when ready: 0, -ECANCELED, or -EINVAL (polled again) */
    void *output;           /* when ready with res 0: fn's return value */
};

/* Queues fn(arg) on the pool (never refused for room: the bounded queue's
 * limit does not apply). Works on workers and on any other thread, including
 * pool threads. With `join` NULL the job is detached. Returns 0, -EINVAL (NULL
 * rt or fn), -ENOMEM, -ESHUTDOWN, or a thread creation error when no pool
 * thread exists and none could be started (then nothing was queued). */
int weft_spawn_blocking(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                        struct weft_blocking_join *join);

/* As weft_spawn_blocking, for CPU-bound work: the job runs lowered to
 * config.blocking_priority from its start (when the pool lowers at all) and,
 * lowered, yields its CPU every config.compute_slice_us (its thread takes
 * SIGURG, unless the program handles SIGURG itself or the runtime's creator
 * blocks it: docs/blocking.md), first
 * moving onto its CPU a worker it sees waiting for one elsewhere (the
 * worker's affinity is narrowed until it runs again); at
 * most config.compute_max_threads compute jobs run at once (default: the
 * CPUs less one; never more than blocking_max_threads - 1 when that is 1 or
 * more), the rest waiting in order outside the queue_max bound, so a CPU is
 * left to the workers and a thread to blocking jobs. Not for jobs that block
 * on I/O, sleeps or locks: those belong to weft_spawn_blocking. */
int weft_spawn_compute(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                       struct weft_blocking_join *join);
/* As weft_spawn_blocking, but when no pool thread is idle and a bounded queue
 * (config.blocking_queue_max) already holds that many jobs waiting for one,
 * returns -EAGAIN at once (also the usual thread creation error, when no pool
 * thread could start). */
int weft_try_spawn_blocking(struct weft_runtime *rt, weft_blocking_fn *fn, void *arg,
                            struct weft_blocking_join *join);

/* A future that waits for room in the bounded queue, then queues fn(arg).
 * When ready, `res` is 0 and `join` holds the job's handle (drop it, or await
 * it, as any handle), or `res` is weft_spawn_blocking's error (-EAGAIN only
 * as a thread creation error: no pool thread existed and none could start,
 * so nothing would ever make room). Waiters get room in arrival order as far as the pool can tell;
 * a try_ spawn may still slip in first. Dropping it while it waits queues
 * nothing. Polled again once ready, it stays ready and queues nothing more. */
struct weft_spawn_blocking_wait {
    struct weft_future base;
    struct weft_runtime *rt;
    weft_blocking_fn *fn;
    void *arg;
    struct weft_blocking_join join;
    int32_t res;
    /* private: the pool's waiter list */
    struct weft_spawn_blocking_wait *wprev, *wnext;
    struct weft_waker waker;
    uint8_t waiting;        /* it went on the list (the poller's own flag) */
    uint8_t queued;         /* on the list (under the pool's lock) */
    uint8_t notified;       /* taken off it by a wake that gave it room (same) */
};

/* Initialises the waiting spawn of fn(arg) on `rt`. */
void weft_spawn_blocking_wait_init(struct weft_spawn_blocking_wait *w, struct weft_runtime *rt,
                                   weft_blocking_fn *fn, void *arg);

#endif
