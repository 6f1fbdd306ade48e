/* task.c: the task state machine, its waker, spawning and join handles.
 *
 * One allocation per task: the header (struct weft_task) with the future
 * copied inline after it. All coordination goes through the one atomic state
 * word (flags + reference count, see internal.h):
 *
 *   idle ──wake──▶ notified ──worker takes it──▶ running ──READY──▶ complete
 *     ▲                                            │  (a wake while running sets
 *     └────────────── PENDING, not notified ───────┘   NOTIFIED: requeued once)
 *
 * Every transition is a CAS or RMW with acq_rel order: the release publishes
 * the future's memory written by one poller, the acquire makes it visible to
 * the next (possibly on another worker), and the same pairing publishes
 * `result` and the output fields to whoever sees COMPLETE. Reference count
 * increments are relaxed (the caller already holds a reference, so the count
 * cannot be zero); decrements are acq_rel so that the thread freeing the task
 * sees every other thread's last use of it. */
#include <assert.h>
#include <errno.h>
#include <string.h>

#include "internal.h"

#define REF_MASK (~(TASK_REF_ONE - 1))
#define MAX_FUTURE_SIZE (1u << 20)

static_assert(offsetof(struct weft_task, future) == 96, "the task header grew (internal.h)");

static inline uint64_t refs(uint64_t s)
{
    return s >> 6;
}

static void task_dealloc(struct weft_task *t)
{
    struct weft_runtime *rt = t->rt;
    rt_free(rt, t, t->alloc_size);
    weft__runtime_task_free(rt);
}

static inline void ref_inc(struct weft_task *t)
{
    atomic_fetch_add_explicit(&t->state, TASK_REF_ONE, memory_order_relaxed);
}

static inline void ref_dec_n(struct weft_task *t, uint64_t n)
{
    /* Release: our uses of the task happen before its free. Acquire (on the
     * last one): the freeing thread sees every other thread's uses. */
    uint64_t prev = atomic_fetch_sub_explicit(&t->state, n * TASK_REF_ONE, memory_order_acq_rel);
    assert(refs(prev) >= n);
    if (refs(prev) == n)
        task_dealloc(t);
}

static inline void ref_dec(struct weft_task *t)
{
    ref_dec_n(t, 1);
}

/* ---- completion ------------------------------------------------------------ */

/* Marks a running task complete: drops its future (as Rust drops a future the
 * moment it is ready; the output fields stay readable for the joiner), then
 * publishes the result and wakes the joiner. Consumes the poller's reference
 * and the unfinished one. */
static void complete(struct weft_task *t, int32_t result)
{
    weft_future_drop(task_future(t));
    t->result = result;
    /* Acq_rel: publishes result and the output fields to the joiner, which
     * reads them after an acquire load that sees COMPLETE. */
    uint64_t prev = atomic_fetch_xor_explicit(&t->state, TASK_RUNNING | TASK_COMPLETE,
                                              memory_order_acq_rel);
    assert((prev & TASK_RUNNING) && !(prev & TASK_COMPLETE));
    if ((prev & TASK_JOIN_INTEREST) && (prev & TASK_JOIN_WAKER)) {
        /* The task side owns join_waker while JOIN_WAKER is set. */
        weft_waker_wake_by_ref(&t->join_waker);
        uint64_t s = atomic_fetch_and_explicit(&t->state, ~TASK_JOIN_WAKER, memory_order_acq_rel);
        if (!(s & TASK_JOIN_INTEREST))
            weft_waker_drop(&t->join_waker); /* the handle went away meanwhile */
    }
    if (t->owned)
        weft__owned_remove(t->rt, t);
    ref_dec_n(t, 2);
}

/* ---- polling ------------------------------------------------------------- */

static const struct weft_waker_ops task_waker_ops;

enum run_start { START_POLL, START_CANCEL, START_SKIP };

static enum run_start transition_to_running(struct weft_task *t)
{
    uint64_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    for (;;) {
        assert(s & TASK_NOTIFIED);
        if (s & (TASK_RUNNING | TASK_COMPLETE))
            return START_SKIP; /* finished by shutdown while queued */
        uint64_t next = (s | TASK_RUNNING) & ~TASK_NOTIFIED;
        /* Acquire: see the future as the previous poller left it. */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return (s & TASK_CANCELLED) ? START_CANCEL : START_POLL;
    }
}

/* After a PENDING poll. Returns true when the task was woken during the poll
 * (by another thread, or by itself: `self_woken`): the poller's reference then
 * becomes the queue's. */
static bool transition_to_idle(struct weft_task *t, bool self_woken, bool *cancelled)
{
    /* A self-wake is the NOTIFIED that waker_wake_by_ref skipped setting. */
    const uint64_t self = self_woken ? TASK_NOTIFIED : 0;
    uint64_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    for (;;) {
        assert(s & TASK_RUNNING);
        if (s & TASK_CANCELLED) {
            *cancelled = true;
            return false;
        }
        bool notified = (s | self) & TASK_NOTIFIED;
        uint64_t next = (s | self) & ~TASK_RUNNING;
        if (!notified)
            next -= TASK_REF_ONE;
        /* Release: the next poller (after a wake) sees what this poll wrote. */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, next, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            assert(refs(next) > 0); /* the unfinished reference is still there */
            return notified;
        }
    }
}

void weft__task_run(struct weft_task *t, struct weft__worker *w)
{
    switch (transition_to_running(t)) {
    case START_SKIP:
        ref_dec(t);
        return;
    case START_CANCEL:
        complete(t, -ECANCELED);
        return;
    case START_POLL:
        break;
    }
    struct weft_waker waker = { t, &task_waker_ops };
    struct weft_cx cx = { &waker, w, WEFT_COOP_BUDGET, false };
    w->running = t;
    w->self_woken = false;
    struct poll_timing pt = weft__poll_begin(w, t);
    enum weft_poll r = weft_future_poll(task_future(t), &cx);
    weft__poll_end(w, &pt, r == WEFT_PENDING && cx.budget_spent);
    w->running = NULL;
    if (r == WEFT_READY) {
        complete(t, 0);
        return;
    }
    /* The task may now sit idle, out of every queue: put it where shutdown
     * finds it. A runtime already shutting down cancels it instead. */
    if (!t->owned) {
        if (weft__owned_insert(t->rt, t, w->index) < 0) {
            complete(t, -ECANCELED);
            return;
        }
        t->owned = 1;
    }
    bool cancelled = false;
    if (transition_to_idle(t, w->self_woken, &cancelled))
        weft__schedule(t, true);
    else if (cancelled)
        complete(t, -ECANCELED);
}

void weft__task_ref(struct weft_task *t)
{
    ref_inc(t);
}

void weft__task_unref(struct weft_task *t)
{
    ref_dec(t);
}

/* Cancels a task at shutdown unless it finished or another thread is on it:
 * drops its future, completes it. Returns whether it did. */
static bool task_shutdown(struct weft_task *t)
{
    uint64_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    for (;;) {
        if (s & (TASK_RUNNING | TASK_COMPLETE))
            return false;
        uint64_t next = s | TASK_RUNNING | TASK_CANCELLED;
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, next + TASK_REF_ONE,
                                                  memory_order_acq_rel, memory_order_relaxed))
            break;
    }
    complete(t, -ECANCELED); /* consumes the reference taken above and the unfinished one */
    return true;
}

bool weft__task_drop_notified(struct weft_task *t)
{
    bool cancelled = task_shutdown(t);
    ref_dec(t);
    return cancelled;
}

/* ---- the task waker -------------------------------------------------------- */

/* Sets NOTIFIED. Returns true when the caller must schedule the task, having
 * provided the queue's reference (taken here when `by_ref`). */
static bool transition_to_notified(struct weft_task *t, bool by_ref)
{
    uint64_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    for (;;) {
        uint64_t next = s;
        bool submit = false;
        if (s & (TASK_COMPLETE | TASK_NOTIFIED)) {
            if (!by_ref)
                next -= TASK_REF_ONE; /* nothing to do: drop the waker's reference */
        } else if (s & TASK_RUNNING) {
            next |= TASK_NOTIFIED;    /* the poller requeues it after the poll */
            if (!by_ref)
                next -= TASK_REF_ONE; /* the poller's reference keeps it alive */
        } else {
            next |= TASK_NOTIFIED;
            if (by_ref)
                next += TASK_REF_ONE; /* the queue's reference */
            submit = true;            /* by value: the waker's becomes the queue's */
        }
        /* Release: what the waker wrote before waking is visible to the poll
         * that follows (which acquires in transition_to_running). */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, next, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            if (!by_ref && !submit && refs(next) == 0)
                task_dealloc(t);
            return submit;
        }
    }
}

static struct weft_waker waker_clone(const void *data)
{
    ref_inc((struct weft_task *)data);
    return (struct weft_waker){ data, &task_waker_ops };
}

static void waker_wake(const void *data)
{
    struct weft_task *t = (struct weft_task *)data;
    if (transition_to_notified(t, false))
        weft__schedule(t, false);
}

static void waker_wake_by_ref(const void *data)
{
    struct weft_task *t = (struct weft_task *)data;
    /* A task waking itself during its own poll (a yield, a spent budget): its
     * state is RUNNING, so the wake would only set NOTIFIED. Note it on the
     * worker instead; transition_to_idle folds it into its one CAS. */
    struct weft__worker *w = weft__current;
    if (w && w->running == t) {
        w->self_woken = true;
        return;
    }
    if (transition_to_notified(t, true))
        weft__schedule(t, false);
}

static void waker_drop(const void *data)
{
    ref_dec((struct weft_task *)data);
}

static const struct weft_waker_ops task_waker_ops = {
    .clone = waker_clone,
    .wake = waker_wake,
    .wake_by_ref = waker_wake_by_ref,
    .drop = waker_drop,
};

/* ---- abort ------------------------------------------------------------------ */

static void remote_abort(struct weft_task *t)
{
    uint64_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    for (;;) {
        if (s & (TASK_COMPLETE | TASK_CANCELLED))
            return;
        uint64_t next = s | TASK_CANCELLED | TASK_NOTIFIED;
        bool submit = !(s & (TASK_RUNNING | TASK_NOTIFIED));
        if (submit)
            next += TASK_REF_ONE;
        /* Release/acquire as for a wake. */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, next, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            if (submit)
                weft__schedule(t, false);
            return;
        }
    }
}

/* ---- spawning -------------------------------------------------------------- */

static const struct weft_future_ops join_ops;

int weft_spawn(struct weft_runtime *rt, const struct weft_future *f, size_t size,
               struct weft_join *join)
{
    return weft_spawn_named(rt, f, size, join, NULL);
}

int weft_spawn_named(struct weft_runtime *rt, const struct weft_future *f, size_t size,
                     struct weft_join *join, const char *name)
{
    if (join)
        *join = (struct weft_join){ 0 };
    if (!rt || !f || !f->ops || !f->ops->poll || size < sizeof(*f) || size > MAX_FUTURE_SIZE)
        return -EINVAL;
    /* Count the task before looking at the flag: if the spawn sees the runtime
     * open, the runtime's memory outlives it (runtime.c, weft__runtime_pin);
     * a task that then races with the shutdown is found in the closed global
     * queue and cancelled (sched.c). */
    if (!weft__runtime_pin(rt))
        return -ESHUTDOWN;
    size_t alloc_size = offsetof(struct weft_task, future) + size;
    struct weft_task *t = rt_alloc(rt, alloc_size);
    if (!t) {
        weft__runtime_task_free(rt);
        return -ENOMEM;
    }
    uint64_t nrefs = join ? 3 : 2; /* unfinished + queue (+ handle) */
    atomic_init(&t->state, TASK_NOTIFIED | (join ? TASK_JOIN_INTEREST : 0) | nrefs * TASK_REF_ONE);
    t->next = NULL;
    t->rt = rt;
    t->join_waker = (struct weft_waker){ 0 };
    t->alloc_size = (uint32_t)alloc_size;
    t->result = 0;
    t->name = name;
    t->sched_stamp = 0;
    atomic_init(&t->polled_ms, 0);
    memcpy(t->future, f, size);

    t->owned = 0;
    struct weft__worker *w = weft__current;
    /* Ids: the spawner in the low 9 bits (worker index + 1, up to 256; 0
     * for any other thread), its own count above, so no two repeat before
     * 2^55 spawns of one spawner. (The worker above a count of 2^40 used to
     * wrap into another worker's ids: a review's white-box repro, where the
     * task dump then left out a task stuck in its first poll.) */
    _Static_assert(WEFT_MAX_WORKERS < 512, "a worker's index + 1 fits the id's 9 low bits");
    if (w && w->rt == rt) {
        uint64_t n = atomic_load_explicit(&w->stats->spawns, memory_order_relaxed);
        stat_add(&w->stats->spawns, 1);
        t->id = (n << 9) | (w->index + 1);
    } else {
        t->id = (atomic_fetch_add_explicit(&rt->foreign_ids, 1, memory_order_relaxed) + 1) << 9;
    }
    if (join)
        *join = (struct weft_join){ .base = { &join_ops, 0 }, .task = t };
    weft__schedule(t, false);
    return 0;
}

/* ---- join handles --------------------------------------------------------------
 * The join waker protocol (Tokio's): the handle writes join_waker only while
 * JOIN_WAKER is clear, then sets JOIN_WAKER with a CAS that fails if the task
 * completed meanwhile. While JOIN_WAKER is set the task side owns the waker:
 * it wakes it at completion, then clears the bit. */

/* Publishes `waker` as the join waker; false if the task completed first. */
static bool set_join_waker(struct weft_task *t, const struct weft_waker *waker)
{
    t->join_waker = weft_waker_clone(waker);
    /* Acquire: if COMPLETE is seen, so are the result and output. */
    uint64_t s = atomic_load_explicit(&t->state, memory_order_acquire);
    for (;;) {
        assert((s & TASK_JOIN_INTEREST) && !(s & TASK_JOIN_WAKER));
        if (s & TASK_COMPLETE) {
            weft_waker_drop(&t->join_waker);
            return false;
        }
        /* Release: the completing worker sees join_waker written. */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, s | TASK_JOIN_WAKER,
                                                  memory_order_acq_rel, memory_order_acquire))
            return true;
    }
}

/* True when the output can be read; otherwise the handle's waker is registered. */
static bool can_read_output(struct weft_task *t, const struct weft_waker *waker)
{
    /* Acquire pairs with complete()'s release: result and output are visible. */
    uint64_t s = atomic_load_explicit(&t->state, memory_order_acquire);
    if (s & TASK_COMPLETE)
        return true;
    if (s & TASK_JOIN_WAKER) {
        if (weft_waker_will_wake(&t->join_waker, waker))
            return false;
        /* Take the waker back to replace it; fails if the task completed. */
        for (;;) {
            if (s & TASK_COMPLETE)
                return true;
            if (atomic_compare_exchange_weak_explicit(&t->state, &s, s & ~TASK_JOIN_WAKER,
                                                      memory_order_acq_rel, memory_order_acquire))
                break;
        }
        weft_waker_drop(&t->join_waker);
    }
    return !set_join_waker(t, waker);
}

static enum weft_poll join_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_join *j = (struct weft_join *)f;
    if (!j->task || j->joined) {
        j->res = -EINVAL; /* detached, or already joined once */
        return WEFT_READY;
    }
    /* One unit of the cooperative budget, as every leaf (and Tokio's
     * JoinHandle): a loop awaiting many finished handles still yields. */
    if (!weft_coop_take(cx))
        return WEFT_PENDING;
    if (!can_read_output(j->task, cx->waker)) {
        cx->budget++; /* no progress: give the unit back */
        return WEFT_PENDING;
    }
    j->joined = 1;
    j->res = j->task->result;
    return WEFT_READY;
}

/* Gives up the handle's interest and reference. */
static void drop_join_handle(struct weft_task *t)
{
    uint64_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
    uint64_t next;
    for (;;) {
        assert(s & TASK_JOIN_INTEREST);
        next = s & ~TASK_JOIN_INTEREST;
        if (!(s & TASK_COMPLETE))
            next &= ~TASK_JOIN_WAKER; /* take the waker back: we drop it below */
        /* Acq_rel: if COMPLETE with JOIN_WAKER clear, the completing worker
         * is done with join_waker (its fetch_and released it) and we drop it;
         * if JOIN_WAKER is still set, complete() sees JOIN_INTEREST gone and
         * drops the waker itself. */
        if (atomic_compare_exchange_weak_explicit(&t->state, &s, next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    if (!(next & TASK_JOIN_WAKER))
        weft_waker_drop(&t->join_waker);
    ref_dec(t);
}

static void join_drop(struct weft_future *f)
{
    struct weft_join *j = (struct weft_join *)f;
    if (j->task)
        drop_join_handle(j->task);
    j->task = NULL;
}

static const struct weft_future_ops join_ops = { join_poll, join_drop };

void *weft_join_output(const struct weft_join *join)
{
    if (!join || !join->task || !join->joined || join->task->result != 0)
        return NULL;
    return join->task->future;
}

void weft_join_detach(struct weft_join *join)
{
    if (join && join->task) {
        drop_join_handle(join->task);
        join->task = NULL;
    }
}

void weft_join_abort(const struct weft_join *join)
{
    if (join && join->task)
        remote_abort(join->task);
}

/* Acquire pairs with complete()'s release, as a join's poll: a caller that
 * sees true may read what the task left behind (its side effects). */
static bool is_finished(const struct weft_task *t)
{
    return atomic_load_explicit(&t->state, memory_order_acquire) & TASK_COMPLETE;
}

bool weft_join_is_finished(const struct weft_join *join)
{
    return join && join->task && is_finished(join->task);
}

/* ---- ids ------------------------------------------------------------------------ */

uint64_t weft_task_id(void)
{
    /* w->running is this thread's own: set for the poll, NULL around it. */
    struct weft__worker *w = weft__current;
    return w && w->running ? w->running->id : 0;
}

/* t->id is written before weft_spawn returns the handle: whoever holds the
 * handle got it after that. */
uint64_t weft_join_id(const struct weft_join *join)
{
    return join && join->task ? join->task->id : 0;
}

uint64_t weft_abort_handle_id(const struct weft_abort_handle *h)
{
    return h && h->task ? h->task->id : 0;
}

/* ---- abort handles: a task reference, nothing else ---------------------------- */

int weft_join_abort_handle(const struct weft_join *join, struct weft_abort_handle *out)
{
    if (!out)
        return -EINVAL;
    out->task = NULL;
    if (!join || !join->task)
        return -EINVAL;
    ref_inc(join->task); /* the join handle holds one: the count is not 0 */
    out->task = join->task;
    return 0;
}

void weft_abort_handle_clone(const struct weft_abort_handle *h, struct weft_abort_handle *out)
{
    if (!out)
        return;
    out->task = h ? h->task : NULL;
    if (out->task)
        ref_inc(out->task); /* h holds one: the count is not 0 */
}

void weft_abort_handle_abort(const struct weft_abort_handle *h)
{
    if (h && h->task)
        remote_abort(h->task);
}

bool weft_abort_handle_is_finished(const struct weft_abort_handle *h)
{
    return h && h->task && is_finished(h->task);
}

void weft_abort_handle_drop(struct weft_abort_handle *h)
{
    if (h && h->task) {
        ref_dec(h->task);
        h->task = NULL;
    }
}
