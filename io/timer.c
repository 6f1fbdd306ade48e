/* timer.c: per-worker timers (a binary min-heap of slots) and the time futures.
 *
 * A sleep that is not due at its first poll takes a slot of the polling
 * worker and enters that worker's heap; the worker fires it from its turn or
 * its park, whose io_uring_enter times out at the heap's minimum. Deadlines
 * are exact nanoseconds, so a timer never fires early and is late only by the
 * park's wakeup latency (no wheel granularity), as long as no long poll holds
 * its worker: only the owner fires its heap (docs/io.md). Each heap entry keeps the
 * deadline beside the slot pointer, so sifting touches only the array.
 * Rejected: one io_uring timeout SQE per timer (a kernel hrtimer and a CQE
 * each, and a cancel SQE per early drop: the common case for timeouts) and a
 * hashed wheel (O(1) insert, but a granularity that costs the oversleep target
 * or a cascade of levels). A heap insert is O(log n); for 1M timers that is
 * about 20 levels of one 16-byte array. */
#include <errno.h>
#include <string.h>

#include "io.h"
#include "../runtime/internal.h"

static void heap_set(struct weft__io *io, uint32_t i, struct timer_ent e)
{
    io->heap[i] = e;
    e.op->heap_idx = i;
}

static void sift_up(struct weft__io *io, uint32_t i, struct timer_ent e)
{
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (io->heap[parent].deadline <= e.deadline)
            break;
        heap_set(io, i, io->heap[parent]);
        i = parent;
    }
    heap_set(io, i, e);
}

static void sift_down(struct weft__io *io, uint32_t i, struct timer_ent e)
{
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= io->nheap)
            break;
        if (c + 1 < io->nheap && io->heap[c + 1].deadline < io->heap[c].deadline)
            c++;
        if (e.deadline <= io->heap[c].deadline)
            break;
        heap_set(io, i, io->heap[c]);
        i = c;
    }
    heap_set(io, i, e);
}

static bool heap_grow(struct weft__io *io)
{
    if (io->heap_cap > UINT32_MAX / 2)
        return false; /* 2^31 timers on one worker: the index would wrap */
    uint32_t cap = io->heap_cap ? io->heap_cap * 2 : 64;
    struct timer_ent *h = rt_alloc(io->rt, cap * sizeof(*h));
    if (!h)
        return false;
    if (io->heap) {
        memcpy(h, io->heap, io->nheap * sizeof(*h));
        rt_free(io->rt, io->heap, io->heap_cap * sizeof(*h));
    }
    io->heap = h;
    io->heap_cap = cap;
    return true;
}

/* Returns false (nothing inserted) when the heap cannot grow. */
static bool timer_insert(struct weft__io *io, struct weft__op *op)
{
    if (io->nheap == io->heap_cap && !heap_grow(io))
        return false;
    io->inflight++;
    sift_up(io, io->nheap++, (struct timer_ent){ op->deadline, op });
    return true;
}

/* Puts `e` at index i and moves it whichever way its deadline says. */
static void heap_fix(struct weft__io *io, uint32_t i, struct timer_ent e)
{
    if (i > 0 && e.deadline < io->heap[(i - 1) / 2].deadline)
        sift_up(io, i, e);
    else
        sift_down(io, i, e);
}

void weft__timer_remove(struct weft__io *io, struct weft__op *op)
{
    uint32_t i = op->heap_idx;
    struct timer_ent last = io->heap[--io->nheap];
    if (i != io->nheap)
        heap_fix(io, i, last); /* the last entry takes the hole */
}

uint64_t weft__timers_run(struct weft__io *io)
{
    uint64_t now = weft_now_ns();
    while (io->nheap && io->heap[0].deadline <= now) {
        struct weft__op *op = io->heap[0].op;
        weft__timer_remove(io, op);
        weft__op_complete(io, op, 0, 0);
    }
    return io->nheap ? io->heap[0].deadline : UINT64_MAX;
}

/* ---- sleep ------------------------------------------------------------------ */

/* a + b, or UINT64_MAX (never) when that overflows. */
static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return b > UINT64_MAX - a ? UINT64_MAX : a + b;
}

static enum weft_poll sleep_step(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_sleep *s = (struct weft_sleep *)f;
    if (!s->op) {
        if (weft_now_ns() >= s->deadline_ns) {
            s->result = 0;
            return WEFT_READY;
        }
        int err = weft__op_start(cx, &s->op, OP_TIMER);
        if (!err) {
            s->op->deadline = s->deadline_ns;
            if (timer_insert(s->op->io, s->op))
                return WEFT_PENDING;
            /* Never in the heap (it could not grow): ours to free at once. */
            awaker_unregister(&s->op->waker);
            weft__op_free(s->op->io, s->op);
            s->op = NULL;
            err = -ENOMEM;
        }
        s->result = err;
        return WEFT_READY;
    }
    if (!weft__op_ready(s->op, cx->waker))
        return WEFT_PENDING;
    s->result = s->op->res; /* 0: due (-ECANCELED from a shutdown's cancel-all) */
    weft__op_release(s->op);
    s->op = NULL;
    return WEFT_READY;
}

static enum weft_poll sleep_poll(struct weft_future *f, struct weft_cx *cx)
{
    return weft__leaf_poll(f, cx, sleep_step);
}

static void sleep_drop(struct weft_future *f)
{
    weft__op_drop(&((struct weft_sleep *)f)->op);
}

static const struct weft_future_ops sleep_ops = { sleep_poll, sleep_drop };

void weft_sleep_until_init(struct weft_sleep *s, uint64_t deadline_ns)
{
    s->base.ops = &sleep_ops;
    s->base.resume = 0;
    s->result = 0;
    s->deadline_ns = deadline_ns;
    s->op = NULL;
}

void weft_sleep_init(struct weft_sleep *s, uint64_t duration_ns)
{
    weft_sleep_until_init(s, sat_add(weft_now_ns(), duration_ns));
}

int weft_sleep_reset(struct weft_sleep *s, uint64_t deadline_ns)
{
    if (!s)
        return -EINVAL;
    struct weft__op *op = s->op;
    /* Relaxed: on its owner nobody else moves a PENDING timer (the owner's
     * own turn fires it; a dropper is this future's holder, us). */
    if (op && op->io == weft__io_current() &&
        atomic_load_explicit(&op->state, memory_order_relaxed) == OPS_PENDING) {
        s->deadline_ns = op->deadline = deadline_ns;
        heap_fix(op->io, op->heap_idx, (struct timer_ent){ deadline_ns, op });
        return 0;
    }
    /* Fired, another worker's, or none: the next poll takes a new timer. */
    weft__op_drop(&s->op);
    weft_sleep_until_init(s, deadline_ns);
    return 0;
}

/* ---- interval --------------------------------------------------------------------- */

static enum weft_poll interval_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_interval *iv = (struct weft_interval *)f;
    if (iv->period_ns == 0) {
        iv->result = -EINVAL;
        return WEFT_READY;
    }
    if (weft_future_poll(&iv->sleep.base, cx) == WEFT_PENDING)
        return WEFT_PENDING;
    iv->result = iv->sleep.result;
    if (iv->result < 0)
        return WEFT_READY;
    iv->ticks++;
    /* The next tick is one period after this one; ticks already in the past
     * are skipped (counted), so a late task gets one tick, not a burst. */
    uint64_t next = sat_add(iv->sleep.deadline_ns, iv->period_ns), now = weft_now_ns();
    if (next <= now) {
        uint64_t skip = (now - next) / iv->period_ns + 1;
        iv->missed += skip;
        next = skip > (UINT64_MAX - next) / iv->period_ns ? UINT64_MAX : next + skip * iv->period_ns;
    }
    weft_sleep_until_init(&iv->sleep, next);
    return WEFT_READY;
}

static void interval_drop(struct weft_future *f)
{
    weft_future_drop(&((struct weft_interval *)f)->sleep.base);
}

static const struct weft_future_ops interval_ops = { interval_poll, interval_drop };

void weft_interval_init(struct weft_interval *iv, uint64_t period_ns)
{
    iv->base.ops = &interval_ops;
    iv->base.resume = 0;
    iv->result = 0;
    iv->period_ns = period_ns;
    iv->ticks = iv->missed = 0;
    weft_sleep_until_init(&iv->sleep, weft_now_ns());
}

int weft_interval_reset(struct weft_interval *iv)
{
    if (!iv)
        return -EINVAL;
    return weft_sleep_reset(&iv->sleep, sat_add(weft_now_ns(), iv->period_ns));
}

/* ---- timeout ----------------------------------------------------------------------- */

static enum weft_poll timeout_finish(struct weft_timeout *t, int result)
{
    t->result = result;
    t->base.resume = 1; /* polled again, it stays finished with this result */
    return WEFT_READY;
}

static enum weft_poll timeout_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_timeout *t = (struct weft_timeout *)f;
    if (t->base.resume)
        return WEFT_READY;
    if (!t->inner || t->inner == &t->base || !t->inner->ops || !t->inner->ops->poll)
        return timeout_finish(t, -EINVAL); /* around itself: it would recurse for good */
    bool had_budget = cx->budget > 0;
    if (weft_future_poll(t->inner, cx) == WEFT_READY) {
        weft_future_drop(&t->sleep.base);
        return timeout_finish(t, 0);
    }
    if (!t->sleep.base.ops)
        weft_sleep_init(&t->sleep, t->duration_ns);
    /* An inner future that spent the whole budget (a read loop on a socket
     * that always has data) would leave the sleep polled with none, pending
     * without a look at its deadline, at every poll: the timeout never
     * fired. The sleep gets one unit lent for its poll (Tokio's timeout polls
     * its delay unconstrained in that case), taken back after. */
    bool lend = had_budget && cx->budget == 0;
    if (lend)
        cx->budget = 1;
    enum weft_poll due = weft_future_poll(&t->sleep.base, cx);
    if (lend)
        cx->budget = 0;
    if (due == WEFT_PENDING)
        return WEFT_PENDING;
    if (t->sleep.result != 0)
        return timeout_finish(t, t->sleep.result); /* -ECANCELED: the runtime stops */
    weft_future_drop(t->inner); /* cancels its I/O */
    return timeout_finish(t, -ETIMEDOUT);
}

static void timeout_drop(struct weft_future *f)
{
    weft_future_drop(&((struct weft_timeout *)f)->sleep.base);
}

static const struct weft_future_ops timeout_ops = { timeout_poll, timeout_drop };

void weft_timeout_init(struct weft_timeout *t, struct weft_future *inner, uint64_t duration_ns)
{
    t->base.ops = &timeout_ops;
    t->base.resume = 0;
    t->result = 0;
    t->inner = inner;
    t->duration_ns = duration_ns;
    t->sleep.base.ops = NULL;
    t->sleep.op = NULL;
}
