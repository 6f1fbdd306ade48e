/* internal.h: the runtime's shared internal types. Never installed. */
#ifndef WEFT_INTERNAL_H
#define WEFT_INTERNAL_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    uint32_t alloc_size;
    uint16_t shard;                  /* owned-list shard */
    uint8_t owned;                   /* on the owned list; changed only under RUNNING */
    int32_t result;                  /* 0 or -ECANCELED; published by COMPLETE */
    alignas(max_align_t) unsigned char future[];
};

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
};

bool weft__idle_to_searching(struct idle *idle);
bool weft__idle_from_searching(struct idle *idle);
bool weft__idle_to_parked(struct idle *idle, uint32_t worker, bool searching);
enum idle_wake { IDLE_STILL_PARKED, IDLE_NOTIFIED, IDLE_SELF };
enum idle_wake weft__idle_wake_self(struct idle *idle, uint32_t worker, bool has_work);
int64_t weft__idle_worker_to_notify(struct idle *idle);

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
    uint64_t next_id;
    int64_t live_delta;            /* task allocations - frees on this worker */
    bool searching;
    bool draining;                 /* shutdown: wakes go to the global queue */
    uint32_t event_countdown;      /* polls left until the next reactor turn */
    pthread_t thread;
    void **overflow;               /* room for half the queue + 1 */
    struct weft__io *io;           /* the worker's ring (io/io.h); its park word
                                    * is what other threads write */
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
    /* Shutdown (runtime.c): workers that dropped their queued tasks, and the
     * word that lets them stop once their rings are empty. */
    _Atomic uint32_t drained;
    _Atomic bool io_closing;
};

/* The worker running on this thread, or NULL. */
extern _Thread_local struct weft__worker *weft__current;

/* Schedules a notified task (the caller hands over its reference). */
void weft__schedule(struct weft_task *t, bool yield);
/* Worker thread entry point. */
void *weft__worker_main(void *arg);
/* Counts a task allocation about to be made, keeping the runtime's memory
 * alive; false (nothing counted) once the runtime is shutting down. And the
 * matching count of a free (runtime.c). */
bool weft__runtime_pin(struct weft_runtime *rt);
void weft__runtime_task_free(struct weft_runtime *rt);

void weft__inject_push_batch(struct weft_runtime *rt, void **items, uint32_t n);
void weft__inject_close_and_drain(struct weft_runtime *rt);
void weft__notify_parked(struct weft_runtime *rt);
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

#endif
