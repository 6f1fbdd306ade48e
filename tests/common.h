/* tests/common.h: helpers shared by the Criterion test files: time and
 * bounded waiting, a counting allocator, and starting a runtime with it.
 * Everything is static inline so that a file pays only for what it uses. */
#ifndef WEFT_TESTS_COMMON_H
#define WEFT_TESTS_COMMON_H

#include <criterion/criterion.h>

#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <weft.h>

#include "check.h"

#define WAIT_SECS 10.0

/* ---- time and waiting ------------------------------------------------------ */

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

/* Fails the test (instead of hanging) when `cond` stays false for WAIT_SECS. */
#define WAIT_UNTIL(cond)                                                     \
    do {                                                                     \
        double wait_deadline_ = now_s() + WAIT_SECS;                         \
        while (!(cond)) {                                                    \
            cr_assert(now_s() < wait_deadline_, "timed out waiting for %s", #cond); \
            sleep_us(100);                                                   \
        }                                                                    \
    } while (0)


/* Busy-waits for `secs` (a task that keeps its worker occupied). */
static inline void spin_for(double secs)
{
    double end = now_s() + secs;
    while (now_s() < end)
        ;
}

/* Spins until *flag is set; gives up after WAIT_SECS so that a failing test
 * does not keep a worker busy forever. */
static inline void spin_until(_Atomic int *flag)
{
    double deadline = now_s() + WAIT_SECS;
    while (!atomic_load(flag) && now_s() < deadline)
        sched_yield();
}

/* ---- a counting allocator: every free must match an alloc and its size ---- */

#define HDR alignof(max_align_t)

struct counting_alloc {
    struct weft_allocator a;
    _Atomic long allocs, frees, bad_frees;
    _Atomic long bytes;   /* asked for and not yet freed */
    _Atomic long fail_at; /* the allocation number that fails (and all after); -1: none */
    _Atomic long calls;
    bool once;            /* only allocation number fail_at fails */
};

static inline void *count_alloc(void *ctx, size_t size)
{
    struct counting_alloc *ca = ctx;
    long n = atomic_fetch_add(&ca->calls, 1), fail_at = atomic_load(&ca->fail_at);
    if (fail_at >= 0 && (ca->once ? n == fail_at : n >= fail_at))
        return NULL;
    char *p = malloc(HDR + size);
    if (!p)
        return NULL;
    memcpy(p, &size, sizeof size);
    atomic_fetch_add(&ca->allocs, 1);
    atomic_fetch_add(&ca->bytes, (long)size);
    return p + HDR;
}

static inline void count_free(void *ctx, void *q, size_t size)
{
    struct counting_alloc *ca = ctx;
    size_t asked = 0;
    if (q)
        memcpy(&asked, (char *)q - HDR, sizeof asked);
    if (!q || asked != size)
        atomic_fetch_add(&ca->bad_frees, 1);
    if (!q)
        return;
    atomic_fetch_add(&ca->frees, 1);
    atomic_fetch_sub(&ca->bytes, (long)asked);
    free((char *)q - HDR);
}

static inline void counting_init(struct counting_alloc *ca, long fail_at)
{
    memset(ca, 0, sizeof *ca);
    ca->a = (struct weft_allocator){ count_alloc, count_free, ca };
    atomic_store(&ca->fail_at, fail_at);
}

static inline void assert_balanced(struct counting_alloc *ca)
{
    cr_assert_eq(atomic_load(&ca->allocs), atomic_load(&ca->frees), "leak: %ld allocs, %ld frees",
                 atomic_load(&ca->allocs), atomic_load(&ca->frees));
    cr_assert_eq(atomic_load(&ca->bad_frees), 0, "free of a NULL pointer or with a wrong size");
}

/* What a test sets over weft_runtime_config_init's defaults; a field left 0
 * (or false) keeps the default. */
struct rt_opts {
    uint32_t workers, io_entries, io_buffers, io_buffer_size, event_interval;
    bool no_io_uring;
};

/* Starts a runtime with `o`; with `ca`, resets it and makes it the allocator. */
static inline struct weft_runtime *start_rt_opts(struct rt_opts o, struct counting_alloc *ca)
{
    struct weft_runtime_config cfg;
    struct weft_runtime *rt = NULL;
    weft_runtime_config_init(&cfg);
    cfg.workers = o.workers;
    if (o.io_entries)
        cfg.io_entries = o.io_entries;
    if (o.io_buffers)
        cfg.io_buffers = o.io_buffers;
    if (o.io_buffer_size)
        cfg.io_buffer_size = o.io_buffer_size;
    if (o.event_interval)
        cfg.event_interval = o.event_interval;
    if (o.no_io_uring)
        cfg.no_io_uring = true;
    if (ca) {
        counting_init(ca, -1);
        cfg.allocator = &ca->a;
    }
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    return rt;
}

/* Starts a runtime of `workers` workers; with `ca`, resets it and makes it the
 * allocator. */
static inline struct weft_runtime *start_rt(uint32_t workers, struct counting_alloc *ca)
{
    return start_rt_opts((struct rt_opts){ .workers = workers }, ca);
}

/* Destroys the runtime; with `ca`, then asserts that its allocations balance. */
static inline void stop_rt(struct weft_runtime *rt, struct counting_alloc *ca)
{
    weft_runtime_destroy(rt);
    if (ca)
        assert_balanced(ca);
}

#endif
