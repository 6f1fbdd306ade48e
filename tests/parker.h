/* tests/parker.h: a waker that parks a plain thread on a condition variable,
 * for the stress programs' foreign threads. It counts its clones and drops,
 * which must match once every future holding it is gone. Static inline: each
 * program includes it once. */
#ifndef WEFT_TESTS_PARKER_H
#define WEFT_TESTS_PARKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "weft/future.h"

struct parker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool notified;             /* under mu */
    atomic_long clones, drops; /* must match once every future is gone */
};

static const struct weft_waker_ops parker_ops;

static inline struct weft_waker parker_clone(const void *d)
{
    atomic_fetch_add(&((struct parker *)d)->clones, 1);
    return (struct weft_waker){ d, &parker_ops };
}

static inline void parker_wake_by_ref(const void *d)
{
    struct parker *p = (struct parker *)d;
    pthread_mutex_lock(&p->mu);
    p->notified = true;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static inline void parker_drop(const void *d)
{
    atomic_fetch_add(&((struct parker *)d)->drops, 1);
}

static inline void parker_wake(const void *d)
{
    parker_wake_by_ref(d);
    parker_drop(d);
}

static const struct weft_waker_ops parker_ops = {
    parker_clone, parker_wake, parker_wake_by_ref, parker_drop,
};

static inline void parker_init(struct parker *p)
{
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->notified = false;
    atomic_init(&p->clones, 0);
    atomic_init(&p->drops, 0);
}

static inline bool parker_balanced(struct parker *p)
{
    return atomic_load(&p->clones) == atomic_load(&p->drops);
}

#endif
