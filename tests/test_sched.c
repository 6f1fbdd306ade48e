/* tests/test_sched.c: the scheduler (runtime/sched.c, idle.c, runtime.c):
 * yielding, LIFO-slot fairness, the global queue, cross-thread wakes, foreign
 * spawns, shutdown, and work spreading over the workers.
 *
 * Also: a wake from another thread during destroy (under that thread's
 * lock) leaves the woken task's drop to the destroy, never runs it inline.
 *
 * Bad inputs tried: weft_spawn during weft_runtime_destroy, from a future's
 * drop (-ESHUTDOWN, *join left empty, the future neither polled nor dropped)
 * and from a foreign thread racing destroy (-ESHUTDOWN once it began). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#include "common.h"
#include "internal.h" /* the idle protocol's counts, tested directly */

#define MAX_TASKS 40000

/* ---- a task future running a per-test body; drops counted per index ------- */

struct tf;
typedef enum weft_poll body_fn(struct tf *t, struct weft_cx *cx);

struct tf {
    struct weft_future base;
    body_fn *body;
    void (*on_drop)(struct tf *t); /* besides counting the drop */
    void *arg;                     /* the test's shared state */
    uint32_t idx;                  /* index in ran[] / drops[] */
    uint32_t polls;                /* touched by its poller only */
    uint32_t i;                    /* a loop counter kept across awaits */
    struct weft_yield_now y;
};

static _Atomic uint32_t ran[MAX_TASKS], drops[MAX_TASKS];
static _Atomic uint32_t finished; /* tasks whose body returned READY */

static enum weft_poll tf_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct tf *t = (struct tf *)f;
    t->polls++;
    enum weft_poll r = t->body(t, cx);
    if (r == WEFT_READY)
        atomic_fetch_add(&finished, 1);
    return r;
}

static void tf_drop(struct weft_future *f)
{
    struct tf *t = (struct tf *)f;
    atomic_fetch_add(&drops[t->idx], 1);
    if (t->on_drop)
        t->on_drop(t);
}

static const struct weft_future_ops tf_ops = { tf_poll, tf_drop };

static int spawn_tf(struct weft_runtime *rt, body_fn *body, void (*on_drop)(struct tf *),
                    void *arg, uint32_t idx, struct weft_join *j)
{
    struct tf t = { .base = { &tf_ops, 0 }, .body = body, .on_drop = on_drop, .arg = arg,
                    .idx = idx };
    return weft_spawn(rt, &t.base, sizeof t, j);
}

static void assert_each_dropped_once(uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(atomic_load(&drops[i]), 1, "task %u dropped %u times", i,
                     atomic_load(&drops[i]));
}

static int32_t join_and_drop(struct weft_runtime *rt, struct weft_join *j)
{
    cr_assert_eq(weft_block_on(rt, &j->base), 0);
    int32_t res = j->res;
    weft_future_drop(&j->base);
    return res;
}

/* Publishes a clone of the task's waker in *slot (once), then sets *set. */
static void keep_waker(struct weft_waker *slot, _Atomic int *set, struct weft_cx *cx)
{
    if (!atomic_load(set)) {
        *slot = weft_waker_clone(cx->waker);
        atomic_store(set, 1);
    }
}

static enum weft_poll body_mark(struct tf *t, struct weft_cx *cx)
{
    (void)cx;
    atomic_fetch_add(&ran[t->idx], 1);
    return WEFT_READY;
}

/* Never finishes and never keeps its waker: idle until shutdown. */
static enum weft_poll body_pending(struct tf *t, struct weft_cx *cx)
{
    body_mark(t, cx);
    return WEFT_PENDING;
}

/* ---- yielding ---------------------------------------------------------------------- */

static _Atomic uint32_t order[4096], norder;

static enum weft_poll body_yield_1000(struct tf *t, struct weft_cx *cx)
{
    uint32_t k = atomic_fetch_add(&norder, 1);
    if (k < 4096)
        atomic_store(&order[k], t->idx);
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < 1000; t->i++) {
        weft_yield_now_init(&t->y);
        WEFT_AWAIT(&t->base, cx, &t->y.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* Two tasks yielding 1000 times on one worker: each is polled 1001 times and,
 * once both run, they alternate (a yield goes to the back of the queue). */
Test(sched, yield_now_1000_alternates, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_join j[2];

    for (uint32_t i = 0; i < 2; i++)
        cr_assert_eq(spawn_tf(rt, body_yield_1000, NULL, NULL, i, &j[i]), 0);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(weft_block_on(rt, &j[i].base), 0);
        cr_assert_eq(j[i].res, 0);
        cr_assert_eq(((struct tf *)weft_join_output(&j[i]))->polls, 1001);
        weft_future_drop(&j[i].base);
    }
    /* From the second task's first poll to the first task's last one, no
     * task may run more than twice in a row. */
    uint32_t n = atomic_load(&norder), start = 0, last[2] = { 0, 0 }, run = 1, max_run = 0;
    cr_assert_eq(n, 2002);
    while (start < n && atomic_load(&order[start]) == atomic_load(&order[0]))
        start++;
    for (uint32_t k = 0; k < n; k++)
        last[atomic_load(&order[k])] = k;
    for (uint32_t k = start + 1; k <= (last[0] < last[1] ? last[0] : last[1]); k++) {
        run = atomic_load(&order[k]) == atomic_load(&order[k - 1]) ? run + 1 : 1;
        max_run = run > max_run ? run : max_run;
    }
    cr_assert_leq(max_run, 2, "a yielding task ran %u times in a row", max_run);
    weft_runtime_destroy(rt);
    assert_each_dropped_once(2);
}

/* ---- fairness ------------------------------------------------------------------------ */

struct pingpong {
    struct weft_runtime *rt;
    struct weft_waker w[2];
    _Atomic int set[2], stop, third_ran;
    _Atomic uint32_t polls_before_third;
};

static enum weft_poll body_third(struct tf *t, struct weft_cx *cx)
{
    struct pingpong *pp = t->arg;
    (void)cx;
    atomic_store(&pp->third_ran, 1);
    atomic_store(&pp->stop, 1);
    return WEFT_READY;
}

/* Two tasks waking each other forever through the LIFO slot. Task 0 spawns a
 * third task on its 10th poll: it lands in the local queue behind the slot. */
static enum weft_poll body_pingpong(struct tf *t, struct weft_cx *cx)
{
    struct pingpong *pp = t->arg;
    uint32_t me = t->idx, peer = 1 - me;
    keep_waker(&pp->w[me], &pp->set[me], cx);
    if (me == 0 && t->polls == 10)
        CHECK(spawn_tf(pp->rt, body_third, NULL, pp, 2, NULL) == 0);
    if (!atomic_load(&pp->third_ran))
        atomic_fetch_add(&pp->polls_before_third, 1);
    weft_waker_wake_by_ref(atomic_load(&pp->set[peer]) ? &pp->w[peer] : cx->waker);
    return atomic_load(&pp->stop) ? WEFT_READY : WEFT_PENDING;
}

Test(sched, lifo_pingpong_cannot_starve_queue, .timeout = 30)
{
    struct pingpong pp = { .rt = start_rt(1, NULL) };
    struct weft_join j[2];

    for (uint32_t i = 0; i < 2; i++)
        cr_assert_eq(spawn_tf(pp.rt, body_pingpong, NULL, &pp, i, &j[i]), 0);
    WAIT_UNTIL(atomic_load(&pp.third_ran));
    cr_assert_lt(atomic_load(&pp.polls_before_third), 1000, "the queued task waited %u polls",
                 atomic_load(&pp.polls_before_third));
    for (int i = 0; i < 2; i++)
        cr_assert_eq(join_and_drop(pp.rt, &j[i]), 0);
    for (int i = 0; i < 2; i++)
        weft_waker_drop(&pp.w[i]);
    weft_runtime_destroy(pp.rt);
    assert_each_dropped_once(3);
}

struct busy {
    struct weft_runtime *rt;
    _Atomic int stop;
    _Atomic uint32_t polls;
};

static enum weft_poll body_stop(struct tf *t, struct weft_cx *cx)
{
    (void)cx;
    atomic_store(&((struct busy *)t->arg)->stop, 1);
    return WEFT_READY;
}

/* Spawns a child on its own worker and yields, every poll, until stopped. */
static enum weft_poll body_busy(struct tf *t, struct weft_cx *cx)
{
    struct busy *b = t->arg;
    if (atomic_load(&b->stop))
        return WEFT_READY;
    atomic_fetch_add(&b->polls, 1);
    CHECK(spawn_tf(b->rt, body_mark, NULL, b, 2 + t->polls % 1000, NULL) == 0);
    weft_waker_wake_by_ref(cx->waker);
    return WEFT_PENDING;
}

Test(sched, global_queue_not_starved, .timeout = 30)
{
    struct busy b = { .rt = start_rt(1, NULL) };
    struct weft_join jb, jg;

    cr_assert_eq(spawn_tf(b.rt, body_busy, NULL, &b, 0, &jb), 0);
    WAIT_UNTIL(atomic_load(&b.polls) >= 100);
    uint32_t before = atomic_load(&b.polls);
    cr_assert_eq(spawn_tf(b.rt, body_stop, NULL, &b, 1, &jg), 0); /* a foreign spawn */
    WAIT_UNTIL(atomic_load(&b.stop));
    uint32_t waited = atomic_load(&b.polls) - before;
    cr_assert_lt(waited, 1000, "the global queue waited %u polls of the busy task", waited);
    cr_assert_eq(join_and_drop(b.rt, &jg), 0);
    cr_assert_eq(join_and_drop(b.rt, &jb), 0);
    weft_runtime_destroy(b.rt);
}

/* ---- cross-thread wakes and spawns ------------------------------------------------------ */

struct counter {
    _Atomic uint64_t produced;
    uint64_t total;
    struct weft_waker w;
    _Atomic int w_set;
    int per_thread;
};

/* Finishes when it has seen every count: a lost wakeup leaves it idle. */
static enum weft_poll body_consume(struct tf *t, struct weft_cx *cx)
{
    struct counter *c = t->arg;
    keep_waker(&c->w, &c->w_set, cx);
    return atomic_load(&c->produced) == c->total ? WEFT_READY : WEFT_PENDING;
}

static void *produce(void *arg)
{
    struct counter *c = arg;
    for (int i = 0; i < c->per_thread; i++) {
        atomic_fetch_add(&c->produced, 1);
        weft_waker_wake_by_ref(&c->w);
    }
    return NULL;
}

Test(sched, million_cross_thread_wakes_none_lost, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    enum { THREADS = 4 };
    struct counter c = { .total = 1000000, .per_thread = 1000000 / THREADS };
    pthread_t th[THREADS];
    struct weft_join j;

    cr_assert_eq(spawn_tf(rt, body_consume, NULL, &c, 0, &j), 0);
    WAIT_UNTIL(atomic_load(&c.w_set));
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, produce, &c), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    WAIT_UNTIL(atomic_load(&finished) == 1); /* fails here on a lost wakeup */
    cr_assert_eq(join_and_drop(rt, &j), 0);
    weft_waker_drop(&c.w);
    weft_runtime_destroy(rt);
    assert_each_dropped_once(1);
}

struct spawner {
    pthread_t th;
    struct weft_runtime *rt;
    uint32_t first, n;
};

static void *spawn_many(void *arg)
{
    struct spawner *s = arg;
    for (uint32_t i = 0; i < s->n; i++)
        CHECK(spawn_tf(s->rt, body_mark, NULL, NULL, s->first + i, NULL) == 0);
    return NULL;
}

Test(sched, foreign_thread_spawns_run_once, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    enum { THREADS = 4, PER = 10000 };
    struct spawner s[THREADS];

    for (uint32_t i = 0; i < THREADS; i++) {
        s[i] = (struct spawner){ .rt = rt, .first = i * PER, .n = PER };
        cr_assert_eq(pthread_create(&s[i].th, NULL, spawn_many, &s[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(s[i].th, NULL);
    WAIT_UNTIL(atomic_load(&finished) == THREADS * PER);
    weft_runtime_destroy(rt);
    for (uint32_t i = 0; i < THREADS * PER; i++)
        cr_assert_eq(atomic_load(&ran[i]), 1, "task %u ran %u times", i, atomic_load(&ran[i]));
    assert_each_dropped_once(THREADS * PER);
}

/* Task 0 sleeps on runtime b; task 1, on runtime a, spawns task 2 onto b and
 * wakes task 0: both must run on b's worker, not a's. */
struct cross {
    struct weft_runtime *a, *b;
    struct weft_runtime *_Atomic where[3];
    struct weft_waker w;
    _Atomic int w_set, go;
};

static enum weft_poll body_cross(struct tf *t, struct weft_cx *cx)
{
    struct cross *x = t->arg;
    atomic_store(&x->where[t->idx], weft_runtime_current());
    if (t->idx == 0) {
        keep_waker(&x->w, &x->w_set, cx);
    } else if (t->idx == 1) {
        CHECK(spawn_tf(x->b, body_cross, NULL, x, 2, NULL) == 0);
        atomic_store(&x->go, 1);
        weft_waker_wake(&x->w);
    }
    return t->idx != 0 || atomic_load(&x->go) ? WEFT_READY : WEFT_PENDING;
}

Test(sched, spawn_and_wake_across_runtimes, .timeout = 30)
{
    struct cross x = { .a = start_rt(2, NULL), .b = start_rt(1, NULL) };

    cr_assert_eq(spawn_tf(x.b, body_cross, NULL, &x, 0, NULL), 0);
    WAIT_UNTIL(atomic_load(&x.w_set));
    cr_assert_eq(spawn_tf(x.a, body_cross, NULL, &x, 1, NULL), 0);
    WAIT_UNTIL(atomic_load(&finished) == 3);
    cr_assert_eq(atomic_load(&x.where[0]), x.b);
    cr_assert_eq(atomic_load(&x.where[1]), x.a);
    cr_assert_eq(atomic_load(&x.where[2]), x.b, "spawned onto b but ran on a's worker");
    weft_runtime_destroy(x.a);
    weft_runtime_destroy(x.b);
    assert_each_dropped_once(3);
}

/* ---- shutdown ------------------------------------------------------------------------------ */

struct shutdown_state {
    struct weft_runtime *rt;
    _Atomic int spinning, destroying, holder_go;
    struct weft_waker held[4];
    _Atomic int held_n;
};

/* Hands a clone of its waker to the holder thread and sleeps. */
static enum weft_poll body_sleep(struct tf *t, struct weft_cx *cx)
{
    struct shutdown_state *s = t->arg;
    if (t->polls == 1)
        s->held[atomic_fetch_add(&s->held_n, 1)] = weft_waker_clone(cx->waker);
    return WEFT_PENDING;
}

/* Spawns queued work onto its own worker, then spins until destroy began. */
static enum weft_poll body_spin(struct tf *t, struct weft_cx *cx)
{
    struct shutdown_state *s = t->arg;
    if (t->polls == 1)
        for (uint32_t i = 0; i < 5; i++)
            CHECK(spawn_tf(s->rt, body_pending, NULL, s, t->idx * 10 + i, NULL) == 0);
    atomic_fetch_add(&s->spinning, 1);
    while (!atomic_load(&s->destroying))
        ;
    spin_for(0.02);
    weft_waker_wake_by_ref(cx->waker);
    return WEFT_PENDING;
}

static void *hold_wakers(void *arg)
{
    struct shutdown_state *s = arg;
    while (!atomic_load(&s->holder_go))
        sleep_us(100);
    for (int i = 0; i < atomic_load(&s->held_n); i++) {
        weft_waker_wake_by_ref(&s->held[i]); /* the task is gone: a no-op */
        weft_waker_drop(&s->held[i]);
    }
    return NULL;
}

struct joiner {
    pthread_t th;
    struct weft_runtime *rt;
    struct weft_join j;
    int rc;
};

static void *block_on_join(void *arg)
{
    struct joiner *jn = arg;
    jn->rc = weft_block_on(jn->rt, &jn->j.base);
    return NULL;
}

/* Indices: 0-2 pending (joined from other threads), 3-4 sleeping, 5-6
 * running (their children 50-54, 60-64), 100-149 queued from this thread. */
Test(sched, shutdown_drops_everything_once, .timeout = 30)
{
    struct counting_alloc ca;
    struct shutdown_state s = { .rt = start_rt(2, &ca) };
    pthread_t holder;
    struct joiner jn[3];

    for (uint32_t i = 0; i < 3; i++) {
        jn[i] = (struct joiner){ .rt = s.rt, .rc = 1 };
        cr_assert_eq(spawn_tf(s.rt, body_pending, NULL, &s, i, &jn[i].j), 0);
    }
    for (uint32_t i = 3; i < 5; i++)
        cr_assert_eq(spawn_tf(s.rt, body_sleep, NULL, &s, i, NULL), 0);
    WAIT_UNTIL(atomic_load(&s.held_n) == 2 && ran[0] && ran[1] && ran[2]);
    cr_assert_eq(pthread_create(&holder, NULL, hold_wakers, &s), 0);
    for (uint32_t i = 5; i < 7; i++)
        cr_assert_eq(spawn_tf(s.rt, body_spin, NULL, &s, i, NULL), 0);
    WAIT_UNTIL(atomic_load(&s.spinning) == 2);
    for (uint32_t i = 100; i < 150; i++)
        cr_assert_eq(spawn_tf(s.rt, body_pending, NULL, &s, i, NULL), 0);
    struct weft_metrics m;
    cr_assert_eq(weft_metrics_read(s.rt, &m), 0);
    uint64_t spawned = m.spawned;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_create(&jn[i].th, NULL, block_on_join, &jn[i]), 0);
    /* The joiners' block_on tasks exist (on a loaded machine, a joiner
     * thread may not have started within a fixed sleep), then they block. */
    WAIT_UNTIL((weft_metrics_read(s.rt, &m), m.spawned >= spawned + 3));
    sleep_us(20000);
    atomic_store(&s.destroying, 1);
    weft_runtime_destroy(s.rt);
    for (int i = 0; i < 3; i++) {
        pthread_join(jn[i].th, NULL);
        /* block_on's own task was cancelled too, dropping the handle it polled. */
        cr_assert_eq(jn[i].rc, -ECANCELED);
        cr_assert_null(jn[i].j.base.ops);
    }
    atomic_store(&s.holder_go, 1);
    pthread_join(holder, NULL);
    uint32_t expect = 0;
    for (uint32_t i = 0; i < MAX_TASKS; i++) {
        bool spawned = i < 7 || (i >= 50 && i < 55) || (i >= 60 && i < 65) || (i >= 100 && i < 150);
        cr_assert_eq(atomic_load(&drops[i]), spawned ? 1 : 0, "task %u dropped %u times", i,
                     atomic_load(&drops[i]));
        expect += spawned;
    }
    cr_assert_eq(expect, 67);
    assert_balanced(&ca);
}

struct late_spawn {
    struct weft_runtime *rt;
    int rc, rc_detached;
    struct weft_join j;
};

static void spawn_from_drop(struct tf *t)
{
    struct late_spawn *ls = t->arg;
    memset(&ls->j, 0xab, sizeof ls->j);
    ls->rc = spawn_tf(ls->rt, body_mark, NULL, NULL, 1, &ls->j);
    ls->rc_detached = spawn_tf(ls->rt, body_mark, NULL, NULL, 2, NULL);
}

Test(sched, spawn_from_drop_during_destroy_fails, .timeout = 30)
{
    struct counting_alloc ca;
    struct late_spawn ls = { .rt = start_rt(2, &ca), .rc = 1, .rc_detached = 1 };

    cr_assert_eq(spawn_tf(ls.rt, body_pending, spawn_from_drop, &ls, 0, NULL), 0);
    WAIT_UNTIL(atomic_load(&ran[0]) == 1); /* polled: now idle */
    weft_runtime_destroy(ls.rt);
    cr_assert_eq(ls.rc, -ESHUTDOWN);
    cr_assert_eq(ls.rc_detached, -ESHUTDOWN);
    cr_assert_null(ls.j.base.ops, "*join must be left empty");
    cr_assert_null(ls.j.task);
    cr_assert_eq(atomic_load(&ran[1]) + atomic_load(&ran[2]), 0, "a refused task ran");
    cr_assert_eq(atomic_load(&drops[1]) + atomic_load(&drops[2]), 0, "a refused future was dropped");
    cr_assert_eq(atomic_load(&drops[0]), 1);
    assert_balanced(&ca);
}

/* Spawns and wakes from foreign threads race destroy's first steps. The gate
 * task, spawned from a worker (so destroy sweeps its shard first), holds
 * destroy in its drop until both threads saw the shutdown, and wakes an idle
 * task destroy has not reached yet: that wake meets the closed global queue,
 * which must release the queue's reference (else the allocator leaks). */
struct race {
    struct weft_runtime *rt;
    struct weft_waker w, idle_w;
    _Atomic int w_set, idle_set, in_destroy, spawner_done, waker_done;
    _Atomic uint32_t spawned;
};

static _Atomic uint32_t racer_drops;

static void count_racer_drop(struct tf *t)
{
    (void)t;
    atomic_fetch_add(&racer_drops, 1);
}

static void *race_spawner(void *arg)
{
    struct race *r = arg;
    for (uint32_t n = 0;; n++) {
        int rc = spawn_tf(r->rt, n % 2 ? body_mark : body_pending, count_racer_drop, NULL, 10, NULL);
        if (rc == -ESHUTDOWN)
            break;
        CHECK(rc == 0);
        atomic_fetch_add(&r->spawned, 1);
        if (n % 64 == 0)
            sleep_us(50);
    }
    atomic_store(&r->spawner_done, 1);
    return NULL;
}

static void hold_destroy(struct tf *t);

/* Spawns the gate (task 2) from a worker, so it sits in a worker's shard. */
static enum weft_poll body_spawn_gate(struct tf *t, struct weft_cx *cx)
{
    (void)cx;
    CHECK(spawn_tf(weft_runtime_current(), body_pending, hold_destroy, t->arg, 2, NULL) == 0);
    return WEFT_READY;
}

static void *race_waker(void *arg)
{
    struct race *r = arg;
    while (!atomic_load(&r->in_destroy))
        weft_waker_wake_by_ref(&r->w);
    for (int i = 0; i < 1000; i++)
        weft_waker_wake_by_ref(&r->w);
    weft_waker_drop(&r->w);
    atomic_store(&r->waker_done, 1);
    return NULL;
}

static enum weft_poll body_keep_waker(struct tf *t, struct weft_cx *cx)
{
    struct race *r = t->arg;
    keep_waker(&r->w, &r->w_set, cx);
    return WEFT_PENDING;
}

static enum weft_poll body_keep_idle_waker(struct tf *t, struct weft_cx *cx)
{
    struct race *r = t->arg;
    keep_waker(&r->idle_w, &r->idle_set, cx);
    return WEFT_PENDING;
}

static void hold_destroy(struct tf *t)
{
    struct race *r = t->arg;
    double deadline = now_s() + WAIT_SECS;
    weft_waker_wake_by_ref(&r->idle_w);
    atomic_store(&r->in_destroy, 1);
    while (!(atomic_load(&r->spawner_done) && atomic_load(&r->waker_done)) && now_s() < deadline)
        sleep_us(100);
}

Test(sched, spawns_and_wakes_racing_destroy, .timeout = 30)
{
    struct counting_alloc ca;
    struct race r = { .rt = start_rt(2, &ca) };
    pthread_t sp, wk;

    cr_assert_eq(spawn_tf(r.rt, body_keep_waker, NULL, &r, 0, NULL), 0);
    cr_assert_eq(spawn_tf(r.rt, body_spawn_gate, NULL, &r, 1, NULL), 0);
    cr_assert_eq(spawn_tf(r.rt, body_keep_idle_waker, NULL, &r, 3, NULL), 0);
    WAIT_UNTIL(atomic_load(&r.w_set) && atomic_load(&r.idle_set) && atomic_load(&ran[2]));
    cr_assert_eq(pthread_create(&sp, NULL, race_spawner, &r), 0);
    cr_assert_eq(pthread_create(&wk, NULL, race_waker, &r), 0);
    sleep_us(30000);
    weft_runtime_destroy(r.rt);
    pthread_join(sp, NULL);
    pthread_join(wk, NULL);
    cr_assert(atomic_load(&r.spawner_done) && atomic_load(&r.waker_done));
    cr_assert_gt(atomic_load(&r.spawned), 0);
    cr_assert_eq(atomic_load(&racer_drops), atomic_load(&r.spawned));
    weft_waker_drop(&r.idle_w);
    assert_each_dropped_once(4);
    assert_balanced(&ca);
}

/* A wake during destroy must not run the woken task's drop: an event source
 * wakes while holding its lock, and the future's drop takes that lock to
 * deregister. Here the source fires from inside another task's drop (so
 * during destroy, the global queue closed); with the drop run inside the
 * wake, the source's thread locked its own (error-checking) mutex again:
 * EDEADLK, a hang with a plain one (a helper's review). */
struct source {
    pthread_mutex_t lock;
    struct weft_waker victim;          /* registered under the lock */
    _Atomic int victim_ready, trigger_ready, fire, fired, busy_polling;
    _Atomic int drop_rc;               /* the victim drop's lock result */
    pthread_t source_thread, drop_thread;
};

static struct source src = { .drop_rc = -1 };
static struct weft_waker trigger_waker;

static enum weft_poll victim_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f;
    pthread_mutex_lock(&src.lock);
    src.victim = weft_waker_clone(cx->waker);
    pthread_mutex_unlock(&src.lock);
    atomic_store(&src.victim_ready, 1);
    return WEFT_PENDING;
}

static void victim_drop(struct weft_future *f)
{
    (void)f;
    src.drop_thread = pthread_self();
    int rc = pthread_mutex_lock(&src.lock); /* deregisters from the source */
    if (rc == 0)
        pthread_mutex_unlock(&src.lock);
    atomic_store(&src.drop_rc, rc);
}

static enum weft_poll trigger_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f;
    trigger_waker = weft_waker_clone(cx->waker);
    atomic_store(&src.trigger_ready, 1);
    return WEFT_PENDING;
}

static void trigger_drop(struct weft_future *f)
{
    (void)f;
    atomic_store(&src.fire, 1); /* the source fires now, during destroy */
    for (int i = 0; i < 2000 && !atomic_load(&src.fired); i++)
        sleep_us(1000);
}

static enum weft_poll busy_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    atomic_store(&src.busy_polling, 1);
    sleep_us(300000);
    return WEFT_PENDING;
}

static void *source_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&src.fire))
        sleep_us(100);
    pthread_mutex_lock(&src.lock);
    weft_waker_wake_by_ref(&src.victim);
    pthread_mutex_unlock(&src.lock);
    atomic_store(&src.fired, 1);
    return NULL;
}

Test(sched, a_wake_during_destroy_does_not_drop_inline, .timeout = 30)
{
    static const struct weft_future_ops victim_ops = { victim_poll, victim_drop },
                                        trigger_ops = { trigger_poll, trigger_drop },
                                        busy_ops = { busy_poll, NULL };
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&src.lock, &a);
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_future v = { &victim_ops, 0 }, t = { &trigger_ops, 0 }, b = { &busy_ops, 0 };
    cr_assert_eq(weft_spawn(rt, &v, sizeof v, NULL), 0);
    cr_assert_eq(weft_spawn(rt, &t, sizeof t, NULL), 0);
    WAIT_UNTIL(atomic_load(&src.victim_ready) && atomic_load(&src.trigger_ready));
    cr_assert_eq(pthread_create(&src.source_thread, NULL, source_thread, NULL), 0);
    cr_assert_eq(weft_spawn(rt, &b, sizeof b, NULL), 0);
    WAIT_UNTIL(atomic_load(&src.busy_polling));
    weft_waker_wake(&trigger_waker); /* the only worker is busy: the trigger waits queued */
    weft_runtime_destroy(rt);
    pthread_join(src.source_thread, NULL);
    weft_waker_drop(&src.victim);
    cr_assert(atomic_load(&src.fired), "the source never fired");
    cr_assert(!pthread_equal(src.drop_thread, src.source_thread),
              "the wake ran the woken task's drop on the waking thread");
    cr_assert_eq(atomic_load(&src.drop_rc), 0, "the drop's lock gave %d", atomic_load(&src.drop_rc));
    pthread_mutex_destroy(&src.lock);
    pthread_mutexattr_destroy(&a);
}

/* ---- work spreading --------------------------------------------------------------------------- */

static pthread_t poller[MAX_TASKS];

static enum weft_poll body_spin_2ms(struct tf *t, struct weft_cx *cx)
{
    (void)cx;
    poller[t->idx] = pthread_self();
    spin_for(0.002);
    return WEFT_READY;
}

static enum weft_poll body_spawn_200(struct tf *t, struct weft_cx *cx)
{
    (void)cx;
    for (uint32_t i = 1; i <= 200; i++)
        CHECK(spawn_tf(t->arg, body_spin_2ms, NULL, NULL, i, NULL) == 0);
    return WEFT_READY;
}

/* 200 tasks of 2 ms each, spawned from a worker or from this thread, end up
 * polled on both workers (stealing / waking a parked worker works). */
static void check_spread(bool from_task)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    if (from_task)
        cr_assert_eq(spawn_tf(rt, body_spawn_200, NULL, rt, 0, NULL), 0);
    else
        for (uint32_t i = 1; i <= 200; i++)
            cr_assert_eq(spawn_tf(rt, body_spin_2ms, NULL, NULL, i, NULL), 0);
    WAIT_UNTIL(atomic_load(&finished) == 200u + from_task);
    weft_runtime_destroy(rt);
    uint32_t on_first = 0;
    for (uint32_t i = 1; i <= 200; i++)
        on_first += pthread_equal(poller[i], poller[1]) != 0;
    cr_assert_lt(on_first, 200, "all 200 tasks ran on one worker");
}

Test(sched, work_spreads_from_task, .timeout = 30)
{
    check_spread(true);
}

Test(sched, work_spreads_from_foreign_thread, .timeout = 30)
{
    check_spread(false);
}

/* ---- a foreign spawn held up inside the allocator while destroy runs ------ */

/* The spawning thread's allocation sleeps, so weft_runtime_destroy runs to
 * its end while the spawn is between its shutdown check and its push. The
 * spawn must keep the runtime's memory alive (ASan reports a use-after-free
 * otherwise) and the late task must be cancelled, not leaked. */
static struct counting_alloc slow_ca;
static _Thread_local int slow_once;
static _Atomic int spawn_entered;

static void *slow_alloc(void *ctx, size_t size)
{
    if (slow_once) {
        slow_once = 0;
        atomic_store(&spawn_entered, 1);
        sleep_us(200000);
    }
    return count_alloc(ctx, size);
}

static void *late_spawner(void *arg)
{
    struct weft_runtime *rt = arg;
    struct tf f = { .base = { &tf_ops, 0 }, .body = body_mark, .idx = 1 };
    slow_once = 1;
    return (void *)(intptr_t)weft_spawn(rt, &f.base, sizeof(f), NULL);
}

Test(sched, foreign_spawn_racing_destroy_keeps_runtime_alive, .timeout = 30)
{
    struct weft_runtime_config cfg;
    struct weft_runtime *rt = NULL;
    counting_init(&slow_ca, -1);
    slow_ca.a.alloc = slow_alloc;
    weft_runtime_config_init(&cfg);
    cfg.workers = 1;
    cfg.allocator = &slow_ca.a;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, late_spawner, rt), 0);
    WAIT_UNTIL(atomic_load(&spawn_entered));
    weft_runtime_destroy(rt);
    void *res;
    pthread_join(th, &res);
    cr_assert_eq((intptr_t)res, 0, "the spawn began before destroy: it succeeds (then is cancelled)");
    cr_assert_leq(atomic_load(&drops[1]), 1);
    assert_balanced(&slow_ca);
}

/* ---- the idle protocol's counts (idle.c) ----------------------------------------- */

/* At most half of the workers search at once; a parker re-checks the queues
 * when no searcher is left after it: the last searcher, and also a worker
 * that was refused a search (the searcher that refused it may have found
 * other work since, leaving nobody bound to find a push made meanwhile).
 * Either rule broken loses no wakeup in most runs, only now and then (docs/
 * design.md), so they are checked here on the counts themselves. */
Test(sched, idle_search_cap_and_who_rechecks_before_parking, .timeout = 10)
{
    uint32_t sleepers[4];
    uint8_t taken[4] = { 0 };
    struct idle idle = { .nworkers = 4, .sleepers = sleepers, .taken_busy = taken };
    atomic_init(&idle.state, 4u << 16); /* all unparked, none searching */
    cr_assert_eq(pthread_mutex_init(&idle.lock, NULL), 0);

    cr_assert(weft__idle_to_searching(&idle));
    cr_assert(weft__idle_to_searching(&idle));
    cr_assert_not(weft__idle_to_searching(&idle), "a third searcher of 4 workers");
    cr_assert_not(weft__idle_from_searching(&idle), "the last searcher was not the last");
    cr_assert(weft__idle_to_searching(&idle), "half again: room for one");

    cr_assert_not(weft__idle_to_parked(&idle, 3, false), "two searchers left: no re-check");
    cr_assert_not(weft__idle_to_parked(&idle, 0, true), "one searcher left: no re-check");
    cr_assert(weft__idle_to_parked(&idle, 1, true), "the last searcher re-checks");
    cr_assert(weft__idle_to_parked(&idle, 2, false), "a refused worker with none left re-checks");
    cr_assert_eq(idle.nsleepers, 4);
    cr_assert_eq(atomic_load(&idle.state), 0, "none unparked, none searching");
    pthread_mutex_destroy(&idle.lock);
}
