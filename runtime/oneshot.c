/* oneshot.c: a channel for one message, after Tokio's oneshot.
 *
 * Contract. One sender, one receiver, each on any thread. The sender finishes
 * exactly once (send or drop); the receiver finishes exactly once (its future
 * is dropped, or weft_oneshot_receiver_drop). Whoever finishes second frees
 * the block.
 *
 * Everything is decided by one atomic state word:
 *   RX_WAKER   the receiver's waker is in `waker` and the sender may read it;
 *   SENT       the message is in `msg`;
 *   CLOSED     the sender was dropped without sending;
 *   TX_DONE    the sender will not touch the block again;
 *   RX_DONE    the receiver will not touch the block again.
 * SENT and CLOSED are the completion bits: at most one is ever set.
 *
 * The waker handshake. The receiver writes `waker` only while RX_WAKER is
 * clear, then sets RX_WAKER with an RMW. The sender sets its completion bit
 * with one RMW; if that RMW found RX_WAKER set, the sender owns a read of
 * `waker` until it sets TX_DONE afterwards, so the receiver clears RX_WAKER
 * with an RMW before replacing or dropping the waker, and leaves the waker
 * alone if that RMW shows the sender completed first. Because all these are
 * RMWs on one word, they are totally ordered, and each side learns from the
 * value it replaced exactly what the other side did before. The block (and
 * any waker still in it) is freed only once both DONE bits are set, so a
 * sender in the middle of waking never sees the block go away.
 *
 * Orderings. Every RMW is acq_rel: release publishes what this side wrote
 * (the message, the waker), acquire makes the other side's writes visible
 * before this side reads them or frees the block. The receiver's first look is
 * an acquire load, pairing with the sender's completing RMW. */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "weft/sync.h"

enum {
    RX_WAKER = 1u << 0,
    SENT = 1u << 1,
    CLOSED = 1u << 2,
    TX_DONE = 1u << 3,
    RX_DONE = 1u << 4,
    COMPLETE = SENT | CLOSED,
};

/* States of the receive future, kept in base.resume. */
enum { RECV_IDLE = 0, RECV_DONE = -1 };

struct weft_oneshot {
    _Atomic uint32_t state;
    uint32_t msg_size;
    struct weft_waker waker; /* the receiver's; see the handshake above */
    _Alignas(max_align_t) unsigned char msg[];
};

static void oneshot_free(struct weft_oneshot *ch)
{
    /* Whatever waker is left (possibly none) is the block's to drop now. */
    weft_waker_drop(&ch->waker);
    free(ch);
}

int weft_oneshot_create(struct weft_oneshot **out, size_t msg_size)
{
    if (out)
        *out = NULL;
    if (!out || msg_size == 0 || msg_size > WEFT_CHANNEL_MSG_MAX)
        return -EINVAL;
    struct weft_oneshot *ch = malloc(sizeof(*ch) + msg_size);
    if (!ch)
        return -ENOMEM;
    atomic_init(&ch->state, 0);
    ch->msg_size = (uint32_t)msg_size;
    ch->waker = (struct weft_waker){ 0 };
    *out = ch;
    return 0;
}

/* Sets the sender's completion bit, wakes the receiver if it waits, and
 * releases the sender side. Returns the state the completing RMW replaced. */
static uint32_t tx_finish(struct weft_oneshot *ch, uint32_t bit)
{
    uint32_t old = atomic_load_explicit(&ch->state, memory_order_relaxed);
    uint32_t next;
    do {
        /* With no waker to read, the sender is done in the same RMW. */
        next = old | bit | ((old & RX_WAKER) ? 0 : TX_DONE);
        /* Release: the message is visible to the receiver's acquire of this
         * state. Acquire: pairs with the receiver's RMW that set RX_WAKER, so
         * the waker we are about to read is visible; and with its RX_DONE
         * RMW, so its last accesses are done if we free the block. */
    } while (!atomic_compare_exchange_weak_explicit(&ch->state, &old, next,
                                                    memory_order_acq_rel, memory_order_relaxed));
    if (!(old & RX_WAKER)) {
        if (old & RX_DONE)
            oneshot_free(ch); /* both sides done (RX_DONE never has RX_WAKER) */
        return old;
    }
    weft_waker_wake_by_ref(&ch->waker);
    /* Acq_rel: release orders our read of the waker before the receiver frees
     * the block; acquire pairs with the receiver's RX_DONE RMW if we free it. */
    if (atomic_fetch_or_explicit(&ch->state, TX_DONE, memory_order_acq_rel) & RX_DONE)
        oneshot_free(ch);
    return old;
}

int weft_oneshot_send(struct weft_oneshot *ch, const void *msg)
{
    if (!ch || !msg)
        return -EINVAL; /* the sender side is kept */
    /* Writing before checking is fine: the receiver reads msg only after
     * seeing SENT, and nobody reads it if the receiver is gone. */
    memcpy(ch->msg, msg, ch->msg_size);
    uint32_t old = tx_finish(ch, SENT);
    return (old & RX_DONE) ? -EPIPE : 0;
}

void weft_oneshot_sender_drop(struct weft_oneshot *ch)
{
    if (!ch)
        return;
    tx_finish(ch, CLOSED);
}

void weft_oneshot_receiver_drop(struct weft_oneshot *ch)
{
    if (!ch)
        return;
    uint32_t st = atomic_load_explicit(&ch->state, memory_order_relaxed);
    if ((st & RX_WAKER) && !(st & COMPLETE)) {
        /* Take the waker back so it does not outlive this side. Acq_rel: if
         * the sender completed meanwhile, acquire shows it and we leave the
         * waker to it; otherwise the sender will find RX_WAKER clear. */
        st = atomic_fetch_and_explicit(&ch->state, ~(uint32_t)RX_WAKER, memory_order_acq_rel);
        if (!(st & COMPLETE))
            weft_waker_drop(&ch->waker);
    }
    /* Acq_rel: release orders our reads (message, waker) before the sender
     * frees the block; acquire pairs with the sender's TX_DONE if we free it. */
    st = atomic_fetch_or_explicit(&ch->state, RX_DONE, memory_order_acq_rel);
    if (st & TX_DONE)
        oneshot_free(ch);
}

static enum weft_poll recv_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_oneshot_recv *r = (struct weft_oneshot_recv *)f;
    struct weft_oneshot *ch = r->ch;

    if (r->base.resume == RECV_DONE)
        return WEFT_READY;
    if (!weft_coop_take(cx))
        return WEFT_PENDING;
    /* Acquire pairs with the sender's completing RMW: the message is visible. */
    uint32_t st = atomic_load_explicit(&ch->state, memory_order_acquire);
    if (!(st & COMPLETE)) {
        if (st & RX_WAKER) {
            /* The sender will wake the registered waker; nothing to change if
             * it wakes this same task. */
            if (weft_waker_will_wake(&ch->waker, cx->waker))
                goto pending;
            /* Take the slot back to replace the waker. Acq_rel, as in
             * receiver_drop; if the sender completed first it may be reading
             * the old waker, so leave it and finish instead. */
            st = atomic_fetch_and_explicit(&ch->state, ~(uint32_t)RX_WAKER, memory_order_acq_rel);
            if (st & COMPLETE)
                goto complete;
        }
        weft_waker_drop(&ch->waker);
        ch->waker = weft_waker_clone(cx->waker);
        /* Release publishes the waker to the sender's acquire; acquire pairs
         * with its completing RMW if it came first. */
        st = atomic_fetch_or_explicit(&ch->state, RX_WAKER, memory_order_acq_rel);
        if (!(st & COMPLETE))
            goto pending;
        /* The sender completed before seeing our waker and will never read
         * it: it is still ours to drop. */
        weft_waker_drop(&ch->waker);
    }
complete:
    if (st & SENT) {
        memcpy(r->out, ch->msg, ch->msg_size);
        r->res = 0;
    } else {
        r->res = -EPIPE;
    }
    r->base.resume = RECV_DONE;
    return WEFT_READY;
pending:
    cx->budget++; /* give back the unit: no progress was made */
    return WEFT_PENDING;
}

static void recv_drop(struct weft_future *f)
{
    weft_oneshot_receiver_drop(((struct weft_oneshot_recv *)f)->ch);
}

static const struct weft_future_ops recv_ops = { recv_poll, recv_drop };

void weft_oneshot_recv_init(struct weft_oneshot_recv *r, struct weft_oneshot *ch, void *out)
{
    /* Without a channel or a place for the message: ready at once with
     * -EINVAL (the drop still releases a channel's receiver side). */
    bool bad = !ch || !out;
    r->base = (struct weft_future){ &recv_ops, bad ? RECV_DONE : RECV_IDLE };
    r->ch = ch;
    r->out = out;
    r->res = bad ? -EINVAL : 0;
}
