/* weft/sync.h: channels between tasks and threads: a oneshot and a bounded
 * multi-producer, single-consumer queue.
 *
 * Included by <weft.h>; not meant to be included on its own.
 *
 * Rules shared by both channels.
 *  1. A message is msg_size bytes, copied in by the sender and out by the
 *     receiver; the channel never looks inside it. Nothing is lost or
 *     duplicated, and a sender's messages arrive in the order it sent them.
 *  2. Each side is a handle that is released exactly once. A future working on
 *     a side must be dropped (weft_future_drop) before that side is released.
 *  3. -EPIPE means the other side is gone: for a receiver once everything
 *     already sent has been taken, for a sender at once.
 *  4. Sending works from any thread, inside a runtime or not: a foreign thread
 *     uses the try_ call, or awaits a send future under weft_block_on.
 *  5. A future dropped while pending unregisters its waker; nothing points at
 *     it afterwards (a wake already under way may still reach its task once).
 *     Receive futures of one mpsc receiver pending together (in one task: a
 *     join_all of two receives) share one registration, which stays until the
 *     last of them is dropped or ready.
 *  6. The futures count against the cooperative budget (WEFT_COOP_BUDGET) when
 *     they complete, as Tokio's do, so a task that finds its channel always
 *     ready still lets the others run.
 *  7. Calls that fail synchronously (-EINVAL, -ENOMEM, -EAGAIN) have no side
 *     effects.
 *  8. A NULL channel, message or output pointer is -EINVAL: from the calls
 *     that return an int, and from a future made with one (ready at its first
 *     poll; a oneshot receive future with a channel still takes over its
 *     receiver side, which its drop releases). Releasing a NULL channel (the
 *     _drop calls, sender_clone) does nothing, as free(NULL). */
#ifndef WEFT_SYNC_H
#define WEFT_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "future.h"

/* The largest message either channel carries. */
#define WEFT_CHANNEL_MSG_MAX ((size_t)64 * 1024)
/* The largest capacity of an mpsc channel. */
#define WEFT_MPSC_CAPACITY_MAX ((size_t)1 << 24)

/* ---- oneshot ---------------------------------------------------------------
 * One message, sent at most once, from any thread. The state is one malloc'd
 * block (the message inline), freed when both sides are released. The sender
 * side is released by weft_oneshot_send or weft_oneshot_sender_drop; the
 * receiver side by dropping the receive future, or weft_oneshot_receiver_drop
 * if no receive future was ever made. */

struct weft_oneshot;

/* Creates a channel for one message of msg_size bytes; 0, -EINVAL (out NULL, msg_size 0 or over WEFT_CHANNEL_MSG_MAX) or -ENOMEM. */
int weft_oneshot_create(struct weft_oneshot **out, size_t msg_size);

/* Sends *msg and releases the sender side; 0, -EPIPE if the receiver was already gone (msg not delivered), or -EINVAL (ch or msg NULL; the side is kept). */
int weft_oneshot_send(struct weft_oneshot *ch, const void *msg);

/* Releases the sender side without sending: the receiver gets -EPIPE. */
void weft_oneshot_sender_drop(struct weft_oneshot *ch);

/* Releases the receiver side without receiving (only when no receive future was made): a later send gets -EPIPE. */
void weft_oneshot_receiver_drop(struct weft_oneshot *ch);

/* Awaits the message. Ready with res 0 (the message was copied to out) or
 * -EPIPE (the sender was released without sending). */
struct weft_oneshot_recv {
    struct weft_future base;
    struct weft_oneshot *ch;
    void *out;
    int32_t res; /* valid once ready */
};

/* Takes over the receiver side (dropping the future releases it); out needs msg_size bytes and must stay valid until ready. */
void weft_oneshot_recv_init(struct weft_oneshot_recv *r, struct weft_oneshot *ch, void *out);

/* ---- mpsc --------------------------------------------------------------------
 * A bounded queue of `capacity` messages with any number of senders on any
 * threads and one receiver. The sender side is reference-counted
 * (weft_mpsc_sender_clone / _drop); the receiver is one handle, used by one
 * thread or task at a time (its try_recv and receive futures never run
 * concurrently). The state is one malloc'd block, freed when the last sender
 * and the receiver are both released. Nothing allocates after create, and
 * the only lock is taken on the slow path: by a sender that must wait for
 * room, and by the receiver when it frees a slot while a sender waits. */

struct weft_mpsc;

/* Creates a channel; the caller holds one sender reference and the receiver. 0, -EINVAL (out NULL, capacity 0 or over WEFT_MPSC_CAPACITY_MAX, msg_size 0 or over WEFT_CHANNEL_MSG_MAX) or -ENOMEM. */
int weft_mpsc_create(struct weft_mpsc **out, size_t capacity, size_t msg_size);

/* Adds a sender reference (the caller holds one already). Any thread. */
void weft_mpsc_sender_clone(struct weft_mpsc *ch);

/* Releases a sender reference; after the last one the receiver drains what is queued, then gets -EPIPE. */
void weft_mpsc_sender_drop(struct weft_mpsc *ch);

/* Closes the channel but keeps the receiver: pending and later sends get -EPIPE (a message they
 * were not given is not queued), and the receiver (a receive future pending in another task is
 * woken) drains what was queued, then gets -EPIPE. */
void weft_mpsc_receiver_close(struct weft_mpsc *ch);

/* Releases the receiver: queued messages are discarded (close and drain first to keep them),
 * pending and later sends get -EPIPE. */
void weft_mpsc_receiver_drop(struct weft_mpsc *ch);

/* Queues a copy of *msg without waiting (any sender, any thread); 0, -EAGAIN (full), -EPIPE (receiver gone or closed) or -EINVAL (ch or msg NULL). */
int weft_mpsc_try_send(struct weft_mpsc *ch, const void *msg);

/* Takes the oldest message into *out (receiver); 0, -EAGAIN (empty), -EPIPE (empty, and every sender released or the receiver closed) or -EINVAL (ch or out NULL). */
int weft_mpsc_try_recv(struct weft_mpsc *ch, void *out);

/* Private: a pending send future's place in the channel's list of senders
 * waiting for room. The channel's lock guards every field but `registered`,
 * which is the owning future's own. */
struct weft__mpsc_waiter {
    struct weft__mpsc_waiter *prev, *next;
    struct weft_waker waker;
    uint8_t queued;     /* in the list */
    uint8_t notified;   /* taken off the list and woken: a slot was freed for it */
    uint8_t registered; /* the future joined the list and has not left yet */
};

/* Awaits room and queues a copy of *msg. Ready with res 0 or -EPIPE (the
 * receiver is gone; the message was not queued). */
struct weft_mpsc_send {
    struct weft_future base;
    struct weft_mpsc *ch;
    const void *msg;
    int32_t res; /* valid once ready */
    struct weft__mpsc_waiter waiter; /* private */
};

/* Prepares a send of *msg on behalf of a sender reference the caller holds; msg must stay valid until ready.
 * Waiting sends are woken in turn, one per freed slot, but a send that finds
 * room takes it at once, so under constant fresh sends a waiting one may wait
 * on (Tokio's bounded sender hands a freed slot to the first waiter). */
void weft_mpsc_send_init(struct weft_mpsc_send *s, struct weft_mpsc *ch, const void *msg);

/* Awaits the oldest message. Ready with res 0 (copied to out) or -EPIPE
 * (empty, and every sender released or the receiver closed). */
struct weft_mpsc_recv {
    struct weft_future base;
    struct weft_mpsc *ch;
    void *out;
    int32_t res; /* valid once ready */
};

/* Prepares a receive into out (msg_size bytes, valid until ready) on behalf of the receiver. */
void weft_mpsc_recv_init(struct weft_mpsc_recv *r, struct weft_mpsc *ch, void *out);

#endif
