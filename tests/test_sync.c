/* tests/test_sync.c: the oneshot and mpsc channels (runtime/oneshot.c,
 * runtime/mpsc.c), driven by hand-made wakers and plain threads, no runtime. */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "weft/future.h"
#include "weft/sync.h"

/* The threaded scenarios and their condvar waker (parker, drive, run_mpsc,
 * run_ping_pong) are shared with the ThreadSanitizer stress program. */
#define STRESS_SYNC_NO_MAIN
#include "stress_sync.c"

/* ---- a counting waker -----------------------------------------------------------
 * Counts wakes, and the clones it handed out and got back. The test's own copy
 * is borrowed (never counted), so live() is how many wakers the channel holds. */
struct counter {
    atomic_int wakes, clones, drops;
};

static const struct weft_waker_ops counter_ops;

static struct weft_waker counter_clone(const void *d)
{
    atomic_fetch_add(&((struct counter *)d)->clones, 1);
    return (struct weft_waker){ d, &counter_ops };
}

static void counter_wake_by_ref(const void *d) { atomic_fetch_add(&((struct counter *)d)->wakes, 1); }
static void counter_drop(const void *d) { atomic_fetch_add(&((struct counter *)d)->drops, 1); }
static void counter_wake(const void *d) { counter_wake_by_ref(d), counter_drop(d); }

static const struct weft_waker_ops counter_ops = {
    counter_clone, counter_wake, counter_wake_by_ref, counter_drop,
};

static int live(struct counter *c) { return atomic_load(&c->clones) - atomic_load(&c->drops); }
static int wakes(struct counter *c) { return atomic_load(&c->wakes); }

static enum weft_poll poll_with(void *f, struct counter *c)
{
    struct weft_waker w = { c, &counter_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    return weft_future_poll(f, &cx);
}

/* try_send / try_recv of a u32: the result, or for take() the value. */
static int put(struct weft_mpsc *ch, uint32_t v) { return weft_mpsc_try_send(ch, &v); }

static int64_t take(struct weft_mpsc *ch)
{
    uint32_t v;
    int r = weft_mpsc_try_recv(ch, &v);
    return r ? r : (int64_t)v;
}

#ifndef __SANITIZE_ADDRESS__
/* vm.overcommit_memory: 0 (heuristic, Debian's default), 1 (always), 2 (never). */
static int overcommit_mode(void)
{
    int mode = -1;
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    if (f) {
        if (fscanf(f, "%d", &mode) != 1)
            mode = -1;
        fclose(f);
    }
    return mode;
}

static long resident_pages(void)
{
    long size = 0, rss = -1;
    FILE *f = fopen("/proc/self/statm", "r");
    cr_assert(f && fscanf(f, "%ld %ld", &size, &rss) == 2);
    fclose(f);
    return rss;
}
#endif

static struct weft_mpsc *mpsc_u32(size_t cap)
{
    struct weft_mpsc *ch;
    cr_assert_eq(weft_mpsc_create(&ch, cap, sizeof(uint32_t)), 0);
    return ch;
}

static void mpsc_close(struct weft_mpsc *ch)
{
    weft_mpsc_sender_drop(ch);
    weft_mpsc_receiver_drop(ch);
}

/* Starts a send of *v that must find the ring full. */
static void send_pending(struct weft_mpsc_send *s, struct weft_mpsc *ch, const uint32_t *v,
                         struct counter *c)
{
    weft_mpsc_send_init(s, ch, v);
    cr_assert_eq(poll_with(s, c), WEFT_PENDING);
}

/* A receive future that must be ready at its first poll: its res, or the value. */
static int64_t recv_ready(struct weft_mpsc *ch, struct counter *c)
{
    struct weft_mpsc_recv r;
    uint32_t v;
    weft_mpsc_recv_init(&r, ch, &v);
    cr_assert_eq(poll_with(&r, c), WEFT_READY);
    weft_future_drop(&r.base);
    return r.res ? r.res : (int64_t)v;
}

/* ---- oneshot --------------------------------------------------------------------- */

Test(oneshot, send_then_recv, .timeout = 20)
{
    struct weft_oneshot *ch;
    struct counter c = { 0 };
    uint64_t v = 0x1122334455667788u, out = 0;
    struct weft_oneshot_recv r;

    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0);
    cr_assert_eq(weft_oneshot_send(ch, &v), 0);
    weft_oneshot_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, 0);
    cr_assert_eq(out, v);
    weft_future_drop(&r.base);
    cr_assert_eq(wakes(&c) + live(&c), 0);
}

Test(oneshot, pending_recv_woken_once_by_send, .timeout = 20)
{
    struct weft_oneshot *ch;
    struct counter c = { 0 }, d = { 0 };
    uint32_t v = 7, out = 0;
    struct weft_oneshot_recv r;

    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0);
    weft_oneshot_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &d), WEFT_PENDING);
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING); /* another task: replaces d */
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING);
    cr_assert_eq(atomic_load(&c.clones), 1, "same task: the waker is kept, not cloned again");
    cr_assert_eq(live(&d), 0);
    cr_assert_eq(weft_oneshot_send(ch, &v), 0);
    cr_assert_eq(wakes(&c), 1);
    cr_assert_eq(wakes(&d), 0);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, 0);
    cr_assert_eq(out, 7);
    weft_future_drop(&r.base);
    cr_assert_eq(wakes(&c), 1);
    cr_assert_eq(live(&c), 0);
}

Test(oneshot, sender_dropped_gives_epipe, .timeout = 20)
{
    struct weft_oneshot *ch;
    struct counter c = { 0 };
    uint32_t out = 5;
    struct weft_oneshot_recv r;

    /* The receiver waits when the sender goes away: woken, then -EPIPE. */
    cr_assert_eq(weft_oneshot_create(&ch, sizeof out), 0);
    weft_oneshot_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING);
    weft_oneshot_sender_drop(ch);
    cr_assert_eq(wakes(&c), 1);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, -EPIPE);
    cr_assert_eq(out, 5, "out is untouched");
    weft_future_drop(&r.base);
    cr_assert_eq(live(&c), 0);

    /* The sender is gone before the first poll. */
    cr_assert_eq(weft_oneshot_create(&ch, sizeof out), 0);
    weft_oneshot_sender_drop(ch);
    weft_oneshot_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, -EPIPE);
    weft_future_drop(&r.base);
}

Test(oneshot, receiver_gone_send_gives_epipe, .timeout = 20)
{
    struct weft_oneshot *ch;
    struct counter c = { 0 };
    uint32_t v = 1, out;
    struct weft_oneshot_recv r;

    /* A pending receive future dropped: its waker is released at once. */
    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0);
    weft_oneshot_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING);
    cr_assert_eq(live(&c), 1);
    weft_future_drop(&r.base);
    cr_assert_eq(live(&c), 0);
    cr_assert_eq(weft_oneshot_send(ch, &v), -EPIPE);
    cr_assert_eq(wakes(&c), 0);

    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0);
    weft_oneshot_recv_init(&r, ch, &out);
    weft_future_drop(&r.base); /* never polled */
    cr_assert_eq(weft_oneshot_send(ch, &v), -EPIPE);

    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0);
    weft_oneshot_receiver_drop(ch);
    cr_assert_eq(weft_oneshot_send(ch, &v), -EPIPE);

    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0); /* both give up */
    weft_oneshot_receiver_drop(ch);
    weft_oneshot_sender_drop(ch);
}

Test(oneshot, bad_sizes_and_largest_message, .timeout = 20)
{
    static unsigned char big[WEFT_CHANNEL_MSG_MAX], out[WEFT_CHANNEL_MSG_MAX];
    struct weft_oneshot *ch = (struct weft_oneshot *)&ch; /* failures set it to NULL */
    struct weft_oneshot_recv r;
    struct counter c = { 0 };

    cr_assert_eq(weft_oneshot_create(&ch, 0), -EINVAL);
    cr_assert_eq(weft_oneshot_create(&ch, WEFT_CHANNEL_MSG_MAX + 1), -EINVAL);
    cr_assert_eq(weft_oneshot_create(&ch, SIZE_MAX), -EINVAL);
    cr_assert_null(ch);
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (unsigned char)(i * 31 + 7);
    cr_assert_eq(weft_oneshot_create(&ch, sizeof big), 0);
    cr_assert_eq(weft_oneshot_send(ch, big), 0);
    weft_oneshot_recv_init(&r, ch, out);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(memcmp(big, out, sizeof big), 0);
    weft_future_drop(&r.base);
}

/* NULL pointers: -EINVAL from the int calls and from futures made with one
 * (ready at once), and nothing from the releases; a send refused for a NULL
 * message keeps the sender side, and a receive future with a NULL output
 * still releases the receiver side when dropped. */
Test(oneshot, null_pointers, .timeout = 20)
{
    struct weft_oneshot *ch;
    struct weft_oneshot_recv r;
    struct counter c = { 0 };
    uint32_t v = 7, out = 0;

    cr_assert_eq(weft_oneshot_create(NULL, sizeof v), -EINVAL);
    cr_assert_eq(weft_oneshot_send(NULL, &v), -EINVAL);
    weft_oneshot_sender_drop(NULL);
    weft_oneshot_receiver_drop(NULL);
    weft_oneshot_recv_init(&r, NULL, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, -EINVAL);
    weft_future_drop(&r.base);

    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0);
    cr_assert_eq(weft_oneshot_send(ch, NULL), -EINVAL);
    weft_oneshot_recv_init(&r, ch, NULL);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, -EINVAL);
    weft_future_drop(&r.base); /* the receiver side goes */
    cr_assert_eq(weft_oneshot_send(ch, &v), -EPIPE, "the sender side was kept; the receiver gone");
    cr_assert_eq(live(&c), 0);
}

/* ---- mpsc, one thread ------------------------------------------------------------ */

Test(mpsc, bad_inputs, .timeout = 20)
{
    struct weft_mpsc *ch = (struct weft_mpsc *)&ch; /* failures set it to NULL */

    cr_assert_eq(weft_mpsc_create(&ch, 0, 8), -EINVAL);
    cr_assert_eq(weft_mpsc_create(&ch, WEFT_MPSC_CAPACITY_MAX + 1, 8), -EINVAL);
    cr_assert_eq(weft_mpsc_create(&ch, SIZE_MAX, 8), -EINVAL);
    cr_assert_eq(weft_mpsc_create(&ch, 4, 0), -EINVAL);
    cr_assert_eq(weft_mpsc_create(&ch, 4, WEFT_CHANNEL_MSG_MAX + 1), -EINVAL);
    cr_assert_eq(weft_mpsc_create(&ch, 4, SIZE_MAX), -EINVAL);
    cr_assert_null(ch);
#ifndef __SANITIZE_ADDRESS__ /* which aborts on a request over a terabyte */
    if (overcommit_mode() == 0) { /* with 1 the terabyte is granted, untouched */
        ch = (struct weft_mpsc *)&ch;
        /* Too big to allocate (2^24 slots of 64 KiB, a terabyte): -ENOMEM. */
        cr_assert_eq(weft_mpsc_create(&ch, WEFT_MPSC_CAPACITY_MAX, WEFT_CHANNEL_MSG_MAX), -ENOMEM);
        cr_assert_null(ch);
    }
#endif
    cr_assert_eq(weft_mpsc_create(&ch, 2, WEFT_CHANNEL_MSG_MAX), 0);
    mpsc_close(ch);
}

/* NULL pointers, as for the oneshot: -EINVAL, nothing queued or taken. */
Test(mpsc, null_pointers, .timeout = 20)
{
    struct weft_mpsc_send s;
    struct weft_mpsc_recv r;
    struct counter c = { 0 };
    uint32_t v = 9, out = 0;

    cr_assert_eq(weft_mpsc_create(NULL, 4, sizeof v), -EINVAL);
    cr_assert_eq(weft_mpsc_try_send(NULL, &v), -EINVAL);
    cr_assert_eq(weft_mpsc_try_recv(NULL, &out), -EINVAL);
    weft_mpsc_sender_clone(NULL);
    weft_mpsc_sender_drop(NULL);
    weft_mpsc_receiver_drop(NULL);
    struct weft_mpsc *ch = mpsc_u32(4);
    cr_assert_eq(weft_mpsc_try_send(ch, NULL), -EINVAL);
    cr_assert_eq(weft_mpsc_try_recv(ch, NULL), -EINVAL);
    for (int bad = 0; bad < 2; bad++) {
        weft_mpsc_send_init(&s, bad ? NULL : ch, bad ? &v : NULL);
        cr_assert_eq(poll_with(&s, &c), WEFT_READY);
        cr_assert_eq(s.res, -EINVAL);
        weft_future_drop(&s.base);
        weft_mpsc_recv_init(&r, bad ? NULL : ch, bad ? &out : NULL);
        cr_assert_eq(poll_with(&r, &c), WEFT_READY);
        cr_assert_eq(r.res, -EINVAL);
        weft_future_drop(&r.base);
    }
    cr_assert_eq(take(ch), -EAGAIN, "nothing was queued");
    cr_assert_eq(put(ch, 5), 0);
    cr_assert_eq(take(ch), 5);
    cr_assert_eq(live(&c), 0);
    mpsc_close(ch);
}

/* FIFO, -EAGAIN at exactly `capacity`, and many laps through rings whose
 * capacity is not always a power of two. */
Test(mpsc, fifo_capacity_and_laps, .timeout = 20)
{
    const size_t caps[] = { 1, 2, 3, 5, 7, 8, 64, 100 };
    for (size_t k = 0; k < sizeof caps / sizeof caps[0]; k++) {
        struct weft_mpsc *ch = mpsc_u32(caps[k]);
        uint32_t in = 0, out = 0;

        cr_assert_eq(take(ch), -EAGAIN);
        for (uint32_t round = 0; round < 2000; round++) {
            while (in - out < round % (caps[k] + 1))
                cr_assert_eq(put(ch, in++), 0);
            if (in - out == caps[k])
                cr_assert_eq(put(ch, in), -EAGAIN, "cap %zu", caps[k]);
            for (uint32_t n = round % 3 ? (in - out) / 2 + 1 : in - out; n && out < in; n--)
                cr_assert_eq(take(ch), out++, "cap %zu", caps[k]);
        }
        weft_mpsc_sender_drop(ch);
        while (out < in)
            cr_assert_eq(take(ch), out++);
        cr_assert_eq(take(ch), -EPIPE);
        weft_mpsc_receiver_drop(ch);
    }
}

Test(mpsc, pending_recv_woken_once_by_send, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(4);
    struct counter c = { 0 }, d = { 0 };
    struct weft_mpsc_recv r;
    uint32_t out = 0;

    weft_mpsc_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING);
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING);
    cr_assert_eq(atomic_load(&c.clones), 1, "same task: no second clone");
    cr_assert_eq(put(ch, 10), 0);
    cr_assert_eq(put(ch, 11), 0);
    cr_assert_eq(wakes(&c), 1, "one wake per wait");
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, 0);
    cr_assert_eq(out, 10);
    weft_future_drop(&r.base);
    cr_assert_eq(recv_ready(ch, &c), 11);

    /* A pending receive dropped: its waker is released, nobody is woken. */
    weft_mpsc_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &d), WEFT_PENDING);
    cr_assert_eq(live(&d), 1);
    weft_future_drop(&r.base);
    cr_assert_eq(live(&d), 0);
    cr_assert_eq(put(ch, 3), 0);
    cr_assert_eq(wakes(&d), 0);
    cr_assert_eq(recv_ready(ch, &c), 3);
    mpsc_close(ch);
    cr_assert_eq(live(&c), 0);
}

Test(mpsc, send_pends_when_full_and_is_woken, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(1);
    struct counter c = { 0 };
    struct weft_mpsc_send s;
    uint32_t v = 2;

    cr_assert_eq(put(ch, 1), 0);
    send_pending(&s, ch, &v, &c);
    cr_assert_eq(poll_with(&s, &c), WEFT_PENDING);
    cr_assert_eq(atomic_load(&c.clones), 1, "same task: no second clone");
    cr_assert_eq(take(ch), 1);
    cr_assert_eq(wakes(&c), 1);
    cr_assert_eq(poll_with(&s, &c), WEFT_READY);
    cr_assert_eq(s.res, 0);
    cr_assert_eq(live(&c), 0, "a finished send holds no waker");
    weft_future_drop(&s.base);
    cr_assert_eq(take(ch), 2);
    cr_assert_eq(wakes(&c), 1);
    mpsc_close(ch);
}

/* Waiters are served first come, first served, one per freed slot; one that
 * lost its slot to a try_send keeps its place at the front. */
Test(mpsc, waiting_senders_take_turns, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(1);
    struct counter c[3] = { 0 };
    struct weft_mpsc_send s[3];
    uint32_t msgs[3] = { 0, 1, 2 };

    cr_assert_eq(put(ch, 100), 0);
    for (int i = 0; i < 3; i++)
        send_pending(&s[i], ch, &msgs[i], &c[i]);
    cr_assert_eq(take(ch), 100);
    cr_assert_eq(wakes(&c[0]), 1);
    cr_assert_eq(put(ch, 9), 0); /* a try_send takes the slot first */
    cr_assert_eq(poll_with(&s[0], &c[0]), WEFT_PENDING);
    cr_assert_eq(take(ch), 9);
    cr_assert_eq(wakes(&c[0]), 2, "back at the front of the line");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(wakes(&c[i]), i == 0 ? 2 : 1);
        for (int j = i + 1; j < 3; j++)
            cr_assert_eq(wakes(&c[j]), 0);
        cr_assert_eq(poll_with(&s[i], &c[i]), WEFT_READY);
        cr_assert_eq(s[i].res, 0);
        weft_future_drop(&s[i].base);
        cr_assert_eq(take(ch), i);
    }
    mpsc_close(ch);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(live(&c[i]), 0);
}

/* Two receive futures of the receiver pending in one task (a join_all of two
 * receives, one under a timeout that fires): dropping one leaves the other
 * woken by the next message. The drop used to unregister the one shared
 * waker: the message then sat queued and the task slept for good. */
Test(mpsc, two_pending_receives_one_dropped, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(4);
    struct counter c = { 0 };
    struct weft_mpsc_recv r1, r2;
    uint32_t o1 = 0, o2 = 0;
    weft_mpsc_recv_init(&r1, ch, &o1);
    weft_mpsc_recv_init(&r2, ch, &o2);
    cr_assert_eq(poll_with(&r1, &c), WEFT_PENDING);
    cr_assert_eq(poll_with(&r2, &c), WEFT_PENDING);
    weft_future_drop(&r1.base);
    cr_assert_eq(put(ch, 9), 0);
    cr_assert_eq(wakes(&c), 1, "a message sent, the pending receive's task not woken");
    cr_assert_eq(poll_with(&r2, &c), WEFT_READY);
    cr_assert_eq(r2.res, 0);
    cr_assert_eq(o2, 9);
    weft_future_drop(&r2.base);
    /* Both dropped pending: nothing is left registered. */
    weft_mpsc_recv_init(&r1, ch, &o1);
    weft_mpsc_recv_init(&r2, ch, &o2);
    cr_assert_eq(poll_with(&r1, &c), WEFT_PENDING);
    cr_assert_eq(poll_with(&r2, &c), WEFT_PENDING);
    weft_future_drop(&r2.base);
    weft_future_drop(&r1.base);
    cr_assert_eq(live(&c), 0, "a waker left registered after both drops");
    mpsc_close(ch);
}

Test(mpsc, dropped_pending_send_unregisters_and_passes_wake_on, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(1);
    struct counter a = { 0 }, b = { 0 };
    struct weft_mpsc_send sa, sb;
    uint32_t va = 2, vb = 3;

    /* Dropped before its turn: it just leaves, nobody is woken. */
    cr_assert_eq(put(ch, 1), 0);
    send_pending(&sa, ch, &va, &a);
    weft_future_drop(&sa.base);
    cr_assert_eq(live(&a), 0);
    cr_assert_eq(take(ch), 1);
    cr_assert_eq(wakes(&a), 0);
    cr_assert_eq(take(ch), -EAGAIN, "the dropped send queued nothing");

    /* Dropped after being chosen for a slot: the turn passes on. */
    cr_assert_eq(put(ch, 1), 0);
    send_pending(&sa, ch, &va, &a);
    send_pending(&sb, ch, &vb, &b);
    cr_assert_eq(take(ch), 1);
    cr_assert_eq(wakes(&a), 1, "the first waiter is chosen");
    cr_assert_eq(wakes(&b), 0);
    weft_future_drop(&sa.base);
    cr_assert_eq(live(&a), 0);
    cr_assert_eq(wakes(&b), 1, "its turn passes to the next waiter");
    cr_assert_eq(poll_with(&sb, &b), WEFT_READY);
    cr_assert_eq(sb.res, 0);
    weft_future_drop(&sb.base);
    cr_assert_eq(take(ch), 3);
    cr_assert_eq(take(ch), -EAGAIN);
    mpsc_close(ch);
    cr_assert_eq(live(&b), 0);
}

Test(mpsc, receiver_drop_gives_senders_epipe, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(1);
    struct counter a = { 0 };
    struct weft_mpsc_send sa;
    uint32_t va = 2;

    cr_assert_eq(put(ch, 1), 0);
    send_pending(&sa, ch, &va, &a);
    weft_mpsc_receiver_drop(ch); /* discards the queued message */
    cr_assert_eq(wakes(&a), 1);
    cr_assert_eq(poll_with(&sa, &a), WEFT_READY);
    cr_assert_eq(sa.res, -EPIPE);
    weft_future_drop(&sa.base);
    cr_assert_eq(put(ch, 3), -EPIPE);
    weft_mpsc_send_init(&sa, ch, &va);
    cr_assert_eq(poll_with(&sa, &a), WEFT_READY);
    cr_assert_eq(sa.res, -EPIPE);
    weft_future_drop(&sa.base);
    weft_mpsc_sender_drop(ch);
    cr_assert_eq(live(&a), 0);
}

Test(mpsc, senders_gone_receiver_drains_then_epipe, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(4);
    struct counter c = { 0 };
    struct weft_mpsc_recv r;
    uint32_t out;

    weft_mpsc_sender_clone(ch);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert_eq(put(ch, i), 0);
    weft_mpsc_sender_drop(ch); /* one reference left: still open */
    cr_assert_eq(take(ch), 0);
    weft_mpsc_sender_drop(ch);
    cr_assert_eq(take(ch), 1);
    cr_assert_eq(recv_ready(ch, &c), 2);
    cr_assert_eq(take(ch), -EPIPE);
    cr_assert_eq(recv_ready(ch, &c), -EPIPE);
    weft_mpsc_receiver_drop(ch);

    /* A receiver already waiting is woken by the last sender's drop. */
    ch = mpsc_u32(4);
    weft_mpsc_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING);
    weft_mpsc_sender_drop(ch);
    cr_assert_eq(wakes(&c), 1);
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, -EPIPE);
    weft_future_drop(&r.base);
    weft_mpsc_receiver_drop(ch);
    cr_assert_eq(live(&c), 0);
}

/* A receive whose message waits: with no budget left it yields (pending,
 * its task woken, nothing taken); given one unit it takes the message
 * (`want` in *out) and spends the unit. */
static void recv_spends_the_budget(struct weft_future *f, struct counter *c, const uint32_t *out,
                                   uint32_t want)
{
    struct weft_waker w = { c, &counter_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    int woken = wakes(c);
    cx.budget = 0;
    cr_assert_eq(weft_future_poll(f, &cx), WEFT_PENDING);
    cr_assert_eq(wakes(c), woken + 1, "the task is woken to run again later");
    cr_assert_eq(*out, 0, "nothing was taken");
    cx.budget = 1;
    cr_assert_eq(weft_future_poll(f, &cx), WEFT_READY);
    cr_assert_eq(cx.budget, 0);
    cr_assert_eq(*out, want);
}

Test(mpsc, spent_budget_yields, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(2);
    struct counter c = { 0 };
    struct weft_waker w = { &c, &counter_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    struct weft_mpsc_send s;
    uint32_t v = 4;

    weft_mpsc_send_init(&s, ch, &v);
    cx.budget = 0;
    cr_assert_eq(weft_future_poll(&s.base, &cx), WEFT_PENDING);
    cr_assert_eq(wakes(&c), 1, "the task is woken to run again later");
    cr_assert_eq(take(ch), -EAGAIN, "nothing was sent");
    cx.budget = 1;
    cr_assert_eq(weft_future_poll(&s.base, &cx), WEFT_READY);
    cr_assert_eq(cx.budget, 0);
    weft_future_drop(&s.base);

    /* The receive too. */
    struct weft_mpsc_recv r;
    uint32_t out = 0;
    weft_mpsc_recv_init(&r, ch, &out);
    recv_spends_the_budget(&r.base, &c, &out, 4);
    cr_assert_eq(r.res, 0);
    weft_future_drop(&r.base);
    mpsc_close(ch);
}

/* The oneshot's receive spends the budget as the mpsc's does (sync.h). */
Test(oneshot, spent_budget_yields, .timeout = 20)
{
    struct weft_oneshot *ch;
    struct counter c = { 0 };
    uint32_t v = 7, out = 0;
    struct weft_oneshot_recv r;

    cr_assert_eq(weft_oneshot_create(&ch, sizeof v), 0);
    cr_assert_eq(weft_oneshot_send(ch, &v), 0);
    weft_oneshot_recv_init(&r, ch, &out);
    recv_spends_the_budget(&r.base, &c, &out, 7);
    cr_assert_eq(r.res, 0);
    weft_future_drop(&r.base);
    cr_assert_eq(live(&c), 0);
}

/* Closed by the receiver: the waiting sender is woken with -EPIPE, later
 * sends get -EPIPE, and the receiver still takes what was queued before it
 * sees -EPIPE (a dropped receiver discards it). Closing twice, then dropping,
 * is harmless. */
Test(mpsc, receiver_close_drains_then_epipe, .timeout = 20)
{
    struct weft_mpsc *ch = mpsc_u32(2);
    struct counter a = { 0 }, c = { 0 };
    struct weft_mpsc_send sa;
    uint32_t va = 3;

    cr_assert_eq(put(ch, 1), 0);
    cr_assert_eq(put(ch, 2), 0);
    send_pending(&sa, ch, &va, &a);
    weft_mpsc_receiver_close(ch);
    cr_assert_eq(wakes(&a), 1);
    cr_assert_eq(poll_with(&sa, &a), WEFT_READY);
    cr_assert_eq(sa.res, -EPIPE);
    weft_future_drop(&sa.base);
    cr_assert_eq(put(ch, 4), -EPIPE);
    cr_assert_eq(recv_ready(ch, &c), 1);
    weft_mpsc_receiver_close(ch);
    cr_assert_eq(take(ch), 2);
    cr_assert_eq(take(ch), -EPIPE, "drained, and no sender can add more");
    cr_assert_eq(recv_ready(ch, &c), -EPIPE);
    weft_mpsc_receiver_close(NULL);
    mpsc_close(ch);
    cr_assert_eq(live(&a), 0);
    cr_assert_eq(live(&c), 0);

    /* A receive future pending elsewhere is woken by the close. */
    struct weft_mpsc_recv r;
    uint32_t out;
    ch = mpsc_u32(2);
    weft_mpsc_recv_init(&r, ch, &out);
    cr_assert_eq(poll_with(&r, &c), WEFT_PENDING);
    weft_mpsc_receiver_close(ch);
    cr_assert_eq(wakes(&c), 1, "the pending receive was not woken");
    cr_assert_eq(poll_with(&r, &c), WEFT_READY);
    cr_assert_eq(r.res, -EPIPE);
    weft_future_drop(&r.base);
    mpsc_close(ch);
    cr_assert_eq(live(&c), 0);
}

/* A channel's ring is not written at create: a ring of 2^20 slots of 4 KiB
 * (4 GiB) costs no resident memory until messages go through it. Before,
 * create wrote every slot's stamp (a page per slot here). */
Test(mpsc, create_leaves_the_ring_untouched, .timeout = 20)
{
#if defined(__SANITIZE_ADDRESS__)
    cr_skip_test("AddressSanitizer's allocator caps and shadows a 4 GiB block");
#else
    struct weft_mpsc *ch;
    if (overcommit_mode() == 2)
        cr_skip_test("vm.overcommit_memory is 2: 4 GiB of address space is not granted");
    long before = resident_pages();
    cr_assert_eq(weft_mpsc_create(&ch, (size_t)1 << 20, 4096), 0);
    long grown = resident_pages() - before;
    cr_assert_lt(grown, 1024, "%ld pages resident after create", grown);
    static uint32_t in[1024], out[1024]; /* one 4 KiB message */
    for (uint32_t i = 0; i < 3000; i++) { /* and it works */
        in[i % 1024] = i;
        cr_assert_eq(weft_mpsc_try_send(ch, in), 0);
        if (i % 2) {
            cr_assert_eq(weft_mpsc_try_recv(ch, out), 0);
            cr_assert_eq(out[(i / 2) % 1024], i / 2);
        }
    }
    mpsc_close(ch);
#endif
}

/* ---- threads (the scenarios of stress_sync.c) ---------------------------------------- */

/* Producers send until -EPIPE while the receiver closes after a few messages
 * and drains: every send that said 0 was received (before receiver_close,
 * draining and then dropping could lose a message sent in between). */
Test(mpsc, close_racing_senders_loses_nothing, .timeout = 20)
{
    int r = run_close(300);
    cr_assert_eq(r, 0, "%s", strerror(-r));
}


Test(mpsc, threads_4x250k_through_64, .timeout = 20)
{
    int r = run_mpsc(250000, 64);
    cr_assert_eq(r, 0, "%s", strerror(-r));
}

Test(mpsc, ping_pong_between_threads, .timeout = 20)
{
    int r = run_ping_pong(20000, false);
    cr_assert_eq(r, 0, "%s", strerror(-r));
}

Test(mpsc, ping_pong_racing_a_spinning_echo, .timeout = 20)
{
    int r = run_ping_pong(20000, true);
    cr_assert_eq(r, 0, "%s", strerror(-r));
}

Test(oneshot, answered_from_other_thread, .timeout = 20)
{
    int r = run_oneshot(50000);
    cr_assert_eq(r, 0, "%s", strerror(-r));
}
