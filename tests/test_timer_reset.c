/* tests/test_timer_reset.c: weft_sleep_reset (io/timer.c): a waiting timer
 * moved later and earlier in place, a finished sleep made pending again, a
 * reset from a thread that is no worker (the timer is let go and the next
 * poll takes a new one), a deadline moved into the past; an interval reset.
 * And what a waiting sleep costs the runtime: a short slot (io/io.h:
 * TIMER_SLOT) and a heap entry.
 *
 * Bad inputs tried: a NULL sleep and a NULL interval (-EINVAL); a reset of a
 * dropped sleep and of one never polled (both work as a fresh sleep until
 * that deadline). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>

#include <weft.h>

#include "common.h"

#define MS WEFT_NS_PER_MS
#define LATE_MAX (250 * MS) /* generous: shared CI machines, sanitizers */
#define HOUR (3600 * WEFT_NS_PER_SEC)

/* The case a task runs; a step of it may leave the task pending. */
enum kase { LATER, EARLIER, AFTER_FIRED, INTO_THE_PAST, FROM_A_THREAD };

struct rs {
    struct weft_future base;
    enum kase kase;
    struct weft_sleep s;
    struct weft_sleep above;          /* EARLIER: a timer above s in the heap (1 s) */
    uint64_t reset_at, want;          /* when the reset ran, the deadline it set */
    uint64_t woke;                    /* when the sleep was found ready */
    const struct weft__op *first_op;  /* the timer before the reset */
    bool in_place;                    /* the same timer after the reset */
    int rc, result;
    struct weft_waker waker;          /* FROM_A_THREAD: for the thread's wake */
};

static void reset_to(struct rs *r, uint64_t deadline)
{
    r->first_op = r->s.op;
    r->reset_at = weft_now_ns();
    r->want = deadline;
    r->rc = weft_sleep_reset(&r->s, deadline);
    r->in_place = r->first_op && r->s.op == r->first_op;
}

static _Atomic(struct rs *) live; /* FROM_A_THREAD: the task's copy */

/* Returns PENDING without a wake, to resume here when something wakes the
 * task: the sleep's timer, or the test thread. */
#define PARK(f)                      \
    do {                             \
        (f)->resume = __LINE__;      \
        return WEFT_PENDING;         \
    case __LINE__:;                  \
    } while (0)

static enum weft_poll rs_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct rs *r = (struct rs *)f;
    WEFT_ASYNC_BEGIN(f);
    weft_sleep_init(&r->s, r->kase == EARLIER || r->kase == FROM_A_THREAD ? HOUR : 20 * MS);
    if (r->kase == AFTER_FIRED) {
        WEFT_AWAIT(f, cx, &r->s);
        reset_to(r, weft_now_ns() + 30 * MS);
    } else if (r->kase == FROM_A_THREAD) {
        cr_assert_eq(weft_future_poll(&r->s.base, cx), WEFT_PENDING);
        r->waker = weft_waker_clone(cx->waker);
        atomic_store(&live, r); /* seq_cst: the sleep is the thread's from here */
        PARK(f);
    } else {
        if (r->kase == EARLIER) { /* first in the heap: s goes below it */
            weft_sleep_init(&r->above, WEFT_NS_PER_SEC);
            cr_assert_eq(weft_future_poll(&r->above.base, cx), WEFT_PENDING);
        }
        cr_assert_eq(weft_future_poll(&r->s.base, cx), WEFT_PENDING);
        uint64_t now = weft_now_ns();
        reset_to(r, r->kase == LATER     ? now + 80 * MS
                    : r->kase == EARLIER ? now + 20 * MS
                                         : now - 5 * MS);
    }
    WEFT_AWAIT(f, cx, &r->s); /* woken by the timer only */
    r->woke = weft_now_ns();
    r->result = r->s.result;
    WEFT_ASYNC_END(f);
}

static void rs_drop(struct weft_future *f)
{
    weft_future_drop(&((struct rs *)f)->s.base);
    weft_future_drop(&((struct rs *)f)->above.base);
}

static const struct weft_future_ops rs_ops = { rs_poll, rs_drop };

/* Runs case k in a task (FROM_A_THREAD: resets the sleep from this thread,
 * no worker, once the task waits, then wakes it) and checks that the sleep
 * ended at its new deadline, never before. */
static struct rs run_case(enum kase k)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct rs r = { .base = { &rs_ops, 0 }, .kase = k };
    struct weft_join j;
    atomic_store(&live, NULL);
    cr_assert_eq(weft_spawn(rt, &r.base, sizeof r, &j), 0);
    if (k == FROM_A_THREAD) {
        WAIT_UNTIL(atomic_load(&live));
        struct rs *task = atomic_load(&live);
        reset_to(task, weft_now_ns() + 30 * MS);
        weft_waker_wake(&task->waker);
    }
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    struct rs out = *(struct rs *)weft_join_output(&j);
    weft_future_drop(&j.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(out.rc, 0);
    cr_assert_eq(out.result, 0, "the sleep ended with %d", out.result);
    cr_assert_geq(out.woke, out.want, "woke %lld ns before the new deadline",
                  (long long)(out.want - out.woke));
    cr_assert_leq(out.woke, out.want + LATE_MAX, "woke %.1f ms after the new deadline",
                  (double)(out.woke - out.want) / MS);
    return out;
}

Test(timer_reset, a_waiting_timer_moved_later_waits_for_the_new_deadline, .timeout = 30)
{
    struct rs out = run_case(LATER);
    cr_assert(out.in_place, "the timer was not moved in place");
}

/* Moved from an hour to 20 ms while a 1 s timer sits above it in the heap:
 * it fires at 20 ms, not with that timer. */
Test(timer_reset, a_waiting_timer_moved_earlier_fires_then, .timeout = 30)
{
    struct rs out = run_case(EARLIER);
    cr_assert(out.in_place, "the timer was not moved in place");
}

Test(timer_reset, a_finished_sleep_is_pending_again, .timeout = 30)
{
    struct rs out = run_case(AFTER_FIRED);
    cr_assert_null(out.first_op, "a finished sleep kept its timer");
}

Test(timer_reset, a_deadline_moved_into_the_past_fires_at_once, .timeout = 30)
{
    struct rs out = run_case(INTO_THE_PAST);
    cr_assert(out.in_place);
    cr_assert_leq(out.woke, out.reset_at + LATE_MAX);
}

/* Off the timer's worker the timer is let go (its slot freed by its owner)
 * and the next poll takes a new one: the hour-long timer is gone. */
Test(timer_reset, a_reset_from_another_thread_takes_a_new_timer, .timeout = 30)
{
    struct rs out = run_case(FROM_A_THREAD);
    cr_assert_not(out.in_place, "a reset off the worker moved the timer in place");
}

Test(timer_reset, bad_inputs, .timeout = 30)
{
    cr_assert_eq(weft_sleep_reset(NULL, 0), -EINVAL);
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_sleep s;
    weft_sleep_init(&s, HOUR);
    uint64_t t0 = weft_now_ns();
    cr_assert_eq(weft_sleep_reset(&s, t0), 0); /* never polled: now due */
    cr_assert_eq(s.deadline_ns, t0);
    cr_assert_eq(weft_block_on(rt, &s.base), 0);
    cr_assert_eq(s.result, 0, "%d", s.result);
    weft_future_drop(&s.base);
    cr_assert_null(s.base.ops);
    uint64_t t1 = weft_now_ns();
    cr_assert_eq(weft_sleep_reset(&s, t1 + 10 * MS), 0); /* dropped: a fresh sleep */
    cr_assert_not_null(s.base.ops);
    cr_assert_eq(weft_block_on(rt, &s.base), 0); /* a task on the workers */
    cr_assert_eq(s.result, 0, "%d", s.result);
    cr_assert_geq(weft_now_ns(), t1 + 10 * MS, "the fresh sleep ended early");
    weft_future_drop(&s.base);
    weft_runtime_destroy(rt);
}

/* ---- weft_interval_reset ------------------------------------------------------------- */

struct ivr {
    struct weft_future base;
    struct weft_interval iv;
    struct weft_sleep s;
    uint64_t t_reset, t_tick;
    int rc;
};

/* Ticks (at once), waits 20 ms of a 40 ms period, resets: the next tick is
 * 40 ms after the reset, not 20. */
static enum weft_poll ivr_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct ivr *r = (struct ivr *)f;
    WEFT_ASYNC_BEGIN(f);
    weft_interval_init(&r->iv, 40 * MS);
    WEFT_AWAIT(f, cx, &r->iv);
    weft_sleep_init(&r->s, 20 * MS);
    WEFT_AWAIT(f, cx, &r->s);
    r->t_reset = weft_now_ns();
    r->rc = weft_interval_reset(&r->iv);
    WEFT_AWAIT(f, cx, &r->iv);
    r->t_tick = weft_now_ns();
    WEFT_ASYNC_END(f);
}

static void ivr_drop(struct weft_future *f)
{
    weft_future_drop(&((struct ivr *)f)->iv.base);
    weft_future_drop(&((struct ivr *)f)->s.base);
}

static const struct weft_future_ops ivr_ops = { ivr_poll, ivr_drop };

Test(timer_reset, an_interval_reset_ticks_a_period_after_it, .timeout = 30)
{
    cr_assert_eq(weft_interval_reset(NULL), -EINVAL);
    struct weft_runtime *rt = start_rt(2, NULL);
    struct ivr r = { .base = { &ivr_ops, 0 } };
    cr_assert_eq(weft_block_on(rt, &r.base), 0);
    weft_future_drop(&r.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(r.rc, 0);
    cr_assert_eq(r.iv.ticks, 2);
    cr_assert_geq(r.t_tick, r.t_reset + 40 * MS, "ticked %.1f ms after the reset",
                  (double)(r.t_tick - r.t_reset) / MS);
    cr_assert_leq(r.t_tick, r.t_reset + 40 * MS + LATE_MAX);
}

/* ---- what a waiting timer costs ---------------------------------------------------- */

#define NSLEEPS 1000

struct many {
    struct weft_future base;
    struct counting_alloc *ca;
    long before, after;
    struct weft_sleep s[NSLEEPS];
};

/* Starts NSLEEPS hour-long sleeps in one poll, measuring the runtime's
 * memory around it; then finishes (dropping them). */
static enum weft_poll many_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct many *m = (struct many *)f;
    m->before = atomic_load(&m->ca->bytes);
    for (int i = 0; i < NSLEEPS; i++) {
        weft_sleep_init(&m->s[i], HOUR);
        cr_assert_eq(weft_future_poll(&m->s[i].base, cx), WEFT_PENDING);
    }
    m->after = atomic_load(&m->ca->bytes);
    return WEFT_READY;
}

static void many_drop(struct weft_future *f)
{
    struct many *m = (struct many *)f;
    for (int i = 0; i < NSLEEPS; i++)
        weft_future_drop(&m->s[i].base);
}

static const struct weft_future_ops many_ops = { many_poll, many_drop };

/* 1000 waiting sleeps take four chunks of 256 short slots (88 bytes) and a
 * heap of 1024 entries (16 bytes): about 106 bytes each. Full 152-byte
 * slots would make it about 171. */
Test(timer_reset, a_waiting_sleep_takes_a_short_slot, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(1, &ca);
    static struct many m; /* 40 KB: spawn copies it into the task */
    m = (struct many){ .base = { &many_ops, 0 }, .ca = &ca };
    struct weft_join j;
    cr_assert_eq(weft_spawn(rt, &m.base, sizeof m, &j), 0);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    const struct many *out = weft_join_output(&j);
    cr_assert_not_null(out);
    double per = (double)(out->after - out->before) / NSLEEPS;
    weft_future_drop(&j.base);
    stop_rt(rt, &ca);
    cr_assert_gt(per, 88, "%.1f bytes per waiting sleep: less than its slot?", per);
    cr_assert_leq(per, 120, "%.1f bytes per waiting sleep (a short slot and a heap entry "
                  "make about 106)", per);
}
