/* combinators.c: yield_now and join_all, the basic non-leaf futures. */
#include <errno.h>

#include "weft.h"

static enum weft_poll yield_poll(struct weft_future *f, struct weft_cx *cx)
{
    if (f->resume)
        return WEFT_READY;
    f->resume = 1;
    /* A wake during its own poll requeues the task at the back of its worker's
     * queue once the poll returns (task.c), which is what yielding means. */
    weft_waker_wake_by_ref(cx->waker);
    return WEFT_PENDING;
}

static const struct weft_future_ops yield_ops = { yield_poll, NULL };

void weft_yield_now_init(struct weft_yield_now *y)
{
    y->base = (struct weft_future){ &yield_ops, 0 };
}

static enum weft_poll join_all_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_join_all *j = (struct weft_join_all *)f;
    for (size_t i = 0; i < j->n && j->remaining > 0; i++) {
        if (j->futs[i] && weft_future_poll(j->futs[i], cx) == WEFT_READY) {
            j->futs[i] = NULL;
            j->remaining--;
        }
    }
    return j->remaining == 0 ? WEFT_READY : WEFT_PENDING;
}

static const struct weft_future_ops join_all_ops = { join_all_poll, NULL };

int weft_join_all_init(struct weft_join_all *j, struct weft_future **futs, size_t n)
{
    if (!j || (n > 0 && !futs))
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!futs[i] || !futs[i]->ops || !futs[i]->ops->poll)
            return -EINVAL;
    *j = (struct weft_join_all){ { &join_all_ops, 0 }, futs, n, n };
    return 0;
}
