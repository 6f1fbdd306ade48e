/* mpsc.c: the bounded multi-producer, single-consumer channel.
 *
 * Contract. Any number of senders on any threads call ring_push (try_send,
 * send futures); one receiver at a time calls ring_pop (try_recv, receive
 * futures). Neither locks nor allocates. A receiver that finds the ring empty
 * waits in `rx`, an awaker (atomic_waker.h); a sender that finds it full
 * waits in a mutex-protected list, counted by `nwaiters`.
 *
 * The ring: Vyukov's bounded queue, with crossbeam's lap encoding so that the
 * capacity need not be a power of two. A position is lap * one_lap + index,
 * index < cap; after index cap - 1 comes index 0 of the next lap. one_lap is
 * 2 * mark, and mark, the smallest power of two above cap, is the bit of
 * `tail` that says the receiver is gone. Slot i's stamp reads pos when the
 * slot is free for the sender at position pos, pos + 1 once that message is
 * in it, and pos + one_lap once the receiver took it. A sender claims the
 * position `tail` by CAS when the slot's stamp equals it, copies the message
 * in, and publishes it by storing tail + 1. A stamp behind tail means the
 * slot still holds (or is about to hold) the previous lap's message: full. A
 * stamp ahead of tail means our tail was stale. The receiver alone owns
 * `head` (senders never read it): it takes the message when the stamp is
 * head + 1, then frees the slot by storing head + one_lap. A stamp of head
 * means empty, or a sender claimed the slot and is still copying; either way
 * the receiver waits, and that sender wakes it once it publishes. A slot
 * stores its stamp less its own index (a position less its index is its
 * lap's first position), so that every slot starts at 0: the block comes
 * zeroed from calloc, and the pages of a large ring are not touched before
 * a message needs them (a 16 M-slot ring of 1 KiB messages once wrote all
 * 17 GB at create).
 *
 * Orderings. A slot's stamp alone orders its message: the publishing store
 * is (at least) release and the receiver's load acquire, so the message is
 * visible; the freeing store is release and the sender's load acquire, so the
 * receiver's read is done before the slot is overwritten. The CAS on tail only
 * decides who owns a position: relaxed. Two Dekker handshakes make these
 * seq_cst (not fences, which ThreadSanitizer does not understand):
 *  1. A receiver waiting for a message (awaker contract 3). A sender's
 *     publishing store, then its awaker_wake load of rx.state; the receiver's
 *     arming store in awaker_register, then its re-check: the load of the
 *     stamp. The last sender's decrement of `senders`, then its awaker_wake,
 *     pairs the same way with the re-check's load of `senders`.
 *  2. Senders waiting for room. A blocked sender joins the list and increments
 *     nwaiters, then retries the push (the load of the stamp); the receiver
 *     frees a slot (the stamp store), then loads nwaiters. In the total order
 *     of these four, either the receiver's load follows the increment and it
 *     wakes a waiter, or the sender's load follows the freeing store and its
 *     retry finds the room. Every change of nwaiters is a seq_cst RMW under
 *     the lock for one list entry, so a load that sees our increment or
 *     anything later counts us, unless we left the list (got a slot, or woken).
 *
 * The wait list. The receiver, after freeing a slot and seeing nwaiters > 0,
 * takes the first waiter off the list under the lock, marks it notified (its
 * turn: a slot was freed for it), moves its waker out, and wakes it after
 * unlocking (the future may be dropped as soon as the lock is free). A
 * notified sender that finds the ring full again (a try_send took the slot)
 * rejoins at the front. A waiter that leaves with a turn it did not use passes
 * it on, so the freed slot is not left unclaimed while others sleep: one that
 * is dropped, and one whose push succeeded (say its retry right after
 * joining) before the receiver picked it for a later slot. The receiver's
 * drop sets the mark bit first and then empties the list, waking each waiter:
 * a sender that joins the list afterwards reads tail after taking the lock,
 * so its retry sees the mark and gives -EPIPE. weft_mpsc_receiver_close does
 * the same but keeps the receiver: it drains what is queued, then gets
 * -EPIPE once head reaches the marked tail (every position claimed before
 * the mark has been taken; none can be claimed after it). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_waker.h"
#include "weft/sync.h"

#define CACHE_LINE 64

struct slot {
    _Atomic size_t stamp;
    unsigned char msg[];
};

/* The padding (not _Alignas: the block comes from malloc, aligned to 16 only)
 * keeps the words that different threads write on different cache lines. */
struct weft_mpsc {
    /* Read-only after create, but for the rarely changing counts. */
    size_t cap;
    size_t mark;              /* receiver-gone bit of tail; > any index */
    size_t one_lap;           /* 2 * mark */
    size_t stride;            /* bytes per slot */
    size_t msg_size;
    _Atomic size_t senders;   /* sender references */
    _Atomic uint32_t refs;    /* 1 for all senders together + 1 for the receiver */
    char pad0[CACHE_LINE];
    _Atomic size_t tail;      /* next position to claim; CAS by senders */
    char pad1[CACHE_LINE];
    size_t head;              /* next position to take; the receiver's alone */
    size_t rx_waiting;        /* receive futures pending (registered); the receiver's alone:
                               * several of one task share the armed waker, so only the
                               * last one dropped pending may unregister it */
    _Atomic bool closed;      /* weft_mpsc_receiver_close ran (beside head: an empty
                               * receive reads it, not the senders' tail line) */
    char pad2[CACHE_LINE];
    struct awaker rx;         /* read by every send, armed by a waiting receiver */
    char pad3[CACHE_LINE];
    _Atomic size_t nwaiters;  /* list length; changed under the lock, read without */
    pthread_mutex_t lock;     /* guards the list and its waiters' fields */
    struct weft__mpsc_waiter *first, *last;
    char pad4[CACHE_LINE];
    _Alignas(max_align_t) unsigned char slots[];
};

/* States of both futures, kept in base.resume. */
enum { FUT_IDLE = 0, FUT_WAITING = 1, FUT_DONE = -1 };

static inline size_t index_of(const struct weft_mpsc *ch, size_t pos)
{
    return pos & (ch->mark - 1);
}

static inline struct slot *slot_at(struct weft_mpsc *ch, size_t pos)
{
    return (struct slot *)(ch->slots + index_of(ch, pos) * ch->stride);
}

static inline size_t next_pos(const struct weft_mpsc *ch, size_t pos)
{
    if ((pos & (ch->mark - 1)) + 1 < ch->cap)
        return pos + 1;
    return (pos & ~(ch->one_lap - 1)) + ch->one_lap;
}

/* A constant size lets the compiler copy the common 8-byte message (a
 * pointer, an integer) with one move instead of a call. */
static inline void copy_msg(void *dst, const void *src, size_t n)
{
    if (n == 8)
        memcpy(dst, src, 8);
    else
        memcpy(dst, src, n);
}

/* 0, -EAGAIN (full) or -EPIPE (receiver gone). Any sender. */
static int ring_push(struct weft_mpsc *ch, const void *msg)
{
    size_t tail = atomic_load_explicit(&ch->tail, memory_order_relaxed);
    for (;;) {
        if (tail & ch->mark)
            return -EPIPE;
        struct slot *s = slot_at(ch, tail);
        size_t idx = index_of(ch, tail);
        /* Acquire pairs with the receiver's freeing store (its read of the
         * old message is done); seq_cst for handshake 2. */
        size_t stamp = atomic_load(&s->stamp) + idx;
        if (stamp == tail) {
            if (atomic_compare_exchange_weak_explicit(&ch->tail, &tail, next_pos(ch, tail),
                                                      memory_order_relaxed, memory_order_relaxed)) {
                copy_msg(s->msg, msg, ch->msg_size);
                /* Release pairs with ring_pop's load (the message is
                 * visible); seq_cst for handshake 1. */
                atomic_store(&s->stamp, tail + 1 - idx);
                return 0;
            }
            /* Lost the position to another sender; tail was reloaded. */
        } else if ((ptrdiff_t)(stamp - tail) < 0) {
            return -EAGAIN;
        } else {
            tail = atomic_load_explicit(&ch->tail, memory_order_relaxed);
        }
    }
}

/* 0 or -EAGAIN (nothing published at head). Receiver only. */
static int ring_pop(struct weft_mpsc *ch, void *out)
{
    size_t head = ch->head, idx = index_of(ch, head);
    struct slot *s = slot_at(ch, head);
    /* Acquire pairs with ring_push's publishing store; seq_cst for the
     * receiver's re-check in handshake 1. */
    if (atomic_load(&s->stamp) + idx != head + 1)
        return -EAGAIN;
    copy_msg(out, s->msg, ch->msg_size);
    ch->head = next_pos(ch, head);
    /* Release pairs with ring_push's load (our read is done before the slot
     * is reused); seq_cst: the receiver's store of handshake 2. */
    atomic_store(&s->stamp, head + ch->one_lap - idx);
    return 0;
}

/* ---- the list of senders waiting for room ---------------------------------- */

static void list_unlink(struct weft_mpsc *ch, struct weft__mpsc_waiter *w)
{
    *(w->prev ? &w->prev->next : &ch->first) = w->next;
    *(w->next ? &w->next->prev : &ch->last) = w->prev;
    w->prev = w->next = NULL;
    w->queued = 0;
    atomic_fetch_sub(&ch->nwaiters, 1); /* seq_cst: see handshake 2 */
}

/* Takes the first waiter off the list, marks it notified and moves its waker
 * to *k; false if the list is empty. Under the lock. The caller wakes *k after
 * unlocking: a woken sender that ran at once would only block on our lock. */
static bool take_first(struct weft_mpsc *ch, struct weft_waker *k)
{
    struct weft__mpsc_waiter *w = ch->first;
    if (!w)
        return false;
    list_unlink(ch, w);
    w->notified = 1;
    *k = w->waker;
    w->waker = (struct weft_waker){ 0 };
    return true;
}

/* Gives the first waiter its turn and wakes it; false if none was waiting. */
static bool wake_first(struct weft_mpsc *ch)
{
    struct weft_waker k;
    pthread_mutex_lock(&ch->lock);
    bool found = take_first(ch, &k);
    pthread_mutex_unlock(&ch->lock);
    if (found)
        weft_waker_wake(&k);
    return found;
}

/* After freeing a slot: hands it to a waiting sender, if any. Receiver only. */
static void wake_sender(struct weft_mpsc *ch)
{
    /* Seq_cst: the receiver's load of handshake 2. */
    if (atomic_load(&ch->nwaiters) != 0)
        wake_first(ch);
}

/* Joins the list (or just refreshes the waker if already in it). Returns true
 * if the future was not in the list: the caller must then retry the push. A
 * waiter that was woken for a slot but lost it (to a try_send) goes back to
 * the front, so that senders are served in the order they started waiting. */
static bool waiter_enqueue(struct weft_mpsc *ch, struct weft__mpsc_waiter *w,
                           const struct weft_waker *waker)
{
    pthread_mutex_lock(&ch->lock);
    bool joined = !w->queued;
    if (joined) {
        if (w->notified) { /* to the front */
            w->prev = NULL;
            w->next = ch->first;
            *(ch->first ? &ch->first->prev : &ch->last) = w;
            ch->first = w;
        } else {
            w->prev = ch->last;
            w->next = NULL;
            *(ch->last ? &ch->last->next : &ch->first) = w;
            ch->last = w;
        }
        w->queued = 1;
        w->notified = 0;
        w->registered = 1;
        atomic_fetch_add(&ch->nwaiters, 1); /* seq_cst: the sender's store of handshake 2 */
    }
    if (!weft_waker_will_wake(&w->waker, waker)) {
        weft_waker_drop(&w->waker);
        w->waker = weft_waker_clone(waker);
    }
    pthread_mutex_unlock(&ch->lock);
    return joined;
}

/* Whether a slot was freed for this waiter (it was taken off the list). */
static bool waiter_notified(struct weft_mpsc *ch, struct weft__mpsc_waiter *w)
{
    pthread_mutex_lock(&ch->lock);
    bool notified = w->notified;
    pthread_mutex_unlock(&ch->lock);
    return notified;
}

/* Leaves the list for good, passing on a turn it did not use (see the wait
 * list comment): when dropped, and when its push did not follow the turn. */
static void waiter_leave(struct weft_mpsc *ch, struct weft__mpsc_waiter *w, bool took_turn)
{
    if (took_turn) {
        /* Off the list since take_first, which also took its waker, and we
         * saw that under the lock: nobody else touches this waiter now. */
        w->notified = 0;
        w->registered = 0;
        return;
    }
    struct weft_waker k;
    bool pass = false;
    pthread_mutex_lock(&ch->lock);
    if (w->queued)
        list_unlink(ch, w);
    else if (w->notified)
        pass = take_first(ch, &k);
    w->notified = 0;
    w->registered = 0;
    pthread_mutex_unlock(&ch->lock);
    weft_waker_drop(&w->waker); /* off the list: nobody else reads it now */
    if (pass)
        weft_waker_wake(&k);
}

/* ---- handles ------------------------------------------------------------------ */

int weft_mpsc_create(struct weft_mpsc **out, size_t capacity, size_t msg_size)
{
    if (out)
        *out = NULL;
    if (!out || capacity == 0 || capacity > WEFT_MPSC_CAPACITY_MAX || msg_size == 0 ||
        msg_size > WEFT_CHANNEL_MSG_MAX)
        return -EINVAL;
    const size_t align = _Alignof(struct slot);
    size_t stride = (sizeof(struct slot) + msg_size + align - 1) & ~(align - 1);
    if (stride > (SIZE_MAX - sizeof(struct weft_mpsc)) / capacity)
        return -ENOMEM;
    struct weft_mpsc *ch = calloc(1, sizeof(*ch) + capacity * stride); /* every stamp 0 */
    if (!ch)
        return -ENOMEM;
    if (pthread_mutex_init(&ch->lock, NULL) != 0) {
        free(ch);
        return -ENOMEM;
    }
    size_t mark = 1;
    while (mark <= capacity)
        mark <<= 1;
    ch->cap = capacity;
    ch->mark = mark;
    ch->one_lap = 2 * mark;
    ch->stride = stride;
    ch->msg_size = msg_size;
    atomic_init(&ch->senders, 1);
    atomic_init(&ch->refs, 2);
    atomic_init(&ch->tail, 0);
    ch->head = 0;
    ch->rx_waiting = 0;
    atomic_init(&ch->closed, false);
    awaker_init(&ch->rx);
    atomic_init(&ch->nwaiters, 0);
    ch->first = ch->last = NULL;
    *out = ch;
    return 0;
}

static void release(struct weft_mpsc *ch)
{
    /* Acq_rel: whoever frees sees every access the other side made. */
    if (atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_acq_rel) != 1)
        return;
    awaker_fini(&ch->rx);
    pthread_mutex_destroy(&ch->lock);
    free(ch);
}

void weft_mpsc_sender_clone(struct weft_mpsc *ch)
{
    if (!ch)
        return;
    /* Relaxed, as for any reference count increment: the caller's own
     * reference keeps the count above zero. */
    atomic_fetch_add_explicit(&ch->senders, 1, memory_order_relaxed);
}

void weft_mpsc_sender_drop(struct weft_mpsc *ch)
{
    if (!ch)
        return;
    /* Release pairs with try_recv's load of senders: this sender's messages
     * are visible before the receiver concludes -EPIPE. Seq_cst: the store
     * of handshake 1 for the wake below. */
    if (atomic_fetch_sub(&ch->senders, 1) != 1)
        return;
    awaker_wake(&ch->rx);
    release(ch);
}

/* Marks tail: no send succeeds from now on; every waiting sender is woken
 * and gives -EPIPE. Receiver only. */
static void close_rx(struct weft_mpsc *ch)
{
    /* A sender that claimed a position before the mark still publishes its
     * message (drained by a closed receiver, discarded by a dropped one); the
     * blocked senders are ordered by the lock below (see the wait list
     * comment). */
    /* Before `closed` (weft_mpsc_receiver_close): a receive that sees the
     * flag sees the marked tail. */
    atomic_fetch_or(&ch->tail, ch->mark);
    while (wake_first(ch))
        ;
}

void weft_mpsc_receiver_close(struct weft_mpsc *ch)
{
    if (!ch)
        return;
    close_rx(ch);
    atomic_store(&ch->closed, true); /* seq_cst: after the mark; before the wake */
    /* A receive future of the receiver pending in another task (the
     * receiver is one handle, but its futures may wait elsewhere) sees the
     * close: this wake's seq_cst load of rx.state comes after the store of
     * `closed`, and recv_one's re-check reads it seq_cst (awaker contract
     * 3). */
    awaker_wake(&ch->rx);
}

void weft_mpsc_receiver_drop(struct weft_mpsc *ch)
{
    if (!ch)
        return;
    close_rx(ch);
    awaker_unregister(&ch->rx);
    release(ch);
}

int weft_mpsc_try_send(struct weft_mpsc *ch, const void *msg)
{
    if (!ch || !msg)
        return -EINVAL;
    int r = ring_push(ch, msg);
    if (r == 0)
        awaker_wake(&ch->rx);
    return r;
}

/* try_recv on checked arguments (the receive future's were checked at init). */
static int recv_one(struct weft_mpsc *ch, void *out)
{
    if (ring_pop(ch, out) == 0) {
        wake_sender(ch);
        return 0;
    }
    /* Acquire pairs with the release of every sender's decrement (one release
     * sequence of RMWs): once the count is zero, everything sent is visible
     * to the pop below. Seq_cst: the receiver's re-check in handshake 1. */
    if (atomic_load(&ch->senders) != 0) {
        /* Closed by the receiver: empty for good once head reaches the
         * marked tail (the mark was set before `closed`). Short of it, a
         * sender is publishing a position claimed before the mark, and wakes
         * us once it has. Seq_cst: the re-check of a receive future that a
         * close from another task wakes. Open, the tail's line (every
         * sender's) is not touched. */
        if (!atomic_load(&ch->closed))
            return -EAGAIN;
        size_t tail = atomic_load(&ch->tail);
        return ch->head == (tail & ~ch->mark) ? -EPIPE : -EAGAIN;
    }
    /* A message may have been published between the first pop and the last
     * sender's drop: look once more. No sender is left to wake. */
    return ring_pop(ch, out) == 0 ? 0 : -EPIPE;
}

int weft_mpsc_try_recv(struct weft_mpsc *ch, void *out)
{
    return !ch || !out ? -EINVAL : recv_one(ch, out);
}

/* ---- futures ------------------------------------------------------------------- */

static enum weft_poll send_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_mpsc_send *s = (struct weft_mpsc_send *)f;
    struct weft_mpsc *ch = s->ch;

    if (s->base.resume == FUT_DONE)
        return WEFT_READY;
    if (!weft_coop_take(cx))
        return WEFT_PENDING;
    /* Whether a slot was freed for us before this push (only a sender that
     * waited asks): if the push then succeeds, it used that turn; a turn that
     * came only after the push is passed on by waiter_leave. */
    bool took_turn = s->waiter.registered && waiter_notified(ch, &s->waiter);
    int r = ring_push(ch, s->msg);
    if (r == -EAGAIN) {
        /* Any turn we had went to another sender; we are (re)joining the list,
         * so leaving it again takes the lock. */
        took_turn = false;
        /* A newly joined waiter retries once: handshake 2. One already in the
         * list was counted all along, so the next freed slot wakes someone. */
        if (waiter_enqueue(ch, &s->waiter, cx->waker))
            r = ring_push(ch, s->msg);
        if (r == -EAGAIN) {
            s->base.resume = FUT_WAITING;
            cx->budget++; /* no progress: give the unit back */
            return WEFT_PENDING;
        }
    }
    if (r == 0)
        awaker_wake(&ch->rx);
    if (s->waiter.registered)
        waiter_leave(ch, &s->waiter, took_turn);
    s->res = r;
    s->base.resume = FUT_DONE;
    return WEFT_READY;
}

static void send_drop(struct weft_future *f)
{
    struct weft_mpsc_send *s = (struct weft_mpsc_send *)f;
    if (s->waiter.registered)
        waiter_leave(s->ch, &s->waiter, false); /* a turn handed to it goes unused */
}

static const struct weft_future_ops send_ops = { send_poll, send_drop };

void weft_mpsc_send_init(struct weft_mpsc_send *s, struct weft_mpsc *ch, const void *msg)
{
    bool bad = !ch || !msg; /* ready at once with -EINVAL */
    s->base = (struct weft_future){ &send_ops, bad ? FUT_DONE : FUT_IDLE };
    s->ch = ch;
    s->msg = msg;
    s->res = bad ? -EINVAL : 0;
    s->waiter = (struct weft__mpsc_waiter){ 0 };
}

static enum weft_poll recv_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_mpsc_recv *r = (struct weft_mpsc_recv *)f;
    struct weft_mpsc *ch = r->ch;

    if (r->base.resume == FUT_DONE)
        return WEFT_READY;
    if (!weft_coop_take(cx))
        return WEFT_PENDING;
    int res = recv_one(ch, r->out);
    if (res == -EAGAIN) {
        awaker_register(&ch->rx, cx->waker);
        if (r->base.resume != FUT_WAITING) {
            ch->rx_waiting++;
            r->base.resume = FUT_WAITING;
        }
        /* The re-check of handshake 1. */
        res = recv_one(ch, r->out);
        if (res == -EAGAIN) {
            cx->budget++; /* no progress: give the unit back */
            return WEFT_PENDING;
        }
    }
    /* If we registered, the slot may stay armed with this task's waker: at
     * worst one spurious wake later, and no clone at the next wait. */
    if (r->base.resume == FUT_WAITING)
        ch->rx_waiting--;
    r->res = res;
    r->base.resume = FUT_DONE;
    return WEFT_READY;
}

static void recv_drop(struct weft_future *f)
{
    struct weft_mpsc_recv *r = (struct weft_mpsc_recv *)f;
    /* Another receive future of the receiver still pending (in the same
     * task: a join_all of two receives, one under a timeout that fired)
     * relies on the armed waker: leave it. */
    if (r->base.resume == FUT_WAITING && --r->ch->rx_waiting == 0)
        awaker_unregister(&r->ch->rx);
}

static const struct weft_future_ops recv_ops = { recv_poll, recv_drop };

void weft_mpsc_recv_init(struct weft_mpsc_recv *r, struct weft_mpsc *ch, void *out)
{
    bool bad = !ch || !out; /* ready at once with -EINVAL */
    r->base = (struct weft_future){ &recv_ops, bad ? FUT_DONE : FUT_IDLE };
    r->ch = ch;
    r->out = out;
    r->res = bad ? -EINVAL : 0;
}
