/* tests/blocking_common.h: what test_blocking.c and test_blocking_shutdown.c
 * share: jobs (counted, gated, no-op), a waker that counts for polls made
 * off the workers, a task future running a per-test body, and the test
 * thread's helpers (a runtime with pool threads at normal priority, counting
 * the pool's threads in /proc, waiting for them to be gone). */
#ifndef WEFT_TESTS_BLOCKING_COMMON_H
#define WEFT_TESTS_BLOCKING_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <weft.h>

#include "common.h"

#define BATCH 8u
#define MANY_TASKS 90u
#define MANY_PER_TASK 1000u                      /* a multiple of BATCH */
#define MANY_FOREIGN_THREADS 2u
#define MANY_PER_FOREIGN 5000u
#define MANY_TOTAL (MANY_TASKS * MANY_PER_TASK + MANY_FOREIGN_THREADS * MANY_PER_FOREIGN)

/* ---- jobs ------------------------------------------------------------------------ */

static _Atomic uint32_t ran[MANY_TOTAL]; /* per job argument: times fn ran */

static inline uintptr_t twice_plus_one(uintptr_t x)
{
    return x * 2 + 1;
}

/* The plain job: counts its run, returns arg * 2 + 1. */
static inline void *job_twice(void *arg)
{
    atomic_fetch_add(&ran[(uintptr_t)arg], 1);
    return (void *)twice_plus_one((uintptr_t)arg);
}

/* A gate jobs wait on; each gate job counts itself running while it waits. */
struct gate {
    _Atomic int open;
    _Atomic uint32_t running, max_running, started, finished;
};

static struct gate gate_a, gate_b;

static inline void gate_reset(struct gate *g)
{
    atomic_store(&g->open, 0);
    atomic_store(&g->running, 0);
    atomic_store(&g->max_running, 0);
    atomic_store(&g->started, 0);
    atomic_store(&g->finished, 0);
}

static inline void note_max(_Atomic uint32_t *max, uint32_t v)
{
    uint32_t m = atomic_load(max);
    while (v > m && !atomic_compare_exchange_weak(max, &m, v))
        ;
}

/* Waits (boundedly: a failing test must not leave a thread behind forever)
 * for the gate to open. */
static inline void gate_pass(struct gate *g)
{
    note_max(&g->max_running, atomic_fetch_add(&g->running, 1) + 1);
    atomic_fetch_add(&g->started, 1);
    double deadline = now_s() + 2 * WAIT_SECS;
    while (!atomic_load(&g->open) && now_s() < deadline)
        sleep_us(200);
    atomic_fetch_sub(&g->running, 1);
    atomic_fetch_add(&g->finished, 1);
}

static inline void *job_gate_a(void *arg)
{
    gate_pass(&gate_a);
    return job_twice(arg);
}

static inline void *job_gate_b(void *arg)
{
    gate_pass(&gate_b);
    return job_twice(arg);
}

static _Atomic uint32_t arrived;
static _Atomic int go;

/* Arrives, waits for `go`, returns arg * 2 + 1. */
static inline void *job_rendezvous(void *arg)
{
    atomic_fetch_add(&arrived, 1);
    double deadline = now_s() + 2 * WAIT_SECS;
    while (!atomic_load(&go) && now_s() < deadline)
        sleep_us(200);
    return job_twice(arg);
}

static inline void *job_noop(void *arg)
{
    return arg;
}

/* ---- wakers for polls made off the workers ---------------------------------------- */

/* Counts clones, wakes and releases; wake consumes the clone it is called on. */
struct fw {
    _Atomic int woken, clones, drops;
};

static const struct weft_waker_ops fw_ops;

static inline struct weft_waker fw_clone(const void *d)
{
    atomic_fetch_add(&((struct fw *)d)->clones, 1);
    return (struct weft_waker){ d, &fw_ops };
}

static inline void fw_wake_by_ref(const void *d)
{
    atomic_fetch_add(&((struct fw *)d)->woken, 1);
}

static inline void fw_drop(const void *d)
{
    atomic_fetch_add(&((struct fw *)d)->drops, 1);
}

/* The release is counted first: whoever sees the wake sees the clone gone. */
static inline void fw_wake(const void *d)
{
    fw_drop(d);
    fw_wake_by_ref(d);
}

static const struct weft_waker_ops fw_ops = { fw_clone, fw_wake, fw_wake_by_ref, fw_drop };

static inline enum weft_poll poll_with(struct weft_future *f, struct fw *w)
{
    struct weft_waker k = { w, &fw_ops };
    struct weft_cx cx = weft_cx_from_waker(&k);
    return weft_future_poll(f, &cx);
}

static inline void assert_waker_balanced(struct fw *w)
{
    cr_assert_eq(atomic_load(&w->clones), atomic_load(&w->drops), "waker: %d clones, %d drops",
                 atomic_load(&w->clones), atomic_load(&w->drops));
}

/* ---- a task running a per-test body ------------------------------------------------- */

struct bt;
typedef enum weft_poll bt_body(struct bt *t, struct weft_cx *cx);

struct bt {
    struct weft_future base;
    bt_body *body;
    struct weft_runtime *rt;
    uintptr_t arg;        /* the first job argument it uses */
    uint32_t n, i, k;     /* loop state kept across awaits */
    uint32_t polls;
    struct weft_blocking_join h[BATCH];
    struct weft_spawn_blocking_wait w;
    struct weft_mpsc *ch;
    uint64_t msg;
    struct weft_mpsc_send send;
};

static _Atomic uint32_t bt_polled, bt_finished, bt_dropped;

static inline enum weft_poll bt_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct bt *t = (struct bt *)f;
    if (t->polls++ == 0)
        atomic_fetch_add(&bt_polled, 1);
    enum weft_poll r = t->body(t, cx);
    if (r == WEFT_READY)
        atomic_fetch_add(&bt_finished, 1);
    return r;
}

static inline void bt_drop(struct weft_future *f)
{
    struct bt *t = (struct bt *)f;
    for (uint32_t k = 0; k < BATCH; k++)
        weft_future_drop(&t->h[k].base);
    weft_future_drop(&t->w.base);
    weft_future_drop(&t->w.join.base); /* the wait's output, if it had one */
    weft_future_drop(&t->send.base);
    atomic_fetch_add(&bt_dropped, 1);
}

static const struct weft_future_ops bt_ops = { bt_poll, bt_drop };

static inline struct bt bt_make(struct weft_runtime *rt, bt_body *body, uintptr_t arg,
                                uint32_t n)
{
    struct bt t;
    memset(&t, 0, sizeof t);
    t.base = (struct weft_future){ &bt_ops, 0 };
    t.body = body;
    t.rt = rt;
    t.arg = arg;
    t.n = n;
    return t;
}

/* Checks a ready handle of job_twice(arg) from a worker (no Criterion there). */
static inline void check_twice(const struct weft_blocking_join *h, uintptr_t arg)
{
    CHECK(h->res == 0);
    CHECK((uintptr_t)h->output == twice_plus_one(arg));
    CHECK(h->job == NULL);
}

/* ---- helpers for the test thread ------------------------------------------------------- */

static inline struct weft_runtime *start_cfg(struct weft_runtime_config *cfg)
{
    struct weft_runtime *rt = NULL;
    cr_assert_eq(weft_runtime_create(&rt, cfg), 0);
    return rt;
}

/* Two workers; pool threads at the workers' priority unless a test asks for
 * the default (SCHED_IDLE): under ctest -j2 another test may keep both CPUs
 * busy, and SCHED_IDLE threads then get almost no time. */
static inline struct weft_runtime_config base_cfg(void)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.blocking_priority = WEFT_BLOCKING_PRIO_NORMAL;
    return cfg;
}

static inline struct weft_metrics metrics(struct weft_runtime *rt)
{
    static struct weft_metrics m; /* big: keep it off the stack */
    cr_assert_eq(weft_metrics_read(rt, &m), 0);
    return m;
}

/* Pool threads in /proc/self/task, by name. */
static inline int proc_pool_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], name[32] = { 0 };
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* exited meanwhile */
        if (fgets(name, sizeof name, f) && strncmp(name, "weft-blocking", 13) == 0)
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

static inline bool have_proc(void)
{
    return proc_pool_threads() >= 0;
}

/* Awaits a join handle from the test thread and checks job_twice's output. */
static inline void block_on_twice(struct weft_runtime *rt, struct weft_blocking_join *h,
                                  uintptr_t arg)
{
    cr_assert_eq(weft_block_on(rt, &h->base), 0);
    cr_assert_eq(h->res, 0, "res %d", h->res);
    cr_assert_eq((uintptr_t)h->output, twice_plus_one(arg));
    weft_future_drop(&h->base);
}

/* Before a test ends: every pool thread gone, so that none is still inside the
 * runtime's memory or in a job when the process exits. */
static inline void wait_pool_gone(void)
{
    if (have_proc())
        WAIT_UNTIL(proc_pool_threads() == 0);
    sleep_us(20000); /* the last instructions of a thread that left /proc's list */
}

#endif
