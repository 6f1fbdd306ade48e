/* runtime.c: runtime creation and shutdown, the owned-task list, block_on. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "../io/io.h"

#define DEFAULT_QUEUE_SIZE 256u
#define DEFAULT_GLOBAL_INTERVAL 61u
#define DEFAULT_EVENT_INTERVAL 61u
#define DEFAULT_BLOCKING_SHUTDOWN_MS 5000u
/* The live count starts here, for the runtime's own share: it cannot reach
 * zero before weft_runtime_destroy takes the bias away. */
#define LIVE_BIAS (INT64_C(1) << 62)

static void *malloc_alloc(void *ctx, size_t size)
{
    (void)ctx;
    return malloc(size);
}

static void malloc_free(void *ctx, void *p, size_t size)
{
    (void)ctx;
    (void)size;
    free(p);
}

static const struct weft_allocator malloc_allocator = { malloc_alloc, malloc_free, NULL };

void weft_runtime_config_init(struct weft_runtime_config *cfg)
{
    *cfg = (struct weft_runtime_config){ 0 };
}

/* ---- the owned list ------------------------------------------------------------
 * Every task that returned PENDING and has not finished is on one shard's
 * list, so shutdown can find the idle ones (which sit in no queue) and drop
 * their futures. Only workers insert, each into its own shard. The shard lock
 * is a spinlock: it is held for a few pointer writes. */

void weft__owned_lock(struct owned_shard *s)
{
    /* Acquire pairs with the release in weft__owned_unlock. */
    while (atomic_flag_test_and_set_explicit(&s->lock, memory_order_acquire))
        __builtin_ia32_pause();
}

void weft__owned_unlock(struct owned_shard *s)
{
    atomic_flag_clear_explicit(&s->lock, memory_order_release);
}

int weft__owned_insert(struct weft_runtime *rt, struct weft_task *t, uint32_t shard)
{
    struct owned_shard *s = &rt->shards[shard];
    t->shard = (uint16_t)shard;
    t->owned_prev = NULL;
    weft__owned_lock(s);
    /* Checked under the lock: weft_runtime_destroy sets it, then takes every
     * shard lock once, so no insert can slip in after the final sweep (and
     * the workers are stopped before it anyway). */
    if (atomic_load_explicit(&rt->owned_closed, memory_order_relaxed)) {
        weft__owned_unlock(s);
        return -ESHUTDOWN;
    }
    t->owned_next = s->head;
    if (s->head)
        s->head->owned_prev = t;
    s->head = t;
    weft__owned_unlock(s);
    return 0;
}

void weft__owned_remove(struct weft_runtime *rt, struct weft_task *t)
{
    struct owned_shard *s = &rt->shards[t->shard];
    weft__owned_lock(s);
    if (t->owned_prev)
        t->owned_prev->owned_next = t->owned_next;
    else
        s->head = t->owned_next;
    if (t->owned_next)
        t->owned_next->owned_prev = t->owned_prev;
    weft__owned_unlock(s);
}

/* Cancels every task still on the lists, one at a time, without holding a
 * lock while a future is dropped (the drop may spawn, wake or join). The
 * reference taken under the lock keeps the task alive once the lock is gone:
 * another thread may release its own reference meanwhile (a wake that found
 * the global queue closed gives up the queue's: sched.c). */
static void owned_shutdown(struct weft_runtime *rt)
{
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        struct owned_shard *s = &rt->shards[i];
        for (;;) {
            weft__owned_lock(s);
            struct weft_task *t = s->head;
            if (t)
                weft__task_ref(t);
            weft__owned_unlock(s);
            if (!t)
                break;
            /* Cancels t (completion takes it off the list) and drops our
             * reference. If another thread is on it (still polling it, or
             * cancelling it), let that thread finish first. */
            if (!weft__task_drop_notified(t))
                sched_yield();
        }
    }
}

/* ---- lifecycle ------------------------------------------------------------------ */

static int check_config(const struct weft_runtime_config *cfg)
{
    if (cfg->workers > WEFT_MAX_WORKERS)
        return -EINVAL;
    if (cfg->thread_name && strlen(cfg->thread_name) > 12)
        return -EINVAL;
    uint32_t q = cfg->local_queue_size;
    if (q && (q < 16 || q > 65536 || (q & (q - 1))))
        return -EINVAL;
    if (cfg->allocator && (!cfg->allocator->alloc || !cfg->allocator->free))
        return -EINVAL;
    uint32_t e = cfg->io_entries, b = cfg->io_buffers, bs = cfg->io_buffer_size;
    if (e && (e < 8 || e > 4096 || (e & (e - 1))))
        return -EINVAL;
    if (b && (b > 32768 || (b & (b - 1))))
        return -EINVAL;
    if (bs && (bs < 64 || bs > (1u << 20)))
        return -EINVAL;
    if (cfg->blocking_max_threads > 65536 || cfg->compute_max_threads > 65536 ||
        cfg->blocking_priority > WEFT_BLOCKING_PRIO_IDLE)
        return -EINVAL;
    uint32_t cs = cfg->compute_slice_us;
    if (cs && cs != WEFT_COMPUTE_SLICE_OFF && (cs < 50 || cs > 1000000))
        return -EINVAL;
    return 0;
}

/* A custom allocator gets back only what it handed out: skip the NULLs a
 * failed runtime_alloc leaves. */
static void free_some(const struct weft_allocator *a, void *p, size_t size)
{
    if (p)
        a->free(a->ctx, p, size);
}

/* Frees the runtime, also a partly allocated one (runtime_alloc's failure). */
static void runtime_free(struct weft_runtime *rt)
{
    const struct weft_allocator a = rt->alloc;
    uint32_t q = rt->queue_size;
    for (uint32_t i = 0; rt->workers && i < rt->nworkers; i++) {
        free_some(&a, rt->workers[i].run.buf, q * sizeof(void *));
        free_some(&a, rt->workers[i].overflow, (q / 2 + 1) * sizeof(void *));
        if (rt->workers[i].io) {
            weft__io_fini(rt->workers[i].io);
            weft__io_free(rt->workers[i].io);
        }
        free_some(&a, rt->workers[i].io, sizeof(struct weft__io));
        free_some(&a, rt->workers[i].stats, sizeof(struct wstats));
    }
    weft__stat_files_close(rt);
    free_some(&a, (void *)rt->stat_files.fds, rt->nworkers * sizeof(*rt->stat_files.fds));
    pthread_mutex_destroy(&rt->stat_files.lock);
    free_some(&a, rt->idle.sleepers, rt->nworkers * sizeof(uint32_t));
    free_some(&a, rt->idle.taken_busy, rt->nworkers);
    free_some(&a, rt->workers, rt->nworkers * sizeof(*rt->workers));
    free_some(&a, rt->shards, rt->nworkers * sizeof(*rt->shards));
    pthread_mutex_destroy(&rt->inject.lock);
    pthread_mutex_destroy(&rt->idle.lock);
    weft__blocking_fini(rt);
    a.free(a.ctx, rt, sizeof(*rt));
}

/* ---- the runtime's lifetime ------------------------------------------------------
 * The runtime's memory lives until it is destroyed and every task allocation
 * is freed (a join handle or a waker may keep a task past destroy). Workers
 * count their own allocations and frees in a plain per-worker delta, so the
 * spawn-and-free path touches no shared counter; other threads count in
 * `live`, which starts at LIVE_BIAS. Destroy, once the workers are stopped,
 * folds the deltas in and takes the bias away: `live` is then the number of
 * task allocations left, and whoever brings it to zero frees the runtime. */

static void live_sub(struct weft_runtime *rt, int64_t n);

bool weft__runtime_pin(struct weft_runtime *rt)
{
    struct weft__worker *w = weft__current;
    if (w && w->rt == rt) {
        /* The worker itself keeps the runtime alive until destroy joins it. */
        if (atomic_load_explicit(&rt->owned_closed, memory_order_relaxed))
            return false;
        stat_add(&w->stats->live_delta, 1);
        return true;
    }
    /* Seq_cst increment, then seq_cst load of the flag; destroy stores the
     * flag seq_cst before its final live_sub. If we see the flag clear, our
     * increment comes before that live_sub (were it after, live_sub's release
     * would happen before our increment, so our load would see the flag), so
     * `live` cannot reach zero while this task's memory is counted. */
    atomic_fetch_add_explicit(&rt->live, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&rt->owned_closed, memory_order_seq_cst)) {
        live_sub(rt, 1);
        return false;
    }
    return true;
}

static void live_sub(struct weft_runtime *rt, int64_t n)
{
    /* Acq_rel: the thread that brings it to zero sees every other thread's
     * last use of the runtime. */
    if (atomic_fetch_sub_explicit(&rt->live, n, memory_order_acq_rel) == n)
        runtime_free(rt);
}

void weft__runtime_task_free(struct weft_runtime *rt)
{
    /* A worker of rt runs only before destroy folds its delta in. */
    struct weft__worker *w = weft__current;
    if (w && w->rt == rt)
        stat_add(&w->stats->live_delta, (uint64_t)-1); /* wraps: read as int64_t */
    else
        live_sub(rt, 1);
}

int64_t weft__runtime_foreign_live(struct weft_runtime *rt)
{
    return atomic_load_explicit(&rt->live, memory_order_relaxed) - LIVE_BIAS;
}

void weft__runtime_hold(struct weft_runtime *rt)
{
    /* Relaxed: destroy's final live_sub comes after something that this
     * hold happens before: the pool's closing (the caller holds the pool lock
     * with the pool open), or the join of a worker waiting for the caller's
     * next release store (signal_waiter). */
    atomic_fetch_add_explicit(&rt->live, 1, memory_order_relaxed);
}

void weft__runtime_release(struct weft_runtime *rt)
{
    live_sub(rt, 1);
}

static void *zalloc(const struct weft_allocator *a, size_t size)
{
    void *p = a->alloc(a->ctx, size);
    if (p)
        memset(p, 0, size);
    return p;
}

/* Allocates the runtime and its per-worker memory; NULL on ENOMEM (with
 * everything allocated so far freed). */
static struct weft_runtime *runtime_alloc(const struct weft_allocator *a, uint32_t nworkers,
                                          uint32_t qsize, const struct weft_runtime_config *cfg)
{
    struct weft_runtime *rt = zalloc(a, sizeof(*rt));
    if (!rt)
        return NULL;
    rt->alloc = *a;
    rt->nworkers = nworkers;
    rt->queue_size = qsize;
    pthread_mutex_init(&rt->inject.lock, NULL);
    pthread_mutex_init(&rt->idle.lock, NULL);
    pthread_mutex_init(&rt->stat_files.lock, NULL);
    weft__blocking_init(rt, cfg);
    rt->workers = zalloc(a, nworkers * sizeof(*rt->workers));
    rt->shards = zalloc(a, nworkers * sizeof(*rt->shards));
    rt->idle.sleepers = zalloc(a, nworkers * sizeof(uint32_t));
    rt->idle.taken_busy = zalloc(a, nworkers);
    rt->stat_files.fds = zalloc(a, nworkers * sizeof(*rt->stat_files.fds));
    bool ok = rt->workers && rt->shards && rt->idle.sleepers && rt->idle.taken_busy &&
              rt->stat_files.fds;
    /* Whenever the array exists (not only when `ok`): runtime_free closes
     * every entry that is not -1. */
    for (uint32_t i = 0; rt->stat_files.fds && i < nworkers; i++)
        atomic_init(&rt->stat_files.fds[i], -1);
    for (uint32_t i = 0; ok && i < nworkers; i++) {
        struct weft__worker *w = &rt->workers[i];
        w->run.buf = zalloc(a, qsize * sizeof(void *));
        w->overflow = zalloc(a, (qsize / 2 + 1) * sizeof(void *));
        w->io = zalloc(a, sizeof(struct weft__io));
        w->stats = zalloc(a, sizeof(struct wstats));
        ok = w->run.buf && w->overflow && w->io && w->stats;
        if (w->io)
            w->io->efd = -1; /* runtime_free closes it (weft__io_free) */
    }
    if (!ok) {
        runtime_free(rt);
        return NULL;
    }
    return rt;
}

static void unpark_all(struct weft_runtime *rt, uint32_t started)
{
    for (uint32_t i = 0; i < started; i++)
        weft__worker_unpark(&rt->workers[i]);
}

/* Stops the workers (the first `started`): they leave their loops and drop
 * their queued tasks; `drop_all` then runs while their rings still turn, so
 * the operations of the futures it drops are cancelled and completed; then
 * the workers wait for their rings to empty and exit. */
static void stop_workers(struct weft_runtime *rt, uint32_t started,
                         void (*drop_all)(struct weft_runtime *))
{
    /* Release pairs with the workers' acquire load of `shutdown`. */
    atomic_store_explicit(&rt->shutdown, true, memory_order_release);
    unpark_all(rt, started);
    uint32_t n;
    /* Acquire pairs with weft__worker_drain's release. */
    while ((n = atomic_load_explicit(&rt->drained, memory_order_acquire)) < started)
        syscall(SYS_futex, &rt->drained, FUTEX_WAIT_PRIVATE, n, NULL, NULL, 0);
    if (drop_all)
        drop_all(rt);
    /* Release: every future is dropped before a worker lets its ring go. */
    atomic_store_explicit(&rt->io_closing, true, memory_order_release);
    unpark_all(rt, started);
    for (uint32_t i = 0; i < started; i++)
        pthread_join(rt->workers[i].thread, NULL);
}

/* Cancels every task still alive (destroy, while the rings still turn). */
static void drop_all_tasks(struct weft_runtime *rt)
{
    /* Wakes (and spawns that raced with the flag) from now on find the
     * global queue closed and cancel their task. */
    weft__inject_close_and_drain(rt);
    owned_shutdown(rt);
}

/* ---- fork ------------------------------------------------------------------------
 * A child of fork() has none of the runtime's threads: a destroy there would
 * wait for workers that do not exist (for good: an atexit handler that
 * destroys the runtime hung every child that called exit()), and a block_on
 * for a poll nobody makes. Each fork's child counts one more generation; a
 * runtime made in an earlier one is the parent's, and is refused. */

static _Atomic uint32_t fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_child(void)
{
    atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
}

static void fork_watch(void)
{
    pthread_atfork(NULL, NULL, fork_child);
}

static bool forked_since(const struct weft_runtime *rt)
{
    return rt->fork_gen != atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

int weft_runtime_create(struct weft_runtime **out, const struct weft_runtime_config *cfg)
{
    struct weft_runtime_config defaults;
    weft_runtime_config_init(&defaults);
    if (!cfg)
        cfg = &defaults;
    if (!out)
        return -EINVAL;
    /* Created in a task of another runtime, on a worker a compute job may
     * have narrowed to one CPU (handover.c): the new threads (and the
     * default compute cap, from the affinity) would inherit that. */
    if (weft__current)
        weft__handover_undo(weft__current);
    int err = check_config(cfg);
    if (err)
        return err;
    uint32_t nworkers = cfg->workers;
    if (!nworkers) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nworkers = n < 1 ? 1 : n > (long)WEFT_MAX_WORKERS ? WEFT_MAX_WORKERS : (uint32_t)n;
    }
    uint32_t qsize = cfg->local_queue_size ? cfg->local_queue_size : DEFAULT_QUEUE_SIZE;
    struct weft_runtime *rt = runtime_alloc(cfg->allocator ? cfg->allocator : &malloc_allocator,
                                            nworkers, qsize, cfg);
    if (!rt)
        return -ENOMEM;
    rt->global_interval = cfg->global_queue_interval ? cfg->global_queue_interval
                                                     : DEFAULT_GLOBAL_INTERVAL;
    rt->event_interval = cfg->event_interval ? cfg->event_interval : DEFAULT_EVENT_INTERVAL;
    rt->blocking_shutdown_ms = cfg->blocking_shutdown_ms ? cfg->blocking_shutdown_ms
                                                         : DEFAULT_BLOCKING_SHUTDOWN_MS;
    atomic_init(&rt->live, LIVE_BIAS);
    pthread_once(&fork_once, fork_watch);
    rt->fork_gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
    rt->idle.nworkers = nworkers;
    atomic_init(&rt->idle.state, nworkers << 16); /* all unparked, none searching */
    for (uint32_t i = 0; i < nworkers; i++)
        atomic_flag_clear(&rt->shards[i].lock);
    for (uint32_t i = 0; i < nworkers; i++) {
        struct weft__worker *w = &rt->workers[i];
        queue_init(&w->run, qsize, w->run.buf);
        w->rt = rt;
        w->index = i;
        w->rand = 0x9e3779b9u * (i + 1);
        err = weft__io_init(w->io, rt, i, cfg);
        if (err) {
            runtime_free(rt);
            return err;
        }
    }
    const char *prefix = cfg->thread_name ? cfg->thread_name : "weft-w";
    for (uint32_t i = 0; i < nworkers; i++) {
        err = -pthread_create(&rt->workers[i].thread, NULL, weft__worker_main, &rt->workers[i]);
        if (err) {
            stop_workers(rt, i, NULL);
            runtime_free(rt);
            return err;
        }
        /* At most 12 + 3 bytes (checked in check_config and WEFT_MAX_WORKERS):
         * within the 15 a thread name may have. */
        char name[32];
        snprintf(name, sizeof(name), "%.12s%u", prefix, i);
        pthread_setname_np(rt->workers[i].thread, name);
    }
    err = weft__monitor_start(rt, cfg);
    if (err) {
        stop_workers(rt, nworkers, NULL);
        runtime_free(rt);
        return err;
    }
    *out = rt;
    return 0;
}

/* Destroys rt; returns the number of blocking jobs left running. */
static uint32_t runtime_destroy(struct weft_runtime *rt, uint32_t blocking_timeout_ms)
{
    /* No new tasks: spawns from here on (from draining futures, or other
     * threads) fail with -ESHUTDOWN; seq_cst for weft__runtime_pin's argument.
     * Taking each shard lock once orders every owned-list insert that got in
     * before the flag ahead of the sweep below. */
    atomic_store_explicit(&rt->owned_closed, true, memory_order_seq_cst);
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        weft__owned_lock(&rt->shards[i]);
        weft__owned_unlock(&rt->shards[i]);
    }
    weft__monitor_stop(rt);
    stop_workers(rt, rt->nworkers, drop_all_tasks);
    /* After the workers: a running job may wait for a task (a block_on),
     * which the stop has just cancelled. */
    uint32_t gone_holds;
    uint32_t left = weft__blocking_shutdown(rt, blocking_timeout_ms, &gone_holds);
    for (uint32_t i = 0; i < rt->nworkers; i++)
        weft__io_fini(rt->workers[i].io); /* nothing in flight any more */
    int64_t delta = 0;
    for (uint32_t i = 0; i < rt->nworkers; i++)
        delta += (int64_t)atomic_load_explicit(&rt->workers[i].stats->live_delta,
                                               memory_order_relaxed);
    live_sub(rt, LIVE_BIAS - delta + gone_holds);
    return left;
}

/* True on one of rt's own threads (workers, blocking pool, stall monitor):
 * destroying rt there would wait for itself (a pool thread for the whole of
 * the blocking timeout, counting itself as a job left running; the monitor
 * would join itself and free its own state under its loop). */
static bool on_own_thread(const struct weft_runtime *rt)
{
    return (weft__current && weft__current->rt == rt) || weft__pool_of == rt ||
           weft__monitor_of == rt;
}

void weft_runtime_destroy(struct weft_runtime *rt)
{
    if (!rt)
        return;
    if (on_own_thread(rt)) {
        fputs("weft: weft_runtime_destroy called on one of the runtime's own threads (a "
              "worker, a blocking job, the stall callback): refused (it would wait for "
              "itself)\n", stderr);
        return;
    }
    if (forked_since(rt)) {
        fputs("weft: weft_runtime_destroy called in a child process of fork(): refused (the "
              "runtime's threads are the parent's)\n", stderr);
        return;
    }
    uint32_t timeout_ms = rt->blocking_shutdown_ms;
    uint32_t left = runtime_destroy(rt, timeout_ms);
    if (left)
        fprintf(stderr, "weft: runtime destroyed with %u blocking job%s still running after "
                        "%u ms; %s left to finish on %s own\n", left, left == 1 ? "" : "s",
                timeout_ms, left == 1 ? "it is" : "they are", left == 1 ? "its" : "their");
}

int weft_runtime_shutdown(struct weft_runtime *rt, uint32_t timeout_ms)
{
    if (!rt)
        return -EINVAL;
    if (on_own_thread(rt))
        return -EDEADLK;
    if (forked_since(rt))
        return -ECHILD;
    return (int)runtime_destroy(rt, timeout_ms);
}

struct weft_runtime *weft_runtime_current(void)
{
    return weft__current ? weft__current->rt : NULL;
}

uint32_t weft_runtime_workers(const struct weft_runtime *rt)
{
    return rt ? rt->nworkers : 0;
}

/* ---- block_on ---------------------------------------------------------------------
 * The calling thread polls the future and sleeps on its parker between polls.
 * The parker is allocated once per thread and reference counted: the thread
 * holds one reference (released by a thread-exit destructor) and every waker
 * clone holds one, so a waker that outlives the call, or the thread, still
 * points at live memory; waking it only makes the thread's next block_on poll
 * once more. */

struct thread_parker {
    struct park park;
    _Atomic size_t refs;
};

static pthread_key_t parker_key;
static _Atomic bool parker_key_made;
static pthread_mutex_t parker_key_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local struct thread_parker *thread_parker;

static void parker_release(struct thread_parker *p)
{
    /* Acq_rel: the last release sees every other holder's last use. */
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        free(p);
}

static void parker_key_destroy(void *p)
{
    thread_parker = NULL; /* a later destructor's block_on makes a new one */
    parker_release(p);
}

/* Makes parker_key on first use: 0, or -EAGAIN while the process holds
 * PTHREAD_KEYS_MAX keys (a later call tries again). Not pthread_once: a
 * failed key creation must not leave the key unset for good. */
static int parker_key_get(void)
{
    /* Acquire pairs with the release store below: parker_key is set. */
    if (atomic_load_explicit(&parker_key_made, memory_order_acquire))
        return 0;
    pthread_mutex_lock(&parker_key_lock);
    int err = 0;
    if (!atomic_load_explicit(&parker_key_made, memory_order_relaxed)) {
        err = pthread_key_create(&parker_key, parker_key_destroy);
        if (!err)
            atomic_store_explicit(&parker_key_made, true, memory_order_release);
    }
    pthread_mutex_unlock(&parker_key_lock);
    return -err;
}

static struct weft_waker parker_clone(const void *data);

static void parker_wake_by_ref(const void *data)
{
    park_unpark(&((struct thread_parker *)data)->park);
}

static void parker_wake(const void *data)
{
    parker_wake_by_ref(data);
    parker_release((struct thread_parker *)data);
}

static void parker_drop(const void *data)
{
    parker_release((struct thread_parker *)data);
}

static const struct weft_waker_ops parker_waker_ops = {
    .clone = parker_clone,
    .wake = parker_wake,
    .wake_by_ref = parker_wake_by_ref,
    .drop = parker_drop,
};

static struct weft_waker parker_clone(const void *data)
{
    struct thread_parker *p = (struct thread_parker *)data;
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return (struct weft_waker){ data, &parker_waker_ops };
}

/* The calling thread's parker in *out, made on first use. 0, -ENOMEM, or
 * -EAGAIN when no thread-specific key could be had for it. */
static int current_parker(struct thread_parker **out)
{
    if (!thread_parker) {
        int err = parker_key_get();
        if (err)
            return err;
        struct thread_parker *p = calloc(1, sizeof(*p));
        if (!p || pthread_setspecific(parker_key, p)) {
            free(p);
            return -ENOMEM;
        }
        atomic_init(&p->refs, 1);
        thread_parker = p;
    }
    *out = thread_parker;
    return 0;
}

/* block_on runs the caller's future in a task, so that it is polled on a
 * worker (leaf I/O futures need the worker's ring), and waits for the task's
 * join handle on the thread's parker. */
struct block_on_task {
    struct weft_future base;
    struct weft_future *inner;
    bool done;
};

static enum weft_poll block_on_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct block_on_task *b = (struct block_on_task *)f;
    if (weft_future_poll(b->inner, cx) == WEFT_PENDING)
        return WEFT_PENDING;
    b->done = true;
    return WEFT_READY;
}

/* Dropped unfinished only when the runtime shuts down first: the inner
 * future goes with it, on the runtime's side, while its I/O can still be
 * cancelled. */
static void block_on_drop(struct weft_future *f)
{
    struct block_on_task *b = (struct block_on_task *)f;
    if (!b->done)
        weft_future_drop(b->inner);
}

static const struct weft_future_ops block_on_ops = { block_on_poll, block_on_drop };

int weft_block_on(struct weft_runtime *rt, struct weft_future *f)
{
    if (!rt || !f || !f->ops || !f->ops->poll)
        return -EINVAL;
    if (weft__current)
        return -EDEADLK;
    if (forked_since(rt))
        return -ECHILD;
    struct thread_parker *p;
    int err = current_parker(&p);
    if (err)
        return err;
    struct block_on_task b = { { &block_on_ops, 0 }, f, false };
    struct weft_join join;
    err = weft_spawn(rt, &b.base, sizeof(b), &join);
    if (err)
        return err;
    struct weft_waker waker = { p, &parker_waker_ops }; /* borrows the thread's reference */
    struct weft_cx cx = { &waker, NULL, WEFT_COOP_BUDGET, false };
    while (weft_future_poll(&join.base, &cx) == WEFT_PENDING)
        park_wait(&p->park);
    err = join.res;
    weft_future_drop(&join.base);
    return err;
}
