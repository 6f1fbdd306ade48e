/* tests/stress_sched.c: the scheduler under load, with exact accounting.
 *
 * A plain program rather than a Criterion test so that it runs under
 * ThreadSanitizer (which cannot start Criterion). Usage: stress_sched [full|small].
 *
 * Phase 1 runs TASKS tasks (full: 10M, small: 200k) in waves of WAVE on a
 * 4-worker runtime. Target i of a wave is woken k(i) in [0, 3] times; each wake
 * comes from the task itself (during its first poll), from one of the "sender"
 * tasks, or from a foreign thread, which count it in delivered[i] and then
 * wake the waker the target published at its first poll. A target finishes
 * when it sees all its wakes delivered, so a lost wakeup leaves it idle
 * forever. Half the targets are spawned from this thread, half from a task.
 * Checked per target: polled between 1 and k+1 times, never concurrently,
 * completed once, dropped once. Bad inputs: none (see test_task.c).
 *
 * Phase 2 sends WAKES (full: 1M, small: 100k) cross-thread wakes to one task
 * from 4 threads, each waiting every 16 wakes until the task has seen its
 * count, so most wakes find the task idle: a lost one stalls a producer.
 *
 * Phase 3 spawns waves of WAVE never-ready tasks (full: 10, small: 1) and
 * stops each through an abort handle while its join handle is dropped and
 * its waker woken on two other threads: each dropped exactly once, never
 * polled concurrently, finished as its abort handle sees it.
 *
 * A watchdog exits with status 2 if a wave or phase 2 takes over 60 s.
 * Prints one line per phase; exits 0 only on success. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#define WAVE 100000u
#define SENDER_TASKS 4u
#define FOREIGN 2u
#define WATCHDOG_SECS 60

enum src { SRC_SELF, SRC_TASK, SRC_FOREIGN };

static struct weft_runtime *rt;
static uint32_t wave_no; /* written between waves only */

static _Atomic uint32_t delivered[WAVE], polls[WAVE], completions[WAVE], drops[WAVE];
static _Atomic uint8_t in_poll[WAVE];
static _Atomic int ready[WAVE];            /* publishes wakers[i] (release/acquire) */
static struct weft_waker wakers[WAVE];
static _Atomic uint32_t completed, dropped, concurrent_polls;

/* ---- the watchdog ------------------------------------------------------------ */

static _Atomic int64_t deadline_ns;
static const char *_Atomic phase = "start";

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void arm_watchdog(const char *what)
{
    atomic_store(&phase, what);
    atomic_store(&deadline_ns, now_ns() + (int64_t)WATCHDOG_SECS * 1000000000);
}

static void *watchdog(void *arg)
{
    (void)arg;
    for (;;) {
        usleep(100000);
        if (now_ns() > atomic_load(&deadline_ns)) {
            fprintf(stderr, "stress_sched: FAIL: %s stuck for %d s (wave %u: %u completed, %u "
                    "dropped): lost wakeup?\n", atomic_load(&phase), WATCHDOG_SECS, wave_no,
                    atomic_load(&completed), atomic_load(&dropped));
            _exit(2);
        }
    }
    return NULL;
}

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "stress_sched: FAIL: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* ---- who wakes whom ------------------------------------------------------------- */

static uint32_t wakes_for(uint32_t i)
{
    return (i ^ (i >> 3) ^ wave_no) % 4;
}

/* Wake j of target i comes from source (i + j) % 3. */
static uint32_t wakes_from(uint32_t i, enum src s)
{
    uint32_t n = 0;
    for (uint32_t j = 0; j < wakes_for(i); j++)
        n += (i + j) % 3 == s;
    return n;
}

static void send_wake(uint32_t i, bool by_value)
{
    atomic_fetch_add(&delivered[i], 1);
    if (by_value) {
        struct weft_waker w = weft_waker_clone(&wakers[i]);
        weft_waker_wake(&w);
    } else {
        weft_waker_wake_by_ref(&wakers[i]);
    }
}

/* Sends the wakes source `s` owes to targets *cursor, *cursor + step, ...;
 * stops at a target that has not published its waker yet, or after `max`
 * targets. Returns true once past the last target. */
static bool send_some(enum src s, uint32_t *cursor, uint32_t step, uint32_t max, bool by_value)
{
    for (uint32_t n = 0; *cursor < WAVE && n < max; n++, *cursor += step) {
        uint32_t k = wakes_from(*cursor, s);
        if (k == 0)
            continue;
        /* Acquire pairs with the target's release store: wakers[i] is set. */
        if (!atomic_load_explicit(&ready[*cursor], memory_order_acquire))
            return false;
        while (k--)
            send_wake(*cursor, by_value);
    }
    return *cursor >= WAVE;
}

/* ---- the futures ----------------------------------------------------------------- */

struct target {
    struct weft_future base;
    uint32_t i;
};

static enum weft_poll target_poll(struct weft_future *f, struct weft_cx *cx)
{
    uint32_t i = ((struct target *)f)->i, k = wakes_for(i);
    if (atomic_exchange(&in_poll[i], 1))
        atomic_fetch_add(&concurrent_polls, 1);
    if (atomic_fetch_add(&polls[i], 1) == 0) {
        wakers[i] = weft_waker_clone(cx->waker);
        atomic_store_explicit(&ready[i], 1, memory_order_release);
        for (uint32_t n = wakes_from(i, SRC_SELF); n > 0; n--) {
            atomic_fetch_add(&delivered[i], 1);
            weft_waker_wake_by_ref(cx->waker);
        }
    }
    enum weft_poll r = atomic_load(&delivered[i]) == k ? WEFT_READY : WEFT_PENDING;
    if (r == WEFT_READY) {
        atomic_fetch_add(&completions[i], 1);
        atomic_fetch_add(&completed, 1);
    }
    atomic_store(&in_poll[i], 0);
    return r;
}

static void target_drop(struct weft_future *f)
{
    atomic_fetch_add(&drops[((struct target *)f)->i], 1);
    atomic_fetch_add(&dropped, 1);
}

static const struct weft_future_ops target_ops = { target_poll, target_drop };

static void spawn_target(uint32_t i)
{
    struct target t = { { &target_ops, 0 }, i };
    CHECK(weft_spawn(rt, &t.base, sizeof t, NULL) == 0);
}

/* A sender task (cursor = its first index) or the spawner task (odd targets). */
struct helper {
    struct weft_future base;
    uint32_t cursor;
};

static enum weft_poll sender_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct helper *h = (struct helper *)f;
    if (send_some(SRC_TASK, &h->cursor, SENDER_TASKS, 256, false))
        return WEFT_READY;
    weft_waker_wake_by_ref(cx->waker); /* yield: the targets must run */
    return WEFT_PENDING;
}

static enum weft_poll spawner_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct helper *h = (struct helper *)f;
    for (uint32_t n = 0; h->cursor < WAVE && n < 1024; n++, h->cursor += 2)
        spawn_target(h->cursor);
    if (h->cursor >= WAVE)
        return WEFT_READY;
    weft_waker_wake_by_ref(cx->waker);
    return WEFT_PENDING;
}

static const struct weft_future_ops sender_ops = { sender_poll, NULL };
static const struct weft_future_ops spawner_ops = { spawner_poll, NULL };

static void *foreign_sender(void *arg)
{
    uint32_t cursor = (uint32_t)(uintptr_t)arg;
    while (!send_some(SRC_FOREIGN, &cursor, FOREIGN, 256, cursor % 2))
        sched_yield();
    return NULL;
}

static void join(struct weft_join *j)
{
    CHECK(weft_block_on(rt, &j->base) == 0);
    CHECK(j->res == 0);
    weft_future_drop(&j->base);
}

/* ---- phase 1 ------------------------------------------------------------------------- */

struct totals {
    uint64_t tasks, polls, wakes;
};

static void reset_wave(void)
{
    memset(delivered, 0, sizeof delivered);
    memset(polls, 0, sizeof polls);
    memset(completions, 0, sizeof completions);
    memset(drops, 0, sizeof drops);
    memset(in_poll, 0, sizeof in_poll);
    memset(ready, 0, sizeof ready);
    atomic_store(&completed, 0);
    atomic_store(&dropped, 0);
}

static void run_wave(struct totals *tot)
{
    struct weft_join spawner, senders[SENDER_TASKS];
    pthread_t foreign[FOREIGN];

    reset_wave();
    struct helper sp = { { &spawner_ops, 0 }, 1 };
    CHECK(weft_spawn(rt, &sp.base, sizeof sp, &spawner) == 0);
    for (uint32_t s = 0; s < SENDER_TASKS; s++) {
        struct helper h = { { &sender_ops, 0 }, s };
        CHECK(weft_spawn(rt, &h.base, sizeof h, &senders[s]) == 0);
    }
    for (uintptr_t t = 0; t < FOREIGN; t++)
        CHECK(pthread_create(&foreign[t], NULL, foreign_sender, (void *)t) == 0);
    for (uint32_t i = 0; i < WAVE; i += 2)
        spawn_target(i);
    for (uint32_t t = 0; t < FOREIGN; t++)
        pthread_join(foreign[t], NULL);
    join(&spawner);
    for (uint32_t s = 0; s < SENDER_TASKS; s++)
        join(&senders[s]);
    while (atomic_load(&completed) < WAVE || atomic_load(&dropped) < WAVE)
        usleep(200);

    for (uint32_t i = 0; i < WAVE; i++) {
        uint32_t k = wakes_for(i), p = atomic_load(&polls[i]);
        if (atomic_load(&completions[i]) != 1 || atomic_load(&drops[i]) != 1 || p < 1 ||
            p > k + 1 || atomic_load(&delivered[i]) != k) {
            fprintf(stderr, "stress_sched: FAIL: wave %u target %u: k %u, polls %u, "
                    "completions %u, drops %u, delivered %u\n", wave_no, i, k, p,
                    atomic_load(&completions[i]), atomic_load(&drops[i]),
                    atomic_load(&delivered[i]));
            exit(1);
        }
        tot->polls += p;
        tot->wakes += k;
        CHECK(atomic_load_explicit(&ready[i], memory_order_acquire));
        weft_waker_drop(&wakers[i]);
    }
    CHECK(atomic_load(&completed) == WAVE && atomic_load(&dropped) == WAVE);
    CHECK(atomic_load(&concurrent_polls) == 0);
    tot->tasks += WAVE;
}

/* ---- phase 2 --------------------------------------------------------------------------- */

static struct {
    _Atomic uint64_t produced, seen;
    uint64_t total, per_thread;
    struct weft_waker w;
    _Atomic int w_set;
    _Atomic uint64_t polls;
} chain;

static enum weft_poll consumer_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f;
    if (atomic_fetch_add(&chain.polls, 1) == 0) {
        chain.w = weft_waker_clone(cx->waker);
        atomic_store_explicit(&chain.w_set, 1, memory_order_release);
    }
    uint64_t s = atomic_load(&chain.produced);
    atomic_store(&chain.seen, s);
    return s == chain.total ? WEFT_READY : WEFT_PENDING;
}

static const struct weft_future_ops consumer_ops = { consumer_poll, NULL };

static void *producer(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&chain.w_set, memory_order_acquire))
        sched_yield();
    for (uint64_t n = 1; n <= chain.per_thread; n++) {
        uint64_t v = atomic_fetch_add(&chain.produced, 1) + 1;
        weft_waker_wake_by_ref(&chain.w);
        if (n % 16 == 0)
            while (atomic_load(&chain.seen) < v) /* stalls forever on a lost wakeup */
                sched_yield();
    }
    return NULL;
}

static void run_wakes(uint64_t total)
{
    enum { PRODUCERS = 4 };
    pthread_t th[PRODUCERS];
    struct weft_join j;
    struct weft_future consumer = { &consumer_ops, 0 };

    chain.total = total;
    chain.per_thread = total / PRODUCERS;
    CHECK(chain.per_thread * PRODUCERS == total);
    CHECK(weft_spawn(rt, &consumer, sizeof consumer, &j) == 0);
    for (int i = 0; i < PRODUCERS; i++)
        CHECK(pthread_create(&th[i], NULL, producer, NULL) == 0);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    join(&j);
    CHECK(atomic_load(&chain.seen) == total);
    uint64_t p = atomic_load(&chain.polls);
    CHECK(p >= 2 && p <= total + 1);
    weft_waker_drop(&chain.w);
}

/* ---- phase 3: abort handles ----------------------------------------------------------- */

static struct weft_join victims[WAVE];
static struct weft_abort_handle aborters[WAVE];

/* Never ready: publishes its waker at the first poll (a wake may then poll
 * it again). */
static enum weft_poll victim_poll(struct weft_future *f, struct weft_cx *cx)
{
    uint32_t i = ((struct target *)f)->i;
    if (atomic_exchange(&in_poll[i], 1))
        atomic_fetch_add(&concurrent_polls, 1);
    if (atomic_fetch_add(&polls[i], 1) == 0) {
        wakers[i] = weft_waker_clone(cx->waker);
        atomic_store_explicit(&ready[i], 1, memory_order_release);
    }
    atomic_store(&in_poll[i], 0);
    return WEFT_PENDING;
}

static const struct weft_future_ops victim_ops = { victim_poll, target_drop };

/* One thread each: drops every join handle; aborts every task through its
 * abort handle; wakes every task that published a waker. */
static void *victim_side(void *arg)
{
    uintptr_t role = (uintptr_t)arg;
    for (uint32_t i = 0; i < WAVE; i++) {
        if (role == 0)
            weft_future_drop(&victims[i].base);
        else if (role == 1)
            weft_abort_handle_abort(&aborters[i]);
        else if (atomic_load_explicit(&ready[i], memory_order_acquire))
            weft_waker_wake_by_ref(&wakers[i]);
    }
    return NULL;
}

/* WAVE never-ready tasks, each stopped by its abort handle while its join
 * handle is dropped and its waker woken on two other threads: each is
 * dropped once, never polled concurrently, finished on its abort handle. */
static void run_aborts(void)
{
    pthread_t th[3];
    reset_wave();
    for (uint32_t i = 0; i < WAVE; i++) {
        struct target t = { { &victim_ops, 0 }, i };
        CHECK(weft_spawn(rt, &t.base, sizeof t, &victims[i]) == 0);
        CHECK(weft_join_abort_handle(&victims[i], &aborters[i]) == 0);
    }
    for (uintptr_t r = 0; r < 3; r++)
        CHECK(pthread_create(&th[r], NULL, victim_side, (void *)r) == 0);
    for (int r = 0; r < 3; r++)
        pthread_join(th[r], NULL);
    while (atomic_load(&dropped) < WAVE)
        usleep(200);
    for (uint32_t i = 0; i < WAVE; i++) {
        CHECK(atomic_load(&drops[i]) == 1);
        CHECK(weft_abort_handle_is_finished(&aborters[i]));
        weft_abort_handle_drop(&aborters[i]);
        if (atomic_load_explicit(&ready[i], memory_order_acquire))
            weft_waker_drop(&wakers[i]);
    }
    CHECK(atomic_load(&dropped) == WAVE && atomic_load(&concurrent_polls) == 0);
}

int main(int argc, char **argv)
{
    bool full = argc < 2 || strcmp(argv[1], "small") != 0;
    if (argc >= 2 && strcmp(argv[1], "full") != 0 && strcmp(argv[1], "small") != 0) {
        fprintf(stderr, "usage: %s [full|small]\n", argv[0]);
        return 1;
    }
    uint32_t waves = full ? 100 : 2;
    uint64_t wakes = full ? 1000000 : 100000;
    struct weft_runtime_config cfg;
    struct totals tot = { 0, 0, 0 };
    pthread_t dog;

    arm_watchdog("startup");
    CHECK(pthread_create(&dog, NULL, watchdog, NULL) == 0);
    pthread_detach(dog);
    weft_runtime_config_init(&cfg);
    cfg.workers = 4;
    CHECK(weft_runtime_create(&rt, &cfg) == 0);

    int64_t t0 = now_ns();
    for (wave_no = 0; wave_no < waves; wave_no++) {
        arm_watchdog("phase 1 (tasks)");
        run_wave(&tot);
    }
    int64_t t1 = now_ns();
    printf("stress_sched tasks: tasks=%" PRIu64 " waves=%u wakes=%" PRIu64 " polls=%" PRIu64
           " completions=%" PRIu64 " concurrent=0 secs=%.2f OK\n", tot.tasks, waves, tot.wakes,
           tot.polls, tot.tasks, (double)(t1 - t0) / 1e9);
    CHECK(tot.polls >= tot.tasks && tot.polls <= tot.tasks + tot.wakes);

    arm_watchdog("phase 2 (cross-thread wakes)");
    run_wakes(wakes);
    int64_t t2 = now_ns();
    printf("stress_sched wakes: wakes=%" PRIu64 " polls=%" PRIu64 " seen=%" PRIu64
           " secs=%.2f OK\n", wakes, atomic_load(&chain.polls), atomic_load(&chain.seen),
           (double)(t2 - t1) / 1e9);
    arm_watchdog("phase 3 (abort handles)");
    uint32_t abort_waves = full ? 10 : 1;
    for (wave_no = 0; wave_no < abort_waves; wave_no++)
        run_aborts();
    int64_t t3 = now_ns();
    printf("stress_sched aborts: tasks=%u secs=%.2f OK\n", abort_waves * WAVE,
           (double)(t3 - t2) / 1e9);
    arm_watchdog("shutdown");
    weft_runtime_destroy(rt);
    return 0;
}
