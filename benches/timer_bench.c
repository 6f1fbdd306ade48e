/* weft-timer-bench [WORKERS=2] [REPS=3] [TASKS=1000000]: the timer benchmarks.
 *
 * The same workloads, names and output as the peers' tokio_timers
 * (benches/peers/rust/src/bin/tokio_timers.rs), so the two land in one table.
 * Each body runs in a spawned task on a runtime of WORKERS workers; every
 * metric is the median over REPS runs, printed as `RESULT weft <name> <value>`.
 *
 *   sleep_random_1_100ms(N tasks)_wall_ms      N tasks, task i sleeps
 *        1 + splitmix64(i) % 100 ms (from its first poll, as in Tokio's
 *        peer) then counts down a latch; from the first spawn until the
 *        body is woken by the last one
 *   ..._peak_rss_MiB, ..._bytes_per_task       VmHWM after the run (reset
 *        before it with malloc_trim + clear_refs), and (VmHWM - VmRSS before) / N
 *   timeout_ready(100000)                      weft_timeout(1 s) around a ready
 *        future, 100000 times in one task: ns per op
 *   timeout_ready(Wx(100000/W) concurrent)     the same split over W tasks at once
 *   sleep_1ms_oversleep_p50_us / _p99_us       one task sleeps 1 ms 1000 times;
 *        oversleep = elapsed - 1 ms */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include "common/bench.h"

static struct weft_runtime *rt;

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A /proc/self/status field in KiB. */
static long status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, field, n))
            v = atol(line + n + 1);
    if (f)
        fclose(f);
    return v;
}

static void reset_peak(void)
{
    malloc_trim(0);
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd >= 0) {
        ssize_t r = write(fd, "5", 1);
        (void)r;
        close(fd);
    }
}

/* ---- 1M sleeping tasks ---------------------------------------------------------------- */

struct sleeper {
    struct weft_future base;
    struct latch *latch;
    uint64_t dur_ns;           /* the sleep starts at the task's first poll */
    struct weft_sleep s;
};

static enum weft_poll sleeper_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct sleeper *self = (struct sleeper *)f;
    WEFT_ASYNC_BEGIN(f);
    /* Started here, not by the spawner: Tokio's peer creates its sleep in
     * the task (tokio_timers.rs), so a task that waited in a queue past its
     * duration still sleeps its whole duration in both. */
    weft_sleep_init(&self->s, self->dur_ns);
    WEFT_AWAIT(f, cx, &self->s);
    latch_hit(self->latch);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops sleeper_ops = { sleeper_poll, NULL };

struct spawner {
    struct weft_future base;
    long n;
    struct latch latch;
    char byte;
    struct weft_oneshot_recv rx;
};

static enum weft_poll spawner_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct spawner *self = (struct spawner *)f;
    WEFT_ASYNC_BEGIN(f);
    latch_init(&self->latch, self->n);
    for (long i = 0; i < self->n; i++) {
        struct sleeper s = { { &sleeper_ops, 0 }, &self->latch,
                             (1 + splitmix64((uint64_t)i) % 100) * WEFT_NS_PER_MS, { { 0 }, 0, 0, 0 } };
        check(weft_spawn(rt, &s.base, sizeof(s), NULL), "spawn");
    }
    weft_oneshot_recv_init(&self->rx, self->latch.done, &self->byte);
    WEFT_AWAIT(f, cx, &self->rx);
    weft_future_drop(&self->rx.base);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops spawner_ops = { spawner_poll, NULL };

static void bench_sleepers(int reps, long n, const char *label)
{
    double wall[64], peak[64], per[64];
    for (int r = 0; r < reps; r++) {
        reset_peak();
        long before = status_kib("VmRSS:");
        struct spawner s = { .base = { &spawner_ops, 0 }, .n = n };
        wall[r] = run_body(rt, &s.base, sizeof(s)) / 1e6;
        long hwm = status_kib("VmHWM:");
        peak[r] = hwm / 1024.0;
        per[r] = (hwm - before) * 1024.0 / (double)n;
    }
    printf("sleep_random_1_100ms(%s tasks): wall %.1f ms, peak %.1f MiB, %.1f B/task\n", label,
           median(wall, reps), median(peak, reps), median(per, reps));
    printf("RESULT weft sleep_random_1_100ms(%s tasks)_wall_ms %.1f\n", label, median(wall, reps));
    printf("RESULT weft sleep_random_1_100ms(%s tasks)_peak_rss_MiB %.1f\n", label,
           median(peak, reps));
    printf("RESULT weft sleep_random_1_100ms(%s tasks)_bytes_per_task %.1f\n", label,
           median(per, reps));
    fflush(stdout);
}

/* ---- timeout around a ready future ------------------------------------------------------ */

struct ready {
    struct weft_future base;
    long v;
};

static enum weft_poll ready_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)cx;
    ((struct ready *)f)->v++;
    return WEFT_READY;
}

static const struct weft_future_ops ready_ops = { ready_poll, NULL };

struct timeouts {
    struct weft_future base;
    long n;
    struct latch *latch;       /* NULL: the body itself */
    long i;
    struct ready inner;
    struct weft_timeout t;
};

static enum weft_poll timeouts_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct timeouts *self = (struct timeouts *)f;
    WEFT_ASYNC_BEGIN(f);
    for (self->i = 0; self->i < self->n; self->i++) {
        self->inner = (struct ready){ { &ready_ops, 0 }, self->i };
        weft_timeout_init(&self->t, &self->inner.base, WEFT_NS_PER_SEC);
        WEFT_AWAIT(f, cx, &self->t);
        if (self->t.result != 0 || self->inner.v != self->i + 1)
            check(-EPROTO, "timeout_ready result");
        weft_future_drop(&self->t.base);
    }
    if (self->latch)
        latch_hit(self->latch);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops timeouts_ops = { timeouts_poll, NULL };

/* Runs W timeout loops at once and waits for all. */
struct fanout {
    struct weft_future base;
    long w, n;
    struct latch latch;
    char byte;
    struct weft_oneshot_recv rx;
};

static enum weft_poll fanout_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct fanout *self = (struct fanout *)f;
    WEFT_ASYNC_BEGIN(f);
    latch_init(&self->latch, self->w);
    for (long i = 0; i < self->w; i++) {
        struct timeouts t = { .base = { &timeouts_ops, 0 }, .n = self->n, .latch = &self->latch };
        check(weft_spawn(rt, &t.base, sizeof(t), NULL), "spawn");
    }
    weft_oneshot_recv_init(&self->rx, self->latch.done, &self->byte);
    WEFT_AWAIT(f, cx, &self->rx);
    weft_future_drop(&self->rx.base);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops fanout_ops = { fanout_poll, NULL };

static void bench_timeout(int reps, int workers)
{
    enum { OPS = 100000 };
    double ns[64];
    struct timeouts warm = { .base = { &timeouts_ops, 0 }, .n = OPS };
    run_body(rt, &warm.base, sizeof(warm));
    for (int r = 0; r < reps; r++) {
        struct timeouts t = { .base = { &timeouts_ops, 0 }, .n = OPS };
        ns[r] = run_body(rt, &t.base, sizeof(t)) / OPS;
    }
    printf("timeout_ready(100000): %.1f ns/op\n", median(ns, reps));
    printf("RESULT weft timeout_ready(100000) %.1f\n", median(ns, reps));
    for (int r = 0; r < reps; r++) {
        struct fanout fo = { .base = { &fanout_ops, 0 }, .w = workers, .n = OPS / workers };
        ns[r] = run_body(rt, &fo.base, sizeof(fo)) / OPS;
    }
    printf("RESULT weft timeout_ready(%dx%d concurrent) %.1f\n", workers, OPS / workers,
           median(ns, reps));
    fflush(stdout);
}

/* ---- oversleep of a 1 ms sleep ------------------------------------------------------------ */

enum { OVERSLEEPS = 1000 };

struct oversleep {
    struct weft_future base;
    double *us;
    int i;
    double t0;
    struct weft_sleep s;
};

static enum weft_poll oversleep_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct oversleep *self = (struct oversleep *)f;
    WEFT_ASYNC_BEGIN(f);
    for (self->i = 0; self->i < OVERSLEEPS; self->i++) {
        self->t0 = now_ns();
        weft_sleep_init(&self->s, WEFT_NS_PER_MS);
        WEFT_AWAIT(f, cx, &self->s);
        self->us[self->i] = (now_ns() - self->t0 - 1e6) / 1e3;
    }
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops oversleep_ops = { oversleep_poll, NULL };

static void bench_oversleep(int reps)
{
    double p50[64], p99[64], us[OVERSLEEPS];
    for (int r = 0; r < reps; r++) {
        struct oversleep o = { .base = { &oversleep_ops, 0 }, .us = us };
        run_body(rt, &o.base, sizeof(o));
        qsort(us, OVERSLEEPS, sizeof(double), cmp_double);
        p50[r] = us[OVERSLEEPS / 2 - 1];
        p99[r] = us[OVERSLEEPS * 99 / 100 - 1]; /* nearest rank */
    }
    printf("sleep_1ms oversleep: p50 %.1f us, p99 %.1f us\n", median(p50, reps), median(p99, reps));
    printf("RESULT weft sleep_1ms_oversleep_p50_us %.1f\n", median(p50, reps));
    printf("RESULT weft sleep_1ms_oversleep_p99_us %.1f\n", median(p99, reps));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int workers = argc > 1 ? atoi(argv[1]) : 2;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    long tasks = argc > 3 ? atol(argv[3]) : 1000000;
    if (workers < 1 || reps < 1 || reps > 64 || tasks < 1) {
        fprintf(stderr, "usage: weft-timer-bench [WORKERS=2] [REPS=3 (1..64)] [TASKS=1000000]\n");
        return 2;
    }
    char label[32];
    if (tasks % 1000000 == 0)
        snprintf(label, sizeof(label), "%ldM", tasks / 1000000);
    else if (tasks % 1000 == 0)
        snprintf(label, sizeof(label), "%ldk", tasks / 1000);
    else
        snprintf(label, sizeof(label), "%ld", tasks);
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = (uint32_t)workers;
    check(weft_runtime_create(&rt, &cfg), "runtime");
    printf("weft-timer-bench workers=%d reps=%d tasks=%ld\n", workers, reps, tasks);
    bench_sleepers(reps, tasks, label);
    bench_timeout(reps, workers);
    bench_oversleep(reps);
    weft_runtime_destroy(rt);
    return 0;
}
