/* tests/test_metrics.c: runtime metrics (runtime/metrics.c, the counting
 * sites in sched.c, task.c, internal.h, io/ring.c and io/op.c); the stall
 * detector and the task dump are in test_stall.c.
 *
 * Counters are checked against workloads whose counts are known exactly, on a
 * runtime that runs nothing else while the test measures (no weft_block_on
 * inside a measured window: it spawns a task of its own): spawns from foreign
 * threads and from a task, yields (a task yielding M times is polled M+1
 * times), live tasks with and without join handles, steals forced by a task
 * that fills its worker's queue and then keeps that worker busy, the coop
 * budget spent by ready sleeps and by a channel full of messages, LIFO hits of
 * a ping-pong, queue depths and overflows behind a busy worker, I/O counters
 * of a TCP round trip, parks, unparks and busy time. The histograms are
 * checked exactly as well: on a quiet runtime the number of samples follows
 * from the poll and wake counters (one in WEFT_METRICS_SAMPLE), and a long
 * poll or a long queue wait is steered onto a sampled slot to show up in the
 * right bucket.
 *
 * The regressions suite at the end holds four tests that failed before their
 * fixes (a task stranded in a busy worker's queue of one, a voluntary yield
 * counted as a budget yield, busy time missing until a worker parks, busy
 * time going backwards when read during a park); a fifth, of the task dump,
 * is in test_stall.c.
 *
 * Bad inputs tried: NULL runtime and NULL output to weft_metrics_read,
 * weft_metrics_dump and weft_task_dump (-EINVAL); a dump to a FILE opened
 * read-only (-EIO, both dumps, also once its error flag is set) and to a
 * writable one whose error flag an earlier failure set (both succeed);
 * weft_histogram_bucket_min of 118 (one past the
 * last bucket) and UINT32_MAX (UINT64_MAX); weft_histogram_quantile of NULL
 * and of an empty histogram (0), of q < 0 and q > 1 (clamped to 0 and 1), of
 * a sample in the last bucket (UINT64_MAX, its open top), of a count of
 * UINT64_MAX (q = 1 and 0.5 in the bucket holding all but one). test_stall.c lists
 * the bad inputs of the stall detector and the task dump. */
#include "metrics_common.h"

/* The snapshot a measured window starts from. */
static struct weft_metrics m0;
/* A counter's growth from m0 to m1. */
#define DELTA(field) (SUM(&m1, field) - SUM(&m0, field))

/* ---- bad inputs ------------------------------------------------------------------- */

Test(metrics, null_arguments, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_metrics *m = calloc(1, sizeof *m);
    cr_assert_not_null(m);
    cr_assert_eq(weft_metrics_read(NULL, m), -EINVAL);
    cr_assert_eq(weft_metrics_read(rt, NULL), -EINVAL);
    cr_assert_eq(weft_metrics_read(NULL, NULL), -EINVAL);
    cr_assert_eq(weft_metrics_dump(NULL, stderr), -EINVAL);
    cr_assert_eq(weft_metrics_dump(rt, NULL), -EINVAL);
    cr_assert_eq(weft_task_dump(NULL, stderr), -EINVAL);
    cr_assert_eq(weft_task_dump(rt, NULL), -EINVAL);
    cr_assert_eq(weft_histogram_quantile(NULL, 0.5), 0);
    cr_assert_eq(weft_histogram_quantile(NULL, 0.0), 0);
    cr_assert_eq(weft_histogram_quantile(NULL, 1.0), 0);
    cr_assert_eq(weft_histogram_bucket_min(WEFT_HIST_BUCKETS), UINT64_MAX);
    cr_assert_eq(weft_histogram_bucket_min(UINT32_MAX), UINT64_MAX);
    /* A count near 2^64: q * count rounds to 2^64 (was converted to an
     * integer as it was, undefined: 128 came back). */
    struct weft_histogram *h = calloc(1, sizeof *h);
    cr_assert_not_null(h);
    h->count = UINT64_MAX;
    h->buckets[2] = 1;
    h->buckets[5] = UINT64_MAX - 1;
    cr_assert_eq(weft_histogram_quantile(h, 1.0), weft_histogram_bucket_min(6));
    cr_assert_eq(weft_histogram_quantile(h, 0.5), weft_histogram_bucket_min(6));
    cr_assert_eq(weft_histogram_quantile(h, 0.0), weft_histogram_bucket_min(3));
    free(h);
    free(m);
    weft_runtime_destroy(rt);
}

/* A runtime that never ran a task: everything zero, the workers beyond
 * `workers` untouched. */
Test(metrics, fresh_runtime_is_zero, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    memset(&m0, 0xa5, sizeof m0);
    snap(rt, &m0);
    cr_assert_eq(m0.workers, 2);
    cr_assert_eq(m0.spawned, 0);
    cr_assert_eq(m0.live_tasks, 0);
    cr_assert_eq(m0.remote_schedules, 0);
    cr_assert_eq(m0.stalls, 0);
    cr_assert_eq(m0.global_queue_depth, 0);
    cr_assert_eq(SUM(&m0, polls), 0);
    cr_assert_eq(SUM(&m0, steals), 0);
    cr_assert_eq(SUM(&m0, local_schedules), 0);
    cr_assert_eq(SUM(&m0, lifo_hits), 0);
    cr_assert_eq(SUM(&m0, budget_yields), 0);
    cr_assert_eq(SUM(&m0, queue_depth), 0);
    cr_assert_eq(m0.poll_ns.count, 0);
    cr_assert_eq(m0.sched_latency.count, 0);
    cr_assert_eq(weft_histogram_quantile(&m0.poll_ns, 0.5), 0);
    cr_assert_eq(m0.blocking_jobs, 0);
    for (uint32_t i = 2; i < 256; i++)
        cr_assert_eq(m0.worker[i].polls + m0.worker[i].parks + m0.worker[i].busy_ns, 0,
                     "worker slot %u not zeroed", i);
    weft_runtime_destroy(rt);
}

/* ---- exact counts -------------------------------------------------------------------- */

#define FOREIGN_THREADS 4
#define PER_THREAD 250

struct spawner {
    struct weft_runtime *rt;
    _Atomic int failures;
};

static void *spawn_from_thread(void *arg)
{
    struct spawner *s = arg;
    for (int i = 0; i < PER_THREAD; i++)
        if (spawn_mt(s->rt, body_ready, NULL, 0, NULL, NULL) != 0)
            atomic_fetch_add(&s->failures, 1);
    return NULL;
}

/* 1000 tasks spawned by 4 plain threads at once: spawned, remote_schedules
 * and polls grow by exactly 1000, nothing is scheduled locally, and the live
 * count comes back to 0. */
Test(metrics, foreign_spawns_counted_exactly, .timeout = 60)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct spawner s = { .rt = rt };
    pthread_t th[FOREIGN_THREADS];
    snap(rt, &m0);
    for (int i = 0; i < FOREIGN_THREADS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, spawn_from_thread, &s), 0);
    for (int i = 0; i < FOREIGN_THREADS; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(atomic_load(&s.failures), 0);
    const uint64_t n = FOREIGN_THREADS * PER_THREAD;
    WAIT_UNTIL(atomic_load(&done) == n);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(m1.spawned - m0.spawned, n);
    cr_assert_eq(m1.remote_schedules - m0.remote_schedules, n);
    cr_assert_eq(DELTA(polls), n);
    cr_assert_eq(DELTA(local_schedules), 0);
    cr_assert_eq(DELTA(lifo_hits), 0);
    cr_assert_eq(DELTA(budget_yields), 0);
    cr_assert_eq(m1.live_tasks, 0);
    cr_assert_eq(m1.global_queue_depth, 0);
    cr_assert_eq(SUM(&m1, queue_depth), 0);
    weft_runtime_destroy(rt);
}

/* Join handles keep finished tasks allocated: live_tasks stays at the number
 * of handles held after every task finished, and comes back to 0 once the
 * test thread drops them. (Not at once: a worker drops its own references
 * just after it published the completion, so the last free may be its.) */
Test(metrics, live_tasks_follow_join_handles, .timeout = 30)
{
    enum { N = 50 };
    struct weft_runtime *rt = start_rt(2, NULL);
    struct weft_join j[N];
    snap(rt, &m0);
    cr_assert_eq(m0.live_tasks, 0);
    for (int i = 0; i < N; i++)
        cr_assert_eq(spawn_mt(rt, body_ready, NULL, 0, &j[i], NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == N);
    sleep_us(20000);
    snap(rt, &m1);
    cr_assert_eq(m1.live_tasks, N, "live %" PRIu64 " with %d handles held", m1.live_tasks, N);
    for (int i = 0; i < N; i++)
        weft_future_drop(&j[i].base);
    WAIT_NO_TASKS(rt);
    sleep_us(20000);
    snap(rt, &m1);
    cr_assert_eq(m1.live_tasks, 0);
    cr_assert_eq(m1.spawned, N);
    weft_runtime_destroy(rt);
}

struct parent_arg {
    struct weft_runtime *rt;
    uint32_t children;
    _Atomic int failures;
};

/* Spawns arg->children detached children (onto its own worker) and ends. */
static enum weft_poll body_parent(struct mt *t, struct weft_cx *cx)
{
    struct parent_arg *a = t->arg;
    (void)cx;
    for (uint32_t i = 0; i < a->children; i++)
        if (spawn_mt(a->rt, body_ready, NULL, 0, NULL, NULL) != 0)
            atomic_fetch_add(&a->failures, 1);
    return WEFT_READY;
}

/* One task spawned from the test thread spawns 200 children: spawned grows by
 * 201, remote_schedules by 1, local_schedules by 200, polls by 201. */
Test(metrics, task_spawns_counted_exactly, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct parent_arg a = { .rt = rt, .children = 200 };
    snap(rt, &m0);
    cr_assert_eq(spawn_mt(rt, body_parent, &a, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 201);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(atomic_load(&a.failures), 0);
    cr_assert_eq(m1.spawned - m0.spawned, 201);
    cr_assert_eq(m1.remote_schedules - m0.remote_schedules, 1);
    cr_assert_eq(DELTA(local_schedules), 200);
    cr_assert_eq(DELTA(polls), 201);
    cr_assert_eq(m1.live_tasks, 0);
    weft_runtime_destroy(rt);
}

/* Two tasks yielding 1000 and 700 times: polled 1001 + 701 times, every
 * yield a local schedule (never a LIFO hit: a yield goes to the back of the
 * queue), no budget yield. */
Test(metrics, yields_counted_exactly, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    snap(rt, &m0);
    cr_assert_eq(spawn_mt(rt, body_yields, NULL, 1000, NULL, NULL), 0);
    cr_assert_eq(spawn_mt(rt, body_yields, NULL, 700, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 2);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(DELTA(polls), 1001 + 701);
    cr_assert_eq(DELTA(local_schedules), 1000 + 700);
    cr_assert_eq(m1.remote_schedules - m0.remote_schedules, 2);
    cr_assert_eq(m1.spawned - m0.spawned, 2);
    cr_assert_eq(DELTA(lifo_hits), 0);
    cr_assert_eq(DELTA(budget_yields), 0);
    weft_runtime_destroy(rt);
}

/* ---- the dump's rows ----------------------------------------------------------------- */

static char *dump_text(struct weft_runtime *rt)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    cr_assert_eq(weft_metrics_dump(rt, f), 0);
    fclose(f);
    return text;
}

/* weft_metrics_dump's worker rows say what weft_metrics_read does, column
 * by column (by the header's names), for the counts that stay still while
 * the runtime is idle (not busy_ms, parks, unparks and the ring's: a parked
 * worker's timer or wake may move them between the two reads). */
static void check_dump_rows(struct weft_runtime *rt, const struct weft_metrics *m)
{
    char *text = dump_text(rt), *save = NULL;
    char *line = strtok_r(text, "\n", &save); /* the runtime's line */
    line = strtok_r(NULL, "\n", &save);
    static const char *const names[] = { "w", "polls", "busy_ms", "steals", "parks", "unparks",
                                         "local", "ovfl", "budget", "lifo", "enters", "sqes",
                                         "cqes", "steal_ops", "queue" };
    enum { COLS = sizeof(names) / sizeof(names[0]) };
    char *hsave = NULL, *h = strtok_r(line, " ", &hsave);
    for (int c = 0; c < COLS; c++, h = strtok_r(NULL, " ", &hsave))
        cr_assert(h && strcmp(h, names[c]) == 0, "column %d of the header: %s", c, h ? h : "-");
    for (uint32_t i = 0; i < m->workers; i++) {
        line = strtok_r(NULL, "\n", &save);
        cr_assert_not_null(line);
        double v[COLS];
        char *end = line;
        for (int c = 0; c < COLS; c++)
            v[c] = strtod(end, &end);
        const struct weft_worker_metrics *w = &m->worker[i];
        const double want[COLS] = { i, w->polls, v[2], w->steals, v[4], v[5], w->local_schedules,
                                    w->overflows, w->budget_yields, w->lifo_hits, v[10], v[11],
                                    v[12], w->steal_ops, w->queue_depth };
        for (int c = 0; c < COLS; c++)
            cr_assert_eq(v[c], want[c], "worker %u, %s: %.0f in the dump, %.0f read", i,
                         names[c], v[c], want[c]);
    }
    free(text);
}

/* ---- steals ------------------------------------------------------------------------- */

#define STEAL_CHILDREN 33

struct steal_arg {
    struct weft_runtime *rt;
    _Atomic int parent_worker;
    _Atomic uint32_t ran, ran_on[2];
    _Atomic int failures;
};

static enum weft_poll body_steal_child(struct mt *t, struct weft_cx *cx)
{
    struct steal_arg *a = t->arg;
    (void)cx;
    int w = worker_index();
    CHECK(w == 0 || w == 1);
    atomic_fetch_add(&a->ran_on[w], 1);
    atomic_fetch_add(&a->ran, 1);
    return WEFT_READY;
}

/* On worker A: spawns STEAL_CHILDREN children (the last one stays in A's LIFO
 * slot, the others go to A's queue), then spins until the queued ones ran:
 * only worker B can have run them, by stealing. */
static enum weft_poll body_steal_parent(struct mt *t, struct weft_cx *cx)
{
    struct steal_arg *a = t->arg;
    (void)cx;
    atomic_store(&a->parent_worker, worker_index());
    for (uint32_t i = 0; i < STEAL_CHILDREN; i++)
        if (spawn_mt(a->rt, body_steal_child, a, i, NULL, NULL) != 0)
            atomic_fetch_add(&a->failures, 1);
    /* Bounded well below WAIT_SECS: see the test's comment. */
    double deadline = now_s() + 2.0;
    while (atomic_load(&a->ran) < STEAL_CHILDREN - 1 && now_s() < deadline)
        ;
    return WEFT_READY;
}

/* Worker B steals from A's queue while A is busy: B's steals grow by exactly
 * the number of children B ran (each steal moves tasks into B's empty queue,
 * and B runs all it took before it looks elsewhere), B's polls by the same,
 * steal_ops by at least 1; A steals nothing, polls the parent, its LIFO child
 * and whatever was left in its own queue, and runs the LIFO child from the
 * slot. Five rounds, each measured on its own.
 *
 * Usually B takes all 32 queued children while A spins. Not always: when A is
 * preempted in the middle of its spawn loop, B can empty A's queue and park;
 * the next spawn then leaves one task in A's queue (weft__schedule used to
 * wake nobody for a queue of one: regressions.one_task_queued_behind_a_long_poll;
 * the parent gives up after 2 s). The counts checked here hold either way. */
Test(metrics, steals_count_the_tasks_moved, .timeout = 60)
{
    struct weft_runtime *rt = start_cfg(2, 0, 0, true, NULL, NULL); /* it spins on purpose */
    for (int round = 0; round < 5; round++) {
        struct steal_arg a = { .rt = rt, .parent_worker = -1 };
        atomic_store(&done, 0);
        snap(rt, &m0);
        cr_assert_eq(spawn_mt(rt, body_steal_parent, &a, 0, NULL, NULL), 0);
        WAIT_UNTIL(atomic_load(&done) == STEAL_CHILDREN + 1);
        WAIT_NO_TASKS(rt);
        snap(rt, &m1);
        cr_assert_eq(atomic_load(&a.failures), 0);
        int wa = atomic_load(&a.parent_worker);
        cr_assert(wa == 0 || wa == 1);
        int wb = 1 - wa;
        uint32_t on_a = atomic_load(&a.ran_on[wa]), on_b = atomic_load(&a.ran_on[wb]);
        cr_assert_eq(on_a + on_b, STEAL_CHILDREN);
        cr_assert_geq(on_b, 1, "round %d: B stole nothing", round);
        cr_assert_geq(on_a, 1); /* the LIFO child, at least */
        uint64_t steals_b = m1.worker[wb].steals - m0.worker[wb].steals;
        uint64_t steals_a = m1.worker[wa].steals - m0.worker[wa].steals;
        uint64_t ops_b = m1.worker[wb].steal_ops - m0.worker[wb].steal_ops;
        cr_assert_eq(steals_b, on_b, "round %d: B stole %" PRIu64 " tasks, ran %u", round,
                     steals_b, on_b);
        cr_assert_geq(ops_b, 1);
        cr_assert_leq(ops_b, steals_b);
        cr_assert_eq(steals_a, 0, "round %d: A stole %" PRIu64, round, steals_a);
        cr_assert_eq(m1.worker[wb].polls - m0.worker[wb].polls, on_b);
        cr_assert_eq(m1.worker[wa].polls - m0.worker[wa].polls, 1 + on_a);
        /* The child left in A's LIFO slot ran from it. */
        cr_assert_eq(m1.worker[wa].lifo_hits - m0.worker[wa].lifo_hits, 1);
        check_dump_rows(rt, &m1); /* steals and steal_ops differ here */
    }
    weft_runtime_destroy(rt);
}

/* ---- queue depths and overflows ------------------------------------------------------ */

struct busy_arg {
    struct weft_runtime *rt;
    uint32_t children;
    _Atomic int started, release;
};

/* Spawns arg->children children onto its own worker, then keeps the worker
 * until released. */
static enum weft_poll body_busy(struct mt *t, struct weft_cx *cx)
{
    struct busy_arg *a = t->arg;
    (void)cx;
    for (uint32_t i = 0; i < a->children; i++)
        CHECK(spawn_mt(a->rt, body_ready, NULL, 0, NULL, NULL) == 0);
    atomic_store(&a->started, 1);
    spin_until(&a->release);
    return WEFT_READY;
}

/* One worker with a 16-slot queue, kept busy by a task that spawned 12
 * children (one in the LIFO slot, 11 queued): queue_depth is 11; ten tasks
 * spawned by the test thread meanwhile wait in the global queue. */
Test(metrics, queue_depths_behind_a_busy_worker, .timeout = 30)
{
    struct weft_runtime *rt = start_cfg(1, 16, 0, true, NULL, NULL);
    struct busy_arg a = { .rt = rt, .children = 12 };
    cr_assert_eq(spawn_mt(rt, body_busy, &a, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&a.started));
    for (int i = 0; i < 10; i++)
        cr_assert_eq(spawn_mt(rt, body_ready, NULL, 0, NULL, NULL), 0);
    snap(rt, &m1);
    cr_assert_eq(m1.worker[0].queue_depth, 11);
    cr_assert_eq(m1.global_queue_depth, 10);
    cr_assert_eq(m1.worker[0].overflows, 0);
    cr_assert_eq(m1.live_tasks, 1 + 12 + 10);
    atomic_store(&a.release, 1);
    WAIT_UNTIL(atomic_load(&done) == 1 + 12 + 10);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(m1.worker[0].queue_depth, 0);
    cr_assert_eq(m1.global_queue_depth, 0);
    weft_runtime_destroy(rt);
}

/* 40 children into a 16-slot queue: 39 pushes (the 40th child stays in the
 * LIFO slot). Pushes 17, 26 and 35 find the queue full and move half of it (8)
 * and the new task to the global queue: 3 overflows, 27 tasks in the global
 * queue, 12 in the local one. */
Test(metrics, overflows_counted, .timeout = 30)
{
    struct weft_runtime *rt = start_cfg(1, 16, 0, true, NULL, NULL);
    struct busy_arg a = { .rt = rt, .children = 40 };
    cr_assert_eq(spawn_mt(rt, body_busy, &a, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&a.started));
    snap(rt, &m1);
    cr_assert_eq(m1.worker[0].overflows, 3);
    cr_assert_eq(m1.worker[0].queue_depth, 12);
    cr_assert_eq(m1.global_queue_depth, 27);
    atomic_store(&a.release, 1);
    WAIT_UNTIL(atomic_load(&done) == 41);
    WAIT_NO_TASKS(rt);
    weft_runtime_destroy(rt);
}

/* ---- the coop budget and the LIFO slot --------------------------------------------------- */

#define LEAVES 1000u /* = 7 * 128 + 104: 7 polls end on the budget, the 8th finishes */

static enum weft_poll body_ready_sleeps(struct mt *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < LEAVES; t->i++) {
        weft_sleep_until_init(&t->sl, 0); /* in the past: ready, but takes a unit */
        WEFT_AWAIT(&t->base, cx, &t->sl.base);
        CHECK(t->sl.result == 0);
        weft_future_drop(&t->sl.base);
    }
    WEFT_ASYNC_END(&t->base);
}

static enum weft_poll body_drain_channel(struct mt *t, struct weft_cx *cx)
{
    struct weft_mpsc *ch = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < LEAVES; t->i++) {
        weft_mpsc_recv_init(&t->rx, ch, &t->v);
        WEFT_AWAIT(&t->base, cx, &t->rx.base);
        CHECK(t->rx.res == 0 && t->v == t->i);
        weft_future_drop(&t->rx.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* 1000 ready leaf operations in one task: the budget (WEFT_COOP_BUDGET = 128)
 * ends 7 polls, the 8th finishes; budget_yields grows by exactly 7 and polls
 * by exactly 8. Once with expired sleeps, once with a channel holding 1000
 * messages. */
Test(metrics, budget_yields_counted_exactly, .timeout = 30)
{
    cr_assert_eq(WEFT_COOP_BUDGET, 128);
    struct weft_runtime *rt = start_rt(1, NULL);
    snap(rt, &m0);
    cr_assert_eq(spawn_mt(rt, body_ready_sleeps, NULL, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 1);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(DELTA(budget_yields), 7, "%" PRIu64 " budget yields", DELTA(budget_yields));
    cr_assert_eq(DELTA(polls), 8);
    cr_assert_eq(DELTA(local_schedules), 7);

    struct weft_mpsc *ch;
    cr_assert_eq(weft_mpsc_create(&ch, LEAVES, sizeof(uint64_t)), 0);
    for (uint64_t i = 0; i < LEAVES; i++)
        cr_assert_eq(weft_mpsc_try_send(ch, &i), 0);
    snap(rt, &m0);
    cr_assert_eq(spawn_mt(rt, body_drain_channel, ch, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 2);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(DELTA(budget_yields), 7, "%" PRIu64 " budget yields", DELTA(budget_yields));
    cr_assert_eq(DELTA(polls), 8);
    weft_mpsc_receiver_drop(ch);
    weft_mpsc_sender_drop(ch);
    weft_runtime_destroy(rt);
}

#define ROUNDS 200u

struct pingpong {
    struct weft_mpsc *ab, *ba;
};

/* Sends i to B, waits for B's reply, ROUNDS times. */
static enum weft_poll body_ping(struct mt *t, struct weft_cx *cx)
{
    struct pingpong *p = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < ROUNDS; t->i++) {
        t->v = t->i;
        weft_mpsc_send_init(&t->tx, p->ab, &t->v);
        WEFT_AWAIT(&t->base, cx, &t->tx.base);
        CHECK(t->tx.res == 0);
        weft_future_drop(&t->tx.base);
        weft_mpsc_recv_init(&t->rx, p->ba, &t->got);
        WEFT_AWAIT(&t->base, cx, &t->rx.base);
        CHECK(t->rx.res == 0 && t->got == t->i + 1);
        weft_future_drop(&t->rx.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* Replies i + 1 to every i. */
static enum weft_poll body_pong(struct mt *t, struct weft_cx *cx)
{
    struct pingpong *p = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < ROUNDS; t->i++) {
        weft_mpsc_recv_init(&t->rx, p->ab, &t->got);
        WEFT_AWAIT(&t->base, cx, &t->rx.base);
        CHECK(t->rx.res == 0 && t->got == t->i);
        weft_future_drop(&t->rx.base);
        t->v = t->got + 1;
        weft_mpsc_send_init(&t->tx, p->ba, &t->v);
        WEFT_AWAIT(&t->base, cx, &t->tx.base);
        CHECK(t->tx.res == 0);
        weft_future_drop(&t->tx.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* Two tasks on one worker passing a message back and forth 200 times: each
 * wakes the other while running, so the woken one runs from the LIFO slot
 * (at most LIFO_MAX_POLLS = 3 times in a row, then the chain goes through the
 * queue). Every poll but the two first is a woken task's, and at least three
 * of every four of those come from the slot. */
Test(metrics, lifo_hits_of_a_pingpong, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct pingpong p;
    cr_assert_eq(weft_mpsc_create(&p.ab, 1, sizeof(uint64_t)), 0);
    cr_assert_eq(weft_mpsc_create(&p.ba, 1, sizeof(uint64_t)), 0);
    snap(rt, &m0);
    cr_assert_eq(spawn_mt(rt, body_pong, &p, 0, NULL, NULL), 0);
    cr_assert_eq(spawn_mt(rt, body_ping, &p, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 2);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    uint64_t hits = DELTA(lifo_hits), polls = DELTA(polls);
    cr_assert_geq(polls, 2 * ROUNDS);
    cr_assert_lt(hits, polls);
    cr_assert_geq(hits, 3 * (polls - 2) / 4 - 1, "%" PRIu64 " LIFO hits in %" PRIu64 " polls",
                  hits, polls);
    cr_assert_eq(m1.remote_schedules - m0.remote_schedules, 2);
    weft_mpsc_receiver_drop(p.ab);
    weft_mpsc_sender_drop(p.ab);
    weft_mpsc_receiver_drop(p.ba);
    weft_mpsc_sender_drop(p.ba);
    weft_runtime_destroy(rt);
}

/* ---- I/O, parks and busy time ----------------------------------------------------------- */

struct roundtrip {
    int srv, cli;
    uint32_t rounds;
};

/* Sends 64 bytes from cli to srv and reads them there, `rounds` times, all
 * through the ring. */
static enum weft_poll body_roundtrip(struct mt *t, struct weft_cx *cx)
{
    struct roundtrip *r = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < r->rounds; t->i++) {
        memset(t->buf, (int)t->i, sizeof t->buf);
        weft_send_all_init(&t->io, r->cli, t->buf, sizeof t->buf);
        WEFT_AWAIT(&t->base, cx, &t->io.base);
        CHECK(t->io.result == (int)sizeof t->buf);
        weft_future_drop(&t->io.base);
        for (t->got = 0; t->got < sizeof t->buf2;) {
            weft_recv_into_init(&t->io, r->srv, t->buf2 + t->got, sizeof t->buf2 - t->got);
            WEFT_AWAIT(&t->base, cx, &t->io.base);
            CHECK(t->io.result > 0);
            t->got += (uint64_t)t->io.result;
            weft_future_drop(&t->io.base);
        }
        CHECK(memcmp(t->buf, t->buf2, sizeof t->buf) == 0);
    }
    WEFT_ASYNC_END(&t->base);
}

/* 16 round trips over a loopback TCP connection: at least one SQE and one
 * CQE per operation (16 sends, >= 16 receives), at least one io_uring_enter. */
Test(metrics, io_counters_grow_with_io, .timeout = 30)
{
    int srv, cli;
    struct weft_runtime *rt = start_rt_pair(2, NULL, &srv, &cli);
    struct roundtrip r = { srv, cli, 16 };
    WAIT_NO_TASKS(rt);
    snap(rt, &m0);
    cr_assert_eq(spawn_mt(rt, body_roundtrip, &r, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 1);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_geq(DELTA(sqes), 32, "%" PRIu64 " SQEs", DELTA(sqes));
    cr_assert_geq(DELTA(cqes), 32, "%" PRIu64 " CQEs", DELTA(cqes));
    cr_assert_geq(DELTA(enters), 1);
    weft_runtime_destroy(rt);
    close_pair(srv, cli);
}

static enum weft_poll body_short_sleeps(struct mt *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < 5; t->i++) {
        weft_sleep_init(&t->sl, 1 * MS);
        WEFT_AWAIT(&t->base, cx, &t->sl.base);
        CHECK(t->sl.result == 0);
        weft_future_drop(&t->sl.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* weft_metrics_dump's text (free it). */
/* Without io_uring, timers still work and the ring counters stay 0. */
Test(metrics, no_ring_no_io_counts, .timeout = 30)
{
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 2, .no_io_uring = true },
                                            NULL);
    cr_assert_eq(spawn_mt(rt, body_short_sleeps, NULL, 0, NULL, NULL), 0);
    cr_assert_eq(spawn_mt(rt, body_yields, NULL, 100, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 2);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(SUM(&m1, sqes) + SUM(&m1, cqes) + SUM(&m1, enters), 0);
    for (uint32_t i = 0; i < m1.workers; i++)
        cr_assert_eq(m1.worker[i].ring_flags, WEFT_NO_RING);
    char *text = dump_text(rt);
    cr_assert_not_null(strstr(text, "\nio_uring: none (timers only, files on the blocking pool)\n"),
                       "%s", text);
    free(text);
    cr_assert_eq(SUM(&m1, polls), 6 + 101);
    weft_runtime_destroy(rt);
}

static enum weft_poll body_spin_20ms(struct mt *t, struct weft_cx *cx)
{
    (void)t, (void)cx;
    spin_for(0.020);
    return WEFT_READY;
}

/* Idle workers park; a task spawned by a plain thread into an idle runtime
 * unparks one; busy time is at least the 20 ms a task kept a worker, and
 * never more than wall time times workers. */
Test(metrics, parks_unparks_and_busy_time, .timeout = 60)
{
    double t0 = now_s();
    struct weft_runtime *rt = start_cfg(2, 0, 0, true, NULL, NULL); /* it spins on purpose */
    /* Both workers go to sleep with nothing to do. */
    WAIT_UNTIL((snap(rt, &ms), ms.worker[0].parks >= 1 && ms.worker[1].parks >= 1));

    /* A spawn from this thread wakes a parked worker. The unpark counts only
     * when the worker was really asleep: let the runtime settle first, and
     * retry a bounded number of times. */
    bool unparked = false;
    for (int tries = 0; tries < 50 && !unparked; tries++) {
        sleep_us(20000);
        snap(rt, &m0);
        uint32_t before = atomic_load(&done);
        cr_assert_eq(spawn_mt(rt, body_ready, NULL, 0, NULL, NULL), 0);
        WAIT_UNTIL(atomic_load(&done) == before + 1);
        snap(rt, &m1);
        unparked = DELTA(unparks) > 0;
    }
    cr_assert(unparked, "no unpark counted for 50 spawns into an idle runtime");
    /* ...and after running it, the worker it woke parks again (maybe before
     * m1 was read: count from m0, when it still slept). */
    WAIT_UNTIL((snap(rt, &ms), SUM(&ms, parks) > SUM(&m0, parks)));

    snap(rt, &m0);
    uint32_t before = atomic_load(&done);
    cr_assert_eq(spawn_mt(rt, body_spin_20ms, NULL, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == before + 1);
    /* Busy time is added up when a worker parks. */
    WAIT_UNTIL((snap(rt, &m1), DELTA(busy_ns) >= 20 * MS));
    double t1 = now_s();
    snap(rt, &m1);
    uint64_t wall = (uint64_t)((t1 - t0) * 1e9);
    cr_assert_gt(SUM(&m1, busy_ns), 0);
    for (uint32_t i = 0; i < m1.workers; i++)
        cr_assert_leq(m1.worker[i].busy_ns, wall, "worker %u busy %" PRIu64 " ns in %" PRIu64
                      " ns", i, m1.worker[i].busy_ns, wall);
    cr_assert_lt(SUM(&m1, busy_ns), wall * m1.workers);
    weft_runtime_destroy(rt);
}

/* ---- the blocking pool ------------------------------------------------------------------------ */

static void *job_double(void *arg)
{
    return (void *)((uintptr_t)arg * 2);
}

/* A blocking job shows up as one pool thread and one job done; the thread,
 * idle and still holding the runtime, is not a live task. */
Test(metrics, blocking_pool_counts, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_blocking_join j;
    cr_assert_eq(weft_spawn_blocking(rt, job_double, (void *)21, &j), 0);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    cr_assert_eq((uintptr_t)j.output, 42);
    weft_future_drop(&j.base);
    WAIT_UNTIL((snap(rt, &ms), ms.blocking_jobs == 1 && ms.blocking_idle == 1 &&
                ms.live_tasks == 0)); /* (block_on's task may take a moment to go) */
    cr_assert_eq(ms.blocking_threads, 1);
    cr_assert_eq(ms.blocking_queue_depth, 0);
    weft_runtime_destroy(rt);
}

/* ---- histograms ---------------------------------------------------------------------------- */

/* The documented bucket layout: [0, 128), then four buckets per power of two
 * from 128 ns, the last one from about 69 s. */
Test(metrics, histogram_bucket_bounds, .timeout = 10)
{
    cr_assert_eq(weft_histogram_bucket_min(0), 0);
    cr_assert_eq(weft_histogram_bucket_min(1), 128);
    cr_assert_eq(weft_histogram_bucket_min(2), 160);
    cr_assert_eq(weft_histogram_bucket_min(3), 192);
    cr_assert_eq(weft_histogram_bucket_min(4), 224);
    cr_assert_eq(weft_histogram_bucket_min(5), 256);
    cr_assert_eq(weft_histogram_bucket_min(6), 320);
    for (uint32_t k = 0; 1 + 4 * k < WEFT_HIST_BUCKETS; k++) {
        uint64_t p = UINT64_C(128) << k;
        cr_assert_eq(weft_histogram_bucket_min(1 + 4 * k), p, "power bucket %u", 1 + 4 * k);
        for (uint32_t s = 1; s < 4 && 1 + 4 * k + s < WEFT_HIST_BUCKETS; s++)
            cr_assert_eq(weft_histogram_bucket_min(1 + 4 * k + s), p + s * (p / 4));
    }
    for (uint32_t i = 1; i < WEFT_HIST_BUCKETS; i++)
        cr_assert_gt(weft_histogram_bucket_min(i), weft_histogram_bucket_min(i - 1),
                     "bucket %u not above bucket %u", i, i - 1);
    uint64_t last = weft_histogram_bucket_min(WEFT_HIST_BUCKETS - 1);
    cr_assert(last > 60 * WEFT_NS_PER_SEC && last < 80 * WEFT_NS_PER_SEC, "last bucket from %"
              PRIu64 " ns", last);
    cr_assert_eq(weft_histogram_bucket_min(WEFT_HIST_BUCKETS), UINT64_MAX);
    cr_assert_eq(weft_histogram_bucket_min(UINT32_MAX), UINT64_MAX);
}

/* Quantiles of a hand-made histogram: the top of the bucket holding the
 * rank (ceil(q * count), at least 1). */
Test(metrics, histogram_quantiles, .timeout = 10)
{
    struct weft_histogram h;
    memset(&h, 0, sizeof h);
    cr_assert_eq(weft_histogram_quantile(&h, 0.5), 0);
    cr_assert_eq(weft_histogram_quantile(&h, 1.0), 0);
    h.buckets[0] = 5;  /* [0, 128) */
    h.buckets[3] = 4;  /* [192, 224) */
    h.buckets[10] = 1; /* [640, 768) */
    h.count = 10;
    cr_assert_eq(weft_histogram_quantile(&h, 0.0), 128);
    cr_assert_eq(weft_histogram_quantile(&h, 0.1), 128);
    cr_assert_eq(weft_histogram_quantile(&h, 0.5), 128);
    cr_assert_eq(weft_histogram_quantile(&h, 0.51), 224);
    cr_assert_eq(weft_histogram_quantile(&h, 0.9), 224);
    cr_assert_eq(weft_histogram_quantile(&h, 0.91), 768);
    cr_assert_eq(weft_histogram_quantile(&h, 1.0), 768);
    cr_assert_eq(weft_histogram_quantile(&h, -3.0), 128);
    cr_assert_eq(weft_histogram_quantile(&h, 7.0), 768);
    /* One sample in the last bucket: its top is open. */
    memset(&h, 0, sizeof h);
    h.buckets[WEFT_HIST_BUCKETS - 1] = 1;
    h.count = 1;
    cr_assert_eq(weft_histogram_quantile(&h, 0.5), UINT64_MAX);
    /* One sample in bucket 0. */
    memset(&h, 0, sizeof h);
    h.buckets[0] = 1;
    h.count = 1;
    cr_assert_eq(weft_histogram_quantile(&h, 1.0), 128);
}

/* 80,004 polls by 4 yielding tasks on 2 workers: on the quiet runtime after,
 * the poll histogram holds exactly one sample per WEFT_METRICS_SAMPLE polls of
 * each worker (its polls 0, 64, 128, ...), and the latency histogram one per
 * WEFT_METRICS_SAMPLE wakes of each kind (local per worker, and remote). */
Test(metrics, histograms_sampled_one_in_64, .timeout = 60)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(spawn_mt(rt, body_yields, NULL, 20000, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 4);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(SUM(&m1, polls), 4 * 20001);
    uint64_t want_polls = 0, want_wakes = 0;
    for (uint32_t i = 0; i < m1.workers; i++) {
        want_polls += (m1.worker[i].polls + WEFT_METRICS_SAMPLE - 1) / WEFT_METRICS_SAMPLE;
        want_wakes += (m1.worker[i].local_schedules + WEFT_METRICS_SAMPLE - 1) /
                      WEFT_METRICS_SAMPLE;
    }
    want_wakes += (m1.remote_schedules + WEFT_METRICS_SAMPLE - 1) / WEFT_METRICS_SAMPLE;
    cr_assert_geq(m1.poll_ns.count, 1000);
    cr_assert_eq(m1.poll_ns.count, want_polls);
    cr_assert_geq(m1.sched_latency.count, 1000);
    cr_assert_eq(m1.sched_latency.count, want_wakes);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < WEFT_HIST_BUCKETS; i++)
        sum += m1.poll_ns.buckets[i];
    cr_assert_eq(sum, m1.poll_ns.count);
    cr_assert_gt(weft_histogram_quantile(&m1.poll_ns, 0.5), 0);
    weft_runtime_destroy(rt);
}

static uint64_t samples_at_least(const struct weft_histogram *h, uint64_t ns)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < WEFT_HIST_BUCKETS; i++)
        if (weft_histogram_bucket_min(i) >= ns)
            n += h->buckets[i];
    return n;
}

/* Yields until the next poll of its (only) worker is a timed one, then spins
 * 20 ms in that poll; twice. The worker's poll counter, read from inside the
 * task, says which poll is next: poll_begin times the poll that finds the
 * counter at a multiple of WEFT_METRICS_SAMPLE. */
static bool next_poll_timed(struct weft_runtime *rt)
{
    struct weft_metrics *m = malloc(sizeof *m);
    CHECK(m && weft_metrics_read(rt, m) == 0);
    /* Counts this poll already: it is what the next poll_begin will find. */
    bool timed = m->worker[0].polls % WEFT_METRICS_SAMPLE == 0;
    free(m);
    return timed;
}

static enum weft_poll body_timed_spin(struct mt *t, struct weft_cx *cx)
{
    struct weft_runtime *rt = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->j = 0; t->j < 2; t->j++) {
        do {
            t->v = next_poll_timed(rt);
            weft_yield_now_init(&t->y);
            WEFT_AWAIT(&t->base, cx, &t->y.base);
        } while (!t->v);
        spin_for(0.020);
    }
    WEFT_ASYNC_END(&t->base);
}

struct latency_arg {
    _Atomic int started, spawned;
};

/* Keeps the only worker until the test has queued its tasks, then 20 ms more. */
static enum weft_poll body_hold_worker(struct mt *t, struct weft_cx *cx)
{
    struct latency_arg *a = t->arg;
    (void)cx;
    atomic_store(&a->started, 1);
    spin_until(&a->spawned);
    spin_for(0.020);
    return WEFT_READY;
}

/* A 20 ms poll lands in the poll histogram above 10 ms once it falls on a
 * sampled poll; a task queued for 20 ms behind a busy worker lands in the
 * latency histogram above 10 ms once its wake is a sampled one (remote wake
 * number 64: the first was the busy task's own spawn). */
Test(metrics, long_polls_and_waits_in_histograms, .timeout = 30)
{
    struct weft_runtime *rt = start_cfg(1, 0, 0, true, NULL, NULL); /* it spins on purpose */
    cr_assert_eq(spawn_mt(rt, body_timed_spin, rt, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 1);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_geq(samples_at_least(&m1.poll_ns, 10 * MS), 2, "%" PRIu64
                  " poll samples >= 10 ms (of %" PRIu64 ")",
                  samples_at_least(&m1.poll_ns, 10 * MS), m1.poll_ns.count);
    cr_assert_geq(weft_histogram_quantile(&m1.poll_ns, 1.0), 20 * MS);

    /* Remote wakes so far: the spawn above. */
    struct latency_arg a = { 0 };
    snap(rt, &m0);
    cr_assert_eq(m0.remote_schedules, 1);
    uint64_t slow_before = samples_at_least(&m0.sched_latency, 10 * MS);
    cr_assert_eq(spawn_mt(rt, body_hold_worker, &a, 0, NULL, NULL), 0); /* remote wake 1 */
    WAIT_UNTIL(atomic_load(&a.started));
    for (int i = 2; i <= 64; i++) /* remote wakes 2..64: 64 is sampled */
        cr_assert_eq(spawn_mt(rt, body_ready, NULL, 0, NULL, NULL), 0);
    atomic_store(&a.spawned, 1);
    WAIT_UNTIL(atomic_load(&done) == 1 + 1 + 63);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_eq(m1.remote_schedules, 65);
    cr_assert_geq(samples_at_least(&m1.sched_latency, 10 * MS) - slow_before, 1);
    weft_runtime_destroy(rt);
}

/* ---- weft_metrics_dump ------------------------------------------------------------------------ */

/* The dump is one summary line, a header, one line per worker (its polls as
 * the snapshot says), the rings' setup flags and overflows, the blocking
 * pool, and the two histograms. */
Test(metrics, dump_is_readable_text, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(spawn_mt(rt, body_yields, NULL, 500, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 4);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    check_dump_rows(rt, &m1);
    char *text = dump_text(rt);
    cr_assert_not_null(strstr(text, "blocking pool"));
    cr_assert_not_null(strstr(text, "poll time"));
    cr_assert_not_null(strstr(text, "sched latency"));

    char *lines[64];
    int n = 0;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l && n < 64; l = strtok_r(NULL, "\n", &save))
        lines[n++] = l;
    cr_assert_eq(n, (int)m1.workers + 6, "%d lines", n);
    unsigned workers;
    uint64_t live, spawned;
    cr_assert_eq(sscanf(lines[0], "weft runtime: %u workers, %" SCNu64 " live tasks, %" SCNu64
                        " spawned", &workers, &live, &spawned), 3, "%s", lines[0]);
    cr_assert_eq(workers, 2);
    cr_assert_eq(live, 0);
    cr_assert_eq(spawned, 4);
    cr_assert_not_null(strstr(lines[1], "polls"));
    cr_assert_not_null(strstr(lines[1], "steals"));
    for (uint32_t i = 0; i < m1.workers; i++) {
        unsigned idx;
        uint64_t polls;
        cr_assert_eq(sscanf(lines[2 + i], "%u %" SCNu64, &idx, &polls), 2, "%s", lines[2 + i]);
        cr_assert_eq(idx, i);
        cr_assert_eq(polls, m1.worker[i].polls);
    }
    unsigned flags, bufs;
    uint64_t overflows;
    cr_assert_eq(sscanf(lines[2 + m1.workers], "io_uring: setup flags %x, %u ring buffers, "
                        "completion queue overflows %" SCNu64, &flags, &bufs, &overflows), 3,
                 "%s", lines[2 + m1.workers]);
    cr_assert_eq(flags, m1.worker[0].ring_flags);
    cr_assert_eq(bufs, 256, "the default ring");
    cr_assert_eq(bufs, m1.worker[0].ring_buffers);
    cr_assert_eq(overflows, 0);
    cr_assert_eq(strncmp(lines[3 + m1.workers], "blocking pool:", 14), 0);
    cr_assert_eq(strncmp(lines[4 + m1.workers], "poll time", 9), 0);
    cr_assert_eq(strncmp(lines[5 + m1.workers], "sched latency", 13), 0);
    free(text);

    FILE *ro = fopen("/dev/null", "r");
    cr_assert_not_null(ro);
    cr_assert_eq(weft_metrics_dump(rt, ro), -EIO);
    cr_assert_eq(weft_task_dump(rt, ro), -EIO);
    cr_assert_eq(weft_task_dump(rt, ro), -EIO, "again, its error flag now set");
    fclose(ro);
    /* A writable FILE whose error flag an earlier, unrelated failure set (a
     * read of a write-only stream): the dumps write every line and succeed
     * (ferror is sticky; they gave -EIO). */
    FILE *sticky = fopen("/dev/null", "w");
    cr_assert_not_null(sticky);
    cr_assert_eq(fgetc(sticky), EOF);
    cr_assert(ferror(sticky));
    cr_assert_eq(weft_metrics_dump(rt, sticky), 0);
    cr_assert_geq(weft_task_dump(rt, sticky), 0);
    fclose(sticky);
    weft_runtime_destroy(rt);
}

/* ---- regressions: four bugs these tests found, fixed ------------------------------------ */

struct strand {
    struct weft_runtime *rt;
    _Atomic int parent_worker, child_worker;
    _Atomic int child_ran;
    double spawned_at, ran_at;
};

static enum weft_poll body_strand_child(struct mt *t, struct weft_cx *cx)
{
    struct strand *s = t->arg;
    (void)cx;
    s->ran_at = now_s();
    atomic_store(&s->child_worker, worker_index());
    atomic_store(&s->child_ran, 1);
    return WEFT_READY;
}

/* Lets the sibling its own start woke go back to sleep (20 ms), spawns the
 * child (to the LIFO slot) and a second task (which takes the slot and moves
 * the child to the queue: a queue of one), then keeps its worker for up to
 * 1 s or until the child ran. */
static enum weft_poll body_strand_parent(struct mt *t, struct weft_cx *cx)
{
    struct strand *s = t->arg;
    (void)cx;
    atomic_store(&s->parent_worker, worker_index());
    spin_for(0.020);
    CHECK(spawn_mt(s->rt, body_strand_child, s, 0, NULL, NULL) == 0);
    CHECK(spawn_mt(s->rt, body_ready, NULL, 0, NULL, NULL) == 0);
    s->spawned_at = now_s();
    double deadline = now_s() + 1.0;
    while (!atomic_load(&s->child_ran) && now_s() < deadline)
        ;
    return WEFT_READY;
}

/* A task queued on a worker that then polls for a long time, with the other
 * worker parked: by idle.c's protocol ("whoever makes work available ... wakes
 * a parked worker if nobody is searching") the parked worker should be woken
 * and steal it. weft__schedule notifies only when the local queue holds more
 * than one task (len > 1) used to keep the task waiting the whole poll (1 s
 * here); now a wake during a poll notifies for a queue of one. */
Test(regressions, one_task_queued_behind_a_long_poll, .timeout = 30)
{
    struct weft_runtime *rt = start_cfg(2, 0, 0, true, NULL, NULL);
    WAIT_UNTIL((snap(rt, &ms), ms.worker[0].parks >= 1 && ms.worker[1].parks >= 1));
    sleep_us(50000);
    struct strand s = { .rt = rt, .parent_worker = -1, .child_worker = -1 };
    cr_assert_eq(spawn_mt(rt, body_strand_parent, &s, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 3);
    double waited = s.ran_at - s.spawned_at;
    int pw = atomic_load(&s.parent_worker), cw = atomic_load(&s.child_worker);
    weft_runtime_destroy(rt);
    cr_assert_neq(cw, pw, "the queued task ran on its busy worker after %.0f ms, not on the "
                  "idle one", waited * 1e3);
    cr_assert_lt(waited, 0.5, "the queued task waited %.0f ms with a worker idle", waited * 1e3);
}

static enum weft_poll body_budget_then_yield(struct mt *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < WEFT_COOP_BUDGET; t->i++) {
        weft_sleep_until_init(&t->sl, 0);
        WEFT_AWAIT(&t->base, cx, &t->sl.base);
        weft_future_drop(&t->sl.base);
    }
    weft_yield_now_init(&t->y); /* a yield of its own: not the budget's doing */
    WEFT_AWAIT(&t->base, cx, &t->y.base);
    WEFT_ASYNC_END(&t->base);
}

/* A poll that completes exactly WEFT_COOP_BUDGET ready operations and then
 * yields on its own ended because of the yield, not because the budget ran
 * out (no operation was refused): cx.budget_spent, set by weft_coop_take's
 * refusal, tells the two apart (it used to be budget == 0 + a self-wake). */
Test(regressions, voluntary_yield_after_exact_budget, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    snap(rt, &m0);
    cr_assert_eq(spawn_mt(rt, body_budget_then_yield, NULL, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&done) == 1);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    weft_runtime_destroy(rt);
    cr_assert_eq(DELTA(polls), 2);
    cr_assert_eq(DELTA(budget_yields), 0, "%" PRIu64 " budget yields for a voluntary yield",
                 DELTA(budget_yields));
}

/* busy_ns is "time not parked", but a worker adds to it only when it parks:
 * a worker that has been running one task for 200 ms (or a fully loaded one,
 * which never parks) showed none of that time; the snapshot now adds the
 * stretch in progress. */
Test(regressions, busy_time_of_a_worker_that_has_not_parked, .timeout = 30)
{
    struct weft_runtime *rt = start_cfg(1, 0, 0, true, NULL, NULL);
    WAIT_UNTIL((snap(rt, &ms), ms.worker[0].parks >= 1));
    struct first_poll f = { 0 };
    cr_assert_eq(spawn_mt(rt, body_hold_first_poll, &f, 0, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&f.started));
    snap(rt, &m0);
    sleep_us(200000);
    snap(rt, &m1);
    atomic_store(&f.release, 1);
    WAIT_UNTIL(atomic_load(&done) == 1);
    weft_runtime_destroy(rt);
    cr_assert_geq(m1.worker[0].busy_ns - m0.worker[0].busy_ns, 150 * MS,
                  "busy_ns grew by %" PRIu64 " ns over 200 ms of one poll",
                  m1.worker[0].busy_ns - m0.worker[0].busy_ns);
}

/* A park moves the stretch in progress into busy_ns: a read that saw the old
 * busy_ns and then busy_since already 0 lost the stretch, and busy time went
 * backwards (a helper's count: 13 times in 3.6M reads, by up to 301 us, with
 * polls of 300 us). Read in a loop while a worker alternates 300 us polls and
 * parks; a step back of more than 10 us fails (the park's clock read and the
 * reader's, on two CPUs, may disagree by a few tens of ns). */
static enum weft_poll spin_300us(struct weft_future *f, struct weft_cx *cx)
{
    (void)f;
    (void)cx;
    for (double t0 = now_s(); now_s() - t0 < 300e-6;)
        ;
    return WEFT_READY;
}

static _Atomic int busy_spawner_stop;

static void *busy_spawner(void *arg)
{
    static const struct weft_future_ops ops = { spin_300us, NULL };
    while (!atomic_load(&busy_spawner_stop)) {
        struct weft_future f = { &ops, 0 };
        if (weft_spawn(arg, &f, sizeof f, NULL) != 0)
            break;
        sleep_us(600);
    }
    return NULL;
}

Test(regressions, busy_time_never_goes_backwards, .timeout = 30)
{
    struct weft_runtime *rt = start_cfg(1, 0, 0, true, NULL, NULL);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, busy_spawner, rt), 0);
    uint64_t prev = 0, reads = 0, backs = 0, worst = 0;
    for (double t0 = now_s(); now_s() - t0 < 3.5; reads++) {
        snap(rt, &ms);
        uint64_t b = ms.worker[0].busy_ns;
        if (b + 10000 < prev) {
            backs++;
            worst = prev - b > worst ? prev - b : worst;
        }
        prev = b > prev ? b : prev;
    }
    atomic_store(&busy_spawner_stop, 1);
    pthread_join(th, NULL);
    weft_runtime_destroy(rt);
    cr_assert_eq(backs, 0, "busy_ns went back %" PRIu64 " times in %" PRIu64 " reads, by %" PRIu64
                 " ns at worst", backs, reads, worst);
}
