/* tests/stress_timer.c: timers under load, racing their cancellation, with
 * exact accounting.
 *
 * A plain program rather than a Criterion test so that it runs under
 * ThreadSanitizer (which cannot start Criterion). Usage: stress_timer [full|small].
 * Every runtime has 4 workers (on 2 cores: tasks move between workers, and
 * timers are dropped on workers other than the one whose heap holds them) and
 * a counting allocator that must balance after destroy.
 *
 * Phase 1, WAVES waves of TASKS tasks: each task awaits 1-3 sleeps of 0-3 ms
 * (a quarter with a deadline already past), then a timeout of 0-3 ms around a
 * sleep of 0-3 ms, and one task in 16 an interval of 1 ms for 4 ticks. Every
 * result is checked: never ready before the deadline, the right result, a
 * timed-out inner future dropped. One task in 5 is aborted by one of two
 * foreign threads at a random moment, racing its timers and its end. Checked
 * per task: dropped exactly once; finished unless aborted.
 *
 * Phase 2, WAVES waves of EXT sleeps owned by this program: 8 tasks poll them
 * once each (registering the timers on their workers) and finish; two
 * foreign threads drop them at random moments, before or after they fire, so
 * the drop races the owner's firing.
 *
 * Phase 3: a runtime with 3000 tasks sleeping 1 h, looping over short
 * sleeps, or timing out a never-ready future after 1 h, is destroyed while a
 * foreign thread aborts some of them: destroy returns within 5 s, every task
 * is dropped exactly once.
 *
 * Bad inputs: none (see test_timer.c). A watchdog exits with status 2 when a
 * phase is stuck for 60 s. Prints one line per phase; exits 0 only on success. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#define MS WEFT_NS_PER_MS
#define MAX_TASKS 20000u
#define MAX_EXT 20000u
#define PHASE3_TASKS 3000u
#define WATCHDOG_SECS 60

static uint32_t waves, tasks, ext_n;
static _Atomic uint64_t failures;

#define FAIL_IF(cond, ...)                                   \
    do {                                                     \
        if (cond) {                                          \
            if (atomic_fetch_add(&failures, 1) < 10)         \
                fprintf(stderr, "stress_timer: " __VA_ARGS__); \
        }                                                    \
    } while (0)

/* ---- the watchdog, a counting allocator, small helpers ----------------------- */

static _Atomic uint64_t deadline_ns;
static const char *_Atomic phase = "start";

static void arm_watchdog(const char *what)
{
    atomic_store(&phase, what);
    atomic_store(&deadline_ns, weft_now_ns() + WATCHDOG_SECS * WEFT_NS_PER_SEC);
}

static void *watchdog(void *arg)
{
    (void)arg;
    for (;;) {
        usleep(100000);
        if (weft_now_ns() > atomic_load(&deadline_ns)) {
            fprintf(stderr, "stress_timer: FAIL: %s stuck for %d s\n", atomic_load(&phase),
                    WATCHDOG_SECS);
            _exit(2);
        }
    }
    return NULL;
}

static _Atomic long allocs, frees;

static void *count_alloc(void *ctx, size_t size)
{
    (void)ctx;
    void *p = malloc(size);
    if (p)
        atomic_fetch_add(&allocs, 1);
    return p;
}

static void count_free(void *ctx, void *p, size_t size)
{
    (void)ctx, (void)size;
    atomic_fetch_add(&frees, 1);
    free(p);
}

static const struct weft_allocator counting = { count_alloc, count_free, NULL };

static struct weft_runtime *start_rt(void)
{
    struct weft_runtime_config cfg;
    struct weft_runtime *rt;
    weft_runtime_config_init(&cfg);
    cfg.workers = 4;
    cfg.allocator = &counting;
    if (weft_runtime_create(&rt, &cfg)) {
        fprintf(stderr, "stress_timer: weft_runtime_create failed\n");
        exit(1);
    }
    return rt;
}

static uint32_t xorshift(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { (time_t)(ns / WEFT_NS_PER_SEC), (long)(ns % WEFT_NS_PER_SEC) };
    nanosleep(&ts, NULL);
}

/* ---- phase 1: sleeps, timeouts and intervals; aborts from foreign threads ----- */

struct tt {
    struct weft_future base;
    uint32_t idx, i, k, rnd;
    uint64_t d;
    struct weft_sleep s, s2;
    struct weft_timeout to;
    struct weft_interval iv;
};

static _Atomic uint32_t t_done[MAX_TASKS], t_drops[MAX_TASKS], dropped;
static struct weft_join joins[MAX_TASKS];

static enum weft_poll tt_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct tt *t = (struct tt *)f;
    uint64_t now;
    WEFT_ASYNC_BEGIN(f);
    t->k = 1 + xorshift(&t->rnd) % 3;
    for (t->i = 0; t->i < t->k; t->i++) {
        if (xorshift(&t->rnd) % 4 == 0)
            weft_sleep_until_init(&t->s, weft_now_ns() - MS);
        else
            weft_sleep_init(&t->s, xorshift(&t->rnd) % (3 * MS));
        WEFT_AWAIT(f, cx, &t->s);
        FAIL_IF(weft_now_ns() < t->s.deadline_ns, "task %u: sleep ready early\n", t->idx);
        FAIL_IF(t->s.result != 0, "task %u: sleep result %d\n", t->idx, t->s.result);
        weft_future_drop(&t->s.base);
    }
    weft_sleep_init(&t->s2, xorshift(&t->rnd) % (3 * MS));
    weft_timeout_init(&t->to, &t->s2.base, xorshift(&t->rnd) % (3 * MS));
    WEFT_AWAIT(f, cx, &t->to);
    now = weft_now_ns();
    if (t->to.result == 0) {
        FAIL_IF(t->s2.result != 0 || now < t->s2.deadline_ns, "task %u: inner sleep\n", t->idx);
    } else {
        FAIL_IF(t->to.result != -ETIMEDOUT, "task %u: timeout result %d\n", t->idx, t->to.result);
        FAIL_IF(now < t->to.sleep.deadline_ns, "task %u: timed out early\n", t->idx);
        FAIL_IF(t->s2.base.ops != NULL, "task %u: timed-out inner not dropped\n", t->idx);
    }
    weft_future_drop(&t->to.base);
    weft_future_drop(&t->s2.base);
    if (t->idx % 16 == 0) {
        weft_interval_init(&t->iv, MS);
        for (t->i = 0; t->i < 4; t->i++) {
            t->d = t->iv.sleep.deadline_ns;
            WEFT_AWAIT(f, cx, &t->iv);
            FAIL_IF(weft_now_ns() < t->d || t->iv.result != 0, "task %u: tick %u\n", t->idx, t->i);
        }
        FAIL_IF(t->iv.ticks != 4, "task %u: %lu ticks\n", t->idx, (unsigned long)t->iv.ticks);
    }
    atomic_store(&t_done[t->idx], 1);
    WEFT_ASYNC_END(f);
}

static void tt_drop(struct weft_future *f)
{
    struct tt *t = (struct tt *)f;
    weft_future_drop(&t->to.base);
    weft_future_drop(&t->s2.base);
    weft_future_drop(&t->s.base);
    weft_future_drop(&t->iv.base);
    atomic_fetch_add(&t_drops[t->idx], 1);
    atomic_fetch_add(&dropped, 1);
}

static const struct weft_future_ops tt_ops = { tt_poll, tt_drop };

static bool aborted(uint32_t i)
{
    return i % 5 == 1;
}

struct aborter {
    pthread_t th;
    uint32_t first, step, seed;
};

static void *abort_some(void *arg)
{
    struct aborter *a = arg;
    for (uint32_t i = a->first; i < tasks; i += a->step) {
        if (!aborted(i))
            continue;
        if (xorshift(&a->seed) % 8 == 0)
            sleep_ns(xorshift(&a->seed) % (200 * 1000));
        weft_join_abort(&joins[i]);
    }
    return NULL;
}

static void phase1(void)
{
    struct weft_runtime *rt = start_rt();
    uint64_t t0 = weft_now_ns(), finished = 0, cancelled = 0;
    for (uint32_t w = 0; w < waves; w++) {
        arm_watchdog("phase 1 wave");
        atomic_store(&dropped, 0);
        for (uint32_t i = 0; i < tasks; i++) {
            atomic_store(&t_done[i], 0);
            atomic_store(&t_drops[i], 0);
            struct tt t = { .base = { &tt_ops, 0 }, .idx = i, .rnd = (w + 1) * 7919u + i * 104729u + 1 };
            if (weft_spawn(rt, &t.base, sizeof t, &joins[i])) {
                fprintf(stderr, "stress_timer: spawn failed\n");
                exit(1);
            }
        }
        struct aborter ab[2];
        for (uint32_t k = 0; k < 2; k++) {
            ab[k] = (struct aborter){ .first = k, .step = 2, .seed = 0x9e3779b9u * (w + k + 1) };
            pthread_create(&ab[k].th, NULL, abort_some, &ab[k]);
        }
        for (uint32_t k = 0; k < 2; k++)
            pthread_join(ab[k].th, NULL);
        while (atomic_load(&dropped) < tasks)
            sleep_ns(200 * 1000);
        for (uint32_t i = 0; i < tasks; i++) {
            weft_future_drop(&joins[i].base);
            uint32_t done = atomic_load(&t_done[i]), drops = atomic_load(&t_drops[i]);
            FAIL_IF(drops != 1, "wave %u task %u dropped %u times\n", w, i, drops);
            FAIL_IF(!done && !aborted(i), "wave %u task %u neither finished nor aborted\n", w, i);
            finished += done;
            cancelled += !done;
        }
    }
    weft_runtime_destroy(rt);
    printf("stress_timer: phase 1: %u waves x %u tasks, %lu finished, %lu aborted mid-way, %.3f s\n",
           waves, tasks, (unsigned long)finished, (unsigned long)cancelled,
           (double)(weft_now_ns() - t0) / 1e9);
}

/* ---- phase 2: sleeps registered by tasks, dropped by foreign threads ---------- */

static struct weft_sleep ext[MAX_EXT];
static _Atomic int ext_polled[MAX_EXT];
static _Atomic uint32_t ext_ready_at_once;

struct registrar {
    struct weft_future base;
    uint32_t first, step;
};

static enum weft_poll registrar_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct registrar *r = (struct registrar *)f;
    for (uint32_t i = r->first; i < ext_n; i += r->step) {
        if (weft_future_poll(&ext[i].base, cx) == WEFT_READY)
            atomic_fetch_add(&ext_ready_at_once, 1);
        /* Release: the dropper sees the sleep as this poll left it. */
        atomic_store_explicit(&ext_polled[i], 1, memory_order_release);
    }
    return WEFT_READY;
}

static const struct weft_future_ops registrar_ops = { registrar_poll, NULL };

struct dropper {
    pthread_t th;
    uint32_t first, seed;
};

static void *drop_ext(void *arg)
{
    struct dropper *d = arg;
    for (uint32_t i = d->first; i < ext_n; i += 2) {
        /* Acquire pairs with the registrar's release. */
        while (!atomic_load_explicit(&ext_polled[i], memory_order_acquire))
            sched_yield();
        if (xorshift(&d->seed) % 64 == 0)
            sleep_ns(xorshift(&d->seed) % (500 * 1000));
        weft_future_drop(&ext[i].base);
    }
    return NULL;
}

static void phase2(void)
{
    struct weft_runtime *rt = start_rt();
    uint64_t t0 = weft_now_ns();
    uint32_t seed = 12345;
    for (uint32_t w = 0; w < waves; w++) {
        arm_watchdog("phase 2 wave");
        for (uint32_t i = 0; i < ext_n; i++) {
            atomic_store(&ext_polled[i], 0);
            weft_sleep_init(&ext[i], xorshift(&seed) % (2 * MS));
        }
        struct dropper dr[2];
        for (uint32_t k = 0; k < 2; k++) {
            dr[k] = (struct dropper){ .first = k, .seed = 0x85ebca6bu * (w + k + 1) };
            pthread_create(&dr[k].th, NULL, drop_ext, &dr[k]);
        }
        for (uint32_t k = 0; k < 8; k++) {
            struct registrar r = { { &registrar_ops, 0 }, k, 8 };
            if (weft_spawn(rt, &r.base, sizeof r, NULL)) {
                fprintf(stderr, "stress_timer: spawn failed\n");
                exit(1);
            }
        }
        for (uint32_t k = 0; k < 2; k++)
            pthread_join(dr[k].th, NULL);
    }
    sleep_ns(5 * MS); /* every deadline has passed: a timer left in a heap fires now */
    arm_watchdog("phase 2 destroy");
    weft_runtime_destroy(rt);
    printf("stress_timer: phase 2: %u waves x %u foreign drops (%u ready at the first poll), %.3f s\n",
           waves, ext_n, atomic_load(&ext_ready_at_once), (double)(weft_now_ns() - t0) / 1e9);
}

/* ---- phase 3: destroy with sleeping tasks, racing aborts --------------------- */

static _Atomic uint32_t p3_drops[PHASE3_TASKS], p3_polled;
static struct weft_join p3_joins[PHASE3_TASKS];

static enum weft_poll never_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    return WEFT_PENDING;
}

static const struct weft_future_ops never_ops = { never_poll, NULL };

struct p3 {
    struct weft_future base;
    uint32_t idx;
    bool counted;
    struct weft_sleep s;
    struct weft_future never;
    struct weft_timeout to;
};

static enum weft_poll p3_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct p3 *t = (struct p3 *)f;
    if (!t->counted) {
        t->counted = true;
        atomic_fetch_add(&p3_polled, 1);
    }
    WEFT_ASYNC_BEGIN(f);
    if (t->idx % 3 == 0) {
        weft_sleep_init(&t->s, 3600 * WEFT_NS_PER_SEC);
        WEFT_AWAIT(f, cx, &t->s);
    } else if (t->idx % 3 == 1) {
        for (;;) {
            weft_sleep_init(&t->s, (t->idx % 5) * MS);
            WEFT_AWAIT(f, cx, &t->s);
            weft_future_drop(&t->s.base);
        }
    } else {
        t->never = (struct weft_future){ &never_ops, 0 };
        weft_timeout_init(&t->to, &t->never, 3600 * WEFT_NS_PER_SEC);
        WEFT_AWAIT(f, cx, &t->to);
    }
    FAIL_IF(true, "phase 3 task %u finished\n", t->idx);
    WEFT_ASYNC_END(f);
}

static void p3_drop(struct weft_future *f)
{
    struct p3 *t = (struct p3 *)f;
    weft_future_drop(&t->to.base);
    weft_future_drop(&t->never);
    weft_future_drop(&t->s.base);
    atomic_fetch_add(&p3_drops[t->idx], 1);
}

static const struct weft_future_ops p3_ops = { p3_poll, p3_drop };

static void *abort_p3(void *arg)
{
    uint32_t seed = 777;
    (void)arg;
    for (uint32_t i = 0; i < PHASE3_TASKS; i += 1 + xorshift(&seed) % 4)
        weft_join_abort(&p3_joins[i]);
    return NULL;
}

static void phase3(void)
{
    arm_watchdog("phase 3");
    struct weft_runtime *rt = start_rt();
    for (uint32_t i = 0; i < PHASE3_TASKS; i++) {
        struct p3 t = { .base = { &p3_ops, 0 }, .idx = i };
        if (weft_spawn(rt, &t.base, sizeof t, &p3_joins[i])) {
            fprintf(stderr, "stress_timer: spawn failed\n");
            exit(1);
        }
    }
    while (atomic_load(&p3_polled) < PHASE3_TASKS)
        sleep_ns(MS);
    sleep_ns(20 * MS);
    pthread_t th;
    pthread_create(&th, NULL, abort_p3, NULL);
    uint64_t t0 = weft_now_ns();
    weft_runtime_destroy(rt);
    double took = (double)(weft_now_ns() - t0) / 1e9;
    pthread_join(th, NULL);
    for (uint32_t i = 0; i < PHASE3_TASKS; i++) {
        weft_future_drop(&p3_joins[i].base);
        FAIL_IF(atomic_load(&p3_drops[i]) != 1, "phase 3 task %u dropped %u times\n", i,
                atomic_load(&p3_drops[i]));
    }
    FAIL_IF(took > 5.0, "phase 3: destroy took %.3f s\n", took);
    printf("stress_timer: phase 3: destroy with %u sleeping tasks and racing aborts: %.3f s\n",
           PHASE3_TASKS, took);
}

int main(int argc, char **argv)
{
    bool small = argc > 1 && strcmp(argv[1], "small") == 0;
    waves = small ? 4 : 20;
    tasks = small ? 4000 : MAX_TASKS;
    ext_n = small ? 4000 : MAX_EXT;
    pthread_t wd;
    arm_watchdog("start");
    pthread_create(&wd, NULL, watchdog, NULL);
    phase1();
    phase2();
    phase3();
    long a = atomic_load(&allocs), f = atomic_load(&frees);
    FAIL_IF(a != f, "allocator: %ld allocations, %ld frees\n", a, f);
    uint64_t n = atomic_load(&failures);
    printf("stress_timer: %s (%lu failures)\n", n ? "FAIL" : "ok", (unsigned long)n);
    return n ? 1 : 0;
}
