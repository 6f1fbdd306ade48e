/* tests/metrics_common.h: what test_metrics.c and test_stall.c share:
 * metrics snapshots (each test runs in a process of its own, so the
 * snapshots are file-level statics), a runtime made with the metrics and
 * stall settings a test needs, and `struct mt`, a task future that runs a
 * per-test body. */
#ifndef WEFT_TESTS_METRICS_COMMON_H
#define WEFT_TESTS_METRICS_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <weft.h>

#include "io_common.h"

/* ---- snapshots ------------------------------------------------------------------- */

/* Snapshots are ~30 KiB: the test thread keeps its own here (each test runs in
 * a process of its own). */
static struct weft_metrics m1, ms;

static inline void snap(struct weft_runtime *rt, struct weft_metrics *m)
{
    cr_assert_eq(weft_metrics_read(rt, m), 0);
}

static inline uint64_t sum_at(const struct weft_metrics *m, size_t off)
{
    uint64_t s = 0;
    for (uint32_t i = 0; i < m->workers; i++)
        s += *(const uint64_t *)((const char *)&m->worker[i] + off);
    return s;
}

/* A counter summed over the workers. */
#define SUM(m, field) sum_at((m), offsetof(struct weft_worker_metrics, field))

static inline uint64_t live_tasks(struct weft_runtime *rt)
{
    snap(rt, &ms);
    return ms.live_tasks;
}

/* Waits until every task is freed (a finished task's last reference may be
 * released just after it signalled the test). */
#define WAIT_NO_TASKS(rt) WAIT_UNTIL(live_tasks(rt) == 0)

static inline struct weft_runtime *start_cfg(uint32_t workers, uint32_t local_queue,
                                      uint32_t stall_us, bool no_detector, weft_stall_fn *fn,
                                      void *ctx)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = workers;
    cfg.local_queue_size = local_queue;
    cfg.stall_threshold_us = stall_us;
    cfg.no_stall_detector = no_detector;
    cfg.on_stall = fn;
    cfg.stall_ctx = ctx;
    struct weft_runtime *rt = NULL;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    return rt;
}

/* The index of the worker running the calling thread (from its name,
 * "weft-w<i>"), or -1 off the workers. */
static inline int worker_index(void)
{
    char name[16];
    unsigned i;
    if (pthread_getname_np(pthread_self(), name, sizeof name) != 0 ||
        sscanf(name, "weft-w%u", &i) != 1)
        return -1;
    return (int)i;
}

/* ---- a task future running a per-test body ----------------------------------------- */

struct mt;
typedef enum weft_poll mt_body(struct mt *t, struct weft_cx *cx);

struct mt {
    struct weft_future base;
    mt_body *body;
    void *arg;
    uint32_t idx, i, j, polls;
    uint64_t got, v;
    struct weft_yield_now y;
    struct weft_sleep sl;
    struct weft_mpsc_recv rx;
    struct weft_mpsc_send tx;
    struct weft_io io;
    struct gate_wait gw;
    unsigned char buf[64], buf2[64];
};

static _Atomic uint32_t done; /* bodies that returned READY */

static inline enum weft_poll mt_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct mt *t = (struct mt *)f;
    t->polls++;
    enum weft_poll r = t->body(t, cx);
    if (r == WEFT_READY)
        atomic_fetch_add(&done, 1);
    return r;
}

static inline void mt_drop(struct weft_future *f)
{
    struct mt *t = (struct mt *)f;
    weft_future_drop(&t->sl.base);
    weft_future_drop(&t->rx.base);
    weft_future_drop(&t->tx.base);
    weft_future_drop(&t->io.base);
    weft_future_drop(&t->gw.base);
}

static const struct weft_future_ops mt_ops = { mt_poll, mt_drop };

static inline struct mt mt_make(mt_body *body, void *arg, uint32_t idx)
{
    struct mt t;
    memset(&t, 0, sizeof t);
    t.base.ops = &mt_ops;
    t.body = body;
    t.arg = arg;
    t.idx = idx;
    return t;
}

static inline int spawn_mt(struct weft_runtime *rt, mt_body *body, void *arg, uint32_t idx,
                    struct weft_join *j, const char *name)
{
    struct mt t = mt_make(body, arg, idx);
    return weft_spawn_named(rt, &t.base, sizeof t, j, name);
}

/* Done at the first poll. */
static inline enum weft_poll body_ready(struct mt *t, struct weft_cx *cx)
{
    (void)t, (void)cx;
    return WEFT_READY;
}

/* Yields t->idx times: polled t->idx + 1 times. */
static inline enum weft_poll body_yields(struct mt *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < t->idx; t->i++) {
        weft_yield_now_init(&t->y);
        WEFT_AWAIT(&t->base, cx, &t->y.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* A task that holds its worker in its first poll until released. */
struct first_poll {
    _Atomic int started, release;
};

static inline enum weft_poll body_hold_first_poll(struct mt *t, struct weft_cx *cx)
{
    struct first_poll *f = t->arg;
    (void)cx;
    atomic_store(&f->started, 1);
    spin_until(&f->release);
    return WEFT_READY;
}

#endif
