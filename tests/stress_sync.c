/* tests/stress_sync.c: the channels under real threads, for ThreadSanitizer.
 *
 *   stress_sync [small | full | N]     N messages per producer (small: 20000,
 *                                      full and default: 250000)
 *
 * PRODUCERS threads send N messages each through a capacity-64 mpsc to one
 * consumer thread, which checks that every (producer, seq) arrives exactly
 * once and in each producer's order. Then rounds of the same with a
 * receiver that closes the channel after a few messages and drains it: every
 * message a send was told it queued must arrive (the producers send until
 * -EPIPE). Then two threads play ping-pong through
 * two capacity-1 channels for N/10 rounds, first both parked, then against a
 * spinning echo. Then one thread answers N oneshots that another awaits, each
 * send racing with the registration. A blocked thread sleeps on a
 * condvar-backed waker and never re-polls without a wake, so a lost wakeup
 * stalls it: a watchdog notices that nothing moved for 4 s, the sleepers give
 * up, and the run fails instead of hanging. Prints one RESULT line per
 * scenario; exits non-zero on any failure.
 *
 * test_sync.c includes this file with STRESS_SYNC_NO_MAIN defined to run the
 * same scenarios under Criterion. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "weft/future.h"
#include "weft/sync.h"
#include "parker.h"

/* ---- a waker that parks a thread (tests/parker.h) ----------------------------------- */

static atomic_bool aborted, finished;
static atomic_ulong progress;

/* Sleeps until woken; -1 once the watchdog gave up. The timed wait only
 * checks for that: a thread never goes on without a wake. */
static int parker_park(struct parker *p)
{
    pthread_mutex_lock(&p->mu);
    while (!p->notified && !atomic_load(&aborted)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    bool ok = p->notified;
    p->notified = false;
    pthread_mutex_unlock(&p->mu);
    return ok ? 0 : -1;
}

/* Polls f to completion on this thread (a small weft_block_on), then drops it.
 * Returns the future's res, or -ETIMEDOUT if the watchdog gave up. */
static int drive(struct weft_future *f, const int32_t *res, struct parker *p)
{
    int r = 0;
    for (;;) {
        struct weft_waker w = { p, &parker_ops };
        struct weft_cx cx = weft_cx_from_waker(&w);
        if (weft_future_poll(f, &cx) == WEFT_READY) {
            r = *res;
            break;
        }
        if (parker_park(p) < 0) {
            r = -ETIMEDOUT;
            break;
        }
    }
    weft_future_drop(f);
    return r;
}

static void *watchdog(void *arg)
{
    (void)arg;
    unsigned long last = atomic_load(&progress);
    for (int still = 0; !atomic_load(&finished);) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        unsigned long now = atomic_load(&progress);
        still = now == last ? still + 1 : 0;
        last = now;
        if (still >= 400) {
            atomic_store(&aborted, true);
            break;
        }
    }
    return NULL;
}

static pthread_t watchdog_start(void)
{
    pthread_t t;
    atomic_store(&aborted, false);
    atomic_store(&finished, false);
    if (pthread_create(&t, NULL, watchdog, NULL) != 0)
        abort();
    return t;
}

/* Stops the watchdog; -ETIMEDOUT if it had fired. */
static int watchdog_stop(pthread_t t)
{
    atomic_store(&finished, true);
    pthread_join(t, NULL);
    return atomic_load(&aborted) ? -ETIMEDOUT : 0;
}

/* ---- producers and a consumer ------------------------------------------------------ */

#define PRODUCERS 4

struct msg {
    uint32_t producer;
    uint32_t check; /* derived from seq: catches a torn copy */
    uint64_t seq;
};

struct prod_arg {
    struct weft_mpsc *ch;
    uint32_t id;
    uint64_t n;
    uint64_t sent;  /* sends that said 0 */
    struct parker park;
    int err;
};

static uint32_t msg_check(uint64_t seq) { return (uint32_t)(seq * 2654435761u) ^ 0x5a5a5a5au; }

/* Even producers try try_send first and await a send future only when the ring
 * is full; odd ones always await a send future. */
static void *producer(void *arg)
{
    struct prod_arg *a = arg;
    for (uint64_t i = 0; i < a->n && a->err == 0; i++) {
        struct msg m = { a->id, msg_check(i), i };
        int r = (a->id % 2 == 0) ? weft_mpsc_try_send(a->ch, &m) : -EAGAIN;
        if (r == -EAGAIN) {
            struct weft_mpsc_send s;
            weft_mpsc_send_init(&s, a->ch, &m);
            r = drive(&s.base, &s.res, &a->park);
        }
        a->err = r;
        a->sent += r == 0;
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    weft_mpsc_sender_drop(a->ch);
    return NULL;
}

/* Receives until -EPIPE, alternating try_recv and receive futures, counting
 * each producer's messages in got[]; closes the channel after `close_after`. */
static int consume(struct weft_mpsc *ch, struct parker *p, uint64_t close_after,
                   uint64_t got[PRODUCERS])
{
    uint64_t *expect = got;
    for (uint64_t k = 0;; k++) {
        if (k == close_after)
            weft_mpsc_receiver_close(ch);
        struct msg m;
        int r = (k % 2) ? weft_mpsc_try_recv(ch, &m) : -EAGAIN;
        if (r == -EAGAIN) {
            struct weft_mpsc_recv rv;
            weft_mpsc_recv_init(&rv, ch, &m);
            r = drive(&rv.base, &rv.res, p);
        }
        if (r == -EPIPE)
            break;
        if (r != 0)
            return r;
        if (m.producer >= PRODUCERS || m.seq != expect[m.producer] || m.check != msg_check(m.seq))
            return -EBADMSG; /* duplicated, lost, reordered or torn */
        expect[m.producer]++;
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    return 0;
}

/* PRODUCERS x n messages through `capacity`, the receiver closing after
 * close_after of them (UINT64_MAX: never; the producers send until -EPIPE
 * then); 0 or a negative error. */
static int run_mpsc_closing(uint64_t n, size_t capacity, uint64_t close_after)
{
    struct weft_mpsc *ch;
    struct prod_arg a[PRODUCERS];
    pthread_t t[PRODUCERS];
    struct parker cp;

    parker_init(&cp);
    if (weft_mpsc_create(&ch, capacity, sizeof(struct msg)) != 0)
        return -ENOMEM;
    for (int i = 1; i < PRODUCERS; i++)
        weft_mpsc_sender_clone(ch);
    pthread_t dog = watchdog_start();
    for (uint32_t i = 0; i < PRODUCERS; i++) {
        a[i] = (struct prod_arg){ .ch = ch, .id = i, .n = n };
        parker_init(&a[i].park);
        if (pthread_create(&t[i], NULL, producer, &a[i]) != 0)
            abort();
    }
    uint64_t got[PRODUCERS] = { 0 };
    int r = consume(ch, &cp, close_after, got);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(t[i], NULL);
    weft_mpsc_receiver_drop(ch);
    int stalled = watchdog_stop(dog);
    for (int i = 0; i < PRODUCERS && r == 0; i++) {
        if (got[i] != a[i].sent || (close_after == UINT64_MAX && got[i] != n))
            r = -ENODATA; /* a message a send said it queued never came */
        else if (a[i].err && a[i].err != (close_after == UINT64_MAX ? 0 : -EPIPE))
            r = a[i].err;
        else if (!parker_balanced(&a[i].park))
            r = -EMLINK;
    }
    if (r == 0 && !parker_balanced(&cp))
        r = -EMLINK; /* a waker was leaked or dropped twice */
    return stalled ? stalled : r;
}

static int run_mpsc(uint64_t n, size_t capacity)
{
    return run_mpsc_closing(n, capacity, UINT64_MAX);
}

/* `rounds` channels of capacity 4, each closed by its receiver after 0 to 63
 * messages while the producers send for good. */
static int run_close(uint64_t rounds)
{
    int r = 0;
    for (uint64_t i = 0; i < rounds && r == 0; i++)
        r = run_mpsc_closing(UINT64_MAX, 4, (i * 7) % 64);
    return r;
}

/* ---- ping-pong through two capacity-1 channels ------------------------------------
 * Parked: both threads await futures and sleep, the benchmark's shape. Spinning:
 * the echo thread busy-loops on try_recv and try_send, so each of its moves
 * lands within nanoseconds of the driver's, right in the window between the
 * driver's failed attempt and its registration; the driver sends two pings a
 * round, so its second send finds the ring full and races the echo's pop. A
 * missing re-check after registering then shows up as a stall. */

struct echo_arg {
    struct weft_mpsc *ping, *pong;
    struct parker park;
    bool spin;
    int err;
};

/* One message out of e->ping into *v, or into e->pong from *v. */
static int echo_move(struct echo_arg *e, bool in, uint64_t *v)
{
    int r;
    if (e->spin) {
        for (unsigned n = 1; (r = in ? weft_mpsc_try_recv(e->ping, v) : weft_mpsc_try_send(e->pong, v)) == -EAGAIN; n++) {
            if (atomic_load_explicit(&aborted, memory_order_relaxed))
                return -ETIMEDOUT;
            if (n % 256 == 0)
                sched_yield(); /* let a starved driver run on a busy machine */
        }
        return r;
    }
    struct weft_mpsc_recv rv;
    struct weft_mpsc_send sd;
    if (in)
        weft_mpsc_recv_init(&rv, e->ping, v);
    else
        weft_mpsc_send_init(&sd, e->pong, v);
    return in ? drive(&rv.base, &rv.res, &e->park) : drive(&sd.base, &sd.res, &e->park);
}

/* Forwards ping to pong until ping closes, like the benchmark's echo task. */
static void *echo(void *arg)
{
    struct echo_arg *e = arg;
    uint64_t v;
    int r;
    while ((r = echo_move(e, true, &v)) == 0 && (r = echo_move(e, false, &v)) == 0)
        ;
    e->err = r == -EPIPE ? 0 : r;
    weft_mpsc_receiver_drop(e->ping);
    weft_mpsc_sender_drop(e->pong);
    return NULL;
}

static int run_ping_pong(uint64_t rounds, bool spin)
{
    struct echo_arg e = { .spin = spin };
    struct parker p;
    pthread_t t;
    int r = 0;
    const uint64_t burst = spin ? 2 : 1;

    parker_init(&p);
    parker_init(&e.park);
    if (weft_mpsc_create(&e.ping, 1, sizeof(uint64_t)) != 0 ||
        weft_mpsc_create(&e.pong, 1, sizeof(uint64_t)) != 0)
        return -ENOMEM;
    pthread_t dog = watchdog_start();
    if (pthread_create(&t, NULL, echo, &e) != 0)
        abort();
    for (uint64_t i = 0; i < rounds && r == 0; i++) {
        uint64_t out[2] = { 2 * i, 2 * i + 1 }, back = UINT64_MAX;
        for (uint64_t k = 0; k < burst && r == 0; k++) {
            struct weft_mpsc_send s;
            weft_mpsc_send_init(&s, e.ping, &out[k]);
            r = drive(&s.base, &s.res, &p);
        }
        for (uint64_t k = 0; k < burst && r == 0; k++) {
            struct weft_mpsc_recv rv;
            weft_mpsc_recv_init(&rv, e.pong, &back);
            if ((r = drive(&rv.base, &rv.res, &p)) == 0 && back != out[k])
                r = -EBADMSG;
        }
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    weft_mpsc_sender_drop(e.ping);
    weft_mpsc_receiver_drop(e.pong);
    pthread_join(t, NULL);
    int stalled = watchdog_stop(dog);
    if (r == 0)
        r = e.err;
    if (r == 0 && (!parker_balanced(&p) || !parker_balanced(&e.park)))
        r = -EMLINK;
    return stalled ? stalled : r;
}

/* ---- oneshots answered from another thread ---------------------------------------- */

struct os_arg {
    struct weft_oneshot **chs;
    uint64_t n;
    atomic_uint_fast64_t reached; /* the receiver is about to await this one */
};

/* Sends i on oneshot i, or drops the sender of every seventh, once the
 * receiver is about to await it: each send races with a registration. */
static void *oneshot_sender(void *arg)
{
    struct os_arg *a = arg;
    for (uint64_t i = 0; i < a->n; i++) {
        while (atomic_load_explicit(&a->reached, memory_order_relaxed) < i && !atomic_load(&aborted))
            sched_yield();
        if (i % 7 == 3)
            weft_oneshot_sender_drop(a->chs[i]);
        else if (weft_oneshot_send(a->chs[i], &i) != 0)
            abort(); /* the receiver never leaves early here */
    }
    return NULL;
}

static int run_oneshot(uint64_t n)
{
    struct os_arg a = { calloc(n, sizeof(struct weft_oneshot *)), n, 0 };
    struct parker p;
    pthread_t t;
    int r = 0;

    parker_init(&p);
    if (!a.chs)
        return -ENOMEM;
    for (uint64_t i = 0; i < n; i++)
        if (weft_oneshot_create(&a.chs[i], sizeof(uint64_t)) != 0)
            abort();
    pthread_t dog = watchdog_start();
    if (pthread_create(&t, NULL, oneshot_sender, &a) != 0)
        abort();
    for (uint64_t i = 0; i < n; i++) {
        struct weft_oneshot_recv rv;
        uint64_t out = UINT64_MAX;
        weft_oneshot_recv_init(&rv, a.chs[i], &out);
        atomic_store_explicit(&a.reached, i, memory_order_relaxed);
        int rc = drive(&rv.base, &rv.res, &p); /* the future's drop frees the oneshot */
        if (r == 0 && rc != (i % 7 == 3 ? -EPIPE : 0))
            r = rc ? rc : -EBADMSG;
        if (r == 0 && rc == 0 && out != i)
            r = -EBADMSG;
        atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
    }
    pthread_join(t, NULL);
    int stalled = watchdog_stop(dog);
    free(a.chs);
    if (r == 0 && !parker_balanced(&p))
        r = -EMLINK;
    return stalled ? stalled : r;
}

#ifndef STRESS_SYNC_NO_MAIN
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    uint64_t n = 250000;
    if (argc > 1 && strcmp(argv[1], "small") == 0)
        n = 20000;
    else if (argc > 1 && strcmp(argv[1], "full") != 0 && (n = strtoull(argv[1], NULL, 10)) == 0) {
        fprintf(stderr, "usage: %s [small | full | messages-per-producer]\n", argv[0]);
        return 2;
    }
    int failed = 0;
    double t0 = now_s();
    int r = run_mpsc(n, 64);
    double t1 = now_s();
    printf("RESULT stress_sync mpsc_%dx%llu_cap64 %s %.3f s\n", PRODUCERS,
           (unsigned long long)n, r ? "FAIL" : "ok", t1 - t0);
    if (r) {
        fprintf(stderr, "mpsc: %s\n", strerror(-r));
        failed = 1;
    }
    uint64_t closes = n / 1000 ? n / 1000 : 1;
    r = run_close(closes);
    double t2 = now_s();
    printf("RESULT stress_sync mpsc_close_%llu_rounds %s %.3f s\n", (unsigned long long)closes,
           r ? "FAIL" : "ok", t2 - t1);
    if (r) {
        fprintf(stderr, "mpsc close: %s\n", strerror(-r));
        failed = 1;
    }
    uint64_t rounds = n / 10 ? n / 10 : 1;
    for (int spin = 0; spin < 2; spin++) {
        r = run_ping_pong(rounds, spin);
        double t = now_s();
        printf("RESULT stress_sync ping_pong_%s_%llu %s %.3f s\n", spin ? "spinning" : "parked",
               (unsigned long long)rounds, r ? "FAIL" : "ok", t - t2);
        t2 = t;
        if (r) {
            fprintf(stderr, "ping-pong: %s\n", strerror(-r));
            failed = 1;
        }
    }
    r = run_oneshot(n);
    printf("RESULT stress_sync oneshot_%llu %s %.3f s\n", (unsigned long long)n,
           r ? "FAIL" : "ok", now_s() - t2);
    if (r) {
        fprintf(stderr, "oneshot: %s\n", strerror(-r));
        failed = 1;
    }
    return failed;
}
#endif
