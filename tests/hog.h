/* tests/hog.h: what the hand-over tests share (test_handover.c,
 * stress_handover.c): pinning the calling thread, a SCHED_FIFO thread on one
 * CPU (the "hog" a worker waits behind), and whether this process may start
 * one and have its compute jobs lowered and raised back. */
#ifndef WEFT_TESTS_HOG_H
#define WEFT_TESTS_HOG_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static inline void pin_self(int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
}

/* 2 CPUs, a SCHED_FIFO thread allowed, and lowered threads raised back
 * (root, or RLIMIT_NICE >= 20: else nothing is lowered, so nothing sliced). */
static inline bool hog_allowed(void)
{
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
        return false;
    struct rlimit rl;
    bool raise = geteuid() == 0 || (getrlimit(RLIMIT_NICE, &rl) == 0 &&
                                    (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= 20));
    struct sched_param sp = { .sched_priority = 1 };
    if (!raise || sched_setscheduler(0, SCHED_FIFO, &sp) != 0)
        return false;
    sp.sched_priority = 0;
    CHECK(sched_setscheduler(0, SCHED_OTHER, &sp) == 0);
    return true;
}

/* Starts fn on a SCHED_FIFO (priority 1) thread pinned to `cpu`. */
static inline void start_hog(pthread_t *t, int cpu, void *(*fn)(void *))
{
    pthread_attr_t a;
    struct sched_param sp = { .sched_priority = 1 };
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_attr_init(&a);
    pthread_attr_setinheritsched(&a, PTHREAD_EXPLICIT_SCHED);
    pthread_attr_setschedpolicy(&a, SCHED_FIFO);
    pthread_attr_setschedparam(&a, &sp);
    pthread_attr_setaffinity_np(&a, sizeof one, &one);
    CHECK(pthread_create(t, &a, fn, NULL) == 0);
    pthread_attr_destroy(&a);
}

/* The compute job of the hand-over tests: pins its thread to CPU 0, sets
 * *running, spins until *stop (5 s at most) reading the clock (a call TSan
 * intercepts: a slice signal is handled there), and gives the thread its
 * affinity back. */
struct cpu0_job {
    _Atomic int *running, *stop;
};

static inline void *spin_on_cpu0(void *arg)
{
    struct cpu0_job *j = arg;
    cpu_set_t was;
    CHECK(sched_getaffinity(0, sizeof was, &was) == 0);
    pin_self(0);
    atomic_store(j->running, 1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while (!atomic_load(j->stop) && t.tv_sec - t0.tv_sec < 5);
    CHECK(sched_setaffinity(0, sizeof was, &was) == 0);
    return NULL;
}

#endif
