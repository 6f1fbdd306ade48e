/* weft/future.h: futures, wakers, the poll context and the async/await macros.
 *
 * Included by <weft.h>; not meant to be included on its own. */
#ifndef WEFT_FUTURE_H
#define WEFT_FUTURE_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What poll returns: the future finished (its output is now in the future's
 * struct) or it could not finish and has arranged for its waker to be woken. */
enum weft_poll {
    WEFT_PENDING = 0,
    WEFT_READY = 1,
};

struct weft_future;
struct weft_cx;

typedef enum weft_poll weft_poll_fn(struct weft_future *f, struct weft_cx *cx);
typedef void weft_drop_fn(struct weft_future *f);

/* The two functions every future type provides. `drop` releases what the future
 * holds; it runs exactly once per initialised future, finished or not. */
struct weft_future_ops {
    weft_poll_fn *poll;
    weft_drop_fn *drop; /* may be NULL when there is nothing to release */
};

/* The head of every future: embed it as the first member of a future struct.
 * `resume` is the resume point of the WEFT_ASYNC macros (0 = not started);
 * hand-written futures may use it as their own state. A future whose `ops` is
 * NULL is empty: dropping it does nothing, so a zeroed child is always safe
 * to drop. */
struct weft_future {
    const struct weft_future_ops *ops;
    int32_t resume;
};

/* ---- wakers ---------------------------------------------------------------
 * A waker is a fat pointer with a hand-made vtable, as Rust's RawWaker. The
 * runtime's waker reschedules a task; any code can build its own. */

struct weft_waker;

struct weft_waker_ops {
    /* Returns a new waker for the same target (one more reference). */
    struct weft_waker (*clone)(const void *data);
    /* Wakes the target and consumes this waker. */
    void (*wake)(const void *data);
    /* Wakes the target; the waker stays valid. */
    void (*wake_by_ref)(const void *data);
    /* Releases this waker without waking. */
    void (*drop)(const void *data);
};

struct weft_waker {
    const void *data;
    const struct weft_waker_ops *ops;
};

/* Returns a second, independently owned waker for the same target. */
static inline struct weft_waker weft_waker_clone(const struct weft_waker *w)
{
    return w->ops->clone(w->data);
}

/* Wakes the target and consumes `w`; `w` is empty afterwards. */
static inline void weft_waker_wake(struct weft_waker *w)
{
    const struct weft_waker_ops *ops = w->ops;
    w->ops = NULL;
    ops->wake(w->data);
}

/* Wakes the target without consuming `w`. */
static inline void weft_waker_wake_by_ref(const struct weft_waker *w)
{
    w->ops->wake_by_ref(w->data);
}

/* Releases `w` (no-op on an empty waker, whose ops is NULL); `w` is empty afterwards. */
static inline void weft_waker_drop(struct weft_waker *w)
{
    if (w->ops) {
        const struct weft_waker_ops *ops = w->ops;
        w->ops = NULL;
        ops->drop(w->data);
    }
}

/* True when both wakers would wake the same target (lets a future skip a clone). */
static inline bool weft_waker_will_wake(const struct weft_waker *a, const struct weft_waker *b)
{
    return a->data == b->data && a->ops == b->ops;
}

/* ---- the poll context ---------------------------------------------------- */

struct weft__worker;

/* What poll receives. `waker` wakes the task being polled; `worker` is the
 * runtime's per-worker state (every task is polled on a worker, also the one
 * weft_block_on runs; NULL only when a future is polled by hand outside the
 * runtime, as tests do with a hand-made waker);
 * `budget` counts the operations the task may still complete in this poll. */
struct weft_cx {
    const struct weft_waker *waker;
    struct weft__worker *worker;
    uint32_t budget;
    bool budget_spent;  /* weft_coop_take refused once (the metrics' budget yields) */
};

/* The cooperative budget a task gets at every poll (Tokio uses the same). */
#define WEFT_COOP_BUDGET 128u

/* Consumes one unit of the cooperative budget. Returns true if the caller may
 * go on; false when the budget is spent, in which case the task has been woken
 * and the caller must return WEFT_PENDING (it will be polled again soon). */
static inline bool weft_coop_take(struct weft_cx *cx)
{
    if (cx->budget > 0) {
        cx->budget--;
        return true;
    }
    cx->budget_spent = true;
    weft_waker_wake_by_ref(cx->waker);
    return false;
}

/* Builds a context for polling a future with a caller-made waker (outside any
 * runtime, e.g. in a test or a foreign event loop). */
static inline struct weft_cx weft_cx_from_waker(const struct weft_waker *w)
{
    struct weft_cx cx = { w, NULL, WEFT_COOP_BUDGET, false };
    return cx;
}

/* Polls `f` once. `f` must be initialised and not yet finished (an empty
 * future, e.g. the handle of a spawn that failed, is a bug: an assert). */
static inline enum weft_poll weft_future_poll(struct weft_future *f, struct weft_cx *cx)
{
    assert(f->ops && "polled an empty future (dropped, or its spawn failed)");
    return f->ops->poll(f, cx);
}

/* Drops `f` (releases what it holds) and leaves it empty; a no-op on an empty
 * future, so dropping twice is harmless. */
static inline void weft_future_drop(struct weft_future *f)
{
    const struct weft_future_ops *ops = f->ops;
    f->ops = NULL;
    if (ops && ops->drop)
        ops->drop(f);
}

/* ---- async/await ----------------------------------------------------------
 * Stackless coroutines: these macros turn a poll function into a resumable
 * state machine, like the state machine a Rust compiler makes of an async fn.
 * Locals that live across an await must be fields of the future struct (the
 * function's own locals are lost at every return). The body must not put an
 * await inside a `switch` of its own, and at most one await per source line.
 * Return only through the macros (WEFT_AWAIT, WEFT_YIELD, WEFT_RETURN,
 * WEFT_ASYNC_END): a PENDING returned by hand resumes at the last await,
 * which polls its (finished) child again. The `fallthrough`
 * attribute the macros use needs GCC or Clang.
 *
 *   static enum weft_poll my_poll(struct weft_future *f, struct weft_cx *cx)
 *   {
 *       struct my_fut *self = (struct my_fut *)f;
 *       WEFT_ASYNC_BEGIN(f);
 *       for (self->i = 0; self->i < 3; self->i++) {
 *           weft_yield_now_init(&self->y);
 *           WEFT_AWAIT(f, cx, &self->y.base);
 *       }
 *       WEFT_ASYNC_END(f);
 *   }
 */

/* Opens the coroutine body of future `f` (a struct weft_future *). */
#define WEFT_ASYNC_BEGIN(f)        \
    switch ((f)->resume) {         \
    case -1: return WEFT_READY;    \
    case 0:

/* Polls `child` until it is ready, returning WEFT_PENDING to the caller while
 * it is not. The child is not dropped: read its output, then drop it (or let
 * the parent's drop do it). */
#define WEFT_AWAIT(f, cx, child)                                             \
    do {                                                                     \
        (f)->resume = __LINE__;                                              \
        __attribute__((fallthrough));                                        \
    case __LINE__:                                                           \
        if (weft_future_poll((struct weft_future *)(child), (cx)) == WEFT_PENDING) \
            return WEFT_PENDING;                                             \
    } while (0)

/* Gives the worker back once: wakes the task and returns WEFT_PENDING, to
 * resume here at the next poll. */
#define WEFT_YIELD(f, cx)                          \
    do {                                           \
        (f)->resume = __LINE__;                    \
        weft_waker_wake_by_ref((cx)->waker);       \
        return WEFT_PENDING;                       \
    case __LINE__:;                                \
    } while (0)

/* Finishes the coroutine early: the future is ready from now on. */
#define WEFT_RETURN(f)             \
    do {                           \
        (f)->resume = -1;          \
        return WEFT_READY;         \
    } while (0)

/* Closes the coroutine body: reaching it makes the future ready. */
#define WEFT_ASYNC_END(f)          \
    }                              \
    (f)->resume = -1;              \
    return WEFT_READY

#endif
