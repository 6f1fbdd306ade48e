/* runtime/atomic_waker.h: one waker slot that one thread registers into and any
 * thread wakes, after Tokio's AtomicWaker. Internal; never installed. (The
 * type is `struct awaker` because C11 reserves names that begin with atomic_
 * for <stdatomic.h>.)
 *
 * Contract.
 *  1. One registrar at a time (a channel's receiver) calls awaker_register and
 *     awaker_unregister; any number of threads call awaker_wake, concurrently
 *     with the registrar and with each other.
 *  2. awaker_register(w) arms the slot with a waker for w's task; registering
 *     again for the same task while still armed costs nothing (no clone:
 *     weft_waker_will_wake). The next awaker_wake that finds the slot armed
 *     takes the waker out and wakes it, once; wakes that find the slot unarmed
 *     do nothing.
 *  3. No lost wakeup, given the caller's half of a Dekker handshake: the waker
 *     side makes its condition true with a seq_cst store or RMW and then calls
 *     awaker_wake; the registrar calls awaker_register and then checks the
 *     condition with a seq_cst load, returning PENDING only if it is false.
 *     Every access to `state` but the release store that ends a wake is
 *     seq_cst, so all of these sit in one total order S (awaker_wake says why
 *     that one store need not be). If the waker's load of state comes before the registrar's arming
 *     store in S, the condition store comes before the registrar's check in S
 *     and the check sees it. Otherwise the waker's load sees the arming store
 *     and wakes the task, or a later state: WAKING or IDLE left by another
 *     wake of the same arming, or IDLE left by the registrar taking the slot
 *     back to re-arm it. In each of those the registrar is woken or about to
 *     arm again, and its next arming store comes after our load in S, so its
 *     next check sees our condition. A registrar that finds the slot WAKING
 *     cannot arm; it wakes its own task instead, so that it comes back.
 *  4. awaker_unregister disarms the slot and drops its waker (a pending
 *     future is being dropped). If a wake has just taken the waker out, that
 *     wake still happens: one spurious wake of the dropped future's task.
 *
 * States, and who owns the waker in the slot. IDLE: the slot owns none (its
 * bytes may be a stale copy of one a wake took); wakers never touch it, so the
 * registrar may write it freely. ARMED: the slot owns a waker, which the next
 * wake takes; wakers and the registrar may read it, nobody writes it, and the
 * registrar may take it back only with a CAS to IDLE. WAKING: one waker won
 * the CAS from ARMED and is copying the waker out; the slot is its alone
 * until it stores IDLE, a few instructions later. The wake itself runs after
 * that store, outside the critical section: a wake can make the kernel switch
 * to the woken thread, and a registrar that then found the slot still WAKING
 * would spin through self-wakes while the waker sat preempted.
 *
 * Why not Tokio's exact protocol (WAITING/REGISTERING/WAKING). Tokio's wake
 * tries to take the waker whenever no registration is in progress, so it
 * needs the REGISTERING bit to keep a wake off a slot that is being written.
 * Here a wake touches the slot only when it is ARMED, and only the registrar
 * arms it, so the registrar owns an IDLE slot outright and needs no lock
 * state of its own. What this buys on the hot path: a wake that finds nobody
 * waiting is one plain load, not a read-modify-write that bounces the line
 * between producers. */
#ifndef WEFT_ATOMIC_WAKER_H
#define WEFT_ATOMIC_WAKER_H

#include <stdatomic.h>
#include <stdint.h>

#include "weft/future.h"

enum { AWAKER_IDLE = 0, AWAKER_ARMED = 1, AWAKER_WAKING = 2 };

struct awaker {
    _Atomic uint32_t state;
    struct weft_waker waker; /* owned as the state says (see above) */
};

/* Prepares an empty, unarmed slot. */
static inline void awaker_init(struct awaker *aw)
{
    atomic_init(&aw->state, AWAKER_IDLE);
    aw->waker = (struct weft_waker){ 0 };
}

/* Releases the slot's waker, if it owns one. No wake may run any more. */
static inline void awaker_fini(struct awaker *aw)
{
    /* Relaxed: whoever frees the channel already synchronised with all. */
    if (atomic_load_explicit(&aw->state, memory_order_relaxed) == AWAKER_ARMED)
        weft_waker_drop(&aw->waker);
}

/* Arms the slot for `w`'s task (registrar only). The caller must then re-check
 * its condition with a seq_cst load (contract 3). */
static inline void awaker_register(struct awaker *aw, const struct weft_waker *w)
{
    /* Seq_cst for the Dekker pairing of contract 3.
     * It is also at least acquire: when it reads the IDLE stored at the end of
     * a wake, that waker's read of the slot happened before we rewrite it. */
    uint32_t s = atomic_load(&aw->state);
    if (s == AWAKER_ARMED) {
        /* Already armed for this task: nothing to do. (Reading the slot while
         * ARMED is safe: wakers only read it too.) */
        if (weft_waker_will_wake(&aw->waker, w))
            return;
        /* Take the slot back to replace its waker. On failure s becomes what
         * a waker left: WAKING, or IDLE if it already took the waker. */
        if (atomic_compare_exchange_strong(&aw->state, &s, AWAKER_IDLE)) {
            weft_waker_drop(&aw->waker);
            s = AWAKER_IDLE;
        }
    }
    if (s == AWAKER_WAKING) {
        /* A waker is taking the slot's waker out right now, so we may not
         * write the slot; its wake may even be the one that got us polled.
         * Wake our own task so that it is polled again and registers once the
         * slot is IDLE: while the slot is WAKING, other wakers return at once,
         * counting on this registrar to come back. */
        weft_waker_wake_by_ref(w);
        return;
    }
    /* IDLE: the slot owns nothing and wakers leave it alone. */
    aw->waker = weft_waker_clone(w);
    /* Only the registrar leaves IDLE, so a plain store suffices. Seq_cst: this
     * is the registrar's store of the Dekker pair, and its release half
     * publishes the slot to the waker whose CAS from ARMED reads it. */
    atomic_store(&aw->state, AWAKER_ARMED);
}

/* Wakes the armed task once and disarms the slot; no-op when unarmed. Any
 * thread. The caller made its condition true (seq_cst) before calling. */
static inline void awaker_wake(struct awaker *aw)
{
    /* Seq_cst: the waker's load of the Dekker pair (contract 3). */
    uint32_t s = atomic_load(&aw->state);
    if (s != AWAKER_ARMED)
        return; /* nobody waits, or another waker is delivering this wake */
    /* Acquire half pairs with the registrar's arming store: the slot's waker
     * is visible. Failure means another waker or the registrar got there
     * first; either way this wake is covered. */
    if (!atomic_compare_exchange_strong(&aw->state, &s, AWAKER_WAKING))
        return;
    struct weft_waker w = aw->waker; /* ours now; the slot's copy goes stale */
    /* Release pairs with the registrar's load of IDLE: our read of the slot is
     * over before it is rewritten. It need not be seq_cst (a plain mov, not an
     * xchg, on x86): a waker whose seq_cst load reads this IDLE comes before
     * the registrar's next arming store in S, because this store happens
     * before that one, and a seq_cst load cannot read a store that happens
     * before the last seq_cst store preceding it in S ([atomics.order]).
     * tests/relacy_sync.cpp models it this way. */
    atomic_store_explicit(&aw->state, AWAKER_IDLE, memory_order_release);
    weft_waker_wake(&w);
}

/* Disarms the slot and drops its waker (registrar only). */
static inline void awaker_unregister(struct awaker *aw)
{
    /* Seq_cst for uniformity; acquire is what matters (as in register). On
     * failure s becomes WAKING or IDLE: a waker has the waker (contract 4). */
    uint32_t s = atomic_load(&aw->state);
    if (s == AWAKER_ARMED && atomic_compare_exchange_strong(&aw->state, &s, AWAKER_IDLE))
        weft_waker_drop(&aw->waker);
}

#endif
