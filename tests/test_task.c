/* tests/test_task.c: the task state machine through the public API
 * (runtime/task.c): spawn, wake, abort, join, detach and reference counts.
 *
 * Bad inputs tried: weft_spawn with a NULL runtime, a NULL future, a future
 * with NULL ops, ops with a NULL poll, size 0, size below
 * sizeof(struct weft_future), size 1 MiB + 1 (exactly 1 MiB must work), and
 * with an allocator that fails (-ENOMEM); a join handle polled again after
 * READY; a detached handle polled; weft_block_on with a NULL runtime, a NULL
 * future, an empty future, and from inside a task (-EDEADLK);
 * weft_join_abort / weft_join_detach / weft_join_output on NULL and on a
 * detached handle. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <weft.h>

#define WAIT_SECS 10.0

/* ---- time and waiting ------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_us(long us)
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

/* Spins until *flag is set; gives up after WAIT_SECS so that a failing test
 * does not keep a worker busy forever. */
static void spin_until(_Atomic int *flag)
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
    _Atomic int fail; /* when set, alloc returns NULL */
};

static void *count_alloc(void *ctx, size_t size)
{
    struct counting_alloc *ca = ctx;
    if (atomic_load(&ca->fail))
        return NULL;
    char *p = malloc(HDR + size);
    if (!p)
        return NULL;
    memcpy(p, &size, sizeof size);
    atomic_fetch_add(&ca->allocs, 1);
    return p + HDR;
}

static void count_free(void *ctx, void *q, size_t size)
{
    struct counting_alloc *ca = ctx;
    size_t asked;
    if (!q) {
        atomic_fetch_add(&ca->bad_frees, 1);
        return;
    }
    memcpy(&asked, (char *)q - HDR, sizeof asked);
    if (asked != size)
        atomic_fetch_add(&ca->bad_frees, 1);
    atomic_fetch_add(&ca->frees, 1);
    free((char *)q - HDR);
}

static void counting_init(struct counting_alloc *ca)
{
    memset(ca, 0, sizeof *ca);
    ca->a = (struct weft_allocator){ count_alloc, count_free, ca };
}

static void assert_balanced(struct counting_alloc *ca)
{
    cr_assert_gt(atomic_load(&ca->allocs), 0);
    cr_assert_eq(atomic_load(&ca->allocs), atomic_load(&ca->frees), "leak: %ld allocs, %ld frees",
                 atomic_load(&ca->allocs), atomic_load(&ca->frees));
    cr_assert_eq(atomic_load(&ca->bad_frees), 0, "free of a NULL pointer or with a wrong size");
}

static struct weft_runtime *start_rt(uint32_t workers, struct counting_alloc *ca)
{
    struct weft_runtime_config cfg;
    struct weft_runtime *rt = NULL;
    weft_runtime_config_init(&cfg);
    cfg.workers = workers;
    cfg.allocator = ca ? &ca->a : NULL;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    return rt;
}

/* ---- the probe future: counts polls and drops, runs a per-test step ------- */

struct ctl;
typedef enum weft_poll step_fn(struct ctl *c, struct weft_cx *cx, uint32_t n);

struct ctl {
    step_fn *step;
    enum weft_poll after_go;         /* what step_hold returns once released */
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
    atomic_fetch_add(&((struct probe *)f)->c->drops, 1);
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

/* Wakes itself during the first poll (by reference or through a clone woken
 * by value), lingers so that a wrong early requeue would be polled
 * concurrently on another worker, and returns PENDING; then READY. */
static enum weft_poll wake_self_once(struct weft_cx *cx, uint32_t n, bool by_value)
{
    if (n > 1)
        return WEFT_READY;
    if (by_value) {
        struct weft_waker w = weft_waker_clone(cx->waker);
        weft_waker_wake(&w);
    } else {
        weft_waker_wake_by_ref(cx->waker);
    }
    sleep_us(3000);
    return WEFT_PENDING;
}

static enum weft_poll step_wake_self(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    (void)c;
    return wake_self_once(cx, n, false);
}

static enum weft_poll step_wake_self_by_value(struct ctl *c, struct weft_cx *cx, uint32_t n)
{
    (void)c;
    return wake_self_once(cx, n, true);
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

/* ---- a hand-made waker to poll join handles from the test thread ---------- */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned wakes;
} sig = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };

static void sig_wake(const void *data)
{
    (void)data;
    pthread_mutex_lock(&sig.lock);
    sig.wakes++;
    pthread_cond_broadcast(&sig.cond);
    pthread_mutex_unlock(&sig.lock);
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

static unsigned sig_wakes(void)
{
    pthread_mutex_lock(&sig.lock);
    unsigned n = sig.wakes;
    pthread_mutex_unlock(&sig.lock);
    return n;
}

/* Waits until the signal waker was woken after `seen`; fails on a lost wakeup. */
static void wait_sig(unsigned seen)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)WAIT_SECS;
    pthread_mutex_lock(&sig.lock);
    while (sig.wakes == seen && pthread_cond_timedwait(&sig.cond, &sig.lock, &dl) != ETIMEDOUT)
        ;
    bool woken = sig.wakes != seen;
    pthread_mutex_unlock(&sig.lock);
    cr_assert(woken, "no wake within %g s: lost wakeup", WAIT_SECS);
}

static enum weft_poll poll_join(struct weft_join *j)
{
    struct weft_waker w = { &sig, &sig_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    return weft_future_poll(&j->base, &cx);
}

/* Joins from the test thread; fails instead of hanging on a lost wakeup. */
static int32_t join_wait(struct weft_join *j)
{
    for (;;) {
        unsigned seen = sig_wakes();
        if (poll_join(j) == WEFT_READY)
            return j->res;
        wait_sig(seen);
    }
}

/* ---- threads that wake a waker --------------------------------------------- */

struct waking {
    pthread_t th;
    const struct weft_waker *w;
    int n;
    bool by_value;
};

static void *wake_loop(void *arg)
{
    struct waking *wk = arg;
    for (int i = 0; i < wk->n; i++) {
        if (wk->by_value) {
            struct weft_waker w = weft_waker_clone(wk->w);
            weft_waker_wake(&w);
        } else {
            weft_waker_wake_by_ref(wk->w);
        }
    }
    return NULL;
}

/* `threads` threads wake `w` `per_thread` times each, half of them by value. */
static void wake_from_threads(const struct weft_waker *w, int threads, int per_thread)
{
    struct waking wk[8];
    cr_assert_leq(threads, 8);
    for (int i = 0; i < threads; i++) {
        wk[i] = (struct waking){ .w = w, .n = per_thread, .by_value = i % 2 };
        cr_assert_eq(pthread_create(&wk[i].th, NULL, wake_loop, &wk[i]), 0);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(wk[i].th, NULL);
}

/* ---- spawn and join ------------------------------------------------------------ */

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
    cr_assert_eq(out->c, &c);
    cr_assert_eq(out->out, 1001);
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(atomic_load(&c.drops), 0, "the output lives until the handle is dropped");
    weft_future_drop(&j.base);
    cr_assert_eq(atomic_load(&c.drops), 1);
    cr_assert_null(j.base.ops);
    weft_future_drop(&j.base); /* empty now: harmless */
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

Test(task, wake_during_poll_polls_once_more, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(4, NULL);
    for (int i = 0; i < 20; i++) {
        struct ctl c = { 0 };
        struct weft_join j;
        spawn_probe(rt, &c, i % 2 ? step_wake_self_by_value : step_wake_self, &j);
        cr_assert_eq(join_wait(&j), 0);
        sleep_us(2000);
        cr_assert_eq(atomic_load(&c.polls), 2, "round %d: polled %u times", i, atomic_load(&c.polls));
        cr_assert_eq(atomic_load(&c.concurrent), 0, "polled concurrently");
        weft_future_drop(&j.base);
        cr_assert_eq(atomic_load(&c.drops), 1);
    }
    weft_runtime_destroy(rt);
}

Test(task, wake_after_complete_is_noop, .timeout = 30)
{
    struct counting_alloc ca;
    counting_init(&ca);
    struct weft_runtime *rt = start_rt(2, &ca);
    struct ctl c = { 0 };
    struct weft_join j;

    atomic_store(&c.go, 1); /* ready at the first poll, keeping a waker */
    spawn_probe(rt, &c, step_keep, &j);
    cr_assert_eq(join_wait(&j), 0);
    cr_assert(atomic_load(&c.kept_set));
    struct weft_waker late = weft_waker_clone(&c.kept);
    weft_waker_wake_by_ref(&c.kept);
    struct weft_waker once = weft_waker_clone(&c.kept);
    weft_waker_wake(&once);
    cr_assert_null(once.ops);
    weft_future_drop(&j.base);      /* the wakers now hold the last references */
    cr_assert_eq(atomic_load(&c.drops), 1);
    weft_waker_wake_by_ref(&c.kept);
    weft_waker_drop(&c.kept);
    sleep_us(10000);
    cr_assert_eq(atomic_load(&c.polls), 1, "a finished future was polled again");
    weft_runtime_destroy(rt);
    weft_waker_wake_by_ref(&late);  /* after destroy: still a no-op */
    weft_waker_drop(&late);
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(atomic_load(&c.drops), 1);
    assert_balanced(&ca);
}

/* With the only worker busy, wakes of an idle task collapse into one poll. */
Test(task, idle_wakes_collapse_into_one_poll, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct ctl target = { 0 }, blocker = { .after_go = WEFT_READY };
    struct weft_join jt, jb;

    spawn_probe(rt, &target, step_keep, &jt);
    WAIT_UNTIL(atomic_load(&target.kept_set));
    spawn_probe(rt, &blocker, step_hold, &jb);
    WAIT_UNTIL(atomic_load(&blocker.entered));
    atomic_store(&target.go, 1);
    wake_from_threads(&target.kept, 4, 250);
    cr_assert_eq(atomic_load(&target.polls), 1, "polled while the only worker was busy");
    atomic_store(&blocker.go, 1);
    cr_assert_eq(join_wait(&jt), 0);
    cr_assert_eq(join_wait(&jb), 0);
    cr_assert_eq(atomic_load(&target.polls), 2, "1000 wakes gave %u polls, want 2",
                 atomic_load(&target.polls));
    weft_waker_drop(&target.kept);
    weft_future_drop(&jt.base);
    weft_future_drop(&jb.base);
    weft_runtime_destroy(rt);
}

Test(task, many_wakes_from_threads, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { 0 };
    struct weft_join j;
    const int threads = 4, per_thread = 10000;

    spawn_probe(rt, &c, step_keep, &j);
    WAIT_UNTIL(atomic_load(&c.kept_set));
    wake_from_threads(&c.kept, threads, per_thread);
    atomic_store(&c.go, 1);
    weft_waker_wake_by_ref(&c.kept);
    cr_assert_eq(join_wait(&j), 0);
    uint32_t polls = atomic_load(&c.polls);
    cr_assert(polls >= 2 && polls <= (uint32_t)(threads * per_thread + 2), "polls = %u", polls);
    cr_assert_eq(atomic_load(&c.concurrent), 0, "polled concurrently");
    weft_waker_drop(&c.kept);
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

/* ---- abort ------------------------------------------------------------------------ */

Test(task, abort_before_first_poll, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(1, NULL);
    struct ctl target = { 0 }, blocker = { .after_go = WEFT_READY };
    struct weft_join jt, jb;

    spawn_probe(rt, &blocker, step_hold, &jb);
    WAIT_UNTIL(atomic_load(&blocker.entered));
    spawn_probe(rt, &target, step_ready, &jt);
    weft_join_abort(&jt);
    weft_join_abort(&jt); /* twice: harmless */
    atomic_store(&blocker.go, 1);
    cr_assert_eq(join_wait(&jt), -ECANCELED);
    cr_assert_null(weft_join_output(&jt));
    cr_assert_eq(atomic_load(&target.polls), 0, "an aborted task was polled");
    cr_assert_eq(atomic_load(&target.drops), 1);
    weft_future_drop(&jt.base);
    cr_assert_eq(atomic_load(&target.drops), 1, "dropped twice");
    cr_assert_eq(join_wait(&jb), 0);
    weft_future_drop(&jb.base);
    weft_runtime_destroy(rt);
}

/* Aborted while its poll runs: the PENDING it then returns cancels it. */
Test(task, abort_during_poll, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { .after_go = WEFT_PENDING };
    struct weft_join j;

    spawn_probe(rt, &c, step_hold, &j);
    WAIT_UNTIL(atomic_load(&c.entered));
    weft_join_abort(&j);
    atomic_store(&c.go, 1);
    cr_assert_eq(join_wait(&j), -ECANCELED);
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(atomic_load(&c.drops), 1);
    cr_assert_null(weft_join_output(&j));
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

/* A poll that finishes despite the abort wins: the output is delivered. */
Test(task, abort_during_poll_that_finishes, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { .after_go = WEFT_READY };
    struct weft_join j;

    spawn_probe(rt, &c, step_hold, &j);
    WAIT_UNTIL(atomic_load(&c.entered));
    weft_join_abort(&j);
    atomic_store(&c.go, 1);
    cr_assert_eq(join_wait(&j), 0);
    cr_assert_not_null(weft_join_output(&j));
    cr_assert_eq(atomic_load(&c.drops), 0);
    weft_future_drop(&j.base);
    cr_assert_eq(atomic_load(&c.drops), 1);
    weft_runtime_destroy(rt);
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
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(atomic_load(&c.drops), 1);
    weft_waker_wake_by_ref(&c.kept); /* cancelled: nothing to poll */
    weft_waker_drop(&c.kept);
    sleep_us(5000);
    cr_assert_eq(atomic_load(&c.polls), 1);
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

Test(task, abort_after_completion, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { .after_go = WEFT_READY };
    struct weft_join j;

    spawn_probe(rt, &c, step_hold, &j);
    WAIT_UNTIL(atomic_load(&c.entered));
    unsigned seen = sig_wakes();
    cr_assert_eq(poll_join(&j), WEFT_PENDING, "the task is still in its poll");
    atomic_store(&c.go, 1);
    wait_sig(seen); /* the completion woke the handle's waker */
    weft_join_abort(&j);
    cr_assert_eq(poll_join(&j), WEFT_READY);
    cr_assert_eq(j.res, 0);
    struct probe *out = weft_join_output(&j);
    cr_assert_not_null(out);
    cr_assert_eq(out->out, 1001);
    cr_assert_eq(atomic_load(&c.drops), 0);
    weft_future_drop(&j.base);
    cr_assert_eq(atomic_load(&c.drops), 1);
    weft_runtime_destroy(rt);
}

/* ---- joining from elsewhere, detaching ------------------------------------------------ */

struct joiner {
    pthread_t th;
    struct weft_runtime *rt;
    struct weft_join *j;
    int rc;
};

static void *join_thread(void *arg)
{
    struct joiner *jn = arg;
    jn->rc = weft_block_on(jn->rt, &jn->j->base);
    return NULL;
}

Test(task, join_from_other_threads, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    enum { N = 4 };
    struct ctl c[N] = { 0 };
    struct weft_join j[N];
    struct joiner jn[N];

    for (int i = 0; i < N; i++) {
        c[i].after_go = WEFT_READY;
        spawn_probe(rt, &c[i], i % 2 ? step_hold : step_keep, &j[i]);
        jn[i] = (struct joiner){ .rt = rt, .j = &j[i], .rc = 1 };
        cr_assert_eq(pthread_create(&jn[i].th, NULL, join_thread, &jn[i]), 0);
    }
    sleep_us(20000); /* let the joiners block */
    for (int i = 0; i < N; i++) {
        atomic_store(&c[i].go, 1);
        if (i % 2 == 0) {
            WAIT_UNTIL(atomic_load(&c[i].kept_set));
            weft_waker_wake(&c[i].kept);
        }
    }
    for (int i = 0; i < N; i++) {
        pthread_join(jn[i].th, NULL);
        cr_assert_eq(jn[i].rc, 0);
        cr_assert_eq(j[i].res, 0);
        struct probe *out = weft_join_output(&j[i]);
        cr_assert_not_null(out);
        cr_assert_eq(out->c, &c[i]);
        weft_future_drop(&j[i].base);
        cr_assert_eq(atomic_load(&c[i].drops), 1);
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
    cr_assert_eq(poll_join(&j), WEFT_READY, "a detached handle is ready at once");
    cr_assert_eq(j.res, -EINVAL);
    cr_assert_null(weft_join_output(&j));
    weft_join_abort(&j);  /* no effect on a detached handle */
    weft_join_detach(&j); /* nor a second detach */
    weft_future_drop(&j.base);
    atomic_store(&c.go, 1);
    WAIT_UNTIL(atomic_load(&c.drops) == 1);
    sleep_us(5000);
    cr_assert_eq(atomic_load(&c.polls), 1);
    cr_assert_eq(atomic_load(&c.drops), 1);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

Test(task, detach_after_completion_drops_at_once, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl c = { .after_go = WEFT_READY };
    struct weft_join j;

    spawn_probe(rt, &c, step_hold, &j);
    WAIT_UNTIL(atomic_load(&c.entered));
    unsigned seen = sig_wakes();
    cr_assert_eq(poll_join(&j), WEFT_PENDING);
    atomic_store(&c.go, 1);
    wait_sig(seen);
    cr_assert_eq(atomic_load(&c.drops), 0);
    weft_join_detach(&j);
    cr_assert_eq(atomic_load(&c.drops), 1, "detaching a finished task drops its future");
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
}

Test(task, join_after_detach_and_double_join, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ctl a = { 0 }, b = { 0 };
    struct weft_join ja, jb;

    spawn_probe(rt, &a, step_ready, &ja);
    weft_join_detach(&ja);
    cr_assert_eq(weft_block_on(rt, &ja.base), 0);
    cr_assert_eq(ja.res, -EINVAL);

    spawn_probe(rt, &b, step_ready, &jb);
    cr_assert_eq(weft_block_on(rt, &jb.base), 0);
    cr_assert_eq(jb.res, 0);
    cr_assert_eq(poll_join(&jb), WEFT_READY);
    cr_assert_eq(jb.res, -EINVAL, "a second join must fail");
    weft_future_drop(&jb.base);
    WAIT_UNTIL(atomic_load(&a.drops) == 1);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&b.drops), 1);
    cr_assert_eq(atomic_load(&a.drops), 1);
}

/* ---- reference counts ---------------------------------------------------------------- */

/* Tasks that finish joined, detached, aborted, or are still pending at destroy
 * (handles and wakers dropped after it): every future is dropped exactly once
 * and every allocation freed exactly once. */
Test(task, refcount_balanced, .timeout = 30)
{
    struct counting_alloc ca;
    counting_init(&ca);
    struct weft_runtime *rt = start_rt(2, &ca);
    enum { N = 64 };
    static struct ctl c[N];
    struct weft_join j[N];

    for (int i = 0; i < N; i++) {
        int mode = i % 4;
        atomic_store(&c[i].go, mode < 2);
        spawn_probe(rt, &c[i], step_keep, mode == 1 ? NULL : &j[i]);
    }
    for (int i = 0; i < N; i += 4)
        cr_assert_eq(join_wait(&j[i]), 0);
    for (int i = 2; i < N; i += 4) {
        weft_join_abort(&j[i]);
        cr_assert_eq(join_wait(&j[i]), -ECANCELED);
    }
    for (int i = 3; i < N; i += 4)
        WAIT_UNTIL(atomic_load(&c[i].kept_set));
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

static void expect_einval(struct weft_runtime *rt, const struct weft_future *f, size_t size)
{
    struct weft_join j;
    memset(&j, 0xab, sizeof j);
    cr_assert_eq(weft_spawn(rt, f, size, &j), -EINVAL, "size %zu", size);
    cr_assert_null(j.base.ops, "*join must be left empty");
    cr_assert_null(j.task);
    cr_assert_eq(weft_spawn(rt, f, size, NULL), -EINVAL);
}

Test(task, spawn_bad_input, .timeout = 30)
{
    struct counting_alloc ca;
    counting_init(&ca);
    struct weft_runtime *rt = start_rt(1, &ca);
    long allocs = atomic_load(&ca.allocs);
    struct ctl c = { .step = step_ready };
    struct probe p = { { &probe_ops, 0 }, &c, 0 };
    struct probe no_ops = { { NULL, 0 }, &c, 0 };
    static const struct weft_future_ops no_poll = { NULL, probe_drop };
    struct probe no_poll_fn = { { &no_poll, 0 }, &c, 0 };

    expect_einval(NULL, &p.base, sizeof p);
    expect_einval(rt, NULL, sizeof p);
    expect_einval(rt, &no_ops.base, sizeof no_ops);
    expect_einval(rt, &no_poll_fn.base, sizeof no_poll_fn);
    expect_einval(rt, &p.base, 0);
    expect_einval(rt, &p.base, sizeof(struct weft_future) - 1);
    expect_einval(rt, &p.base, ((size_t)1 << 20) + 1);
    cr_assert_eq(atomic_load(&ca.allocs), allocs, "a failed spawn allocated");
    cr_assert_eq(atomic_load(&c.polls), 0);
    cr_assert_eq(atomic_load(&c.drops), 0);

    /* Out of memory: fails without side effects, then works again. */
    struct weft_join j;
    memset(&j, 0xab, sizeof j);
    atomic_store(&ca.fail, 1);
    cr_assert_eq(weft_spawn(rt, &p.base, sizeof p, &j), -ENOMEM);
    atomic_store(&ca.fail, 0);
    cr_assert_null(j.base.ops);
    cr_assert_eq(atomic_load(&c.polls) + atomic_load(&c.drops), 0);
    cr_assert_eq(weft_spawn(rt, &p.base, sizeof p, &j), 0);
    cr_assert_eq(join_wait(&j), 0);
    weft_future_drop(&j.base);
    cr_assert_eq(atomic_load(&c.drops), 1);
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
    cr_assert_eq(out[sizeof *big], 0x5a);
    cr_assert_eq(out[max - 1], 0x5a, "the whole future is copied");
    weft_future_drop(&j.base);

    /* The smallest future: just the head, with a poll that needs no state. */
    static const struct weft_future_ops bare_ops = { .poll = NULL };
    struct weft_future bare = { &bare_ops, 0 };
    expect_einval(rt, &bare, sizeof bare);
    struct weft_yield_now y;
    weft_yield_now_init(&y);
    cr_assert_eq(weft_spawn(rt, &y.base, sizeof y, &j), 0);
    cr_assert_eq(join_wait(&j), 0);
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&c.drops), 1);
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
    cr_assert_eq(y.base.resume, 0, "a failed block_on polled");
    cr_assert_eq(weft_block_on(rt, &y.base), 0, "yield_now under block_on");

    spawn_probe(rt, &c, step_block_on, &j);
    cr_assert_eq(join_wait(&j), 0);
    cr_assert_eq(c.rc, -EDEADLK, "block_on on a worker returned %d", c.rc);
    weft_future_drop(&j.base);

    weft_join_abort(NULL);
    weft_join_detach(NULL);
    cr_assert_null(weft_join_output(NULL));
    weft_runtime_destroy(rt);
}
