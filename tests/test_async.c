/* tests/test_async.c: the async/await macros (weft/future.h) and the basic
 * combinators (runtime/combinators.c), polled by hand outside any runtime and
 * spawned on one.
 *
 * Bad inputs tried: weft_join_all_init with a NULL child, an empty child (NULL
 * ops), a child whose ops have no poll, a NULL array with n > 0, a NULL join-all, a child
 * listed twice among 8 and among 100 (all -EINVAL, leaving the
 * struct untouched); a NULL array with n == 0 is valid and ready at once; a
 * finished async future polled again; an async future dropped twice. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include <weft.h>

/* ---- a hand-made waker that counts wakes ------------------------------------ */

static _Atomic uint32_t wakes;

static void count_wake(const void *data)
{
    (void)data;
    atomic_fetch_add(&wakes, 1);
}

static void count_drop(const void *data)
{
    (void)data;
}

static struct weft_waker count_clone(const void *data);
static const struct weft_waker_ops count_ops = { count_clone, count_wake, count_wake, count_drop };

static struct weft_waker count_clone(const void *data)
{
    return (struct weft_waker){ data, &count_ops };
}

/* Polls `f` by hand until READY (at most `max` polls). Every PENDING must come
 * with a wake, since all the futures here wake themselves before pending.
 * Returns the number of polls. */
static uint32_t drive(struct weft_future *f, uint32_t max)
{
    struct weft_waker w = { &wakes, &count_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    for (uint32_t n = 1; n <= max; n++) {
        uint32_t before = atomic_load(&wakes);
        if (weft_future_poll(f, &cx) == WEFT_READY)
            return n;
        cr_assert_gt(atomic_load(&wakes), before, "PENDING without a wake at poll %u", n);
    }
    cr_assert_fail("not ready after %u polls", max);
    return 0;
}

static struct weft_runtime *start_rt(void)
{
    struct weft_runtime_config cfg;
    struct weft_runtime *rt = NULL;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    return rt;
}

/* Spawns `f` on a fresh runtime, joins it, and returns the finished copy in
 * `out` (size bytes); the task's future is dropped before returning. */
static void run_spawned(struct weft_future *f, size_t size, void *out)
{
    struct weft_runtime *rt = start_rt();
    struct weft_join j;
    cr_assert_eq(weft_spawn(rt, f, size, &j), 0);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    cr_assert_not_null(weft_join_output(&j));
    memcpy(out, weft_join_output(&j), size);
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
}

/* ---- a leaf: pending `left` times (waking itself), then ready with `value` - */

static _Atomic uint32_t leaf_drops[16];

struct leaf {
    struct weft_future base;
    uint32_t left, polls;
    int32_t value, out;
    uint32_t slot; /* its drop counter in leaf_drops */
};

static enum weft_poll leaf_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct leaf *l = (struct leaf *)f;
    l->polls++;
    if (l->left > 0) {
        l->left--;
        weft_waker_wake_by_ref(cx->waker);
        return WEFT_PENDING;
    }
    l->out = l->value;
    return WEFT_READY;
}

static void leaf_drop(struct weft_future *f)
{
    atomic_fetch_add(&leaf_drops[((struct leaf *)f)->slot], 1);
}

static const struct weft_future_ops leaf_ops = { leaf_poll, leaf_drop };

static void leaf_init(struct leaf *l, uint32_t left, int32_t value, uint32_t slot)
{
    *l = (struct leaf){ { &leaf_ops, 0 }, left, 0, value, 0, slot };
}

/* ---- sequential awaits ----------------------------------------------------------- */

struct seq {
    struct weft_future base;
    struct leaf a, b;
    int32_t sum;
    uint32_t polls;
};

static enum weft_poll seq_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct seq *s = (struct seq *)f;
    s->polls++;
    WEFT_ASYNC_BEGIN(f);
    leaf_init(&s->a, 2, 10, 0);
    WEFT_AWAIT(f, cx, &s->a);
    s->sum = s->a.out;
    weft_future_drop(&s->a.base);
    leaf_init(&s->b, 3, 32, 1);
    WEFT_AWAIT(f, cx, &s->b);
    s->sum += s->b.out;
    weft_future_drop(&s->b.base);
    WEFT_ASYNC_END(f);
}

/* Drops whatever children are still live; empty ones (never started, or
 * already dropped) are skipped by weft_future_drop. */
static void seq_drop(struct weft_future *f)
{
    struct seq *s = (struct seq *)f;
    weft_future_drop(&s->a.base);
    weft_future_drop(&s->b.base);
}

static const struct weft_future_ops seq_ops = { seq_poll, seq_drop };

static struct seq seq_new(void)
{
    return (struct seq){ .base = { &seq_ops, 0 } };
}

Test(async, sequential_awaits_by_hand, .timeout = 30)
{
    struct seq s = seq_new();

    cr_assert_eq(drive(&s.base, 100), 6, "2 + 3 pendings, then ready");
    cr_assert_eq(atomic_load(&wakes), 5);
    cr_assert_eq(s.sum, 42);
    cr_assert_eq(s.base.resume, -1);
    cr_assert_eq(atomic_load(&leaf_drops[0]), 1);
    cr_assert_eq(atomic_load(&leaf_drops[1]), 1);
    cr_assert_eq(drive(&s.base, 1), 1, "a finished coroutine stays ready");
    cr_assert_eq(s.sum, 42);
    weft_future_drop(&s.base);
    cr_assert_null(s.base.ops);
    weft_future_drop(&s.base);
    cr_assert_eq(atomic_load(&leaf_drops[0]) + atomic_load(&leaf_drops[1]), 2, "dropped twice");
}

Test(async, sequential_awaits_spawned, .timeout = 30)
{
    struct seq s = seq_new(), out;

    run_spawned(&s.base, sizeof s, &out);
    cr_assert_eq(out.sum, 42);
    cr_assert_eq(out.polls, 6);
    cr_assert_eq(atomic_load(&leaf_drops[0]), 1);
    cr_assert_eq(atomic_load(&leaf_drops[1]), 1);
}

/* Dropped mid-way: after one PENDING inside the first child, then inside the
 * second child (the first already finished and dropped). */
Test(async, dropped_midway_drops_live_children_once, .timeout = 30)
{
    struct weft_waker w = { &wakes, &count_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    struct seq s = seq_new();

    cr_assert_eq(weft_future_poll(&s.base, &cx), WEFT_PENDING);
    weft_future_drop(&s.base);
    cr_assert_eq(atomic_load(&leaf_drops[0]), 1, "the live child is dropped");
    cr_assert_eq(atomic_load(&leaf_drops[1]), 0, "a never-started child is not");
    weft_future_drop(&s.base);
    cr_assert_eq(atomic_load(&leaf_drops[0]), 1);

    s = seq_new();
    for (int i = 0; i < 4; i++) /* 3 polls finish a; the 4th pends in b */
        cr_assert_eq(weft_future_poll(&s.base, &cx), WEFT_PENDING);
    cr_assert_eq(s.sum, 10);
    cr_assert_eq(atomic_load(&leaf_drops[0]), 2);
    weft_future_drop(&s.base);
    weft_future_drop(&s.base);
    cr_assert_eq(atomic_load(&leaf_drops[0]), 2, "a finished child is dropped once");
    cr_assert_eq(atomic_load(&leaf_drops[1]), 1);
}

/* ---- loops with awaits and yields ---------------------------------------------------- */

struct loop {
    struct weft_future base;
    uint32_t i, n, polls;
    int64_t acc;
    struct leaf l;
};

static enum weft_poll loop_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct loop *s = (struct loop *)f;
    s->polls++;
    WEFT_ASYNC_BEGIN(f);
    for (s->i = 0; s->i < s->n; s->i++) {
        leaf_init(&s->l, s->i % 3, (int32_t)s->i, 2);
        WEFT_AWAIT(f, cx, &s->l);
        s->acc += s->l.out;
        weft_future_drop(&s->l.base);
        WEFT_YIELD(f, cx);
    }
    WEFT_ASYNC_END(f);
}

static void loop_drop(struct weft_future *f)
{
    weft_future_drop(&((struct loop *)f)->l.base);
}

static const struct weft_future_ops loop_ops = { loop_poll, loop_drop };

/* 100 rounds: the leaf pends i % 3 times (99 in all), then one yield each. */
#define LOOP_N 100
#define LOOP_PENDINGS (99 + LOOP_N)

Test(async, loop_with_awaits_by_hand, .timeout = 30)
{
    struct loop s = { .base = { &loop_ops, 0 }, .n = LOOP_N };

    cr_assert_eq(drive(&s.base, 1000), LOOP_PENDINGS + 1);
    cr_assert_eq(atomic_load(&wakes), LOOP_PENDINGS);
    cr_assert_eq(s.acc, LOOP_N * (LOOP_N - 1) / 2);
    cr_assert_eq(atomic_load(&leaf_drops[2]), LOOP_N);
    weft_future_drop(&s.base);
    cr_assert_eq(atomic_load(&leaf_drops[2]), LOOP_N);
}

Test(async, loop_with_awaits_spawned, .timeout = 30)
{
    struct loop s = { .base = { &loop_ops, 0 }, .n = LOOP_N }, out;

    run_spawned(&s.base, sizeof s, &out);
    cr_assert_eq(out.acc, LOOP_N * (LOOP_N - 1) / 2);
    cr_assert_eq(out.polls, LOOP_PENDINGS + 1);
    cr_assert_eq(atomic_load(&leaf_drops[2]), LOOP_N);
}

Test(async, zero_iterations_ready_at_once, .timeout = 30)
{
    struct loop s = { .base = { &loop_ops, 0 }, .n = 0 };

    cr_assert_eq(drive(&s.base, 1), 1);
    cr_assert_eq(atomic_load(&wakes), 0);
    weft_future_drop(&s.base);
    cr_assert_eq(atomic_load(&leaf_drops[2]), 0, "a never-started child is not dropped");
}

/* ---- early return ------------------------------------------------------------------------ */

struct early {
    struct weft_future base;
    int32_t limit, result;
    bool reached_end;
    struct leaf l;
};

static enum weft_poll early_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct early *s = (struct early *)f;
    WEFT_ASYNC_BEGIN(f);
    leaf_init(&s->l, 1, 7, 3);
    WEFT_AWAIT(f, cx, &s->l);
    weft_future_drop(&s->l.base);
    if (s->l.out < s->limit) {
        s->result = -1;
        WEFT_RETURN(f);
    }
    WEFT_YIELD(f, cx);
    s->result = 1;
    s->reached_end = true;
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops early_ops = { early_poll, NULL };

Test(async, early_return, .timeout = 30)
{
    struct early s = { .base = { &early_ops, 0 }, .limit = 100 };

    cr_assert_eq(drive(&s.base, 10), 2);
    cr_assert_eq(s.result, -1);
    cr_assert_not(s.reached_end);
    cr_assert_eq(s.base.resume, -1);
    cr_assert_eq(drive(&s.base, 1), 1, "ready from then on");
    cr_assert_not(s.reached_end);

    s = (struct early){ .base = { &early_ops, 0 }, .limit = 0 };
    cr_assert_eq(drive(&s.base, 10), 3, "no early return: one more yield");
    cr_assert_eq(s.result, 1);
    cr_assert(s.reached_end);
    weft_future_drop(&s.base); /* ops without drop: harmless */
    cr_assert_eq(atomic_load(&leaf_drops[3]), 2);

    struct early out;
    s = (struct early){ .base = { &early_ops, 0 }, .limit = 100 };
    run_spawned(&s.base, sizeof s, &out);
    cr_assert_eq(out.result, -1);
    cr_assert_not(out.reached_end);
}

/* ---- join_all ---------------------------------------------------------------------------- */

#define KIDS 8

/* Child i pends i % 3 times, so a third are ready at the first poll. */
static void kids_init(struct leaf *kids, struct weft_future **ptrs)
{
    for (uint32_t i = 0; i < KIDS; i++) {
        leaf_init(&kids[i], i % 3, (int32_t)(100 + i), 4);
        ptrs[i] = &kids[i].base;
    }
}

Test(async, join_all_by_hand, .timeout = 30)
{
    struct weft_waker w = { &wakes, &count_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    struct leaf kids[KIDS];
    struct weft_future *ptrs[KIDS];
    struct weft_join_all ja;

    kids_init(kids, ptrs);
    cr_assert_eq(weft_join_all_init(&ja, ptrs, KIDS), 0);
    cr_assert_eq(weft_future_poll(&ja.base, &cx), WEFT_PENDING);
    for (uint32_t i = 0; i < KIDS; i++)
        cr_assert_eq(ptrs[i] == NULL, i % 3 == 0, "child %u", i);
    cr_assert_eq(ja.remaining, KIDS - 3);
    cr_assert_eq(drive(&ja.base, 10), 2, "the slowest child pends twice");
    cr_assert_eq(ja.remaining, 0);
    for (uint32_t i = 0; i < KIDS; i++) {
        cr_assert_null(ptrs[i]);
        cr_assert_eq(kids[i].polls, i % 3 + 1, "child %u polled after it was ready", i);
        cr_assert_eq(kids[i].out, (int32_t)(100 + i));
        weft_future_drop(&kids[i].base);
    }
    cr_assert_eq(atomic_load(&leaf_drops[4]), KIDS);
}

/* A parent awaiting a join-all of its own fields: the pointers are set up in
 * the first poll, after spawn has copied the parent to its final address. */
struct fan_out {
    struct weft_future base;
    struct leaf kids[KIDS];
    struct weft_future *ptrs[KIDS];
    struct weft_join_all ja;
    int32_t sum;
};

static enum weft_poll fan_out_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct fan_out *s = (struct fan_out *)f;
    WEFT_ASYNC_BEGIN(f);
    kids_init(s->kids, s->ptrs);
    if (weft_join_all_init(&s->ja, s->ptrs, KIDS) != 0)
        WEFT_RETURN(f);
    WEFT_AWAIT(f, cx, &s->ja);
    for (int i = 0; i < KIDS; i++)
        s->sum += s->kids[i].out;
    WEFT_ASYNC_END(f);
}

static void fan_out_drop(struct weft_future *f)
{
    for (int i = 0; i < KIDS; i++)
        weft_future_drop(&((struct fan_out *)f)->kids[i].base);
}

static const struct weft_future_ops fan_out_ops = { fan_out_poll, fan_out_drop };

Test(async, join_all_spawned, .timeout = 30)
{
    static struct fan_out s = { .base = { &fan_out_ops, 0 } }, out;

    run_spawned(&s.base, sizeof s, &out);
    cr_assert_eq(out.sum, KIDS * 100 + KIDS * (KIDS - 1) / 2);
    cr_assert_eq(atomic_load(&leaf_drops[4]), KIDS);
}

Test(async, join_all_bad_input, .timeout = 30)
{
    struct leaf kids[KIDS];
    struct weft_future *ptrs[KIDS];
    struct weft_future empty = { NULL, 0 };
    struct weft_join_all ja, sentinel;

    memset(&sentinel, 0x5c, sizeof sentinel);
    kids_init(kids, ptrs);
    ptrs[3] = NULL;
    ja = sentinel;
    cr_assert_eq(weft_join_all_init(&ja, ptrs, KIDS), -EINVAL, "NULL child");
    cr_assert_eq(memcmp(&ja, &sentinel, sizeof ja), 0, "a failed init wrote the struct");
    ptrs[3] = &empty;
    cr_assert_eq(weft_join_all_init(&ja, ptrs, KIDS), -EINVAL, "empty child");
    static const struct weft_future_ops no_poll = { NULL, NULL };
    struct weft_future pollless = { &no_poll, 0 };
    ptrs[3] = &pollless;
    cr_assert_eq(weft_join_all_init(&ja, ptrs, KIDS), -EINVAL, "a child without poll");
    cr_assert_eq(weft_join_all_init(&ja, NULL, 1), -EINVAL, "NULL array");
    cr_assert_eq(weft_join_all_init(NULL, ptrs, 1), -EINVAL, "NULL join-all");
    cr_assert_eq(memcmp(&ja, &sentinel, sizeof ja), 0);
    /* A child listed twice (it would be polled again once ready), among a
     * few (compared pairwise) and among many (a sorted copy). */
    kids_init(kids, ptrs);
    ptrs[3] = ptrs[1];
    cr_assert_eq(weft_join_all_init(&ja, ptrs, KIDS), -EINVAL, "a child listed twice");
    enum { MANY = 100 };
    struct weft_future *many[MANY];
    for (int i = 0; i < MANY; i++)
        many[i] = ptrs[i % KIDS];
    cr_assert_eq(weft_join_all_init(&ja, many, MANY), -EINVAL, "children listed %d times",
                 MANY / KIDS);
    cr_assert_eq(memcmp(&ja, &sentinel, sizeof ja), 0);
    static struct leaf distinct[MANY];
    for (int i = 0; i < MANY; i++) {
        leaf_init(&distinct[i], 0, i, 4);
        many[i] = &distinct[i].base;
    }
    cr_assert_eq(weft_join_all_init(&ja, many, MANY), 0, "100 distinct children");
    for (int i = 0; i < MANY; i++)
        cr_assert_eq(many[i], &distinct[i].base, "the caller's order was changed");

    cr_assert_eq(weft_join_all_init(&ja, NULL, 0), 0, "nothing to wait for");
    cr_assert_eq(drive(&ja.base, 1), 1);
    for (int i = 0; i < KIDS; i++)
        cr_assert_eq(kids[i].polls, 0, "a failed join-all polled a child");
}

/* ---- awaiting join handles inside a task ------------------------------------------------ */

/* Pending forever without a wake: finishes only by abort. */
static enum weft_poll never_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    return WEFT_PENDING;
}

static const struct weft_future_ops never_ops = { never_poll, leaf_drop };

struct awaiter {
    struct weft_future base;
    struct weft_join ok, aborted;
    int32_t res_ok, res_aborted, out;
};

/* Spawns two children from its own worker and awaits their handles: one
 * finishes (its output is read), the other is aborted. */
static enum weft_poll awaiter_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct awaiter *s = (struct awaiter *)f;
    WEFT_ASYNC_BEGIN(f);
    struct leaf child;
    leaf_init(&child, 3, 77, 5);
    if (weft_spawn(weft_runtime_current(), &child.base, sizeof child, &s->ok) != 0)
        WEFT_RETURN(f);
    WEFT_AWAIT(f, cx, &s->ok);
    s->res_ok = s->ok.res;
    s->out = ((struct leaf *)weft_join_output(&s->ok))->out;
    weft_future_drop(&s->ok.base);
    struct leaf stuck = { { &never_ops, 0 }, 0, 0, 0, 0, 6 };
    if (weft_spawn(weft_runtime_current(), &stuck.base, sizeof stuck, &s->aborted) != 0)
        WEFT_RETURN(f);
    weft_join_abort(&s->aborted);
    WEFT_AWAIT(f, cx, &s->aborted);
    s->res_aborted = s->aborted.res;
    WEFT_ASYNC_END(f);
}

static void awaiter_drop(struct weft_future *f)
{
    weft_future_drop(&((struct awaiter *)f)->ok.base);
    weft_future_drop(&((struct awaiter *)f)->aborted.base);
}

static const struct weft_future_ops awaiter_ops = { awaiter_poll, awaiter_drop };

Test(async, await_join_handles_in_task, .timeout = 30)
{
    struct awaiter s = { .base = { &awaiter_ops, 0 }, .res_ok = 1, .res_aborted = 1 }, out;

    run_spawned(&s.base, sizeof s, &out);
    cr_assert_eq(out.res_ok, 0);
    cr_assert_eq(out.out, 77);
    cr_assert_eq(out.res_aborted, -ECANCELED);
    cr_assert_eq(atomic_load(&leaf_drops[5]), 1);
    cr_assert_eq(atomic_load(&leaf_drops[6]), 1, "the aborted child is dropped");
}

/* ---- the cooperative budget against the combinators ------------------------------------- */

/* A loop of sleeps that are already due: each is ready at once and spends a
 * unit of the budget, so every poll of it ends with the budget spent (a
 * read loop on a socket that always has data). It finishes at `until_ns`,
 * or once *watch is NULL (a join-all sibling it waits for is ready). */
struct hog {
    struct weft_future base;
    struct weft_sleep s;
    uint64_t until_ns;
    struct weft_future *const *watch;
    uint64_t seen_ns; /* when it saw *watch go NULL, or 0 */
};

static enum weft_poll hog_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct hog *h = (struct hog *)f;
    WEFT_ASYNC_BEGIN(f);
    while (weft_now_ns() < h->until_ns) {
        if (h->watch && !*h->watch) {
            h->seen_ns = weft_now_ns();
            break;
        }
        weft_sleep_until_init(&h->s, 0);
        WEFT_AWAIT(f, cx, &h->s);
        weft_future_drop(&h->s.base);
    }
    WEFT_ASYNC_END(f);
}

static void hog_drop(struct weft_future *f)
{
    weft_future_drop(&((struct hog *)f)->s.base);
}

static const struct weft_future_ops hog_ops = { hog_poll, hog_drop };

static void hog_init(struct hog *h, uint64_t for_ns, struct weft_future *const *watch)
{
    *h = (struct hog){ .base = { &hog_ops, 0 }, .until_ns = weft_now_ns() + for_ns,
                       .watch = watch };
}

#define MS WEFT_NS_PER_MS

/* A 20 ms timeout around a hog of 1 s. The timeout's sleep used to be polled
 * after the hog had spent the budget, so it pended without looking at its
 * deadline: the hog ran its whole second and the result was 0. */
struct hog_timeout {
    struct weft_future base;
    struct hog hog;
    struct weft_timeout to;
    uint64_t t0, took;
};

static enum weft_poll hog_timeout_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct hog_timeout *s = (struct hog_timeout *)f;
    WEFT_ASYNC_BEGIN(f);
    s->t0 = weft_now_ns();
    hog_init(&s->hog, 1000 * MS, NULL);
    weft_timeout_init(&s->to, &s->hog.base, 20 * MS);
    WEFT_AWAIT(f, cx, &s->to);
    s->took = weft_now_ns() - s->t0;
    WEFT_ASYNC_END(f);
}

static void hog_timeout_drop(struct weft_future *f)
{
    weft_future_drop(&((struct hog_timeout *)f)->to.base);
    weft_future_drop(&((struct hog_timeout *)f)->hog.base);
}

static const struct weft_future_ops hog_timeout_ops = { hog_timeout_poll, hog_timeout_drop };

Test(async, a_timeout_fires_around_a_future_that_spends_the_budget, .timeout = 30)
{
    struct hog_timeout s = { .base = { &hog_timeout_ops, 0 } }, out;

    run_spawned(&s.base, sizeof s, &out);
    cr_assert_eq(out.to.result, -ETIMEDOUT, "result %d after %.1f ms", out.to.result,
                 out.took / 1e6);
    cr_assert_lt(out.took, 500 * MS, "timed out after %.1f ms", out.took / 1e6);
}

/* A join-all of a hog (up to 1 s, ending once its sibling is ready) and a
 * 10 ms sleep. The join-all polled its children from the first on every
 * poll, so the sleep always came after the hog had spent the budget and was
 * never looked at: it was ready only when the hog gave up, 1 s later. */
struct hog_join {
    struct weft_future base;
    struct hog hog;
    struct weft_sleep s;
    struct weft_future *ptrs[2];
    struct weft_join_all ja;
    uint64_t t0;
};

static enum weft_poll hog_join_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct hog_join *s = (struct hog_join *)f;
    WEFT_ASYNC_BEGIN(f);
    s->t0 = weft_now_ns();
    hog_init(&s->hog, 1000 * MS, &s->ptrs[1]);
    weft_sleep_init(&s->s, 10 * MS);
    s->ptrs[0] = &s->hog.base;
    s->ptrs[1] = &s->s.base;
    if (weft_join_all_init(&s->ja, s->ptrs, 2) != 0)
        WEFT_RETURN(f);
    WEFT_AWAIT(f, cx, &s->ja);
    WEFT_ASYNC_END(f);
}

static void hog_join_drop(struct weft_future *f)
{
    weft_future_drop(&((struct hog_join *)f)->hog.base);
    weft_future_drop(&((struct hog_join *)f)->s.base);
}

static const struct weft_future_ops hog_join_ops = { hog_join_poll, hog_join_drop };

Test(async, a_join_all_child_that_spends_the_budget_does_not_starve_the_rest, .timeout = 30)
{
    struct hog_join s = { .base = { &hog_join_ops, 0 } }, out;

    run_spawned(&s.base, sizeof s, &out);
    cr_assert_eq(out.s.result, 0);
    cr_assert_neq(out.hog.seen_ns, 0, "the 10 ms sleep was ready only after the 1 s hog");
    cr_assert_lt(out.hog.seen_ns - out.t0, 500 * MS, "the sleep was ready after %.1f ms",
                 (out.hog.seen_ns - out.t0) / 1e6);
}

/* ---- yield_now ---------------------------------------------------------------------------- */

Test(async, yield_now_by_hand, .timeout = 30)
{
    struct weft_yield_now y;

    weft_yield_now_init(&y);
    cr_assert_eq(drive(&y.base, 10), 2, "ready on its second poll");
    cr_assert_eq(atomic_load(&wakes), 1);
    weft_future_drop(&y.base);
    cr_assert_null(y.base.ops);
}
