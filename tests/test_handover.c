/* tests/test_handover.c: a sliced compute job gives its CPU to a worker that
 * waits for one (runtime/handover.c).
 *
 * The set-up makes the wait certain rather than likely: the runtime's one
 * worker sleeps on CPU 1, where a SCHED_FIFO thread then spins, and the
 * compute job is pinned to CPU 0. When the worker's timer fires it is
 * runnable on CPU 1 but cannot run there (a real-time thread is ahead of it
 * until the kernel's throttling lets normal threads have 5% of that CPU,
 * after about 950 ms). The compute job, at the end of a slice, sees it
 * runnable twice without CPU time in between and moves it to CPU 0: the
 * task's 50 ms sleep ends within 250 ms, the metrics count a hand-over, and
 * the worker's affinity is back to what it was once it runs again. The
 * kernel may end a wait itself, and the test thread may start the hog only
 * after the sleep has ended (a slow thread start under a sanitizer): such a
 * round says nothing and is run again; where the kernel always ends the
 * wait at once, the test skips.
 *
 * A worker moved while asleep and woken by something that brings no task
 * widens back before it sleeps again (third test, white-box: the move is
 * made by hand); an affinity the program set after a move stands (last
 * test, white-box on the test thread).
 *
 * Bad inputs: none reach this path from the API (the looker runs only
 * inside the runtime); a worker whose own affinity excludes the looker's CPU
 * is not moved (second test). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <weft.h>

#include "../io/io.h"
#include "common.h"
#include "hog.h"
#include "internal.h"

static _Atomic int job_running, done;
static struct cpu0_job cpu0 = { &job_running, &done };
static _Atomic pid_t worker_tid;

/* A real-time thread spinning on CPU 1 until `done` (5 s at most); it
 * notes when it began, on its CPU (a thread's start can lag its creation by
 * milliseconds under a sanitizer). */
static _Atomic double hog_began;

static void *hog_cpu1(void *arg)
{
    (void)arg;
    atomic_store(&hog_began, now_s());
    double end = now_s() + 5.0;
    while (!atomic_load(&done) && now_s() < end)
        ;
    return NULL;
}

#define SLEEP_S 0.05

/* The task: moves its worker to CPU 1 (and gives the worker its affinity
 * back at once: the kernel leaves it where it is), says so (the hog starts),
 * then sleeps SLEEP_S; `slept` is how long the sleep took. */
struct sleeper {
    struct weft_future base;
    int step;
    double t0, slept, ended;
    int woke_on;
    bool pin_only;            /* the worker stays pinned to CPU 1 */
    struct weft_sleep s;
};
static _Atomic int on_cpu1;
static _Atomic uint64_t pinned_at; /* hand-overs when the worker pinned itself */

static enum weft_poll sleeper_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct sleeper *t = (struct sleeper *)f;
    if (t->step == 0) {
        cpu_set_t all;
        CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
        pin_self(1);
        if (!t->pin_only)
            CHECK(sched_setaffinity(0, sizeof all, &all) == 0);
        /* Read here, before the sleep: on the test thread it would stand
         * between the sleep's start and the hog's. */
        static struct weft_metrics m;
        CHECK(weft_metrics_read(weft_runtime_current(), &m) == 0);
        atomic_store(&pinned_at, m.compute_handovers);
        atomic_store(&worker_tid, (pid_t)syscall(SYS_gettid));
        atomic_store(&on_cpu1, 1); /* the hog starts, as the worker parks */
        weft_sleep_init(&t->s, (uint64_t)(SLEEP_S * 1e9));
        t->t0 = now_s();
        t->step = 1;
    }
    if (weft_future_poll(&t->s.base, cx) == WEFT_PENDING)
        return WEFT_PENDING;
    t->ended = now_s();
    t->slept = t->ended - t->t0;
    t->woke_on = sched_getcpu();
    return WEFT_READY;
}

static void sleeper_drop(struct weft_future *f)
{
    struct sleeper *t = (struct sleeper *)f;
    if (t->step)
        weft_future_drop(&t->s.base);
}

static const struct weft_future_ops sleeper_ops = { sleeper_poll, sleeper_drop };

static uint64_t handovers(struct weft_runtime *rt)
{
    struct weft_metrics m;
    cr_assert_eq(weft_metrics_read(rt, &m), 0);
    return m.compute_handovers;
}

/* One round: returns how long the task's sleep took, or -1 when the hog
 * started after the sleep had all but ended (the round says nothing), and
 * sets `woke_on` to the CPU it ended on. With pin_only, the worker stays
 * pinned to CPU 1: the hog spins for 150 ms, then stops (well within the
 * kernel's real-time budget, which the next test needs); `held_handovers` is
 * the count of hand-overs from the moment the worker pinned itself to just
 * before (one before the pin, while the spawn woke the worker on the test
 * thread's CPU, is no concern of the pin), `held_for` how long after the hog
 * started the task ended. */
static uint64_t held_handovers;
static double held_for;
static int woke_on;

static double round_trip(struct weft_runtime *rt, bool pin_only)
{
    atomic_store(&done, 0);
    atomic_store(&job_running, 0);
    atomic_store(&on_cpu1, 0);
    struct weft_blocking_join job;
    cr_assert_eq(weft_spawn_compute(rt, spin_on_cpu0, &cpu0, &job), 0);
    WAIT_UNTIL(atomic_load(&job_running));

    struct sleeper t = { .base = { &sleeper_ops, 0 }, .pin_only = pin_only };
    struct weft_join j;
    cr_assert_eq(weft_spawn(rt, &t.base, sizeof t, &j), 0);
    WAIT_UNTIL(atomic_load(&on_cpu1) == 1);

    pthread_t hog;
    atomic_store(&hog_began, 0.0);
    start_hog(&hog, 1, hog_cpu1);
    WAIT_UNTIL(atomic_load(&hog_began) > 0);
    double hog_start = atomic_load(&hog_began);
    if (pin_only) {
        sleep_us(150000);
        held_handovers = handovers(rt) - atomic_load(&pinned_at);
        atomic_store(&done, 1);
    }

    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    const struct sleeper *out = weft_join_output(&j);
    double slept = out->slept;
    bool late = hog_start > out->t0 + SLEEP_S - 0.005;
    woke_on = out->woke_on;
    held_for = out->ended - hog_start;
    weft_future_drop(&j.base);
    atomic_store(&done, 1);
    pthread_join(hog, NULL);
    cr_assert_eq(weft_block_on(rt, &job.base), 0);
    weft_future_drop(&job.base);
    return late ? -1 : slept;
}

static struct weft_runtime *start(void)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 1;
    cfg.compute_slice_us = 50;
    struct weft_runtime *rt = NULL;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    return rt;
}

/* The test thread's CPUs; skips the test on fewer than 2. */
static cpu_set_t cpus_or_skip(void)
{
    cpu_set_t all;
    cr_assert_eq(sched_getaffinity(0, sizeof all, &all), 0);
    if (CPU_COUNT(&all) < 2)
        cr_skip_test("needs 2 CPUs");
    return all;
}

Test(handover, waiting_worker_gets_the_compute_cpu, .timeout = 60)
{
    if (!hog_allowed())
        cr_skip_test("needs 2 CPUs and CAP_SYS_NICE (a SCHED_FIFO thread, lowered jobs raised back)");
    /* The kernel may end the wait itself in a round: run the worker on CPU 1
     * in spite of the hog (the fair server's share for normal threads) or
     * move it at a load balance. Such a round says nothing: try again; a
     * wait nobody ends (about 950 ms) fails at once. Where the kernel
     * places the worker on the free CPU at once in every round (CPUs that
     * share a cache, say), there is nothing to hand over: skip. */
    struct weft_runtime *rt = start();
    uint64_t before = handovers(rt);
    bool handed = false, kernel_at_once = true;
    int rounds = 0, late = 0;
    while (rounds < 5 && !handed) {
        double slept = round_trip(rt, false);
        uint64_t now = handovers(rt);
        if (slept < 0) { /* the hog came late: whatever happened says nothing */
            cr_assert_lt(++late, 5, "the hog started after the sleep ended, 5 times");
            before = now;
            continue;
        }
        rounds++;
        cr_assert_lt(slept, SLEEP_S + 0.2, "the worker waited %.0f ms for a CPU",
                     (slept - SLEEP_S) * 1e3);
        handed = now > before;
        kernel_at_once = kernel_at_once && woke_on == 0 && slept < SLEEP_S + 0.005;
        before = now;
        if (!handed)
            sleep_us(300000);
    }
    if (!handed && kernel_at_once) {
        weft_runtime_destroy(rt);
        cr_skip_test("the kernel put the waiting worker on the free CPU at once, 5 times");
    }
    cr_assert(handed, "five rounds without a hand-over (the last woke on CPU %d)", woke_on);
    /* The worker parks again (nothing left to run) and takes its affinity back. */
    cpu_set_t all, now;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
    pid_t tid = atomic_load(&worker_tid);
    double end = now_s() + WAIT_SECS;
    for (;;) {
        cr_assert_eq(sched_getaffinity(tid, sizeof now, &now), 0);
        if (CPU_EQUAL(&now, &all))
            break;
        cr_assert(now_s() < end, "the worker stayed pinned to %d CPU(s)", CPU_COUNT(&now));
        sleep_us(1000);
    }
    weft_runtime_destroy(rt);
}

/* A worker the program pinned to CPU 1 stays there: its wait is the
 * program's choice. */
Test(handover, pinned_worker_left_alone, .timeout = 60)
{
    if (!hog_allowed())
        cr_skip_test("needs 2 CPUs and CAP_SYS_NICE (a SCHED_FIFO thread, lowered jobs raised back)");
    struct weft_runtime *rt = start();
    int round = 0;
    while (round_trip(rt, true) < 0) /* the hog came late: again */
        cr_assert_lt(++round, 5, "the hog started after the sleep ended, 5 times");
    cr_assert_eq(held_handovers, 0);
    cr_assert_geq(held_for, 0.14, "the pinned worker ran %.0f ms after the hog started",
                  held_for * 1e3);
    cpu_set_t now;
    cr_assert_eq(sched_getaffinity(atomic_load(&worker_tid), sizeof now, &now), 0);
    cr_assert_eq(CPU_COUNT(&now), 1);
    cr_assert(CPU_ISSET(1, &now));
    weft_runtime_destroy(rt);
}

/* A worker moved while it sleeps, then woken by something that brings it no
 * task (here a bare unpark; in a program, a slot pushed by another thread's
 * drop, or a cancel's completion), takes its affinity back before it sleeps
 * again: a park that loops without passing the worker loop's top used to
 * sleep on, narrowed to the one CPU (a helper's review). The move is the
 * looker's own (weft__handover_move), done by hand on the parked worker. */
Test(handover, a_moved_worker_woken_without_a_task_widens_back, .timeout = 30)
{
    cpu_set_t all = cpus_or_skip();
    struct weft_runtime *rt = start();
    struct weft__worker *w = &rt->workers[0];
    pid_t tid;
    WAIT_UNTIL((tid = atomic_load(&w->tid)) != 0);
    struct weft_metrics m;
    WAIT_UNTIL(weft_metrics_read(rt, &m) == 0 && m.worker[0].parks >= 1);
    sleep_us(20000); /* asleep in its park */
    int cpu = CPU_ISSET(0, &all) ? 0 : 1;
    cr_assert(weft__handover_move(w, tid, cpu));
    cpu_set_t now;
    cr_assert_eq(sched_getaffinity(tid, sizeof now, &now), 0);
    cr_assert_eq(CPU_COUNT(&now), 1);
    uint64_t parks = m.worker[0].parks;
    weft__io_unpark(w->io); /* a wake with no task behind it */
    WAIT_UNTIL(weft_metrics_read(rt, &m) == 0 && m.worker[0].parks > parks);
    sleep_us(20000);
    cr_assert_eq(sched_getaffinity(tid, sizeof now, &now), 0);
    cr_assert_eq(CPU_COUNT(&now), CPU_COUNT(&all), "the worker parked again on %d CPU(s)",
                 CPU_COUNT(&now));
    cr_assert_eq(atomic_load(&w->handed), 0, "still marked as moved");
    weft_runtime_destroy(rt);
}

/* A worker moved in the middle of a poll (the looker narrows a worker that is
 * runnable, which a poll preempted by another thread is) and starting a pool
 * thread from that poll: the thread used to inherit the one CPU, for good,
 * and so did every job it ran (a helper's review; the move is made by hand
 * here, as the looker would). */
static void *cpus_of_this_thread(void *arg)
{
    (void)arg;
    cpu_set_t s;
    CHECK(sched_getaffinity(0, sizeof s, &s) == 0);
    return (void *)(uintptr_t)CPU_COUNT(&s);
}

static struct weft_blocking_join narrowed_job;
static _Atomic int narrowed_spawn = 1;

static enum weft_poll spawn_while_moved(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    struct weft__worker *w = weft__current;
    CHECK(weft__handover_move(w, atomic_load(&w->tid), sched_getcpu()));
    atomic_store(&narrowed_spawn, weft_spawn_blocking(weft_runtime_current(), cpus_of_this_thread,
                                                      NULL, &narrowed_job));
    return WEFT_READY;
}

static const struct weft_future_ops spawn_while_moved_ops = { spawn_while_moved, NULL };

Test(handover, a_thread_started_by_a_moved_worker_gets_every_cpu, .timeout = 30)
{
    cpu_set_t all = cpus_or_skip();
    struct weft_runtime *rt = start();
    struct weft_future f = { &spawn_while_moved_ops, 0 };
    cr_assert_eq(weft_block_on(rt, &f), 0);
    cr_assert_eq(atomic_load(&narrowed_spawn), 0);
    cr_assert_eq(weft_block_on(rt, &narrowed_job.base), 0);
    cr_assert_eq(narrowed_job.res, 0);
    int n = (int)(uintptr_t)narrowed_job.output;
    weft_future_drop(&narrowed_job.base);
    weft_runtime_destroy(rt);
    cr_assert_eq(n, CPU_COUNT(&all), "the pool thread runs on %d CPU(s) of %d", n,
                 CPU_COUNT(&all));
}

/* The widening puts back only the looker's narrowing (docs/blocking.md):
 * when the program set the thread's affinity itself after the move, its
 * choice stands. White-box, on the test thread: moved to one CPU, then set
 * by "the program" to the other; the undo leaves it there (and a plain move
 * and undo gives every CPU back). */
Test(handover, an_affinity_the_program_set_after_a_move_stands, .timeout = 10)
{
    cpu_set_t all = cpus_or_skip();
    int a = -1, b = -1;
    for (int c = 0; c < CPU_SETSIZE && b < 0; c++)
        if (CPU_ISSET(c, &all))
            *(a < 0 ? &a : &b) = c;
    static struct weft__worker w; /* only its hand-over fields are used */
    pid_t tid = (pid_t)syscall(SYS_gettid);
    cpu_set_t now, other;
    cr_assert(weft__handover_move(&w, tid, a));
    weft__handover_undo(&w);
    cr_assert_eq(sched_getaffinity(0, sizeof now, &now), 0);
    cr_assert(CPU_EQUAL(&now, &all), "a move and its undo left %d CPU(s)", CPU_COUNT(&now));

    cr_assert(weft__handover_move(&w, tid, a));
    CPU_ZERO(&other);
    CPU_SET(b, &other);
    cr_assert_eq(sched_setaffinity(0, sizeof other, &other), 0); /* the program's own choice */
    weft__handover_undo(&w);
    cr_assert_eq(sched_getaffinity(0, sizeof now, &now), 0);
    cr_assert(CPU_EQUAL(&now, &other), "the undo overwrote the program's affinity");
    cr_assert_eq(atomic_load(&w.handed), 0);
    cr_assert_eq(sched_setaffinity(0, sizeof all, &all), 0);
}
