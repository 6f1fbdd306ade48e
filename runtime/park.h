/* park.h: a one-waiter futex parker, the single place a thread sleeps.
 *
 * Contract: one thread (the owner) calls park_wait; any thread calls
 * park_unpark. An unpark that comes before the park is remembered (the next
 * park_wait returns at once), so an unpark is never lost; several unparks
 * before one park collapse into one. park_wait may also return spuriously, so
 * callers re-check their condition. The release in park_unpark's exchange pairs
 * with the acquire in park_wait's CAS: whatever the unparker wrote before
 * unparking is visible to the owner after it wakes.
 *
 * weft_block_on's threads park here. A worker keeps the same word and the same
 * contract but sleeps in io_uring_enter and is woken through an eventfd
 * (io/ring.c: weft__io_park / weft__io_unpark). */
#ifndef WEFT_PARK_H
#define WEFT_PARK_H

#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* PARK_NESTED: a worker's ring park nested in a poll (io/op.c: wait_done),
 * not its loop's: woken, it goes on with that poll, so a notifier must not
 * count it as a sleeping worker it woke to search (runtime/idle.c). */
enum { PARK_EMPTY = 0, PARK_PARKED = 1, PARK_NOTIFIED = 2, PARK_NESTED = 3 };

struct park {
    _Atomic uint32_t state;
};

static inline void park_futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)addr, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

/* Sleeps until park_unpark (or spuriously). Owner only. */
static inline void park_wait(struct park *p)
{
    uint32_t expect;
    for (;;) {
        expect = PARK_NOTIFIED;
        /* Acquire pairs with the release in park_unpark. */
        if (atomic_compare_exchange_strong_explicit(&p->state, &expect, PARK_EMPTY,
                                                    memory_order_acquire, memory_order_relaxed))
            return;
        expect = PARK_EMPTY;
        if (atomic_compare_exchange_strong_explicit(&p->state, &expect, PARK_PARKED,
                                                    memory_order_relaxed, memory_order_relaxed))
            break;
        /* An unpark came between the two CASes: take it on the next turn. */
    }
    for (;;) {
        park_futex(&p->state, FUTEX_WAIT, PARK_PARKED);
        expect = PARK_NOTIFIED;
        if (atomic_compare_exchange_strong_explicit(&p->state, &expect, PARK_EMPTY,
                                                    memory_order_acquire, memory_order_relaxed))
            return;
        /* Spurious futex return (a signal, or an old wake): sleep again. */
    }
}

/* Wakes the owner, or makes its next park_wait return at once. Any thread. */
static inline void park_unpark(struct park *p)
{
    /* Release pairs with the acquire in park_wait. */
    if (atomic_exchange_explicit(&p->state, PARK_NOTIFIED, memory_order_acq_rel) == PARK_PARKED)
        park_futex(&p->state, FUTEX_WAKE, 1);
}

#endif
