/* tests/test_timer.c: the time futures (io/timer.c): sleep, sleep_until,
 * interval and timeout; the cooperative budget of expired sleeps; dropping a
 * registered timer on its own worker, on another worker and on a thread that
 * is no worker; shutdown with sleeping tasks; timers without io_uring.
 *
 * Bad inputs tried: sleep_until in the past and at 0, a sleep of 0 (ready at
 * the first poll, no timer); a sleep, interval and timeout polled off any
 * worker (-ENXIO at once, no waker kept); interval periods 0 (-EINVAL at every
 * poll) and UINT64_MAX (one tick, then none); timeout around NULL, around an
 * empty future, around one whose ops have no poll (-EINVAL; the last
 * jumped to address 0) and around itself (-EINVAL; it recursed until the
 * stack overflowed); an allocator that fails the first timer slot and the
 * growth of a full timer heap (-ENOMEM, the other timers unaffected); a socket
 * future on a runtime without io_uring (-EOPNOTSUPP; a file read there goes
 * through the blocking pool instead).
 *
 * Wall-clock bounds are generous (2 shared cores): a timer is never early and
 * at most LATE_MAX late. A dropped timer is always given time to come due
 * before destroy, so one left behind in a heap shows up. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include <weft.h>

#include "common.h"

#define MS WEFT_NS_PER_MS
#define LATE_MAX (250 * MS) /* generous: CI machines are shared and run sanitizers */
#define HOUR (3600 * WEFT_NS_PER_SEC)
/* The many-timers test's tasks: the million, waiting at once
 * (about 520 MB of RSS with the counting allocator), or 100k under the
 * sanitizers (each task costs them ten times the memory and time). */
#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || \
    __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MAX_TASKS 100000
#else
#define MAX_TASKS 1000000
#endif

/* ---- helpers: leaf futures, a waker for off-worker polls, a task future ---- */

static _Atomic int never_drops;

static enum weft_poll never_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    return WEFT_PENDING; /* and keeps no waker: only a timeout ends it */
}

static void never_drop(struct weft_future *f)
{
    (void)f;
    atomic_fetch_add(&never_drops, 1);
}

static const struct weft_future_ops never_ops = { never_poll, never_drop };

/* Counts the clones it hands out and their releases; wakes nothing. */
static _Atomic int dw_clones, dw_drops;
static const struct weft_waker_ops dw_ops;

static struct weft_waker dw_clone(const void *d)
{
    atomic_fetch_add(&dw_clones, 1);
    return (struct weft_waker){ d, &dw_ops };
}

static void dw_drop(const void *d)
{
    (void)d;
    atomic_fetch_add(&dw_drops, 1);
}

static void dw_nop(const void *d)
{
    (void)d;
}

static const struct weft_waker_ops dw_ops = { dw_clone, dw_drop, dw_nop, dw_drop };
static const struct weft_waker dummy_waker = { NULL, &dw_ops };

struct tk;
typedef enum weft_poll body_fn(struct tk *t, struct weft_cx *cx);

/* A task running a per-test body; its drop drops every child. */
struct tk {
    struct weft_future base;
    body_fn *body;
    void (*on_drop)(struct tk *t);
    void *arg;
    uint32_t idx, i, polls;
    uint64_t t0, d;           /* a start time and a deadline, kept across awaits */
    struct weft_sleep s;
    struct weft_interval iv;
    struct weft_timeout to;
    struct weft_future inner; /* a never-ready future, for the timeout */
};

static _Atomic uint32_t drops[MAX_TASKS], finished, polled_once;

static enum weft_poll tk_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct tk *t = (struct tk *)f;
    if (++t->polls == 1)
        atomic_fetch_add(&polled_once, 1);
    enum weft_poll r = t->body(t, cx);
    if (r == WEFT_READY)
        atomic_fetch_add(&finished, 1);
    return r;
}

static void tk_drop(struct weft_future *f)
{
    struct tk *t = (struct tk *)f;
    if (t->on_drop)
        t->on_drop(t);
    weft_future_drop(&t->to.base);
    weft_future_drop(&t->inner);
    weft_future_drop(&t->s.base);
    weft_future_drop(&t->iv.base);
    atomic_fetch_add(&drops[t->idx], 1);
}

static const struct weft_future_ops tk_ops = { tk_poll, tk_drop };

static int spawn_tk(struct weft_runtime *rt, body_fn *body, void *arg, uint32_t idx,
                    struct weft_join *j)
{
    struct tk t = { .base = { &tk_ops, 0 }, .body = body, .arg = arg, .idx = idx };
    return weft_spawn(rt, &t.base, sizeof t, j);
}

/* Runs `body` as task `idx` to its end; returns a copy of the finished future. */
static struct tk run_tk(struct weft_runtime *rt, body_fn *body, void *arg, uint32_t idx)
{
    struct weft_join j;
    cr_assert_eq(spawn_tk(rt, body, arg, idx, &j), 0);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    struct tk out = *(struct tk *)weft_join_output(&j);
    weft_future_drop(&j.base);
    return out;
}

static struct weft_runtime *start_rt_io(uint32_t workers, struct counting_alloc *ca, bool no_ring)
{
    return start_rt_opts((struct rt_opts){ .workers = workers, .no_io_uring = no_ring }, ca);
}

/* One timed wait as the task saw it: when it began, its deadline, when the
 * future came back ready, and its result. */
struct rec {
    uint64_t start, deadline, end;
    int res;
};
static struct rec recs[64];

static void check_rec(const struct rec *r, uint64_t min_ns, int res, const char *what)
{
    cr_assert_eq(r->res, res, "%s: result %d", what, r->res);
    cr_assert_geq(r->end, r->deadline, "%s: ready %.3f ms before its deadline", what,
                  (double)(r->deadline - r->end) / 1e6);
    cr_assert_geq(r->end - r->start, min_ns, "%s: took %.3f ms", what,
                  (double)(r->end - r->start) / 1e6);
    cr_assert_lt(r->end - r->deadline, LATE_MAX, "%s: %.3f ms late", what,
                 (double)(r->end - r->deadline) / 1e6);
}

/* A sleep of `t->d` ns, recorded in recs[t->idx]. */
static enum weft_poll body_sleep(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    t->t0 = weft_now_ns();
    weft_sleep_init(&t->s, t->d);
    WEFT_AWAIT(&t->base, cx, &t->s);
    recs[t->idx] = (struct rec){ t->t0, t->s.deadline_ns, weft_now_ns(), t->s.result };
    WEFT_ASYNC_END(&t->base);
}

static void spawn_sleep(struct weft_runtime *rt, uint32_t idx, uint64_t ns, struct weft_join *j)
{
    struct tk t = { .base = { &tk_ops, 0 }, .body = body_sleep, .idx = idx, .d = ns };
    cr_assert_eq(weft_spawn(rt, &t.base, sizeof t, j), 0);
}

/* After a drop, once the dropped timer's deadline has passed: tasks 60-63
 * (likely spread over the workers) sleep 5 ms correctly, and destroy is prompt
 * and leaves the allocator balanced. A dropped timer left in a heap would have
 * fired into a freed slot by now. */
static void check_timers_then_destroy(struct weft_runtime *rt, struct counting_alloc *ca)
{
    struct weft_join j[4];
    for (uint32_t i = 0; i < 4; i++)
        spawn_sleep(rt, 60 + i, 5 * MS, &j[i]);
    for (uint32_t i = 0; i < 4; i++) {
        cr_assert_eq(weft_block_on(rt, &j[i].base), 0);
        weft_future_drop(&j[i].base);
        check_rec(&recs[60 + i], 5 * MS, 0, "a sleep after the drop");
    }
    double t0 = now_s();
    weft_runtime_destroy(rt);
    cr_assert_lt(now_s() - t0, 2.0, "destroy took %.3f s", now_s() - t0);
    assert_balanced(ca);
}

/* ---- sleep ------------------------------------------------------------------- */

/* Polls a 30 ms sleep at every turn of its worker (waking itself), so that it
 * is asked thousands of times before its timer fires. */
static _Atomic uint32_t early_polls;

static enum weft_poll body_poll_hard(struct tk *t, struct weft_cx *cx)
{
    if (t->polls == 1) {
        t->t0 = weft_now_ns();
        weft_sleep_init(&t->s, 30 * MS);
    }
    if (weft_future_poll(&t->s.base, cx) == WEFT_PENDING) {
        atomic_fetch_add(&early_polls, 1);
        weft_waker_wake_by_ref(cx->waker);
        return WEFT_PENDING;
    }
    recs[t->idx] = (struct rec){ t->t0, t->s.deadline_ns, weft_now_ns(), t->s.result };
    return WEFT_READY;
}

/* Sleeps of 20 ms, 1 ms and 100 us (whose first poll comes just before the
 * deadline), a sleep polled thousands of times before it is due, and a sleep
 * and a sleep_until 12 ms ahead under weft_block_on. */
Test(timer, sleep_never_early_rarely_late, .timeout = 30)
{
    static const uint64_t ns[6] = { 20 * MS, 20 * MS, 20 * MS, 1 * MS, 100000, 1 * MS };
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(2, &ca, false);
    struct weft_join j[7];
    for (uint32_t i = 0; i < 6; i++)
        spawn_sleep(rt, i, ns[i], &j[i]);
    cr_assert_eq(spawn_tk(rt, body_poll_hard, NULL, 6, &j[6]), 0);
    struct weft_sleep s;
    uint64_t t0 = weft_now_ns();
    weft_sleep_init(&s, 15 * MS);
    cr_assert_eq(weft_block_on(rt, &s.base), 0);
    recs[7] = (struct rec){ t0, s.deadline_ns, weft_now_ns(), s.result };
    weft_future_drop(&s.base);
    t0 = weft_now_ns();
    weft_sleep_until_init(&s, t0 + 12 * MS); /* an absolute deadline ahead */
    cr_assert_eq(weft_block_on(rt, &s.base), 0);
    recs[8] = (struct rec){ t0, s.deadline_ns, weft_now_ns(), s.result };
    cr_assert_eq(s.deadline_ns, t0 + 12 * MS);
    weft_future_drop(&s.base);
    for (uint32_t i = 0; i < 7; i++) {
        cr_assert_eq(weft_block_on(rt, &j[i].base), 0);
        weft_future_drop(&j[i].base);
    }
    weft_runtime_destroy(rt);
    for (int i = 0; i < 6; i++)
        check_rec(&recs[i], ns[i], 0, "sleep");
    check_rec(&recs[6], 30 * MS, 0, "busy-polled sleep");
    cr_assert_gt(atomic_load(&early_polls), 100, "only %u early polls", atomic_load(&early_polls));
    check_rec(&recs[7], 15 * MS, 0, "block_on(sleep)");
    check_rec(&recs[8], 12 * MS, 0, "block_on(sleep_until)");
    assert_balanced(&ca);
}

/* Deadlines already reached, and a timeout around a ready future (a past
 * sleep), are ready at the first poll and start no timer: this worker has had
 * none yet, so a first timer would allocate its slot chunk and heap (the probe
 * at the end shows it does). */
static int first_ready[4], first_res[4];
static int first_inner_left = -1;
static long first_allocs[4], probe_allocs = -1;
static _Atomic int first_done;

static enum weft_poll body_first_poll(struct tk *t, struct weft_cx *cx)
{
    struct counting_alloc *ca = t->arg;
    struct weft_sleep s[4];
    weft_sleep_until_init(&s[0], weft_now_ns() - 1000 * MS);
    weft_sleep_init(&s[1], 0);
    weft_sleep_until_init(&s[2], 0);
    weft_sleep_until_init(&s[3], 0);
    weft_timeout_init(&t->to, &s[3].base, 1000 * MS);
    struct weft_future *f[4] = { &s[0].base, &s[1].base, &s[2].base, &t->to.base };
    for (int k = 0; k < 4; k++) {
        long a0 = atomic_load(&ca->allocs);
        first_ready[k] = weft_future_poll(f[k], cx) == WEFT_READY;
        first_allocs[k] = atomic_load(&ca->allocs) - a0;
        first_res[k] = k < 3 ? s[k].result : t->to.result;
        weft_future_drop(f[k]);
    }
    first_inner_left = s[3].base.ops != NULL && s[3].result == 0;
    weft_future_drop(&s[3].base);
    long a0 = atomic_load(&ca->allocs);
    weft_sleep_init(&t->s, 1000 * MS);
    CHECK(weft_future_poll(&t->s.base, cx) == WEFT_PENDING);
    probe_allocs = atomic_load(&ca->allocs) - a0;
    atomic_store(&first_done, 1);
    return WEFT_READY;
}

/* This process's CPU time so far, in ns. */
static uint64_t process_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * WEFT_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* A worker waiting for its one timer sleeps in its park until the deadline
 * (the park's timeout is the next timer's, docs/io.md): a 300 ms sleep costs
 * the process a few ms of CPU, not 300 of a spinning worker. */
Test(timer, a_worker_sleeps_until_its_next_timer, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    struct weft_join j;
    spawn_sleep(rt, 0, 300 * MS, &j);
    WAIT_UNTIL(atomic_load(&polled_once) == 1);
    uint64_t cpu0 = process_cpu_ns();
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    uint64_t cpu = process_cpu_ns() - cpu0;
    weft_future_drop(&j.base);
    check_rec(&recs[0], 300 * MS, 0, "300 ms");
    weft_runtime_destroy(rt);
    assert_balanced(&ca);
    cr_assert_lt(cpu, 100 * MS, "%.1f ms of CPU while the worker waited 300 ms", (double)cpu / 1e6);
}

/* The heap's order after the earliest fires: sleeps of 100, 300 and 600 ms
 * and 5 s taken in that order on one worker (so 5 s sits below 300 ms);
 * once 100 ms fires, 300 ms must come up to the top: each of the three fires
 * on time (a sift that moved the later child up left 300 ms below 600 ms,
 * firing 300 ms late). */
Test(timer, the_next_earliest_fires_after_the_earliest, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    static const uint64_t ms[] = { 100, 300, 600, 5000 };
    struct weft_join j[4];
    for (uint32_t i = 0; i < 4; i++) {
        spawn_sleep(rt, i, ms[i] * MS, &j[i]);
        WAIT_UNTIL(atomic_load(&polled_once) == i + 1); /* its timer is in: the next goes after */
    }
    for (uint32_t i = 0; i < 3; i++) {
        cr_assert_eq(weft_block_on(rt, &j[i].base), 0);
        weft_future_drop(&j[i].base);
        check_rec(&recs[i], ms[i] * MS, 0, ms[i] == 100 ? "100 ms" : ms[i] == 300 ? "300 ms"
                                                                                : "600 ms");
    }
    weft_join_abort(&j[3]);
    weft_future_drop(&j[3].base);
    weft_runtime_destroy(rt);
    assert_balanced(&ca);
}

Test(timer, ready_at_first_poll_starts_no_timer, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    /* The allocator counts every thread's allocations: this thread waits
     * without the runtime (weft_block_on spawns a task, an allocation that
     * could land inside one of the body's windows) until the body is done. */
    struct weft_join j;
    cr_assert_eq(spawn_tk(rt, body_first_poll, &ca, 0, &j), 0);
    WAIT_UNTIL(atomic_load(&first_done));
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    const char *what[4] = { "sleep_until(past)", "sleep(0)", "sleep_until(0)", "timeout(ready)" };
    for (int k = 0; k < 4; k++) {
        cr_assert(first_ready[k], "%s was not ready at its first poll", what[k]);
        cr_assert_eq(first_res[k], 0, "%s: result %d", what[k], first_res[k]);
        cr_assert_eq(first_allocs[k], 0, "%s started a timer", what[k]);
    }
    cr_assert_eq(first_inner_left, 1, "the ready inner future must be left, finished, to the caller");
    cr_assert_gt(probe_allocs, 0, "the allocation probe sees no timer at all");
    assert_balanced(&ca);
}

/* Off any worker there is no timer heap: -ENXIO at once, no hang, no waker
 * kept. Arguments that are wrong anywhere: -EINVAL at every poll. */
Test(timer, off_worker_and_bad_arguments, .timeout = 10)
{
    struct weft_cx cx = weft_cx_from_waker(&dummy_waker);
    struct weft_sleep s;
    weft_sleep_init(&s, 1000 * MS);
    cr_assert_eq(weft_future_poll(&s.base, &cx), WEFT_READY);
    cr_assert_eq(s.result, -ENXIO);
    weft_future_drop(&s.base);

    struct weft_interval iv;
    weft_interval_init(&iv, 10 * MS);
    cr_assert_eq(weft_future_poll(&iv.base, &cx), WEFT_READY, "the first tick is immediate");
    cr_assert_eq(iv.result, 0);
    cr_assert_eq(weft_future_poll(&iv.base, &cx), WEFT_READY);
    cr_assert_eq(iv.result, -ENXIO);
    weft_future_drop(&iv.base);
    weft_interval_init(&iv, 0);
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(weft_future_poll(&iv.base, &cx), WEFT_READY);
        cr_assert_eq(iv.result, -EINVAL, "poll %d of a period-0 interval: %d", k, iv.result);
    }
    weft_future_drop(&iv.base);

    static const struct weft_future_ops no_poll = { NULL, NULL };
    struct weft_future never = { &never_ops, 0 }, empty = { NULL, 0 }, pollless = { &no_poll, 0 };
    struct weft_future *inner[4] = { &never, NULL, &empty, &pollless };
    const int want[4] = { -ENXIO, -EINVAL, -EINVAL, -EINVAL };
    for (int k = 0; k < 4; k++) {
        struct weft_timeout to;
        weft_timeout_init(&to, inner[k], 10 * MS);
        cr_assert_eq(weft_future_poll(&to.base, &cx), WEFT_READY);
        cr_assert_eq(to.result, want[k], "timeout %d: %d", k, to.result);
        weft_future_drop(&to.base);
    }
    /* Around itself: its poll would poll itself until the stack ran out. */
    struct weft_timeout self;
    weft_timeout_init(&self, &self.base, 10 * MS);
    cr_assert_eq(weft_future_poll(&self.base, &cx), WEFT_READY);
    cr_assert_eq(self.result, -EINVAL, "a timeout around itself: %d", self.result);
    weft_future_drop(&self.base);
    weft_future_drop(&never);
    cr_assert_eq(atomic_load(&never_drops), 1, "inner dropped %d times", atomic_load(&never_drops));
    cr_assert_eq(atomic_load(&dw_clones), atomic_load(&dw_drops), "a waker clone was kept");
}

/* ---- many timers ---------------------------------------------------------------- */

static _Atomic uint32_t fired[MAX_TASKS];
static _Atomic int64_t min_slack = INT64_MAX, max_slack = INT64_MIN;
static _Atomic int64_t waiting, max_waiting; /* timers in the heaps: now, at most */
static uint64_t first_due;                   /* the earliest deadline of the many */

static void atomic_max(_Atomic int64_t *m, int64_t v)
{
    for (int64_t cur = atomic_load(m); v > cur;)
        atomic_compare_exchange_weak(m, &cur, v);
}

static void atomic_min(_Atomic int64_t *m, int64_t v)
{
    for (int64_t cur = atomic_load(m); v < cur;)
        atomic_compare_exchange_weak(m, &cur, v);
}

/* A sleep until first_due plus up to 100 ms (spread by the task's index),
 * from its first poll; counted as waiting while it is in a heap. */
static enum weft_poll body_random_sleep(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_sleep_until_init(&t->s, first_due + (t->idx * 2654435761u >> 7) % 100 * MS);
    if (weft_future_poll(&t->s.base, cx) == WEFT_PENDING) {
        atomic_max(&max_waiting, atomic_fetch_add(&waiting, 1) + 1);
        t->i = 1;
    }
    WEFT_AWAIT(&t->base, cx, &t->s);
    if (t->i)
        atomic_fetch_sub(&waiting, 1);
    {
        int64_t slack = (int64_t)(weft_now_ns() - t->s.deadline_ns);
        atomic_min(&min_slack, slack);
        atomic_max(&max_slack, slack);
        if (t->s.result == 0)
            atomic_fetch_add(&fired[t->idx], 1);
    }
    WEFT_ASYNC_END(&t->base);
}

/* A million tasks (100k under the sanitizers) each sleep until a deadline
 * 3 s after the first spawn, spread over 100 ms: they wait in the workers'
 * heaps together (all of them when spawning takes under 3 s: 2 s here on an
 * idle machine; a fifth at least, asserted, so that a machine loaded by
 * other tests, spawning at a third of the speed, passes), then each fires
 * once, never early, and every task and timer slot is freed. */
Test(timer, a_million_timers_at_once_fire_once_never_early, .timeout = 120)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(2, &ca, false);
    double t0 = now_s();
    first_due = weft_now_ns() + 3 * WEFT_NS_PER_SEC;
    for (uint32_t i = 0; i < MAX_TASKS; i++)
        cr_assert_eq(spawn_tk(rt, body_random_sleep, NULL, i, NULL), 0);
    double spawned = now_s() - t0;
    WAIT_UNTIL(atomic_load(&finished) == MAX_TASKS);
    double took = now_s() - t0;
    weft_runtime_destroy(rt);
    for (uint32_t i = 0; i < MAX_TASKS; i++) {
        cr_assert_eq(atomic_load(&fired[i]), 1, "timer %u fired %u times", i, atomic_load(&fired[i]));
        cr_assert_eq(atomic_load(&drops[i]), 1, "task %u dropped %u times", i, atomic_load(&drops[i]));
    }
    cr_assert_geq(atomic_load(&min_slack), 0, "a timer fired %.3f ms early",
                  (double)-atomic_load(&min_slack) / 1e6);
    cr_assert_geq(atomic_load(&max_waiting), MAX_TASKS / 5, "at most %" PRId64 " waiting at once",
                  atomic_load(&max_waiting));
    assert_balanced(&ca);
    cr_log_info("%d timers: spawned in %.3f s, %" PRId64 " waiting at once, all done in %.3f s, "
                "the latest %.3f ms late", MAX_TASKS, spawned, atomic_load(&max_waiting), took,
                (double)atomic_load(&max_slack) / 1e6);
}

/* ---- the cooperative budget ------------------------------------------------------- */

static _Atomic uint32_t a_progress, b_saw_progress;
static _Atomic int a_done, b_saw_done = -1;

static enum weft_poll body_b(struct tk *t, struct weft_cx *cx)
{
    (void)t, (void)cx;
    atomic_store(&b_saw_progress, atomic_load(&a_progress));
    atomic_store(&b_saw_done, atomic_load(&a_done));
    return WEFT_READY;
}

/* Spawns B into its worker's LIFO slot (polled once A's poll returns), then
 * awaits 1000 sleeps that are all due: only the budget makes A return. */
static enum weft_poll body_a(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    CHECK(spawn_tk(weft_runtime_current(), body_b, NULL, 1, NULL) == 0);
    for (t->i = 0; t->i < 1000; t->i++) {
        weft_sleep_until_init(&t->s, 0);
        WEFT_AWAIT(&t->base, cx, &t->s);
        atomic_store(&a_progress, t->i + 1);
    }
    atomic_store(&a_done, 1);
    WEFT_ASYNC_END(&t->base);
}

Test(timer, expired_sleeps_spend_the_budget, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    uint32_t polls = run_tk(rt, body_a, NULL, 0).polls;
    WAIT_UNTIL(atomic_load(&finished) == 2);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&b_saw_done), 0, "B ran only after A's 1000 sleeps");
    cr_assert_gt(atomic_load(&b_saw_progress), 0);
    cr_assert_leq(atomic_load(&b_saw_progress), WEFT_COOP_BUDGET);
    cr_assert_geq(polls, 1000 / WEFT_COOP_BUDGET, "A was polled %u times", polls);
    assert_balanced(&ca);
}

/* ---- event_interval: how often a busy worker turns its ring ------------------- */

/* Task A spins (wakes itself at every poll, counting them) and marks the
 * count at its first poll past B's deadline; B sleeps 1 ms, ROUNDS times,
 * and notes how many more polls A had before B's timer woke it: the polls a
 * due timer waited for its worker to turn the ring. */
#define ROUNDS 20
static _Atomic uint64_t spins, spin_due, spin_mark;
static _Atomic bool spin_stop;
static uint64_t lags[ROUNDS];

static enum weft_poll body_spin(struct tk *t, struct weft_cx *cx)
{
    (void)t;
    if (atomic_load(&spin_stop))
        return WEFT_READY;
    uint64_t n = atomic_fetch_add(&spins, 1) + 1, due = atomic_load(&spin_due);
    if (due && !atomic_load(&spin_mark) && weft_now_ns() >= due)
        atomic_store(&spin_mark, n);
    weft_waker_wake_by_ref(cx->waker);
    return WEFT_PENDING;
}

static enum weft_poll body_sleep_rounds(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < ROUNDS; t->i++) {
        atomic_store(&spin_mark, 0);
        t->d = weft_now_ns() + 1 * MS;
        atomic_store(&spin_due, t->d);
        weft_sleep_until_init(&t->s, t->d);
        WEFT_AWAIT(&t->base, cx, &t->s);
        weft_future_drop(&t->s.base);
        uint64_t mark = atomic_load(&spin_mark); /* 0: B came first */
        lags[t->i] = mark ? atomic_load(&spins) - mark : 0;
    }
    atomic_store(&spin_stop, true);
    WEFT_ASYNC_END(&t->base);
}

/* The largest lag over the rounds, on one worker turning its ring every
 * `interval` polls (0: the default). */
static uint64_t max_timer_lag(uint32_t interval)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1,
                                                              .event_interval = interval }, &ca);
    atomic_store(&spin_stop, false);
    atomic_store(&spin_due, 0);
    struct weft_join a;
    cr_assert_eq(spawn_tk(rt, body_spin, NULL, 0, &a), 0);
    run_tk(rt, body_sleep_rounds, NULL, 1);
    cr_assert_eq(weft_block_on(rt, &a.base), 0);
    weft_future_drop(&a.base);
    weft_runtime_destroy(rt);
    assert_balanced(&ca);
    uint64_t max = 0;
    for (int i = 0; i < ROUNDS; i++)
        max = lags[i] > max ? lags[i] : max;
    return max;
}

/* runtime.h: "a busy worker reaps completions at least every this many
 * polls". With 1, a due timer waits a poll or two of the busy task; with
 * the default (61) some of 20 rounds wait many more (the chance that all 20
 * land within 8 polls of a turn is about 1e-18). */
Test(timer, event_interval_sets_how_soon_a_busy_worker_fires_timers, .timeout = 30)
{
    uint64_t every = max_timer_lag(1), dflt = max_timer_lag(0);
    cr_assert_leq(every, 3, "event_interval 1: a due timer waited %" PRIu64 " polls", every);
    cr_assert_geq(dflt, 8, "the default: a due timer waited at most %" PRIu64 " polls", dflt);
    cr_assert_leq(dflt, 61 + 3, "the default: a due timer waited %" PRIu64 " polls", dflt);
}

/* 200 sleeps of 50 ms awaited at once through one join_all: a pending leaf
 * gives its unit of the budget back, so every poll reaches all 200 (they
 * were armed at the first) and the task is polled a handful of times. Each
 * pending sleep used to keep its unit: the first 128 spent the budget at
 * every poll, the task woke itself, and the last 72 were started only once
 * the first ones ended (300,000+ polls, a CPU busy for the whole wait). */
#define SLEEPS 200
struct many_sleeps {
    struct weft_sleep s[SLEEPS];
    struct weft_future *ptrs[SLEEPS];
    struct weft_join_all ja;
};

static enum weft_poll body_join_sleeps(struct tk *t, struct weft_cx *cx)
{
    struct many_sleeps *m = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    t->t0 = weft_now_ns(); /* before the inits: each sets its deadline */
    for (int i = 0; i < SLEEPS; i++) {
        weft_sleep_init(&m->s[i], 50 * MS);
        m->ptrs[i] = &m->s[i].base;
    }
    CHECK(weft_join_all_init(&m->ja, m->ptrs, SLEEPS) == 0);
    WEFT_AWAIT(&t->base, cx, &m->ja);
    t->d = weft_now_ns() - t->t0;
    WEFT_ASYNC_END(&t->base);
}

Test(timer, a_join_all_of_200_pending_sleeps_starts_them_all, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    struct many_sleeps *m = calloc(1, sizeof *m);
    cr_assert_not_null(m);
    struct tk out = run_tk(rt, body_join_sleeps, m, 0);
    for (int i = 0; i < SLEEPS; i++) {
        cr_assert_eq(m->s[i].result, 0);
        weft_future_drop(&m->s[i].base);
    }
    cr_assert_lt(out.polls, 50, "the task was polled %u times for one wait", out.polls);
    cr_assert_geq(out.d, 50 * MS, "ended after %.1f ms", out.d / 1e6);
    free(m);
    weft_runtime_destroy(rt);
    assert_balanced(&ca);
}

/* ---- interval ------------------------------------------------------------------------- */

#define PERIOD (20 * MS)
static uint32_t tick_poll[8];   /* the task's poll count at each tick */
static uint64_t tick_missed[8]; /* `missed` after each tick */

/* Six ticks; recs[i].deadline is tick i's deadline as the interval had it. */
static enum weft_poll body_interval(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_interval_init(&t->iv, PERIOD);
    t->t0 = weft_now_ns();
    for (t->i = 0; t->i < 6; t->i++) {
        t->d = t->iv.sleep.deadline_ns;
        WEFT_AWAIT(&t->base, cx, &t->iv);
        recs[t->i] = (struct rec){ t->t0, t->d, weft_now_ns(), t->iv.result };
        tick_poll[t->i] = t->polls;
        tick_missed[t->i] = t->iv.missed;
    }
    WEFT_ASYNC_END(&t->base);
}

/* Tick k is due a whole number of periods after tick 0, at least one period
 * after tick k-1, and never delivered before it is due. (Observed ticks may
 * be less than a period apart after a late one: the schedule does not drift.) */
Test(timer, interval_first_tick_immediate_then_on_schedule, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(2, &ca, false);
    cr_assert_eq(run_tk(rt, body_interval, NULL, 0).iv.ticks, 6);
    weft_runtime_destroy(rt);
    cr_assert_eq(tick_poll[0], 1, "the first tick needed %u polls", tick_poll[0]);
    cr_assert_lt(recs[0].end - recs[0].start, LATE_MAX);
    for (int k = 0; k < 6; k++) {
        recs[k].start = recs[k].deadline;
        check_rec(&recs[k], 0, 0, "tick");
        uint64_t gap = k ? recs[k].deadline - recs[k - 1].deadline : PERIOD;
        cr_assert(gap >= PERIOD && gap % PERIOD == 0, "ticks %d-%d due %.3f ms apart", k - 1, k,
                  (double)gap / 1e6);
    }
    /* Tick 4's delivery counted the ticks skipped before tick 5. */
    cr_assert_eq(recs[5].deadline - recs[0].deadline, (5 + tick_missed[4]) * PERIOD);
    assert_balanced(&ca);
}

#define SLOW (40 * MS)
static int busy_burst = -1, busy_res = -1;
static uint64_t busy_ticks, busy_missed, busy_next, busy_tick3_at, busy_ticks_end;

/* Tick 0, then busy for 3.5 periods: one late tick with the missed ones
 * counted, and the next poll waits for the next tick on the schedule. */
static enum weft_poll body_interval_busy(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_interval_init(&t->iv, SLOW);
    t->t0 = t->iv.sleep.deadline_ns;
    WEFT_AWAIT(&t->base, cx, &t->iv);
    while (weft_now_ns() < t->t0 + 3 * SLOW + SLOW / 2)
        ; /* busy: ticks 1, 2 and 3 fall due */
    CHECK(weft_future_poll(&t->iv.base, cx) == WEFT_READY);
    busy_ticks = t->iv.ticks;
    busy_missed = t->iv.missed;
    busy_next = t->iv.sleep.deadline_ns;
    busy_burst = weft_future_poll(&t->iv.base, cx) == WEFT_READY;
    if (busy_burst)
        WEFT_RETURN(&t->base);
    WEFT_AWAIT(&t->base, cx, &t->iv);
    busy_tick3_at = weft_now_ns();
    busy_res = t->iv.result;
    busy_ticks_end = t->iv.ticks;
    WEFT_ASYNC_END(&t->base);
}

Test(timer, interval_late_task_skips_missed_ticks, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    uint64_t t0 = run_tk(rt, body_interval_busy, NULL, 0).t0;
    weft_runtime_destroy(rt);
    cr_assert_eq(busy_ticks, 2, "the late poll delivered %lu ticks", (unsigned long)busy_ticks);
    cr_assert_geq(busy_missed, 2, "missed: %lu", (unsigned long)busy_missed);
    cr_assert_eq(busy_next, t0 + (2 + busy_missed) * SLOW, "the next tick is off the schedule");
    cr_assert_eq(busy_burst, 0, "a burst: the missed ticks were delivered at once");
    cr_assert_eq(busy_res, 0);
    cr_assert_eq(busy_ticks_end, 3);
    cr_assert_geq(busy_tick3_at, busy_next, "the tick after the late one came early");
    cr_assert_lt(busy_tick3_at - busy_next, LATE_MAX);
    assert_balanced(&ca);
}

static int max_first = -1, max_second = -1;

static enum weft_poll body_interval_max(struct tk *t, struct weft_cx *cx)
{
    weft_interval_init(&t->iv, UINT64_MAX);
    max_first = weft_future_poll(&t->iv.base, cx) == WEFT_READY && t->iv.result == 0;
    max_second = weft_future_poll(&t->iv.base, cx) == WEFT_READY;
    return WEFT_READY;
}

/* The largest period: one tick now, the next one never (no wrap-around). */
Test(timer, interval_period_uint64_max_ticks_once, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    run_tk(rt, body_interval_max, NULL, 0);
    weft_runtime_destroy(rt);
    cr_assert_eq(max_first, 1, "the first tick is immediate");
    cr_assert_eq(max_second, 0, "period UINT64_MAX ticked again at once (the deadline wrapped)");
    assert_balanced(&ca);
}

/* ---- timeout ------------------------------------------------------------------------------ */

static int inner_gone = -1, inner_res = -1, drops_at_end = -1, again_ready = -1, again_res;

/* Timeout 50 ms around the never-ready future. */
static enum weft_poll body_timeout_never(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    t->inner = (struct weft_future){ &never_ops, 0 };
    t->t0 = weft_now_ns();
    weft_timeout_init(&t->to, &t->inner, 50 * MS);
    WEFT_AWAIT(&t->base, cx, &t->to);
    recs[0] = (struct rec){ t->t0, t->t0 + 50 * MS, weft_now_ns(), t->to.result };
    inner_gone = t->inner.ops == NULL;
    /* Polled again, it stays finished as it was (it said -EINVAL for the
     * inner future it had dropped). */
    again_ready = weft_future_poll(&t->to.base, cx) == WEFT_READY;
    again_res = t->to.result;
    drops_at_end = atomic_load(&never_drops);
    WEFT_ASYNC_END(&t->base);
}

Test(timer, timeout_never_ready_times_out_and_drops_inner, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(2, &ca, false);
    run_tk(rt, body_timeout_never, NULL, 0);
    weft_runtime_destroy(rt);
    check_rec(&recs[0], 50 * MS, -ETIMEDOUT, "timeout 50 ms");
    cr_assert_eq(inner_gone, 1, "the inner future was not dropped at the deadline");
    cr_assert_eq(again_ready, 1);
    cr_assert_eq(again_res, -ETIMEDOUT, "polled again: %d", again_res);
    cr_assert_eq(drops_at_end, 1);
    cr_assert_eq(atomic_load(&never_drops), 1, "inner dropped %d times", atomic_load(&never_drops));
    assert_balanced(&ca);
}

/* Timeout 1 s around a sleep of 10 ms, or (with arg set) 20 ms around 200 ms. */
static enum weft_poll body_timeout_sleep(struct tk *t, struct weft_cx *cx)
{
    bool long_inner = t->arg != NULL;
    WEFT_ASYNC_BEGIN(&t->base);
    t->t0 = weft_now_ns();
    weft_sleep_init(&t->s, long_inner ? 200 * MS : 10 * MS);
    weft_timeout_init(&t->to, &t->s.base, long_inner ? 20 * MS : 1000 * MS);
    WEFT_AWAIT(&t->base, cx, &t->to);
    recs[0] = (struct rec){ t->t0, long_inner ? t->t0 + 20 * MS : t->s.deadline_ns, weft_now_ns(),
                            t->to.result };
    inner_gone = t->s.base.ops == NULL;
    inner_res = t->s.result;
    WEFT_ASYNC_END(&t->base);
}

/* The inner sleep ends first: 0, the inner future left finished to the
 * caller, and the timeout's own timer gone. Then the timeout ends first: the
 * inner sleep is dropped (its timer cancelled). */
Test(timer, timeout_around_sleep_either_ends_first, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    run_tk(rt, body_timeout_sleep, NULL, 0);
    check_rec(&recs[0], 10 * MS, 0, "timeout 1 s around sleep 10 ms");
    cr_assert_eq(inner_gone, 0, "the finished inner future must be left to the caller");
    cr_assert_eq(inner_res, 0);
    run_tk(rt, body_timeout_sleep, (void *)1, 1);
    check_rec(&recs[0], 20 * MS, -ETIMEDOUT, "timeout 20 ms around sleep 200 ms");
    cr_assert_eq(inner_gone, 1, "the timed-out sleep was not dropped");
    sleep_us(250000); /* past both dropped timers' deadlines */
    check_timers_then_destroy(rt, &ca);
}

/* ---- dropping registered timers --------------------------------------------------------- */

struct abort_st {
    _Atomic int spinning, stop;
    pthread_t reg_thread, drop_thread;
    bool spin; /* keep the registering worker busy, so the other one drops */
};

static enum weft_poll body_spinner(struct tk *t, struct weft_cx *cx)
{
    struct abort_st *st = t->arg;
    (void)cx;
    atomic_store(&st->spinning, 1);
    spin_until(&st->stop);
    return WEFT_READY;
}

static void record_drop_thread(struct tk *t)
{
    ((struct abort_st *)t->arg)->drop_thread = pthread_self();
}

/* Registers a 200 ms sleep; with `spin`, occupies its own worker with a
 * spinner (spawned into the LIFO slot, which nobody steals). */
static enum weft_poll body_sleeper(struct tk *t, struct weft_cx *cx)
{
    struct abort_st *st = t->arg;
    if (t->polls == 1) {
        t->on_drop = record_drop_thread;
        st->reg_thread = pthread_self();
        weft_sleep_init(&t->s, 200 * MS);
        if (st->spin)
            CHECK(spawn_tk(weft_runtime_current(), body_spinner, st, 1, NULL) == 0);
        else
            atomic_store(&st->spinning, 1);
    }
    return weft_future_poll(&t->s.base, cx);
}

static void abort_sleeper(uint32_t workers, bool spin)
{
    struct counting_alloc ca;
    struct abort_st st = { .spin = spin };
    struct weft_runtime *rt = start_rt_io(workers, &ca, false);
    struct weft_join j;
    cr_assert_eq(spawn_tk(rt, body_sleeper, &st, 0, &j), 0);
    WAIT_UNTIL(atomic_load(&st.spinning));
    sleep_us(5000);
    weft_join_abort(&j);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, -ECANCELED);
    weft_future_drop(&j.base);
    cr_assert_eq(atomic_load(&drops[0]), 1);
    if (spin)
        cr_assert(!pthread_equal(st.reg_thread, st.drop_thread),
                  "the drop was meant to run on the other worker");
    atomic_store(&st.stop, 1);
    sleep_us(250000); /* past the dropped sleep's deadline */
    check_timers_then_destroy(rt, &ca);
    cr_assert_eq(atomic_load(&drops[1]), spin, "the spinner");
}

Test(timer, abort_sleeping_task_drops_on_same_worker, .timeout = 30)
{
    abort_sleeper(1, false);
}

Test(timer, abort_sleeping_task_drops_on_other_worker, .timeout = 30)
{
    abort_sleeper(2, true);
}

/* A task polls two sleeps this thread owns, once, and finishes; this thread,
 * which is no worker, drops one still pending and one whose timer fired. */
static struct weft_sleep ext[2];

/* The sleeps are initialised here, just before their first poll: initialised
 * on the test thread, a first poll that came 10 ms later (a loaded ctest -j2
 * run: the spawn's first poll waited that long) found ext[1] ready and the
 * CHECK aborted. One that is ready all the same (this worker preempted for
 * 10 ms between the two calls) is dropped and started again. */
static enum weft_poll body_poll_ext(struct tk *t, struct weft_cx *cx)
{
    static const uint64_t dur[2] = { 100 * MS, 10 * MS };
    (void)t;
    for (int k = 0; k < 2; k++) {
        for (int tries = 1;; tries++) {
            weft_sleep_init(&ext[k], dur[k]);
            if (weft_future_poll(&ext[k].base, cx) == WEFT_PENDING)
                break;
            weft_future_drop(&ext[k].base);
            CHECK(tries < 50);
        }
    }
    return WEFT_READY;
}

Test(timer, drop_from_non_worker_thread, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(2, &ca, false);
    run_tk(rt, body_poll_ext, NULL, 0);
    sleep_us(40000); /* ext[1] fires meanwhile, waking a finished task */
    weft_future_drop(&ext[0].base);
    weft_future_drop(&ext[1].base);
    sleep_us(120000); /* past ext[0]'s deadline */
    check_timers_then_destroy(rt, &ca);
}

/* ---- shutdown, and running without io_uring ----------------------------------------------- */

static int noring_read_res = 1, noring_send_res = 1;
static char noring_buf[16];
static struct weft_io noring_io;

/* A sleep of 10 ms, then a read of the pipe end in arg (a file operation: it
 * goes to the blocking pool), then a send on it (a socket operation:
 * -EOPNOTSUPP at the first poll). */
static enum weft_poll body_noring(struct tk *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    t->t0 = weft_now_ns();
    weft_sleep_init(&t->s, 10 * MS);
    WEFT_AWAIT(&t->base, cx, &t->s);
    recs[0] = (struct rec){ t->t0, t->s.deadline_ns, weft_now_ns(), t->s.result };
    weft_read_at_init(&noring_io, *(int *)t->arg, noring_buf, sizeof noring_buf, 0);
    WEFT_AWAIT(&t->base, cx, &noring_io);
    noring_read_res = noring_io.result;
    weft_future_drop(&noring_io.base);
    weft_send_init(&noring_io, *(int *)t->arg, "x", 1);
    CHECK(weft_future_poll(&noring_io.base, cx) == WEFT_READY);
    noring_send_res = noring_io.result;
    weft_future_drop(&noring_io.base);
    WEFT_ASYNC_END(&t->base);
}

static enum weft_poll body_sleep_hour(struct tk *t, struct weft_cx *cx)
{
    if (t->polls == 1)
        weft_sleep_init(&t->s, HOUR);
    return weft_future_poll(&t->s.base, cx);
}

/* 1000 tasks sleeping for an hour; destroy drops them all, promptly. */
static void destroy_with_sleepers(bool no_ring)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(2, &ca, no_ring);
    for (uint32_t i = 0; i < 1000; i++)
        cr_assert_eq(spawn_tk(rt, body_sleep_hour, NULL, i, NULL), 0);
    WAIT_UNTIL(atomic_load(&polled_once) == 1000);
    sleep_us(10000); /* the workers park, their next timer an hour away */
    double t0 = now_s();
    weft_runtime_destroy(rt);
    cr_assert_lt(now_s() - t0, 2.0, "destroy took %.3f s", now_s() - t0);
    cr_assert_eq(atomic_load(&finished), 0);
    for (uint32_t i = 0; i < 1000; i++)
        cr_assert_eq(atomic_load(&drops[i]), 1, "task %u dropped %u times", i, atomic_load(&drops[i]));
    assert_balanced(&ca);
}

Test(timer, destroy_with_1000_hour_sleeps_is_prompt, .timeout = 30)
{
    destroy_with_sleepers(false);
}

Test(timer, destroy_with_1000_hour_sleeps_is_prompt_without_ring, .timeout = 30)
{
    destroy_with_sleepers(true);
}

Test(timer, no_io_uring_timers_work_files_fall_back_sockets_eopnotsupp, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, true);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    cr_assert_eq(write(p[1], "hello", 5), 5);
    /* The program asked for no io_uring: nothing on stderr about it. */
    FILE *err = tmpfile();
    cr_assert_not_null(err);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    cr_assert_eq(dup2(fileno(err), STDERR_FILENO), STDERR_FILENO);
    run_tk(rt, body_noring, &p[0], 0);
    fflush(stderr);
    cr_assert_eq(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    char said[256] = "";
    rewind(err);
    size_t n = fread(said, 1, sizeof said - 1, err);
    said[n] = '\0';
    fclose(err);
    cr_assert_null(strstr(said, "weft: io_uring"), "stderr had: %s", said);
    weft_runtime_destroy(rt);
    close(p[0]);
    close(p[1]);
    check_rec(&recs[0], 10 * MS, 0, "sleep without io_uring");
    cr_assert_eq(noring_read_res, 5, "read_at through the blocking pool gave %d", noring_read_res);
    cr_assert_eq(memcmp(noring_buf, "hello", 5), 0);
    cr_assert_eq(noring_send_res, -EOPNOTSUPP, "send gave %d", noring_send_res);
    assert_balanced(&ca);
}

/* ---- out of memory ------------------------------------------------------------------------- */

#define ENOMEM_MAX 1000
static struct weft_sleep heap_s[ENOMEM_MAX];
static struct weft_future *heap_f[ENOMEM_MAX];
static struct weft_join_all heap_all;
static int slab_res = 1, grow_res = 1;
static uint32_t grow_at, heap_fired;

/* First, the worker's first timer slot cannot be allocated. Then sleeps are
 * registered with the allocator failing until one finds the heap full and
 * cannot grow it: that one gives -ENOMEM, and all before it must still fire. */
static enum weft_poll body_enomem(struct tk *t, struct weft_cx *cx)
{
    struct counting_alloc *ca = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    atomic_store(&ca->fail_at, atomic_load(&ca->allocs));
    weft_sleep_init(&t->s, HOUR);
    CHECK(weft_future_poll(&t->s.base, cx) == WEFT_READY);
    slab_res = t->s.result;
    atomic_store(&ca->fail_at, -1);
    weft_sleep_init(&t->s, HOUR); /* warm up: one slot chunk, the heap's first array */
    CHECK(weft_future_poll(&t->s.base, cx) == WEFT_PENDING);
    weft_future_drop(&t->s.base);
    atomic_store(&ca->fail_at, atomic_load(&ca->allocs));
    for (grow_at = 0; grow_at < ENOMEM_MAX; grow_at++) {
        weft_sleep_init(&heap_s[grow_at], 30 * MS);
        heap_f[grow_at] = &heap_s[grow_at].base;
        if (weft_future_poll(&heap_s[grow_at].base, cx) == WEFT_READY)
            break;
    }
    atomic_store(&ca->fail_at, -1);
    CHECK(grow_at < ENOMEM_MAX);
    grow_res = heap_s[grow_at].result;
    weft_future_drop(&heap_s[grow_at].base);
    CHECK(weft_join_all_init(&heap_all, heap_f, grow_at) == 0);
    WEFT_AWAIT(&t->base, cx, &heap_all);
    for (uint32_t k = 0; k < grow_at; k++) {
        heap_fired += heap_s[k].result == 0;
        weft_future_drop(&heap_s[k].base);
    }
    WEFT_ASYNC_END(&t->base);
}

Test(timer, sleep_enomem_leaves_other_timers_alone, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_io(1, &ca, false);
    cr_assert_eq(spawn_tk(rt, body_enomem, &ca, 0, NULL), 0);
    for (double end = now_s() + 3.0; atomic_load(&finished) == 0 && now_s() < end;)
        sleep_us(1000);
    /* (Not destroyed on failure: the heap is corrupt.) */
    cr_assert_eq(atomic_load(&finished), 1, "the 30 ms timers did not all fire within 3 s: "
                 "the sleep that got -ENOMEM took another timer out of the heap");
    weft_runtime_destroy(rt);
    cr_assert_eq(slab_res, -ENOMEM, "the first timer with no memory: %d", slab_res);
    cr_assert_gt(grow_at, 0);
    cr_assert_eq(grow_res, -ENOMEM, "timer %u with no memory: %d", grow_at, grow_res);
    cr_assert_eq(heap_fired, grow_at, "%u of %u timers fired", heap_fired, grow_at);
    assert_balanced(&ca);
}
