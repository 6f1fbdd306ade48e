/* tests/test_task.c: the task state machine through the public API
 * (runtime/task.c): spawn, wake, abort, join, detach and reference counts.
 *
 * Bad inputs tried: weft_spawn with a NULL runtime, a NULL future, a future
 * with NULL ops, ops with a NULL poll, size 0, size below
 * sizeof(struct weft_future), size 1 MiB + 1 (exactly 1 MiB must work), and
 * with an allocator that fails (-ENOMEM); a join handle polled again after
 * READY; a detached handle polled; weft_block_on with a NULL runtime, a NULL
 * future, an empty future, ops without poll, and from inside a task
 * (-EDEADLK), and in a process with no thread-specific key left (-EAGAIN,
 * then 0 once one is freed); weft_runtime_shutdown / _destroy from the runtime's own task
 * (-EDEADLK / refused); a block_on
 * waker used after its thread exited;
 * weft_join_abort / weft_join_detach / weft_join_output / weft_join_is_finished
 * on NULL and on a detached handle; weft_join_abort_handle with a NULL or
 * detached join and a NULL out, abort handles NULL, empty, used twice and
 * kept past weft_runtime_destroy (and cloned then); clones of NULL and
 * empty handles, a clone into NULL; task ids of NULL, empty, detached and
 * dropped handles, and weft_task_id off the tasks' polls. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <weft.h>

#include "common.h"
#include "internal.h"

/* ---- the probe future: counts polls and drops, runs a per-test step ------- */

struct ctl;
typedef enum weft_poll step_fn(struct ctl *c, struct weft_cx *cx, uint32_t n);

struct ctl {
    step_fn *step;
    enum weft_poll after_go;         /* what step_hold returns once released */
    bool by_value;                   /* step_wake_self wakes a clone by value */
    bool drop_wakes_kept;            /* the drop wakes (and so releases) `kept` */
    _Atomic uint32_t polls, drops, concurrent;
    _Atomic int in_poll, entered, go;
    struct weft_waker kept;          /* a clone of the task's waker (step_keep) */
    _Atomic int kept_set;            /* publishes `kept` */
    int rc;                          /* what an API call inside a step returned */
};

struct probe {
    struct weft_future base;
    struct ctl *c;
    uint32_t out; /* 1000 + the number of the poll that returned READY */
};

static enum weft_poll probe_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct probe *p = (struct probe *)f;
    struct ctl *c = p->c;
    if (atomic_exchange(&c->in_poll, 1))
        atomic_fetch_add(&c->concurrent, 1);
    uint32_t n = atomic_fetch_add(&c->polls, 1) + 1;
    enum weft_poll r = c->step(c, cx, n);
    if (r == WEFT_READY)
        p->out = 1000 + n;
    atomic_store(&c->in_poll, 0);
    return r;
}

static void probe_drop(struct weft_future *f)
{
    struct ctl *c = ((struct probe *)f)->c;
    if (c->drop_wakes_kept && atomic_load(&c->kept_set))
        weft_waker_wake(&c->kept);
    atomic_fetch_add(&c->drops, 1);
}

static const struct weft_future_ops probe_ops = { probe_poll, probe_drop };

static void spawn_probe(struct weft_runtime *rt, struct ctl *c, step_fn *step, struct weft_join *j)
{
    c->step = step;
    struct probe p = { { &probe_ops, 0 }, c, 0 };
    cr_assert_eq(weft_spawn(rt, &p.base, sizeof p, j), 0);
}

static enum weft_poll step_ready(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    (void)c, (void)cx, (void)n;
    return WEFT_READY;
}

/* Wakes itself during the first poll, lingers so that a wrong early requeue
 * would be polled concurrently on another worker, returns PENDING; then READY. */
static enum weft_poll step_wake_self(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    if (n > 1)
        return WEFT_READY;
    if (c->by_value) {
        struct weft_waker w = weft_waker_clone(cx->waker);
        weft_waker_wake(&w);
    } else {
        weft_waker_wake_by_ref(cx->waker);
    }
    sleep_us(3000);
    return WEFT_PENDING;
}

/* Keeps a clone of its waker from the first poll on; ready once `go` is set. */
static enum weft_poll step_keep(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    if (n == 1) {
        c->kept = weft_waker_clone(cx->waker);
        atomic_store(&c->kept_set, 1);
    }
    return atomic_load(&c->go) ? WEFT_READY : WEFT_PENDING;
}

/* Occupies its worker until `go`, then returns `after_go` (without a wake). */
static enum weft_poll step_hold(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    (void)cx, (void)n;
    atomic_store(&c->entered, 1);
    spin_until(&c->go);
    return c->after_go;
}

static enum weft_poll step_block_on(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    (void)cx, (void)n;
    struct weft_yield_now y;
    weft_yield_now_init(&y);
    c->rc = weft_block_on(weft_runtime_current(), &y.base);
    return WEFT_READY;
}

/* Destroying the runtime from one of its own tasks: refused (it would wait
 * for its own worker), the runtime goes on. */
static enum weft_poll step_destroy_self(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    (void)cx, (void)n;
    c->rc = weft_runtime_shutdown(weft_runtime_current(), 0);
    weft_runtime_destroy(weft_runtime_current()); /* a line on stderr, nothing else */
    return WEFT_READY;
}

/* ---- polling join handles from the test thread with a counting waker ------ */

static _Atomic unsigned sig_wakes;

/* `data` is the counter to bump (&sig_wakes unless a test wants another). */
static void sig_wake(const void *data)
{
    atomic_fetch_add((_Atomic unsigned *)data, 1);
}

static void sig_drop(const void *data)
{
    (void)data;
}

static struct weft_waker sig_clone(const void *data);
static const struct weft_waker_ops sig_ops = { sig_clone, sig_wake, sig_wake, sig_drop };

static struct weft_waker sig_clone(const void *data)
{
    return (struct weft_waker){ data, &sig_ops };
}

static enum weft_poll poll_join(struct weft_join *j)
{
    struct weft_waker w = { &sig_wakes, &sig_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    return weft_future_poll(&j->base, &cx);
}

/* Joins, polling again after each wake; a lost wakeup fails the test. */
static int32_t join_wait(struct weft_join *j)
{
    for (;;) {
        unsigned seen = atomic_load(&sig_wakes);
        if (poll_join(j) == WEFT_READY)
            return j->res;
        WAIT_UNTIL(atomic_load(&sig_wakes) != seen);
    }
}

/* Joins expecting `want`, drops the handle: the future is then dropped once. */
static void join_drop(struct weft_join *j, int32_t want, struct ctl *c)
{
    cr_assert_eq(join_wait(j), want);
    weft_future_drop(&j->base);
    cr_assert_null(j->base.ops);
    cr_assert_eq(atomic_load(&c->drops), 1, "dropped %u times", atomic_load(&c->drops));
}

/* Runs a step_hold task until its completion woke the registered handle. */
static void finish_while_joining(struct weft_runtime *rt, struct ctl *c, struct weft_join *j)
{
    c->after_go = WEFT_READY;
    spawn_probe(rt, c, step_hold, j);
    WAIT_UNTIL(atomic_load(&c->entered));
    unsigned seen = atomic_load(&sig_wakes);
    cr_assert_eq(poll_join(j), WEFT_PENDING, "the task is still in its poll");
    atomic_store(&c->go, 1);
    WAIT_UNTIL(atomic_load(&sig_wakes) != seen);
}

/* ---- threads that wake a waker --------------------------------------------- */

struct waking {
    pthread_t th;
    const struct weft_waker *w;
    int n;
};

static void *wake_loop(void *arg)
{
    struct waking *wk = arg;
    for (int i = 0; i < wk->n; i++) {
        struct weft_waker w = weft_waker_clone(wk->w);
        weft_waker_wake_by_ref(wk->w);
        weft_waker_wake(&w);
    }
    return NULL;
}

/* 4 threads wake `w` 2 * per_thread times each (by reference and by value). */
static void wake_from_threads(const struct weft_waker *w, int per_thread)
{
    struct waking wk[4];
    for (int i = 0; i < 4; i++) {
        wk[i] = (struct waking){ .w = w, .n = per_thread };
        cr_assert_eq(pthread_create(&wk[i].th, NULL, wake_loop, &wk[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(wk[i].th, NULL);
}

/* ---- spawn, wake, join ------------------------------------------------------------ */

Test(task, spawn_join_output, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { 0 };
    struct weft_join j;

    spawn_probe(rt, &c, step_ready, &j);
    cr_assert_null(weft_join_output(&j), "no output before the handle returned READY");
    cr_assert_eq(join_wait(&j), 0);
    struct probe *out = weft_join_output(&j);
    cr_assert_not_null(out);
    cr_assert(out->c == &c && out->out == 1001, "the finished future holds the output");
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(atomic_load(&c.drops), 1, "dropped as soon as it finished");
    join_drop(&j, -EINVAL, &c); /* polled again: already joined; not dropped again */
    weft_future_drop(&j.base);  /* empty now: harmless */
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

/* A join handle takes one unit of the cooperative budget when it is ready,
 * as every leaf (and Tokio's JoinHandle): with none left, a finished task's
 * handle is pending and wakes its task (a yield), and a pending handle gives
 * its unit back. Before, a loop awaiting many finished handles never yielded. */
Test(task, a_join_handle_spends_the_budget, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct ctl c = { 0 }, h = { 0 };
    struct weft_join j, k;
    spawn_probe(rt, &c, step_ready, &j);
    WAIT_UNTIL(atomic_load(&c.drops) == 1); /* finished */
    struct weft_waker w = { &sig_wakes, &sig_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    cx.budget = 0;
    unsigned seen = atomic_load(&sig_wakes);
    cr_assert_eq(weft_future_poll(&j.base, &cx), WEFT_PENDING, "ready with no budget left");
    cr_assert(cx.budget_spent);
    cr_assert_eq(atomic_load(&sig_wakes), seen + 1, "the task was not woken to yield");
    cx.budget = 2;
    cr_assert_eq(weft_future_poll(&j.base, &cx), WEFT_READY);
    cr_assert_eq(cx.budget, 1u);
    cr_assert_eq(j.res, 0);
    weft_future_drop(&j.base);
    /* Pending: the unit comes back. */
    h.after_go = WEFT_READY;
    spawn_probe(rt, &h, step_hold, &k);
    WAIT_UNTIL(atomic_load(&h.entered));
    cr_assert_eq(weft_future_poll(&k.base, &cx), WEFT_PENDING);
    cr_assert_eq(cx.budget, 1u, "a pending handle kept its unit");
    atomic_store(&h.go, 1);
    cr_assert_eq(join_wait(&k), 0);
    weft_future_drop(&k.base);
    weft_runtime_destroy(rt);
}

Test(task, wake_during_poll_polls_once_more, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(4, NULL);
    for (int i = 0; i < 20; i++) {
        struct ctl c = { .by_value = i % 2 };
        struct weft_join j;
        spawn_probe(rt, &c, step_wake_self, &j);
        cr_assert_eq(join_wait(&j), 0);
        sleep_us(2000);
        cr_assert_eq(atomic_load(&c.polls), 2, "round %d: polled %u times", i, atomic_load(&c.polls));
        cr_assert_eq(atomic_load(&c.concurrent), 0, "polled concurrently");
        join_drop(&j, -EINVAL, &c);
    }
    weft_runtime_destroy(rt);
}

Test(task, wake_after_complete_is_noop, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct ctl c = { .go = 1 }; /* ready at the first poll, keeping a waker */
    struct weft_join j;

    spawn_probe(rt, &c, step_keep, &j);
    cr_assert_eq(join_wait(&j), 0);
    cr_assert(atomic_load(&c.kept_set));
    struct weft_waker late = weft_waker_clone(&c.kept), once = weft_waker_clone(&c.kept);
    weft_waker_wake_by_ref(&c.kept);
    weft_waker_wake(&once);
    cr_assert_null(once.ops);
    join_drop(&j, -EINVAL, &c); /* the wakers now hold the last references */
    weft_waker_wake_by_ref(&c.kept);
    weft_waker_drop(&c.kept);
    sleep_us(10000);
    cr_assert_eq(atomic_load(&c.polls), 1, "a finished future was polled again");
    weft_runtime_destroy(rt);
    weft_waker_wake_by_ref(&late); /* after destroy: still a no-op */
    weft_waker_drop(&late);
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(atomic_load(&c.drops), 1);
    assert_balanced(&ca);
}

/* 8000 wakes of an idle task from 4 threads. With the only worker occupied
 * meanwhile, they must collapse into exactly one more poll; with two free
 * workers, into 1..8000 more polls, never concurrent. */
static void idle_wakes_collapse(uint32_t workers)
{
    struct weft_runtime *rt = start_rt(workers, NULL);
    struct ctl c = { 0 }, blocker = { .after_go = WEFT_READY };
    struct weft_join j, jb;

    spawn_probe(rt, &c, step_keep, &j);
    WAIT_UNTIL(atomic_load(&c.kept_set));
    if (workers == 1) {
        spawn_probe(rt, &blocker, step_hold, &jb);
        WAIT_UNTIL(atomic_load(&blocker.entered));
        atomic_store(&c.go, 1);
    }
    wake_from_threads(&c.kept, 1000);
    if (workers == 1) {
        cr_assert_eq(atomic_load(&c.polls), 1, "polled while the only worker was busy");
        atomic_store(&blocker.go, 1);
        join_drop(&jb, 0, &blocker);
    }
    atomic_store(&c.go, 1);
    weft_waker_wake(&c.kept);
    join_drop(&j, 0, &c);
    uint32_t polls = atomic_load(&c.polls);
    if (workers == 1)
        cr_assert_eq(polls, 2, "8000 wakes of an idle task gave %u polls, want 2", polls);
    cr_assert(polls >= 2 && polls <= 8002, "polls = %u", polls);
    cr_assert_eq(atomic_load(&c.concurrent), 0, "polled concurrently");
    weft_runtime_destroy(rt);
}

Test(task, idle_wakes_collapse_busy_worker, .timeout = 30)
{
    idle_wakes_collapse(1);
}

Test(task, many_wakes_from_threads, .timeout = 30)
{
    idle_wakes_collapse(2);
}

/* ---- abort ------------------------------------------------------------------------ */

Test(task, abort_before_first_poll, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct ctl c = { 0 }, blocker = { .after_go = WEFT_READY };
    struct weft_join j, jb;

    spawn_probe(rt, &blocker, step_hold, &jb);
    WAIT_UNTIL(atomic_load(&blocker.entered));
    spawn_probe(rt, &c, step_ready, &j);
    weft_join_abort(&j);
    weft_join_abort(&j); /* twice: harmless */
    atomic_store(&blocker.go, 1);
    cr_assert_eq(join_wait(&j), -ECANCELED);
    cr_assert_null(weft_join_output(&j));
    cr_assert_eq(atomic_load(&c.polls), 0, "an aborted task was polled");
    cr_assert_eq(atomic_load(&c.drops), 1, "dropped at cancellation");
    join_drop(&j, -EINVAL, &c);
    join_drop(&jb, 0, &blocker);
    weft_runtime_destroy(rt);
}

/* Aborted while its poll runs: a PENDING then cancels it (future dropped, the
 * joiner sees -ECANCELED); a READY wins and delivers the output. */
static void abort_mid_poll(enum weft_poll after_go, int32_t want)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { .after_go = after_go };
    struct weft_join j;

    spawn_probe(rt, &c, step_hold, &j);
    WAIT_UNTIL(atomic_load(&c.entered));
    weft_join_abort(&j);
    atomic_store(&c.go, 1);
    cr_assert_eq(join_wait(&j), want);
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(weft_join_output(&j) != NULL, want == 0);
    join_drop(&j, -EINVAL, &c);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

Test(task, abort_during_poll, .timeout = 30)
{
    abort_mid_poll(WEFT_PENDING, -ECANCELED);
}

Test(task, abort_during_poll_that_finishes, .timeout = 30)
{
    abort_mid_poll(WEFT_READY, 0);
}

Test(task, abort_while_idle, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { 0 };
    struct weft_join j;

    spawn_probe(rt, &c, step_keep, &j);
    WAIT_UNTIL(atomic_load(&c.kept_set));
    weft_join_abort(&j);
    cr_assert_eq(join_wait(&j), -ECANCELED);
    cr_assert_eq(atomic_load(&c.drops), 1);
    weft_waker_wake(&c.kept); /* cancelled: nothing to poll */
    sleep_us(5000);
    cr_assert_eq(atomic_load(&c.polls), 1);
    join_drop(&j, -EINVAL, &c);
    weft_runtime_destroy(rt);
}

/* Abort and detach after the task finished (its completion already woke the
 * handle): both are no-ops, the output is intact, nothing is dropped twice. */
Test(task, abort_and_detach_after_completion, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { 0 }, d = { 0 };
    struct weft_join j, jd;

    finish_while_joining(rt, &c, &j);
    cr_assert_eq(atomic_load(&c.drops), 1, "dropped as soon as it finished");
    weft_join_abort(&j);
    cr_assert_eq(poll_join(&j), WEFT_READY);
    cr_assert_eq(j.res, 0);
    struct probe *out = weft_join_output(&j);
    cr_assert(out && out->out == 1001);
    join_drop(&j, -EINVAL, &c);

    finish_while_joining(rt, &d, &jd);
    weft_join_detach(&jd);
    cr_assert_null(jd.task);
    join_drop(&jd, -EINVAL, &d);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops) + atomic_load(&d.drops), 2);
}

/* ---- is_finished and abort handles ------------------------------------------------------ */

/* An abort handle outlives its join handle and still stops the task;
 * is_finished follows the task on both handles. */
Test(task, abort_handle_stops_a_task_whose_join_handle_is_gone, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct ctl c = { .drop_wakes_kept = true };
    struct weft_join j;
    struct weft_abort_handle h, h2;

    spawn_probe(rt, &c, step_keep, &j);
    WAIT_UNTIL(atomic_load(&c.kept_set));
    cr_assert_not(weft_join_is_finished(&j), "a pending task is not finished");
    cr_assert_eq(weft_join_abort_handle(&j, &h), 0);
    cr_assert_not(weft_abort_handle_is_finished(&h));
    weft_future_drop(&j.base);
    weft_abort_handle_clone(&h, &h2);
    cr_assert_eq(h2.task, h.task);
    sleep_us(2000);
    cr_assert_eq(atomic_load(&c.drops), 0, "dropping the join handle stopped the task");
    weft_abort_handle_abort(&h2);
    WAIT_UNTIL(weft_abort_handle_is_finished(&h));
    cr_assert(weft_abort_handle_is_finished(&h2));
    cr_assert_eq(atomic_load(&c.drops), 1);
    weft_abort_handle_abort(&h); /* again, on a finished task: nothing */
    weft_abort_handle_drop(&h);
    cr_assert_null(h.task);
    weft_abort_handle_drop(&h); /* an empty one: nothing */
    cr_assert_eq(atomic_load(&c.polls), 1);
    weft_abort_handle_drop(&h2); /* the last reference: the task's memory goes */
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
    assert_balanced(&ca); /* no reference kept by a handle's drop */
}

/* A finished task: is_finished at once, an abort through a handle taken
 * afterwards changes nothing, the output is intact. */
Test(task, abort_handle_of_a_finished_task_changes_nothing, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { 0 };
    struct weft_join j;
    struct weft_abort_handle h;

    finish_while_joining(rt, &c, &j);
    cr_assert(weft_join_is_finished(&j));
    cr_assert_eq(weft_join_abort_handle(&j, &h), 0);
    cr_assert(weft_abort_handle_is_finished(&h));
    weft_abort_handle_abort(&h);
    cr_assert_eq(poll_join(&j), WEFT_READY);
    cr_assert_eq(j.res, 0, "an abort after the finish cancelled it: %d", j.res);
    struct probe *out = weft_join_output(&j);
    cr_assert(out && out->out == 1001);
    join_drop(&j, -EINVAL, &c);
    weft_abort_handle_drop(&h); /* the last reference: frees the task */
    weft_runtime_destroy(rt);
}

/* Bad inputs: a NULL or detached join handle, a NULL out; NULL and empty
 * abort handles. A handle kept past weft_runtime_destroy: the destroy
 * cancelled its task, and its drop afterwards is safe (ASan). */
Test(task, abort_handle_bad_inputs_and_outliving_the_runtime, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct ctl c = { .drop_wakes_kept = true }, d = { .after_go = WEFT_READY };
    struct weft_join j, jd;
    struct weft_abort_handle h = { (struct weft_task *)&h }, none = { NULL };

    cr_assert_eq(weft_join_abort_handle(NULL, &h), -EINVAL);
    cr_assert_null(h.task, "a failed call leaves the handle empty");
    cr_assert_not(weft_join_is_finished(NULL));
    spawn_probe(rt, &d, step_hold, &jd);
    weft_join_detach(&jd);
    cr_assert_eq(weft_join_abort_handle(&jd, &h), -EINVAL);
    cr_assert_not(weft_join_is_finished(&jd));
    atomic_store(&d.go, 1);
    weft_abort_handle_abort(NULL);
    weft_abort_handle_abort(&none);
    cr_assert_not(weft_abort_handle_is_finished(NULL));
    cr_assert_not(weft_abort_handle_is_finished(&none));
    weft_abort_handle_drop(NULL);
    weft_abort_handle_drop(&none);
    struct weft_abort_handle copy = { (struct weft_task *)&copy };
    weft_abort_handle_clone(NULL, &copy);
    cr_assert_null(copy.task, "a clone of nothing is empty");
    copy.task = (struct weft_task *)&copy;
    weft_abort_handle_clone(&none, &copy);
    cr_assert_null(copy.task, "a clone of an empty handle is empty");
    weft_abort_handle_clone(&none, NULL);

    spawn_probe(rt, &c, step_keep, &j);
    cr_assert_eq(weft_join_abort_handle(&j, NULL), -EINVAL);
    cr_assert_eq(weft_join_abort_handle(&j, &h), 0);
    WAIT_UNTIL(atomic_load(&c.kept_set));
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1, "destroy dropped the task");
    cr_assert(weft_abort_handle_is_finished(&h));
    weft_abort_handle_abort(&h);
    weft_abort_handle_clone(&h, &copy); /* after destroy too */
    weft_abort_handle_drop(&h);
    cr_assert(weft_abort_handle_is_finished(&copy));
    weft_abort_handle_drop(&copy);
}

/* ---- task ids ---------------------------------------------------------------------------- */

enum { ID_TASKS = 200 };

struct id_slot {
    _Atomic uint64_t seen; /* weft_task_id() in the task's poll */
    uint64_t want;         /* weft_join_id() of its handle */
};
static struct id_slot id_slots[2 * ID_TASKS];
static _Atomic int ids_seen;

struct id_task {
    struct weft_future base;
    struct id_slot *slot;
};

static enum weft_poll id_task_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)cx;
    atomic_store(&((struct id_task *)f)->slot->seen, weft_task_id());
    atomic_fetch_add(&ids_seen, 1);
    return WEFT_READY;
}

static void id_task_drop(struct weft_future *f)
{
    (void)f;
    CHECK(weft_task_id() == 0); /* a drop is no poll */
}

static const struct weft_future_ops id_task_ops = { id_task_poll, id_task_drop };

/* Spawns a task for slots[0..n), notes its handle's id, and detaches it. */
static void spawn_ids(struct weft_runtime *rt, struct id_slot *slots, int n)
{
    for (int i = 0; i < n; i++) {
        struct id_task t = { { &id_task_ops, 0 }, &slots[i] };
        struct weft_join j;
        CHECK(weft_spawn(rt, &t.base, sizeof t, &j) == 0);
        slots[i].want = weft_join_id(&j);
        weft_join_detach(&j);
        CHECK(weft_join_id(&j) == 0);
    }
}

struct id_spawner {
    struct weft_future base;
    uint64_t own;
};

static enum weft_poll id_spawner_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)cx;
    ((struct id_spawner *)f)->own = weft_task_id();
    spawn_ids(weft_runtime_current(), id_slots + ID_TASKS, ID_TASKS);
    return WEFT_READY;
}

static const struct weft_future_ops id_spawner_ops = { id_spawner_poll, NULL };

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Inside each of 400 tasks (200 spawned by the test's thread, 200 by a
 * block_on's task on a worker), weft_task_id says its handle's id; all are
 * nonzero and distinct, the block_on's own too. 0 on a thread that is no
 * worker, in a future's drop, for NULL, empty and detached handles; an abort
 * handle has its join handle's id. */
Test(task, ids_name_the_running_task_and_never_repeat, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    cr_assert_eq(weft_task_id(), 0, "the test's thread polls no task");
    spawn_ids(rt, id_slots, ID_TASKS);
    struct id_spawner sp = { { &id_spawner_ops, 0 }, 0 };
    cr_assert_eq(weft_block_on(rt, &sp.base), 0);
    WAIT_UNTIL(atomic_load(&ids_seen) == 2 * ID_TASKS);
    uint64_t all[2 * ID_TASKS + 1];
    for (int i = 0; i < 2 * ID_TASKS; i++) {
        cr_assert_neq(id_slots[i].want, 0, "task %d", i);
        cr_assert_eq(atomic_load(&id_slots[i].seen), id_slots[i].want,
                     "task %d saw id %" PRIu64 ", its handle says %" PRIu64, i,
                     atomic_load(&id_slots[i].seen), id_slots[i].want);
        all[i] = id_slots[i].want;
    }
    cr_assert_neq(sp.own, 0, "the block_on's task");
    all[2 * ID_TASKS] = sp.own;
    qsort(all, 2 * ID_TASKS + 1, sizeof all[0], cmp_u64);
    for (int i = 1; i <= 2 * ID_TASKS; i++)
        cr_assert_neq(all[i], all[i - 1], "id %" PRIu64 " given twice", all[i]);

    struct ctl c = { .drop_wakes_kept = true };
    struct weft_join j;
    struct weft_abort_handle h, empty = { NULL };
    spawn_probe(rt, &c, step_keep, &j);
    cr_assert_eq(weft_join_abort_handle(&j, &h), 0);
    cr_assert_neq(weft_join_id(&j), 0);
    cr_assert_eq(weft_abort_handle_id(&h), weft_join_id(&j));
    cr_assert_eq(weft_join_id(NULL), 0);
    cr_assert_eq(weft_abort_handle_id(NULL), 0);
    cr_assert_eq(weft_abort_handle_id(&empty), 0);
    weft_join_abort(&j);
    join_drop(&j, -ECANCELED, &c);
    cr_assert_eq(weft_join_id(&j), 0, "a dropped handle");
    weft_abort_handle_drop(&h);
    cr_assert_eq(weft_abort_handle_id(&h), 0);
    weft_runtime_destroy(rt);
}

struct abort_race {
    struct weft_join j;
    struct weft_abort_handle h, mine; /* the test's, the thread's clone */
    _Atomic int go;
};

static void *race_abort(void *arg)
{
    struct abort_race *r = arg;
    spin_until(&r->go);
    weft_abort_handle_abort(&r->mine);
    weft_abort_handle_drop(&r->mine);
    return NULL;
}

/* An abort handle used on one thread while the join handle is dropped on
 * another (which weft_join_abort must not race): every task is stopped and
 * dropped once, and nothing is touched after its free (ASan). */
Test(task, abort_handle_races_the_join_handles_drop, .timeout = 60)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    for (int round = 0; round < 500; round++) {
        struct ctl c = { .drop_wakes_kept = true };
        struct abort_race r = { .go = 0 };
        pthread_t th;
        spawn_probe(rt, &c, step_keep, &r.j);
        cr_assert_eq(weft_join_abort_handle(&r.j, &r.h), 0);
        weft_abort_handle_clone(&r.h, &r.mine);
        cr_assert_eq(pthread_create(&th, NULL, race_abort, &r), 0);
        if (round % 2)
            WAIT_UNTIL(atomic_load(&c.kept_set)); /* idle, or still queued */
        atomic_store(&r.go, 1);
        weft_future_drop(&r.j.base);
        pthread_join(th, NULL);
        WAIT_UNTIL(weft_abort_handle_is_finished(&r.h));
        weft_abort_handle_drop(&r.h);
        cr_assert_eq(atomic_load(&c.drops), 1, "round %d: dropped %u times", round,
                     atomic_load(&c.drops));
    }
    weft_runtime_destroy(rt);
}

/* ---- joining from elsewhere, detaching ------------------------------------------------ */

struct joiner {
    pthread_t th;
    struct weft_runtime *rt;
    struct weft_join j;
    int rc;
};

static void *join_thread(void *arg)
{
    struct joiner *jn = arg;
    jn->rc = weft_block_on(jn->rt, &jn->j.base);
    return NULL;
}

Test(task, join_from_other_threads, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c[4] = { 0 };
    struct joiner jn[4];

    for (int i = 0; i < 4; i++) {
        c[i].after_go = WEFT_READY;
        jn[i] = (struct joiner){ .rt = rt, .rc = 1 };
        spawn_probe(rt, &c[i], i % 2 ? step_hold : step_keep, &jn[i].j);
        cr_assert_eq(pthread_create(&jn[i].th, NULL, join_thread, &jn[i]), 0);
    }
    sleep_us(20000); /* let the joiners block */
    for (int i = 0; i < 4; i++) {
        atomic_store(&c[i].go, 1);
        if (i % 2 == 0) {
            WAIT_UNTIL(atomic_load(&c[i].kept_set));
            weft_waker_wake(&c[i].kept);
        }
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(jn[i].th, NULL);
        cr_assert_eq(jn[i].rc, 0);
        cr_assert_eq(jn[i].j.res, 0);
        struct probe *out = weft_join_output(&jn[i].j);
        cr_assert(out && out->c == &c[i]);
        join_drop(&jn[i].j, -EINVAL, &c[i]);
    }
    weft_runtime_destroy(rt);
}

Test(task, detach_runs_and_drops_once, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { .after_go = WEFT_READY };
    struct weft_join j;

    spawn_probe(rt, &c, step_hold, &j);
    weft_join_detach(&j);
    cr_assert_null(j.task);
    cr_assert_null(weft_join_output(&j));
    weft_join_abort(&j);  /* no effect on a detached handle */
    weft_join_detach(&j); /* nor a second detach */
    cr_assert_eq(weft_block_on(rt, &j.base), 0, "a detached handle is ready at once");
    cr_assert_eq(j.res, -EINVAL);
    weft_future_drop(&j.base);
    atomic_store(&c.go, 1);
    WAIT_UNTIL(atomic_load(&c.drops) == 1);
    sleep_us(5000);
    cr_assert_eq(atomic_load(&c.polls), 1);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

/* A handle polled with another waker forgets the first: only the latest is
 * woken at completion. */
Test(task, join_waker_replaced, .timeout = 30)
{
    static _Atomic unsigned first;
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { .after_go = WEFT_READY };
    struct weft_join j;
    struct weft_waker w = { &first, &sig_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);

    spawn_probe(rt, &c, step_hold, &j);
    WAIT_UNTIL(atomic_load(&c.entered));
    cr_assert_eq(weft_future_poll(&j.base, &cx), WEFT_PENDING);
    cr_assert_eq(weft_future_poll(&j.base, &cx), WEFT_PENDING, "the same waker again");
    unsigned seen = atomic_load(&sig_wakes);
    cr_assert_eq(poll_join(&j), WEFT_PENDING);
    atomic_store(&c.go, 1);
    WAIT_UNTIL(atomic_load(&sig_wakes) != seen);
    cr_assert_eq(atomic_load(&first), 0, "the replaced waker was woken");
    join_drop(&j, 0, &c);
    weft_runtime_destroy(rt);
}

/* ---- reference counts ---------------------------------------------------------------- */

/* A future holding a clone of its own task's waker releases it in its drop,
 * while the task completes (joined, detached) or is cancelled by destroy. */
Test(task, drop_releases_own_waker, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct ctl c[3] = { { .go = 1, .drop_wakes_kept = true }, { .go = 1, .drop_wakes_kept = true },
                        { .drop_wakes_kept = true } };
    struct weft_join j;

    spawn_probe(rt, &c[0], step_keep, &j);
    spawn_probe(rt, &c[1], step_keep, NULL);
    spawn_probe(rt, &c[2], step_keep, NULL);
    join_drop(&j, 0, &c[0]);
    WAIT_UNTIL(atomic_load(&c[1].drops) == 1 && atomic_load(&c[2].kept_set));
    weft_runtime_destroy(rt);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(atomic_load(&c[i].drops), 1);
        cr_assert_null(c[i].kept.ops, "the drop released the waker");
    }
    assert_balanced(&ca);
}

/* Tasks that finish joined (i % 4 == 0) or detached (1), are aborted (2), or
 * are pending at destroy (3, handles and wakers dropped after it): every future
 * is dropped exactly once and every allocation freed exactly once. */
Test(task, refcount_balanced, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    enum { N = 64 };
    static struct ctl c[N];
    struct weft_join j[N];

    for (int i = 0; i < N; i++) {
        atomic_store(&c[i].go, i % 4 < 2);
        spawn_probe(rt, &c[i], step_keep, i % 4 == 1 ? NULL : &j[i]);
    }
    for (int i = 0; i < N; i += 4) {
        cr_assert_eq(join_wait(&j[i]), 0);
        weft_join_abort(&j[i + 2]);
        cr_assert_eq(join_wait(&j[i + 2]), -ECANCELED);
        WAIT_UNTIL(atomic_load(&c[i + 3].kept_set));
    }
    weft_runtime_destroy(rt);
    for (int i = 0; i < N; i++) {
        if (i % 4 == 3)
            cr_assert_eq(join_wait(&j[i]), -ECANCELED);
        if (i % 4 != 1)
            weft_future_drop(&j[i].base);
        if (atomic_load(&c[i].kept_set)) {
            weft_waker_wake_by_ref(&c[i].kept);
            weft_waker_drop(&c[i].kept);
        }
        cr_assert_eq(atomic_load(&c[i].drops), 1, "task %d dropped %u times", i,
                     atomic_load(&c[i].drops));
    }
    assert_balanced(&ca);
}

/* ---- bad input --------------------------------------------------------------------------- */

/* A spawn that must fail with `want`, leaving *join empty and nothing run. */
static void expect_spawn_fails(struct weft_runtime *rt, const struct weft_future *f, size_t size,
                               int want)
{
    struct weft_join j;
    memset(&j, 0xab, sizeof j);
    cr_assert_eq(weft_spawn(rt, f, size, &j), want, "size %zu", size);
    cr_assert(j.base.ops == NULL && j.task == NULL, "*join must be left empty");
    cr_assert_eq(weft_spawn(rt, f, size, NULL), want);
}

Test(task, spawn_bad_input, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(1, &ca);
    long allocs = atomic_load(&ca.allocs);
    struct ctl c = { .step = step_ready };
    struct probe p = { { &probe_ops, 0 }, &c, 0 }, no_ops = { { NULL, 0 }, &c, 0 };
    static const struct weft_future_ops no_poll = { NULL, probe_drop };
    struct probe no_poll_fn = { { &no_poll, 0 }, &c, 0 };

    expect_spawn_fails(NULL, &p.base, sizeof p, -EINVAL);
    expect_spawn_fails(rt, NULL, sizeof p, -EINVAL);
    expect_spawn_fails(rt, &no_ops.base, sizeof no_ops, -EINVAL);
    expect_spawn_fails(rt, &no_poll_fn.base, sizeof no_poll_fn, -EINVAL);
    expect_spawn_fails(rt, &p.base, 0, -EINVAL);
    expect_spawn_fails(rt, &p.base, sizeof(struct weft_future) - 1, -EINVAL);
    expect_spawn_fails(rt, &p.base, ((size_t)1 << 20) + 1, -EINVAL);
    cr_assert_eq(atomic_load(&ca.allocs), allocs, "a failed spawn allocated");
    atomic_store(&ca.fail_at, 0);
    expect_spawn_fails(rt, &p.base, sizeof p, -ENOMEM);
    atomic_store(&ca.fail_at, -1);
    cr_assert_eq(atomic_load(&c.polls) + atomic_load(&c.drops), 0, "a failed spawn ran");

    struct weft_join j;
    cr_assert_eq(weft_spawn(rt, &p.base, sizeof p, &j), 0, "works again after -ENOMEM");
    join_drop(&j, 0, &c);
    weft_runtime_destroy(rt);
    assert_balanced(&ca);
}

Test(task, spawn_size_limits, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    const size_t max = (size_t)1 << 20;
    struct ctl c = { .step = step_ready };
    struct probe *big = calloc(1, max);
    struct weft_join j;

    cr_assert_not_null(big);
    *big = (struct probe){ { &probe_ops, 0 }, &c, 0 };
    memset(big + 1, 0x5a, max - sizeof *big);
    cr_assert_eq(weft_spawn(rt, &big->base, max, &j), 0, "exactly 1 MiB is allowed");
    free(big); /* the task owns a copy */
    cr_assert_eq(join_wait(&j), 0);
    const unsigned char *out = weft_join_output(&j);
    cr_assert_eq(((const struct probe *)out)->out, 1001);
    cr_assert(out[sizeof *big] == 0x5a && out[max - 1] == 0x5a, "the whole future is copied");
    join_drop(&j, -EINVAL, &c);

    struct weft_yield_now y; /* the smallest future: just the head */
    weft_yield_now_init(&y);
    cr_assert_eq(weft_spawn(rt, &y.base, sizeof y, &j), 0);
    cr_assert_eq(join_wait(&j), 0);
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
}

/* A waker handed out by weft_block_on can outlive the call and its thread (a
 * future registered it elsewhere): waking and dropping it later must be
 * harmless. The threads' stacks are too big for glibc's stack cache, so an
 * exited thread's memory (and thread-local storage) is unmapped at once. */
static struct weft_waker outlived[2];

static enum weft_poll keep_and_finish(struct weft_future *f, struct weft_cx *cx)
{
    outlived[f->resume] = weft_waker_clone(cx->waker);
    return WEFT_READY;
}

static void *block_on_and_exit(void *arg)
{
    static const struct weft_future_ops ops = { keep_and_finish, NULL };
    struct joiner *jn = arg;
    struct weft_future f = { &ops, jn->rc };
    jn->rc = weft_block_on(jn->rt, &f);
    return NULL;
}

Test(task, block_on_waker_outlives_its_thread, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    pthread_attr_t attr;

    cr_assert_eq(pthread_attr_init(&attr), 0);
    cr_assert_eq(pthread_attr_setstacksize(&attr, (size_t)256 << 20), 0);
    for (int i = 0; i < 2; i++) { /* the second thread also trims the cache */
        struct joiner jn = { .rt = rt, .rc = i };
        cr_assert_eq(pthread_create(&jn.th, &attr, block_on_and_exit, &jn), 0);
        pthread_join(jn.th, NULL);
        cr_assert_eq(jn.rc, 0);
    }
    weft_waker_wake_by_ref(&outlived[0]);
    weft_waker_wake(&outlived[0]);
    weft_waker_drop(&outlived[1]);
    pthread_attr_destroy(&attr);
    weft_runtime_destroy(rt);
}

/* The first weft_block_on of a process makes a thread-specific key for the
 * threads' parkers. With every key taken it says -EAGAIN (before, the key
 * was left unset, naming whatever key 0 was), and works once one is free. */
Test(task, block_on_without_a_thread_key, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_yield_now y;
    pthread_key_t keys[PTHREAD_KEYS_MAX], last = 0;
    int n = 0;

    while (n < PTHREAD_KEYS_MAX && pthread_key_create(&keys[n], NULL) == 0)
        last = keys[n++];
    cr_assert(n > 0 && n < PTHREAD_KEYS_MAX, "took %d keys", n);
    weft_yield_now_init(&y);
    cr_assert_eq(weft_block_on(rt, &y.base), -EAGAIN);
    cr_assert_eq(pthread_key_delete(last), 0);
    n--;
    weft_future_drop(&y.base);
    weft_yield_now_init(&y);
    cr_assert_eq(weft_block_on(rt, &y.base), 0, "a key is free again");
    weft_future_drop(&y.base);
    while (n-- > 0)
        pthread_key_delete(keys[n]);
    weft_runtime_destroy(rt);
}

Test(task, block_on_bad_input, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct ctl c = { 0 };
    struct weft_future empty = { NULL, 0 };
    struct weft_yield_now y;
    struct weft_join j;

    weft_yield_now_init(&y);
    cr_assert_eq(weft_block_on(NULL, &y.base), -EINVAL);
    cr_assert_eq(weft_block_on(rt, NULL), -EINVAL);
    cr_assert_eq(weft_block_on(rt, &empty), -EINVAL);
    static const struct weft_future_ops no_poll = { NULL, NULL };
    struct weft_future pollless = { &no_poll, 0 };
    cr_assert_eq(weft_block_on(rt, &pollless), -EINVAL, "ops without poll (it crashed)");
    cr_assert_eq(y.base.resume, 0, "a failed block_on polled");
    cr_assert_eq(weft_block_on(rt, &y.base), 0, "yield_now under block_on");

    spawn_probe(rt, &c, step_block_on, &j);
    join_drop(&j, 0, &c);
    cr_assert_eq(c.rc, -EDEADLK, "block_on on a worker returned %d", c.rc);
    struct ctl c2 = { 0 };
    spawn_probe(rt, &c2, step_destroy_self, &j);
    join_drop(&j, 0, &c2);
    cr_assert_eq(c2.rc, -EDEADLK, "shutdown on its own worker returned %d", c2.rc);
    cr_assert_eq(weft_block_on(rt, &y.base), 0, "the runtime still runs");

    weft_join_abort(NULL);
    weft_join_detach(NULL);
    cr_assert_null(weft_join_output(NULL));
    weft_runtime_destroy(rt);
}

/* ---- task ids ------------------------------------------------------------------ */

/* Task ids never repeat: a worker's spawn count used to be OR-ed below its
 * index at bit 40, so past 2^40 spawns it ran into the ids of another
 * worker (or its own first ones), and the dump, which leaves out a running
 * task whose id it already listed, hid a task stuck in its first poll (a
 * review). White-box: the count is set to what 2^40 spawns leave. */
static uint64_t id_first, id_after_wrap, id_foreign;

static enum weft_poll ready_now_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    return WEFT_READY;
}

static const struct weft_future_ops done_ops = { ready_now_poll, NULL };

static enum weft_poll spawn_two_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    struct weft_future child = { &done_ops, 0 };
    struct weft_join a, b;
    struct weft__worker *w = weft__current;
    atomic_store_explicit(&w->stats->spawns, 0, memory_order_relaxed);
    CHECK(weft_spawn(weft_runtime_current(), &child, sizeof child, &a) == 0);
    id_first = a.task->id;
    atomic_store_explicit(&w->stats->spawns, UINT64_C(1) << 40, memory_order_relaxed);
    CHECK(weft_spawn(weft_runtime_current(), &child, sizeof child, &b) == 0);
    id_after_wrap = b.task->id;
    weft_future_drop(&a.base);
    weft_future_drop(&b.base);
    return WEFT_READY;
}

static const struct weft_future_ops spawn_two_ops = { spawn_two_poll, NULL };

Test(task, ids_do_not_repeat_after_2_to_the_40_spawns, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_future f = { &spawn_two_ops, 0 };
    cr_assert_eq(weft_block_on(rt, &f), 0);
    struct weft_future g = { &done_ops, 0 };
    struct weft_join j;
    cr_assert_eq(weft_spawn(rt, &g, sizeof g, &j), 0); /* from this thread: a foreign id */
    id_foreign = j.task->id;
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    cr_assert_neq(id_first, id_after_wrap, "two spawns of one worker got id %llu",
                  (unsigned long long)id_first);
    cr_assert_neq(id_foreign, id_first);
    cr_assert_neq(id_foreign, id_after_wrap);
}
