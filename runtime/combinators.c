/* combinators.c: yield_now and join_all, the basic non-leaf futures. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

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
    /* Each poll starts one child further along (Tokio's join! does the
     * same): a child that spends the cooperative budget at every poll would
     * otherwise leave every child after it polled with none, so a sleep or a
     * receive behind it never completed until it finished. */
    size_t i = j->next;
    for (size_t k = 0; k < j->n && j->remaining > 0; k++) {
        if (j->futs[i] && weft_future_poll(j->futs[i], cx) == WEFT_READY) {
            j->futs[i] = NULL;
            j->remaining--;
        }
        if (++i == j->n)
            i = 0;
    }
    if (j->n && ++j->next == j->n)
        j->next = 0;
    return j->remaining == 0 ? WEFT_READY : WEFT_PENDING;
}

static const struct weft_future_ops join_all_ops = { join_all_poll, NULL };

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(struct weft_future *const *)a;
    uintptr_t y = (uintptr_t)*(struct weft_future *const *)b;
    return (x > y) - (x < y);
}

/* 0 when no child is listed twice (it would be polled again once ready),
 * -EINVAL when one is, -ENOMEM. Up to SMALL children are compared pairwise;
 * more through a sorted copy (the caller's order is the polling order). */
#define SMALL 16
static int check_distinct(struct weft_future **futs, size_t n)
{
    if (n <= SMALL) {
        for (size_t i = 1; i < n; i++)
            for (size_t k = 0; k < i; k++)
                if (futs[k] == futs[i])
                    return -EINVAL;
        return 0;
    }
    struct weft_future **sorted = malloc(n * sizeof *sorted);
    if (!sorted)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        sorted[i] = futs[i];
    qsort(sorted, n, sizeof *sorted, by_address);
    int err = 0;
    for (size_t i = 1; i < n && !err; i++)
        if (sorted[i] == sorted[i - 1])
            err = -EINVAL;
    free(sorted);
    return err;
}

int weft_join_all_init(struct weft_join_all *j, struct weft_future **futs, size_t n)
{
    if (!j || (n > 0 && !futs))
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!futs[i] || !futs[i]->ops || !futs[i]->ops->poll)
            return -EINVAL;
    int err = check_distinct(futs, n);
    if (err)
        return err;
    *j = (struct weft_join_all){ { &join_all_ops, 0 }, futs, n, n, 0 };
    return 0;
}
