/* tests/stress_blocking.c: the blocking pool under load, with exact accounting.
 *
 * A plain program rather than a Criterion test so that it runs under
 * ThreadSanitizer (which cannot start Criterion). Usage: stress_blocking [full|small].
 *
 * One runtime of 2 workers and a small pool (max_threads 3, keep-alive 1 ms,
 * queue bound 4, 2 compute jobs at once), so that pool threads start and
 * exit all the time and the bound is hit constantly; about half the awaited
 * jobs go through weft_spawn_compute, so the compute lane's cap and queue
 * race with the rest, and its slice signals (every 50 us) land in them.
 *
 * Phase 1: TASKS tasks (full: 2000 in 200 waves, small: 100 in 20 waves,
 * with pauses of 0.5 to 2 ms between waves, around the keep-alive) of
 * PER_TASK jobs each (full: 100, small: 20), and FOREIGN threads of
 * PER_FOREIGN jobs each (full: 20000, small: 500, pausing now and then),
 * every job with its own id. Each job is spawned one of several
 * ways, picked at random: awaited through its handle; a try_ spawn (falling
 * back to a waiting spawn, or on a foreign thread to the unbounded spawn,
 * when it gets -EAGAIN); a waiting spawn; spawned and its handle dropped at
 * once; spawned without a handle; a waiting spawn polled once and dropped if
 * it has to wait (then the job is never queued). Foreign threads await their
 * handles with a condvar waker, or under weft_block_on. A job counts its runs
 * and returns id * 2 + 1; every output is checked, every id must have run
 * exactly as often as it was queued (once or never), jobs must never run more
 * than max_threads at once, blocking_threads must never pass it, and the
 * metrics' blocking_jobs must equal the jobs run.
 *
 * Phase 2: three jobs hold the three threads for 100 ms, FINAL more are queued
 * behind them (handles held by this thread, by tasks, or none), two waiting
 * spawns wait in tasks, and the runtime is destroyed: the three finish (the
 * shutdown waits for them), the queued ones are cancelled (-ECANCELED, never
 * run), and the waiting spawns' tasks are dropped.
 *
 * A watchdog aborts with a message after WATCHDOG_SECS. Prints one line per
 * phase; exits 0 only on success. Bad inputs: none (see test_blocking.c). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#include "parker.h"

#define WATCHDOG_SECS 120
#define MAX_THREADS 3u
#define QUEUE_MAX 4u
#define FOREIGN 2u
#define FINAL 40u

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "stress_blocking: FAIL: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

static struct weft_runtime *rt;
static uint32_t n_tasks, per_task, per_foreign, n_ids, waves;
static _Atomic uint8_t *runs;   /* per id: times its job ran */
static _Atomic uint8_t *queued; /* per id: its spawn succeeded */
static _Atomic uint32_t running, max_running, thread_starts;
static _Atomic uint64_t total_runs, eagains, dropped_waits, detached;
static _Atomic int stop_sampler;
static _Atomic uint64_t max_pool_threads, samples;

/* ---- the watchdog --------------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t start_ns;
static const char *_Atomic phase = "start";

static void *watchdog(void *arg)
{
    (void)arg;
    for (;;) {
        usleep(100000);
        if (now_ns() - start_ns > (int64_t)WATCHDOG_SECS * 1000000000) {
            fprintf(stderr, "stress_blocking: FAIL: still in %s after %d s (runs %" PRIu64
                    "): lost wakeup or hang?\n", atomic_load(&phase), WATCHDOG_SECS,
                    atomic_load(&total_runs));
            abort();
        }
    }
    return NULL;
}

/* ---- the job ----------------------------------------------------------------------- */

static _Thread_local bool thread_seen;

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *job(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    uint32_t r = atomic_fetch_add(&running, 1) + 1;
    uint32_t m = atomic_load(&max_running);
    while (r > m && !atomic_compare_exchange_weak(&max_running, &m, r))
        ;
    if (!thread_seen) {
        thread_seen = true;
        atomic_fetch_add(&thread_starts, 1);
    }
    CHECK(id < n_ids);
    if (atomic_fetch_add(&runs[id], 1) != 0) {
        fprintf(stderr, "stress_blocking: FAIL: job %" PRIuPTR " ran twice\n", id);
        exit(1);
    }
    if (id % 499 == 0) { /* past 1 ms: the monitor lowers it, the thread goes back up */
        struct timespec ts = { 0, 1500000 };
        nanosleep(&ts, NULL);
    } else if (id % 5 == 0) { /* some jobs take a while, so that the queue fills */
        struct timespec ts = { 0, 20000 };
        nanosleep(&ts, NULL);
    }
    atomic_fetch_sub(&running, 1);
    atomic_fetch_add(&total_runs, 1);
    return (void *)(id * 2 + 1);
}

static void mark_queued(uintptr_t id)
{
    CHECK(atomic_exchange(&queued[id], 1) == 0);
}

static void check_output(const struct weft_blocking_join *h, uintptr_t id)
{
    if (h->res != 0 || (uintptr_t)h->output != id * 2 + 1) {
        fprintf(stderr, "stress_blocking: FAIL: job %" PRIuPTR ": res %d, output %" PRIuPTR "\n",
                id, h->res, (uintptr_t)h->output);
        exit(1);
    }
}

/* ---- the tasks ------------------------------------------------------------------------ */

enum mode { M_AWAIT, M_TRY, M_WAIT, M_DETACH, M_NO_HANDLE, M_WAIT_OR_DROP, M_COUNT };

struct st {
    struct weft_future base;
    uint32_t first, n, i;
    uint64_t rng;
    bool await;                      /* h holds a handle to await */
    struct weft_blocking_join h;
    struct weft_spawn_blocking_wait w;
};

static _Atomic uint32_t tasks_done;

static uintptr_t st_id(const struct st *t)
{
    return (uintptr_t)t->first + t->i;
}

/* Moves the ready wait's handle into t->h (never polled yet: it may move). */
static void take_wait_join(struct st *t)
{
    CHECK(t->w.res == 0);
    CHECK(t->w.join.job != NULL);
    mark_queued(st_id(t));
    t->h = t->w.join;
    t->w.join = (struct weft_blocking_join){ 0 };
    weft_future_drop(&t->w.base);
    t->await = true;
}

static enum weft_poll st_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct st *t = (struct st *)f;
    WEFT_ASYNC_BEGIN(f);
    for (t->i = 0; t->i < t->n; t->i++) {
        t->await = false;
        uintptr_t id = st_id(t);
        enum mode m = (enum mode)(rng_next(&t->rng) % M_COUNT);
        if (m == M_AWAIT || m == M_DETACH) {
            /* Every other one through the compute lane (capped at 2). */
            CHECK((id % 2 ? weft_spawn_compute : weft_spawn_blocking)(rt, job, (void *)id,
                                                                    &t->h) == 0);
            mark_queued(id);
            if (m == M_DETACH) {
                weft_future_drop(&t->h.base);
                atomic_fetch_add(&detached, 1);
            } else {
                t->await = true;
            }
        } else if (m == M_NO_HANDLE) {
            CHECK(weft_spawn_blocking(rt, job, (void *)id, NULL) == 0);
            mark_queued(id);
        } else if (m == M_TRY) {
            int rc = weft_try_spawn_blocking(rt, job, (void *)id, &t->h);
            if (rc == 0) {
                mark_queued(id);
                t->await = true;
            } else {
                CHECK(rc == -EAGAIN);
                CHECK(t->h.job == NULL && t->h.base.ops == NULL);
                atomic_fetch_add(&eagains, 1);
                m = M_WAIT;
            }
        } else if (m == M_WAIT_OR_DROP) {
            weft_spawn_blocking_wait_init(&t->w, rt, job, (void *)id);
            if (weft_future_poll(&t->w.base, cx) == WEFT_READY) {
                take_wait_join(t);
            } else {
                /* Waiting: give up. Nothing gets queued; any room it was
                 * given passes on. */
                weft_future_drop(&t->w.base);
                CHECK(t->w.join.job == NULL);
                atomic_fetch_add(&dropped_waits, 1);
            }
        }
        if (m == M_WAIT) {
            weft_spawn_blocking_wait_init(&t->w, rt, job, (void *)st_id(t));
            WEFT_AWAIT(f, cx, &t->w.base);
            take_wait_join(t);
        }
        if (t->await) {
            WEFT_AWAIT(f, cx, &t->h.base);
            check_output(&t->h, st_id(t));
            weft_future_drop(&t->h.base);
        }
    }
    atomic_fetch_add(&tasks_done, 1);
    WEFT_ASYNC_END(f);
}

static void st_drop(struct weft_future *f)
{
    struct st *t = (struct st *)f;
    weft_future_drop(&t->h.base);
    weft_future_drop(&t->w.base);
    weft_future_drop(&t->w.join.base);
}

static const struct weft_future_ops st_ops = { st_poll, st_drop };

/* ---- foreign threads: a condvar waker (tests/parker.h) ----------------------------- */

/* Polls f until ready, sleeping until woken in between (a lost wakeup leaves
 * it asleep: the watchdog ends the run). */
static void poll_until_ready(struct parker *p, struct weft_future *f)
{
    struct weft_waker w = { p, &parker_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        p->notified = false;
        pthread_mutex_unlock(&p->mu);
        if (weft_future_poll(f, &cx) == WEFT_READY)
            return;
        pthread_mutex_lock(&p->mu);
        while (!p->notified)
            pthread_cond_wait(&p->cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

static void *foreign(void *arg)
{
    uint32_t first = (uint32_t)(uintptr_t)arg;
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ first;
    struct parker p;
    parker_init(&p);
    for (uint32_t i = 0; i < per_foreign; i++) {
        uintptr_t id = (uintptr_t)first + i;
        struct weft_blocking_join h;
        if (i % 64 == 63)
            usleep(300 + (i / 64 % 4) * 400); /* around the keep-alive */
        struct weft_spawn_blocking_wait w;
        switch (rng_next(&rng) % 5) {
        case 0: /* spawn (a compute job every other time), await by hand */
            CHECK((id % 2 ? weft_spawn_compute : weft_spawn_blocking)(rt, job, (void *)id, &h) == 0);
            mark_queued(id);
            poll_until_ready(&p, &h.base);
            check_output(&h, id);
            weft_future_drop(&h.base);
            break;
        case 1: { /* try_, else the unbounded spawn; await by hand */
            int rc = weft_try_spawn_blocking(rt, job, (void *)id, &h);
            if (rc == -EAGAIN) {
                atomic_fetch_add(&eagains, 1);
                CHECK(h.job == NULL);
                rc = weft_spawn_blocking(rt, job, (void *)id, &h);
            }
            CHECK(rc == 0);
            mark_queued(id);
            poll_until_ready(&p, &h.base);
            check_output(&h, id);
            weft_future_drop(&h.base);
            break;
        }
        case 2: /* no handle */
            CHECK(weft_spawn_blocking(rt, job, (void *)id, NULL) == 0);
            mark_queued(id);
            break;
        case 3: /* a waiting spawn, then its handle, under weft_block_on */
            weft_spawn_blocking_wait_init(&w, rt, job, (void *)id);
            CHECK(weft_block_on(rt, &w.base) == 0);
            CHECK(w.res == 0);
            mark_queued(id);
            CHECK(weft_block_on(rt, &w.join.base) == 0);
            check_output(&w.join, id);
            weft_future_drop(&w.join.base);
            weft_future_drop(&w.base);
            break;
        default: /* detached at once */
            CHECK(weft_spawn_blocking(rt, job, (void *)id, &h) == 0);
            mark_queued(id);
            weft_future_drop(&h.base);
            atomic_fetch_add(&detached, 1);
            break;
        }
    }
    /* A job's wake may still be on its way out of the parker (its drop comes
     * after the signal): the parker lives until every clone is released. */
    while (!parker_balanced(&p))
        sched_yield();
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
    return NULL;
}

/* ---- the sampler ------------------------------------------------------------------------- */

static void *sampler(void *arg)
{
    (void)arg;
    struct weft_metrics *m = malloc(sizeof *m);
    CHECK(m);
    while (!atomic_load(&stop_sampler)) {
        CHECK(weft_metrics_read(rt, m) == 0);
        if (m->blocking_threads > atomic_load(&max_pool_threads))
            atomic_store(&max_pool_threads, m->blocking_threads);
        CHECK(m->blocking_idle <= m->blocking_threads);
        atomic_fetch_add(&samples, 1);
        usleep(300);
    }
    free(m);
    return NULL;
}

static uint64_t blocking_jobs(void)
{
    struct weft_metrics *m = malloc(sizeof *m);
    CHECK(m && weft_metrics_read(rt, m) == 0);
    uint64_t n = m->blocking_jobs;
    free(m);
    return n;
}

/* ---- phase 2: destroy with jobs queued ------------------------------------------------------ */

static _Atomic uint32_t holders_started, holders_done;

static void *job_hold(void *arg)
{
    atomic_fetch_add(&holders_started, 1);
    struct timespec ts = { 0, 100 * 1000000 };
    nanosleep(&ts, NULL);
    atomic_fetch_add(&holders_done, 1);
    return arg;
}

/* Awaits one handle or one waiting spawn; dropped at destroy. */
struct final_task {
    struct weft_future base;
    struct weft_blocking_join h;
    struct weft_spawn_blocking_wait w;
    bool is_wait;
};

static _Atomic uint32_t final_polled, final_dropped, final_finished;

static enum weft_poll final_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct final_task *t = (struct final_task *)f;
    if (f->resume == 0)
        atomic_fetch_add(&final_polled, 1);
    WEFT_ASYNC_BEGIN(f);
    if (t->is_wait)
        WEFT_AWAIT(f, cx, &t->w.base);
    else
        WEFT_AWAIT(f, cx, &t->h.base);
    atomic_fetch_add(&final_finished, 1);
    WEFT_ASYNC_END(f);
}

static void final_drop(struct weft_future *f)
{
    struct final_task *t = (struct final_task *)f;
    weft_future_drop(&t->h.base);
    weft_future_drop(&t->w.base);
    weft_future_drop(&t->w.join.base);
    atomic_fetch_add(&final_dropped, 1);
}

static const struct weft_future_ops final_ops = { final_poll, final_drop };

static void dummy_nop(const void *d)
{
    (void)d;
}

static struct weft_waker dummy_clone(const void *d);
static const struct weft_waker_ops dummy_ops = { dummy_clone, dummy_nop, dummy_nop, dummy_nop };

static struct weft_waker dummy_clone(const void *d)
{
    return (struct weft_waker){ d, &dummy_ops };
}

static void destroy_with_queued_jobs(void)
{
    uint32_t base = n_ids - FINAL - 2;
    struct weft_blocking_join held[FINAL];
    bool by_hand[FINAL];
    uint32_t in_tasks = 0;

    for (uint32_t i = 0; i < MAX_THREADS; i++)
        CHECK(weft_spawn_blocking(rt, job_hold, NULL, NULL) == 0);
    while (atomic_load(&holders_started) < MAX_THREADS)
        usleep(200);
    for (uint32_t i = 0; i < FINAL; i++) {
        uintptr_t id = base + i;
        by_hand[i] = false;
        if (i % 4 == 0) {
            CHECK((i % 8 ? weft_spawn_compute : weft_spawn_blocking)(rt, job, (void *)id, NULL) == 0);
        } else if (i % 4 == 1) {
            struct final_task t = { .base = { &final_ops, 0 } };
            CHECK(weft_spawn_blocking(rt, job, (void *)id, &t.h) == 0);
            CHECK(weft_spawn(rt, &t.base, sizeof t, NULL) == 0);
            in_tasks++;
        } else {
            CHECK(weft_spawn_blocking(rt, job, (void *)id, &held[i]) == 0);
            by_hand[i] = true;
        }
    }
    /* Two waiting spawns (the queue is far past its bound). */
    for (uint32_t k = 0; k < 2; k++) {
        struct final_task t = { .base = { &final_ops, 0 }, .is_wait = true };
        weft_spawn_blocking_wait_init(&t.w, rt, job, (void *)(uintptr_t)(base + FINAL + k));
        CHECK(weft_spawn(rt, &t.base, sizeof t, NULL) == 0);
        in_tasks++;
    }
    while (atomic_load(&final_polled) < in_tasks)
        usleep(200);
    CHECK(atomic_load(&holders_done) == 0);

    atomic_store(&phase, "phase 2 (destroy)");
    weft_runtime_destroy(rt);
    CHECK(atomic_load(&holders_done) == MAX_THREADS);
    CHECK(atomic_load(&final_dropped) == in_tasks);
    CHECK(atomic_load(&final_finished) == 0);
    uint32_t cancelled = 0;
    struct weft_waker w = { NULL, &dummy_ops };
    struct weft_cx cx = weft_cx_from_waker(&w);
    for (uint32_t i = 0; i < FINAL; i++) {
        if (!by_hand[i])
            continue;
        CHECK(weft_future_poll(&held[i].base, &cx) == WEFT_READY);
        CHECK(held[i].res == -ECANCELED);
        weft_future_drop(&held[i].base);
        cancelled++;
    }
    for (uint32_t i = 0; i < FINAL + 2; i++)
        CHECK(atomic_load(&runs[base + i]) == 0);
    printf("stress_blocking destroy: held=%u queued=%u waiting=2 cancelled_by_hand=%u "
           "in_tasks=%u OK\n", MAX_THREADS, FINAL, cancelled, in_tasks);
}

/* ---- main ---------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "full") != 0 && strcmp(argv[1], "small") != 0) {
        fprintf(stderr, "usage: %s [full|small]\n", argv[0]);
        return 1;
    }
    bool full = argc < 2 || strcmp(argv[1], "small") != 0;
    n_tasks = full ? 2000 : 100;
    per_task = full ? 100 : 20;
    waves = full ? 200 : 20; /* divides n_tasks */
    per_foreign = full ? 20000 : 500;
    uint32_t phase1_ids = n_tasks * per_task + FOREIGN * per_foreign;
    n_ids = phase1_ids + FINAL + 2;
    runs = calloc(n_ids, sizeof *runs);
    queued = calloc(n_ids, sizeof *queued);
    CHECK(runs && queued);

    start_ns = now_ns();
    pthread_t dog, samp, th[FOREIGN];
    CHECK(pthread_create(&dog, NULL, watchdog, NULL) == 0);
    pthread_detach(dog);

    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.blocking_max_threads = MAX_THREADS;
    cfg.blocking_keepalive_ms = 1;
    cfg.blocking_queue_max = QUEUE_MAX;
    cfg.compute_max_threads = 2;
    cfg.compute_slice_us = 50; /* lowered compute jobs take SIGURG often */
    cfg.blocking_shutdown_ms = 20000;
    /* Nice 19, not SCHED_IDLE: the long jobs get lowered (the monitor's
     * demotion races with the job's end) without a busy machine starving them. */
    cfg.blocking_priority = WEFT_BLOCKING_PRIO_NICE;
    CHECK(weft_runtime_create(&rt, &cfg) == 0);

    atomic_store(&phase, "phase 1 (jobs)");
    CHECK(pthread_create(&samp, NULL, sampler, NULL) == 0);
    struct weft_join *joins = calloc(n_tasks, sizeof *joins);
    CHECK(joins);
    for (uint32_t f = 0; f < FOREIGN; f++)
        CHECK(pthread_create(&th[f], NULL, foreign,
                             (void *)(uintptr_t)(n_tasks * per_task + f * per_foreign)) == 0);
    /* The tasks come in waves with pauses of 0.5 to 2 ms between them, around
     * the keep-alive: the threads exit, or are about to when the next wave
     * comes. */
    uint32_t per_wave = n_tasks / waves;
    for (uint32_t wave = 0; wave < waves; wave++) {
        uint32_t t0 = wave * per_wave;
        for (uint32_t t = t0; t < t0 + per_wave; t++) {
            struct st s = { .base = { &st_ops, 0 }, .first = t * per_task, .n = per_task,
                            .rng = 0x2545f4914f6cdd1dull + t };
            CHECK(weft_spawn(rt, &s.base, sizeof s, &joins[t]) == 0);
        }
        for (uint32_t t = t0; t < t0 + per_wave; t++) {
            CHECK(weft_block_on(rt, &joins[t].base) == 0);
            CHECK(joins[t].res == 0);
            weft_future_drop(&joins[t].base);
        }
        usleep(500 + 500 * (wave % 4));
    }
    free(joins);
    for (uint32_t f = 0; f < FOREIGN; f++)
        pthread_join(th[f], NULL);
    CHECK(atomic_load(&tasks_done) == n_tasks);

    /* Detached jobs may still be queued or running: wait for every queued id. */
    uint64_t expected = 0;
    for (uint32_t i = 0; i < phase1_ids; i++)
        expected += atomic_load(&queued[i]);
    while (atomic_load(&total_runs) < expected || blocking_jobs() < expected)
        usleep(500);
    usleep(10000);
    atomic_store(&stop_sampler, 1);
    pthread_join(samp, NULL);
    for (uint32_t i = 0; i < phase1_ids; i++) {
        if (atomic_load(&runs[i]) != atomic_load(&queued[i])) {
            fprintf(stderr, "stress_blocking: FAIL: job %u queued %u times, ran %u times\n", i,
                    atomic_load(&queued[i]), atomic_load(&runs[i]));
            return 1;
        }
    }
    CHECK(atomic_load(&total_runs) == expected);
    CHECK(blocking_jobs() == expected);
    CHECK(atomic_load(&max_running) <= MAX_THREADS);
    CHECK(atomic_load(&max_pool_threads) <= MAX_THREADS);
    CHECK(atomic_load(&samples) > 0);
    printf("stress_blocking jobs: ids=%u ran=%" PRIu64 " not_queued=%" PRIu64 " eagain=%" PRIu64
           " dropped_waits=%" PRIu64 " detached=%" PRIu64 " max_running=%u max_threads_seen=%"
           PRIu64 " thread_starts=%u secs=%.2f OK\n", phase1_ids, expected,
           phase1_ids - expected, atomic_load(&eagains), atomic_load(&dropped_waits),
           atomic_load(&detached), atomic_load(&max_running), atomic_load(&max_pool_threads),
           atomic_load(&thread_starts), (double)(now_ns() - start_ns) / 1e9);

    atomic_store(&phase, "phase 2 (queue up)");
    destroy_with_queued_jobs();
    /* Give the pool threads a moment to leave before the process exits. */
    usleep(50000);
    free(runs);
    free(queued);
    return 0;
}
