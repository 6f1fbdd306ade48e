/* weft-rt-bench [WORKERS=2] [REPS=7]: the runtime microbenchmarks.
 *
 * The same workloads, names and output as the peers' tokio_micro and gomicro
 * (benches/peers/rust/src/bin/tokio_micro.rs), so the three land in one table
 * (benches/micro_compare.sh). Each body runs inside a spawned task on a runtime
 * of WORKERS workers; one warm-up, then REPS timed runs; the median ns/op is
 * printed as `RESULT weft <name> <ns/op>`.
 *
 *   spawn_many(100000)           spawn 100000 tasks that each count down a latch
 *   yield_many(200x1000)         200 tasks each yield 1000 times (ops = 200000)
 *   ping_pong(P pairs x R)       per pair, two capacity-1 channels; one task echoes,
 *                                the other sends i and awaits the reply R times
 *   chained_spawn(1000x100)      each task spawns the next, 1000 deep; the last
 *                                sends on a oneshot; 100 times in sequence
 *   spawn_blocking_seq(10000)    a task spawns a blocking job (returning i + 1) and
 *                                awaits it, 10000 times; checks the sum
 *   spawn_blocking_batch(10000)  a task spawns 10000 blocking jobs, then awaits each */
#include <errno.h>
#include <stdint.h>

#include "common/bench.h"

static struct weft_runtime *rt;

/* ---- task bodies ------------------------------------------------------------------ */

struct hit {
    struct weft_future base;
    struct latch *latch;
};

static enum weft_poll hit_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)cx;
    latch_hit(((struct hit *)f)->latch);
    return WEFT_READY;
}

static const struct weft_future_ops hit_ops = { hit_poll, NULL };

struct yielder {
    struct weft_future base;
    struct latch *latch;
    int i, n;
    struct weft_yield_now y;
};

static enum weft_poll yielder_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct yielder *self = (struct yielder *)f;
    WEFT_ASYNC_BEGIN(f);
    for (self->i = 0; self->i < self->n; self->i++) {
        weft_yield_now_init(&self->y);
        WEFT_AWAIT(f, cx, &self->y);
    }
    latch_hit(self->latch);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops yielder_ops = { yielder_poll, NULL };

/* Echoes every message from `in` to `out` until `in` closes. */
struct echo {
    struct weft_future base;
    struct weft_mpsc *in, *out;
    uint64_t v;
    struct weft_mpsc_recv rx;
    struct weft_mpsc_send tx;
};

static enum weft_poll echo_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct echo *self = (struct echo *)f;
    WEFT_ASYNC_BEGIN(f);
    for (;;) {
        weft_mpsc_recv_init(&self->rx, self->in, &self->v);
        WEFT_AWAIT(f, cx, &self->rx);
        weft_future_drop(&self->rx.base);
        if (self->rx.res < 0)
            break;
        weft_mpsc_send_init(&self->tx, self->out, &self->v);
        WEFT_AWAIT(f, cx, &self->tx);
        weft_future_drop(&self->tx.base);
    }
    weft_mpsc_receiver_drop(self->in);
    weft_mpsc_sender_drop(self->out);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops echo_ops = { echo_poll, NULL };

/* Sends i and awaits the echo, `rounds` times. */
struct pinger {
    struct weft_future base;
    struct weft_mpsc *out, *in;
    struct latch *latch;
    uint64_t i, rounds, v;
    struct weft_mpsc_send tx;
    struct weft_mpsc_recv rx;
};

static enum weft_poll pinger_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct pinger *self = (struct pinger *)f;
    WEFT_ASYNC_BEGIN(f);
    for (self->i = 0; self->i < self->rounds; self->i++) {
        weft_mpsc_send_init(&self->tx, self->out, &self->i);
        WEFT_AWAIT(f, cx, &self->tx);
        weft_future_drop(&self->tx.base);
        weft_mpsc_recv_init(&self->rx, self->in, &self->v);
        WEFT_AWAIT(f, cx, &self->rx);
        weft_future_drop(&self->rx.base);
        if (self->rx.res < 0 || self->v != self->i) {
            fprintf(stderr, "weft-rt-bench: ping_pong got a wrong reply\n");
            exit(1);
        }
    }
    weft_mpsc_sender_drop(self->out);
    weft_mpsc_receiver_drop(self->in);
    latch_hit(self->latch);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops pinger_ops = { pinger_poll, NULL };

struct chain {
    struct weft_future base;
    int n;
    struct weft_oneshot *done;
};

static enum weft_poll chain_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct chain *self = (struct chain *)f;
    (void)cx;
    if (self->n == 0) {
        weft_oneshot_send(self->done, "");
    } else {
        struct chain next = { { f->ops, 0 }, self->n - 1, self->done };
        check(weft_spawn(rt, &next.base, sizeof(next), NULL), "spawn");
    }
    return WEFT_READY;
}

static const struct weft_future_ops chain_ops = { chain_poll, NULL };

static void *plus_one(void *arg)
{
    return (void *)((uintptr_t)arg + 1);
}

/* Spawns n blocking jobs and awaits them: one at a time (`batch` 0), or all
 * spawned first (into `joins`), then awaited in order. */
struct blocker {
    struct weft_future base;
    struct latch *latch;
    long n, i, batch;
    uintptr_t sum;
    struct weft_blocking_join *joins; /* n handles, or one */
};

static enum weft_poll blocker_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct blocker *self = (struct blocker *)f;
    WEFT_ASYNC_BEGIN(f);
    if (self->batch)
        for (self->i = 0; self->i < self->n; self->i++)
            check(weft_spawn_blocking(rt, plus_one, (void *)(uintptr_t)self->i,
                                      &self->joins[self->i]), "spawn_blocking");
    for (self->i = 0; self->i < self->n; self->i++) {
        if (!self->batch)
            check(weft_spawn_blocking(rt, plus_one, (void *)(uintptr_t)self->i, self->joins),
                  "spawn_blocking");
        WEFT_AWAIT(f, cx, &self->joins[self->batch ? self->i : 0]);
        self->sum += (uintptr_t)self->joins[self->batch ? self->i : 0].output;
        weft_future_drop(&self->joins[self->batch ? self->i : 0].base);
    }
    if (self->sum != (uintptr_t)self->n * (uintptr_t)(self->n + 1) / 2) {
        fprintf(stderr, "weft-rt-bench: spawn_blocking got wrong outputs\n");
        exit(1);
    }
    free(self->joins);
    latch_hit(self->latch);
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops blocker_ops = { blocker_poll, NULL };

/* ---- benchmark drivers: each a future run as a task --------------------------------- */

enum workload { SPAWN_MANY, YIELD_MANY, PING_PONG, CHAINED_SPAWN, BLOCKING };

struct driver {
    struct weft_future base;
    enum workload kind;
    long a, b; /* the workload's two sizes */
    long i;
    struct latch latch;
    char byte;
    struct weft_oneshot_recv wait;
};

/* Starts the tasks of one workload; they count `latch` down when done. */
static void start(struct driver *d)
{
    switch (d->kind) {
    case SPAWN_MANY:
        latch_init(&d->latch, d->a);
        for (long i = 0; i < d->a; i++) {
            struct hit h = { { &hit_ops, 0 }, &d->latch };
            check(weft_spawn(rt, &h.base, sizeof(h), NULL), "spawn");
        }
        break;
    case YIELD_MANY:
        latch_init(&d->latch, d->a);
        for (long i = 0; i < d->a; i++) {
            struct yielder y = { { &yielder_ops, 0 }, &d->latch, 0, (int)d->b, { { 0 } } };
            check(weft_spawn(rt, &y.base, sizeof(y), NULL), "spawn");
        }
        break;
    case PING_PONG:
        latch_init(&d->latch, d->a);
        for (long i = 0; i < d->a; i++) {
            struct weft_mpsc *ping, *pong;
            check(weft_mpsc_create(&ping, 1, sizeof(uint64_t)), "mpsc");
            check(weft_mpsc_create(&pong, 1, sizeof(uint64_t)), "mpsc");
            struct echo e = { .base = { &echo_ops, 0 }, .in = ping, .out = pong };
            struct pinger p = { .base = { &pinger_ops, 0 }, .out = ping, .in = pong,
                                .latch = &d->latch, .rounds = (uint64_t)d->b };
            check(weft_spawn(rt, &e.base, sizeof(e), NULL), "spawn");
            check(weft_spawn(rt, &p.base, sizeof(p), NULL), "spawn");
        }
        break;
    case BLOCKING: {
        latch_init(&d->latch, 1);
        struct blocker b = { { &blocker_ops, 0 }, &d->latch, d->a, 0, d->b, 0,
                             calloc(d->b ? (size_t)d->a : 1, sizeof(struct weft_blocking_join)) };
        if (!b.joins)
            check(-ENOMEM, "calloc");
        check(weft_spawn(rt, &b.base, sizeof(b), NULL), "spawn");
        break;
    }
    case CHAINED_SPAWN: {
        check(weft_oneshot_create(&d->latch.done, 1), "oneshot");
        struct chain c = { { &chain_ops, 0 }, (int)d->a, d->latch.done };
        check(weft_spawn(rt, &c.base, sizeof(c), NULL), "spawn");
        break;
    }
    }
}

static enum weft_poll driver_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct driver *d = (struct driver *)f;
    long rounds = d->kind == CHAINED_SPAWN ? d->b : 1;
    WEFT_ASYNC_BEGIN(f);
    for (d->i = 0; d->i < rounds; d->i++) {
        start(d);
        weft_oneshot_recv_init(&d->wait, d->latch.done, &d->byte);
        WEFT_AWAIT(f, cx, &d->wait);
        weft_future_drop(&d->wait.base);
    }
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops driver_ops = { driver_poll, NULL };

static double run_once(enum workload kind, long a, long b)
{
    struct driver d = { .base = { &driver_ops, 0 }, .kind = kind, .a = a, .b = b };
    return run_body(rt, &d.base, sizeof(d));
}

static const char *only; /* run only the benchmarks whose name contains this */

static void bench(const char *name, int reps, long ops, enum workload kind, long a, long b)
{
    double ns[64];
    if (only && !strstr(name, only))
        return;
    run_once(kind, a, b); /* warm-up */
    for (int r = 0; r < reps; r++)
        ns[r] = run_once(kind, a, b) / (double)ops;
    double med = median(ns, reps);
    printf("%-32s %10.1f ns/op  (min %8.1f, max %8.1f)  ops=%ld\n", name, med, ns[0],
           ns[reps - 1], ops);
    printf("RESULT weft %s %.1f\n", name, med);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int workers = argc > 1 ? atoi(argv[1]) : 2;
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    only = argc > 3 ? argv[3] : NULL;
    if (workers < 1 || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: weft-rt-bench [WORKERS=2] [REPS=7 (1..64)] [NAME-FILTER]\n");
        return 2;
    }
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = (uint32_t)workers;
    if (getenv("WEFT_BLOCKING_PRIO")) /* enum weft_blocking_priority, for experiments */
        cfg.blocking_priority = (uint32_t)atoi(getenv("WEFT_BLOCKING_PRIO"));
    check(weft_runtime_create(&rt, &cfg), "runtime");
    printf("weft workers=%d, reps=%d (median, min, max ns/op)\n", workers, reps);
    bench("spawn_many(100000)", reps, 100000, SPAWN_MANY, 100000, 0);
    bench("yield_many(200x1000)", reps, 200000, YIELD_MANY, 200, 1000);
    bench("ping_pong(1 pair x 10000)", reps, 10000, PING_PONG, 1, 10000);
    bench("ping_pong(100 pairs x 1000)", reps, 100000, PING_PONG, 100, 1000);
    bench("chained_spawn(1000x100)", reps, 100000, CHAINED_SPAWN, 1000, 100);
    bench("spawn_blocking_seq(10000)", reps, 10000, BLOCKING, 10000, 0);
    bench("spawn_blocking_batch(10000)", reps, 10000, BLOCKING, 10000, 1);
    weft_runtime_destroy(rt);
    return 0;
}
