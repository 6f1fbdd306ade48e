/* tests/stress_handover.c: hand-overs (runtime/handover.c) over and over, for
 * ThreadSanitizer: a compute job's slice handler narrows the worker's
 * affinity (writing `handed_mask`) while the worker, each time round its
 * loop, widens it back (copying the mask out first, in code TSan sees); the
 * `handed` word orders the two.
 *
 * A plain program rather than a Criterion test so that it runs under
 * ThreadSanitizer. Usage: stress_handover [full|small].
 *
 * The set-up of tests/test_handover.c, repeated: one worker; a compute job
 * pinned to CPU 0, sliced every 50 us; a SCHED_FIFO thread on CPU 1 spinning
 * 3 ms out of every 4 (within the kernel's real-time budget); a task that
 * moves its worker to CPU 1 (and widens its affinity again at once) and
 * sleeps 1 ms, ROUNDS times (full: 400, small: 80). A worker woken while the
 * hog spins waits on CPU 1 until the compute job hands it CPU 0. Checked:
 * every round ends; at least one hand-over happened (unless nine rounds in
 * ten woke on CPU 0 without one: the kernel moved it itself, a SKIP; or the
 * rounds that woke on CPU 1 mostly ran there while the hog was mid-spin: the
 * kernel let the worker run beside it, also a SKIP); once
 * the worker parks for good its affinity is back to the process's. Skips (exit 0) without
 * 2 CPUs or without the right to start a SCHED_FIFO thread and to raise a
 * lowered one back. A watchdog aborts after WATCHDOG_SECS. Bad inputs: none
 * (see test_handover.c). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#include "hog.h"

#define WATCHDOG_SECS 120

static _Atomic int stop, job_running, hog_spinning;
static struct cpu0_job cpu0 = { &job_running, &stop };

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *watchdog(void *arg)
{
    (void)arg;
    sleep(WATCHDOG_SECS);
    fprintf(stderr, "stress_handover: FAIL: not done after %d s\n", WATCHDOG_SECS);
    abort();
}

/* SCHED_FIFO on CPU 1: spins 3 ms, rests 1 ms, until `stop`. */
static void *hog(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        uint64_t end = now_ns() + 3000000u;
        atomic_store(&hog_spinning, 1);
        while (now_ns() < end && !atomic_load(&stop))
            ;
        atomic_store(&hog_spinning, 0);
        usleep(1000);
    }
    return NULL;
}

/* The task: ROUNDS times, to CPU 1 (affinity widened again at once) and a
 * 1 ms sleep. */
struct rounds {
    struct weft_future base;
    uint32_t left, woke_on_0, beside_hog;
    bool sleeping;
    pid_t tid;
    struct weft_sleep s;
};

static enum weft_poll rounds_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct rounds *r = (struct rounds *)f;
    for (;;) {
        if (r->sleeping) {
            if (weft_future_poll(&r->s.base, cx) == WEFT_PENDING)
                return WEFT_PENDING;
            weft_future_drop(&r->s.base);
            r->sleeping = false;
            int cpu = sched_getcpu();
            r->woke_on_0 += cpu == 0;
            /* On CPU 1 while the SCHED_FIFO hog is mid-spin: the kernel let
             * us run beside it (its fair server gives other threads a share
             * of a CPU an RT thread holds), so nobody waited for a CPU. */
            r->beside_hog += cpu == 1 && atomic_load(&hog_spinning);
        }
        if (r->left == 0)
            return WEFT_READY;
        r->left--;
        cpu_set_t all;
        CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
        pin_self(1);
        CHECK(sched_setaffinity(0, sizeof all, &all) == 0);
        r->tid = (pid_t)syscall(SYS_gettid);
        weft_sleep_init(&r->s, 1000000u);
        r->sleeping = true;
    }
}

static void rounds_drop(struct weft_future *f)
{
    struct rounds *r = (struct rounds *)f;
    if (r->sleeping)
        weft_future_drop(&r->s.base);
}

static const struct weft_future_ops rounds_ops = { rounds_poll, rounds_drop };

/* One run of `rounds` rounds on a new runtime: 0 (hand-overs seen, or a
 * SKIP), 1 (FAIL). */
static int attempt(uint32_t rounds)
{
    pthread_t h;
    uint64_t t0 = now_ns();
    atomic_store(&stop, 0);
    atomic_store(&job_running, 0);

    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 1;
    cfg.compute_slice_us = 50;
    struct weft_runtime *rt;
    CHECK(weft_runtime_create(&rt, &cfg) == 0);
    struct weft_blocking_join job;
    CHECK(weft_spawn_compute(rt, spin_on_cpu0, &cpu0, &job) == 0);
    while (!atomic_load(&job_running))
        usleep(100);

    start_hog(&h, 1, hog);

    struct rounds r = { .base = { &rounds_ops, 0 }, .left = rounds };
    struct weft_join j;
    CHECK(weft_spawn(rt, &r.base, sizeof r, &j) == 0);
    CHECK(weft_block_on(rt, &j.base) == 0);
    CHECK(j.res == 0);
    struct rounds *done = weft_join_output(&j);
    uint32_t woke_on_0 = done->woke_on_0, beside_hog = done->beside_hog;
    pid_t tid = done->tid;
    weft_future_drop(&j.base);
    atomic_store(&stop, 1);
    pthread_join(h, NULL);
    CHECK(weft_block_on(rt, &job.base) == 0);
    CHECK(job.res == 0);
    weft_future_drop(&job.base);

    struct weft_metrics m;
    CHECK(weft_metrics_read(rt, &m) == 0);
    /* The worker parks with nothing to do: its affinity is the process's. */
    cpu_set_t all, now;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
    for (int i = 0;; i++) {
        CHECK(sched_getaffinity(tid, sizeof now, &now) == 0);
        if (CPU_EQUAL(&now, &all))
            break;
        CHECK(i < 10000); /* 10 s */
        usleep(1000);
    }
    weft_runtime_destroy(rt);
    /* No hand-over, and (nearly) every round woke on CPU 0: the kernel put
     * the waiting worker on the compute job's CPU itself (seen once in 13
     * parallel ctest runs with all 80 rounds, and once in CI with 79: the
     * other round's timer fired in one of the hog's 1 ms pauses, when CPU 1
     * was free), so there was nothing to hand over; as in test_handover,
     * that says nothing either way. Hand-overs that do not work leave the
     * worker waiting for the hog's pause on CPU 1: most rounds wake there. */
    bool kernel_did_it =
        !m.compute_handovers && (uint64_t)woke_on_0 * 10 >= (uint64_t)rounds * 9;
    /* Or the rounds that woke on CPU 1 mostly ran there beside the spinning
     * hog: the test's premise (CPU 1 is taken) did not hold, and there was
     * nothing to hand over either (a guess at a rare CI failure, handovers=0
     * with half the rounds on CPU 1; hand-overs that do not work leave the
     * worker to wake on CPU 1 in the hog's pauses instead). */
    bool not_waiting = !m.compute_handovers && woke_on_0 < rounds &&
                       (uint64_t)beside_hog * 2 >= (uint64_t)(rounds - woke_on_0);
    printf("stress_handover: rounds=%u handovers=%" PRIu64 " slices=%" PRIu64
           " woke_on_cpu0=%u beside_hog=%u secs=%.2f %s\n",
           rounds, m.compute_handovers, m.compute_slices, woke_on_0, beside_hog,
           (double)(now_ns() - t0) / 1e9,
           m.compute_handovers ? "OK"
           : kernel_did_it    ? "SKIP (the kernel put the worker on CPU 0 itself, round after round)"
           : not_waiting      ? "SKIP (the worker ran on CPU 1 beside the SCHED_FIFO hog)"
                              : "FAIL");
    return m.compute_handovers || kernel_did_it || not_waiting ? 0 : 1;
}

int main(int argc, char **argv)
{
    bool small = argc > 1 && strcmp(argv[1], "small") == 0;
    uint32_t rounds = small ? 80 : 400;
    if (!hog_allowed()) {
        printf("stress_handover: SKIP (needs 2 CPUs, SCHED_FIFO and CAP_SYS_NICE)\n");
        return 0;
    }
    pthread_t dog;
    CHECK(pthread_create(&dog, NULL, watchdog, NULL) == 0);
    pthread_detach(dog);
    /* Up to three runs: the premise is that CPU 0 runs nothing but the
     * lowered compute job, and another process busy on it takes that CPU
     * from the job, which then never looks (a CI run beside a helper's
     * builds: handovers=0, 71 of 80 rounds woken on CPU 1 in the hog's
     * pauses; a shell loop pinned to CPU 0 gives the same, 3 runs of 3).
     * Hand-overs that do not work fail every run. */
    for (int run = 1;; run++) {
        if (attempt(rounds) == 0)
            return 0;
        if (run == 3)
            return 1;
        printf("stress_handover: run %d of 3 failed; again\n", run);
    }
}
