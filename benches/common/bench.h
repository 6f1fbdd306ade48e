/* benches/common/bench.h: what the benchmark programs share: failing loudly,
 * the clock, medians, a latch (n tasks count down, the last sends on a
 * oneshot), and running a body task to completion. Static inline: each
 * program pays for what it uses. */
#ifndef WEFT_BENCH_H
#define WEFT_BENCH_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <weft.h>

static inline void check(int err, const char *what)
{
    if (err) {
        fprintf(stderr, "bench: %s: %s\n", what, strerror(-err));
        exit(1);
    }
}

static inline double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[0..n) and returns its median. */
static inline double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}

struct latch {
    _Atomic long left;
    struct weft_oneshot *done;
};

static inline void latch_init(struct latch *l, long n)
{
    atomic_init(&l->left, n);
    check(weft_oneshot_create(&l->done, 1), "oneshot");
}

static inline void latch_hit(struct latch *l)
{
    if (atomic_fetch_sub_explicit(&l->left, 1, memory_order_acq_rel) == 1)
        weft_oneshot_send(l->done, "");
}

/* Spawns `body` (size bytes) on `rt` and waits for it; returns the elapsed ns. */
static inline double run_body(struct weft_runtime *rt, struct weft_future *body, size_t size)
{
    struct weft_join j;
    double t0 = now_ns();
    check(weft_spawn(rt, body, size, &j), "spawn");
    check(weft_block_on(rt, &j.base), "block_on");
    double t1 = now_ns();
    check(j.res, "join");
    weft_future_drop(&j.base);
    return t1 - t0;
}

#endif
