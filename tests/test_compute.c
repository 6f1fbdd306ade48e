/* tests/test_compute.c: weft_spawn_compute, the blocking pool's lane for
 * CPU-bound jobs (runtime/blocking.c): exact outputs, the cap on compute jobs
 * running at once (and that blocking jobs are never held behind it), the
 * priority a compute job runs at from its first instruction and its thread's
 * priority after it, its slices (yields on SIGURG, counted in the metrics;
 * none for blocking jobs, none when turned off, none when the program has
 * its own SIGURG handler, which is kept, none for a runtime created by a
 * thread that blocks SIGURG, whose every SIGURG then reaches the program's
 * signalfd), shutdown with compute jobs queued, and the count in the
 * metrics.
 *
 * Bad inputs tried: weft_spawn_compute with a NULL runtime and with a NULL fn
 * (-EINVAL, the join handle left empty even when it held garbage);
 * weft_runtime_create with
 * compute_max_threads 65537 and UINT32_MAX, compute_slice_us 49 and 1000001
 * (-EINVAL; 65536, 50, 1000000 and WEFT_COMPUTE_SLICE_OFF work); 200
 * SIGURGs sent to the process by kill, and one raised on the test thread,
 * while a sliced job runs (ignored: not a slice); a program's POSIX timer
 * sending SIGURG every 200 us with a payload of its own while sliced jobs
 * run (not a slice, never dereferenced). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#include "common.h"

static struct weft_runtime *start(uint32_t compute_max, uint32_t prio)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.compute_max_threads = compute_max;
    cfg.blocking_priority = prio;
    struct weft_runtime *rt = NULL;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    return rt;
}

/* Joins a handle from the test thread; returns fn's output. */
static uintptr_t join(struct weft_runtime *rt, struct weft_blocking_join *h)
{
    cr_assert_eq(weft_block_on(rt, &h->base), 0);
    cr_assert_eq(h->res, 0);
    uintptr_t v = (uintptr_t)h->output;
    weft_future_drop(&h->base);
    return v;
}

/* Jobs that count how many of them run at once. Each waits (2 s at most) for
 * `want` to be running together, so a cap that let more through would be
 * seen: the pool keeps starting threads while jobs are queued. */
static _Atomic uint32_t running, max_running, started;
static _Atomic int open_gate;
static uint32_t want;

static void *job_counted(void *arg)
{
    uint32_t now = atomic_fetch_add(&running, 1) + 1;
    atomic_fetch_add(&started, 1);
    uint32_t m = atomic_load(&max_running);
    while (now > m && !atomic_compare_exchange_weak(&max_running, &m, now))
        ;
    double end = now_s() + 2.0;
    while (atomic_load(&running) < want && !atomic_load(&open_gate) && now_s() < end)
        sleep_us(200);
    sleep_us(2000);
    atomic_fetch_sub(&running, 1);
    return (void *)((uintptr_t)arg * 2 + 1);
}

static void reset_counts(uint32_t w)
{
    atomic_store(&running, 0);
    atomic_store(&max_running, 0);
    atomic_store(&started, 0);
    atomic_store(&open_gate, 0);
    want = w;
}

/* Twelve compute jobs with a cap of 2: every output exact, exactly two ran at
 * a time; the metrics count them while they run and not after. */
Test(compute, cap_and_outputs, .timeout = 60)
{
    enum { N = 12 };
    reset_counts(2);
    struct weft_runtime *rt = start(2, WEFT_BLOCKING_PRIO_NORMAL);
    struct weft_blocking_join h[N];
    for (uintptr_t i = 0; i < N; i++)
        cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)i, &h[i]), 0);
    struct weft_metrics m;
    WAIT_UNTIL(weft_metrics_read(rt, &m) == 0 && m.compute_running == 2);
    cr_assert_leq(m.blocking_queue_depth, N - 2);
    for (uintptr_t i = 0; i < N; i++)
        cr_assert_eq(join(rt, &h[i]), i * 2 + 1);
    cr_assert_eq(atomic_load(&max_running), 2, "%u compute jobs ran at once, cap 2",
                 atomic_load(&max_running));
    /* A thread counts its job done just after waking the joiner. */
    WAIT_UNTIL(weft_metrics_read(rt, &m) == 0 && m.blocking_jobs == N);
    cr_assert_eq(m.compute_running, 0);
    cr_assert_eq(m.blocking_queue_depth, 0);
    weft_runtime_destroy(rt);
}

/* A blocking job opens the gate a compute job waits on.  */
static void *job_open_gate(void *arg)
{
    atomic_store(&open_gate, 1);
    return arg;
}

/* Cap 1: a compute job holds the lane (waiting for a gate), a second waits
 * behind it and does not start; a blocking job goes past both and opens the
 * gate. Then the second runs. */
Test(compute, blocking_jobs_not_held_behind_the_cap, .timeout = 60)
{
    reset_counts(UINT32_MAX); /* wait for the gate */
    struct weft_runtime *rt = start(1, WEFT_BLOCKING_PRIO_NORMAL);
    struct weft_blocking_join a, b, c;
    cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)1, &a), 0);
    WAIT_UNTIL(atomic_load(&started) == 1);
    cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)2, &b), 0);
    sleep_us(20000);
    cr_assert_eq(atomic_load(&started), 1, "the second compute job started past the cap");
    cr_assert_eq(weft_spawn_blocking(rt, job_open_gate, (void *)3, &c), 0);
    cr_assert_eq(join(rt, &c), 3);
    cr_assert_eq(join(rt, &a), 3);
    cr_assert_eq(join(rt, &b), 5);
    cr_assert_eq(atomic_load(&max_running), 1);
    weft_runtime_destroy(rt);
}

/* A pool of 2 threads runs at most one compute job (one thread is left to
 * blocking jobs, whatever compute_max_threads says); a try_ spawn into a
 * queue bound of 1 is not refused for the compute jobs waiting. */
Test(compute, cap_leaves_a_thread_and_queue_room, .timeout = 60)
{
    reset_counts(UINT32_MAX); /* wait for the gate */
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.blocking_priority = WEFT_BLOCKING_PRIO_NORMAL;
    cfg.blocking_max_threads = 2;
    cfg.blocking_queue_max = 1;
    cfg.compute_max_threads = 8;
    struct weft_runtime *rt = NULL;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    struct weft_blocking_join a, b[2], c;
    cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)1, &a), 0);
    for (uintptr_t i = 0; i < 2; i++)
        cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)(2 + i), &b[i]), 0);
    WAIT_UNTIL(atomic_load(&started) == 1);
    sleep_us(20000);
    cr_assert_eq(atomic_load(&started), 1, "a second compute job took the pool's last thread");
    struct weft_metrics m;
    cr_assert_eq(weft_metrics_read(rt, &m), 0);
    cr_assert_eq(m.blocking_queue_depth, 2);
    cr_assert_eq(weft_try_spawn_blocking(rt, job_open_gate, (void *)9, &c), 0,
                 "the queue bound counted compute jobs");
    cr_assert_eq(join(rt, &c), 9);
    cr_assert_eq(join(rt, &a), 3);
    cr_assert_eq(join(rt, &b[0]), 5);
    cr_assert_eq(join(rt, &b[1]), 7);
    cr_assert_eq(atomic_load(&max_running), 1);
    weft_runtime_destroy(rt);
}

/* The default cap: the creating thread's CPUs less one, at least 1 (every
 * other test sets one). One more compute job than that waits. */
Test(compute, default_cap_is_the_cpus_less_one, .timeout = 60)
{
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
    uint32_t cap = CPU_COUNT(&set) > 1 ? (uint32_t)CPU_COUNT(&set) - 1 : 1;
    if (cap > 63)
        cr_skip_test("%u CPUs: too many jobs to hold at once here", cap + 1);
    reset_counts(UINT32_MAX); /* wait for the gate */
    struct weft_runtime *rt = start(0, WEFT_BLOCKING_PRIO_NORMAL);
    struct weft_blocking_join h[64];
    for (uintptr_t i = 0; i <= cap; i++)
        cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)i, &h[i]), 0);
    WAIT_UNTIL(atomic_load(&started) == cap);
    sleep_us(20000);
    cr_assert_eq(atomic_load(&started), cap, "%u compute jobs at once by default, %u CPUs",
                 atomic_load(&started), CPU_COUNT(&set));
    atomic_store(&open_gate, 1);
    for (uintptr_t i = 0; i <= cap; i++)
        cr_assert_eq(join(rt, &h[i]), i * 2 + 1);
    weft_runtime_destroy(rt);
}

/* Jobs that note the order they started in. */
static _Atomic int order_n, order[4];

static void *job_note(void *arg)
{
    atomic_store(&order[atomic_fetch_add(&order_n, 1)], (int)(uintptr_t)arg);
    return arg;
}

/* A pool thread that comes free takes a queued blocking job before a
 * compute job queued earlier (docs/blocking.md), also when the compute cap
 * is not reached: one thread (so a cap of 1, and no compute job running)
 * held by a gated blocking job while a compute job, then a blocking job,
 * queue. */
Test(compute, a_free_thread_takes_blocking_jobs_first, .timeout = 60)
{
    reset_counts(UINT32_MAX);
    atomic_store(&order_n, 0);
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.blocking_priority = WEFT_BLOCKING_PRIO_NORMAL;
    cfg.blocking_max_threads = 1;
    struct weft_runtime *rt = NULL;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    struct weft_blocking_join a, b, c;
    cr_assert_eq(weft_spawn_blocking(rt, job_counted, (void *)1, &a), 0);
    WAIT_UNTIL(atomic_load(&started) == 1);
    cr_assert_eq(weft_spawn_compute(rt, job_note, (void *)2, &c), 0);
    cr_assert_eq(weft_spawn_blocking(rt, job_note, (void *)3, &b), 0);
    atomic_store(&open_gate, 1);
    cr_assert_eq(join(rt, &a), 3);
    cr_assert_eq(join(rt, &b), 3);
    cr_assert_eq(join(rt, &c), 2);
    cr_assert_eq(atomic_load(&order_n), 2);
    cr_assert_eq(atomic_load(&order[0]), 3, "the compute job queued first ran first");
    cr_assert_eq(atomic_load(&order[1]), 2);
    weft_runtime_destroy(rt);
}

/* The calling thread's policy. */
static void *job_policy(void *arg)
{
    (void)arg;
    return (void *)(uintptr_t)sched_getscheduler(0);
}

/* The calling thread's policy, and (in *arg) how long after the spawn it
 * read it. */
struct timed_policy {
    uint64_t spawned_ns, took_ns;
};

static void *job_policy_timed(void *arg)
{
    struct timed_policy *tp = arg;
    int policy = sched_getscheduler(0);
    tp->took_ns = weft_now_ns() - tp->spawned_ns;
    return (void *)(uintptr_t)policy;
}

static void *try_switch(void *arg)
{
    (void)arg;
    struct sched_param sp = { 0 };
    return (void *)(uintptr_t)(pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) == 0 &&
                               pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp) == 0);
}

/* Whether this process may lower a thread and raise it back (as root). */
static bool may_raise_back(void)
{
    pthread_t th;
    void *ok = NULL;
    cr_assert_eq(pthread_create(&th, NULL, try_switch, NULL), 0);
    pthread_join(th, &ok);
    return ok != NULL;
}

/* A compute job is SCHED_IDLE at its first instruction (the default
 * priority); a blocking job after it, on the same (only) thread, runs at the
 * workers' SCHED_OTHER again. With WEFT_BLOCKING_PRIO_NORMAL nothing is
 * lowered. Needs a process that may raise a thread back (as root). */
Test(compute, lowered_from_the_start, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("this process may not raise a thread back (no CAP_SYS_NICE)");
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.blocking_max_threads = 1;
    struct weft_runtime *rt = NULL;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    struct weft_blocking_join h;
    /* The monitor lowers a blocking job 1 ms (wall clock) after its start: a
     * job preempted that long before it read its policy is lowered as it
     * should be, and is tried again (after another compute job); one that
     * read SCHED_IDLE sooner than 0.9 ms after its spawn is judged as it is. */
    uintptr_t policy;
    for (int tries = 1;; tries++) {
        cr_assert_eq(weft_spawn_compute(rt, job_policy, NULL, &h), 0);
        cr_assert_eq(join(rt, &h), SCHED_IDLE);
        struct timed_policy tp = { .spawned_ns = weft_now_ns() };
        cr_assert_eq(weft_spawn_blocking(rt, job_policy_timed, &tp, &h), 0);
        policy = join(rt, &h);
        if (policy == SCHED_OTHER || tp.took_ns < 900000u || tries == 10)
            break;
        cr_log_info("a blocking job read policy %d %.1f ms after its spawn: tried again",
                    (int)policy, (double)tp.took_ns / 1e6);
    }
    cr_assert_eq(policy, SCHED_OTHER);
    weft_runtime_destroy(rt);

    rt = start(1, WEFT_BLOCKING_PRIO_NORMAL);
    cr_assert_eq(weft_spawn_compute(rt, job_policy, NULL, &h), 0);
    cr_assert_eq(join(rt, &h), SCHED_OTHER);
    weft_runtime_destroy(rt);
}

/* A compute job (lowered) that spawns a blocking job and waits for it to
 * run: no thread is idle, so the spawn starts one, from the lowered thread,
 * and a thread inherits its creator's policy. The new thread must run at the
 * workers' SCHED_OTHER all the same (it ran SCHED_IDLE: a helper's review). */
static _Atomic int inner_policy = -1;
static _Atomic uint64_t inner_spawned_ns, inner_took_ns;
static struct weft_blocking_join inner;

static void *record_policy(void *arg)
{
    (void)arg;
    int policy = sched_getscheduler(0);
    atomic_store(&inner_took_ns, weft_now_ns() - atomic_load(&inner_spawned_ns));
    atomic_store(&inner_policy, policy);
    return NULL;
}

static void *spawn_and_wait(void *arg)
{
    atomic_store(&inner_spawned_ns, weft_now_ns());
    if (weft_spawn_blocking(arg, record_policy, NULL, &inner) != 0)
        return (void *)1;
    for (int i = 0; i < 5000 && atomic_load(&inner_policy) < 0; i++)
        usleep(1000); /* busy meanwhile: the job cannot come to this thread */
    return NULL;
}

/* The monitor lowers a blocking job 1 ms (wall clock) after its start: an
 * inner job whose new thread was preempted that long before it read its
 * policy is lowered as it should be (1 run in 17 beside test_blocking_shutdown
 * under ASan). Such a run is tried again with a new runtime (a new thread);
 * one that read SCHED_IDLE less than 0.9 ms after the spawn is judged as it is. */
Test(compute, a_thread_started_from_a_lowered_job_runs_at_the_workers_priority, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("this process may not raise a thread back (no CAP_SYS_NICE)");
    for (int tries = 1;; tries++) {
        atomic_store(&inner_policy, -1);
        struct weft_runtime *rt = start(1, WEFT_BLOCKING_PRIO_IDLE);
        struct weft_blocking_join h;
        cr_assert_eq(weft_spawn_compute(rt, spawn_and_wait, rt, &h), 0);
        cr_assert_eq(join(rt, &h), 0);
        cr_assert_eq(join(rt, &inner), 0);
        weft_runtime_destroy(rt);
        uint64_t took = atomic_load(&inner_took_ns);
        if (atomic_load(&inner_policy) == SCHED_OTHER || took < 900000u || tries == 10)
            break;
        cr_log_info("the inner job read policy %d %.1f ms after its spawn: tried again",
                    atomic_load(&inner_policy), (double)took / 1e6);
    }
    cr_assert_eq(atomic_load(&inner_policy), SCHED_OTHER, "policy %d (SCHED_IDLE is %d)",
                 atomic_load(&inner_policy), SCHED_IDLE);
}

static void noop_wake(const void *d)
{
    (void)d;
}

static struct weft_waker noop_clone(const void *d);
static const struct weft_waker_ops noop_ops = { noop_clone, noop_wake, noop_wake, noop_wake };

static struct weft_waker noop_clone(const void *d)
{
    return (struct weft_waker){ d, &noop_ops };
}

/* Cap 1, one compute job running, three queued: a shutdown that waits for the
 * running one cancels the queued ones (-ECANCELED, never run); the handles
 * outlive the runtime. Bad arguments and config are refused. */
Test(compute, shutdown_and_bad_inputs, .timeout = 60)
{
    enum { QUEUED = 3 };
    reset_counts(UINT32_MAX);
    struct weft_runtime *rt = start(1, WEFT_BLOCKING_PRIO_NORMAL);
    struct weft_blocking_join a, q[QUEUED];
    memset(q, 0x5a, sizeof q);
    cr_assert_eq(weft_spawn_compute(NULL, job_policy, NULL, &q[0]), -EINVAL);
    cr_assert_null(q[0].base.ops);
    cr_assert_null(q[0].job);
    cr_assert_eq(weft_spawn_compute(rt, NULL, NULL, &q[0]), -EINVAL);
    cr_assert_null(q[0].job);

    cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)1, &a), 0);
    WAIT_UNTIL(atomic_load(&started) == 1);
    for (uintptr_t i = 0; i < QUEUED; i++)
        cr_assert_eq(weft_spawn_compute(rt, job_counted, (void *)(10 + i), &q[i]), 0);
    /* No gate opens: the running job ends by itself after 2 s, well after
     * the shutdown took the queued ones, and within the 5 s it waits. */
    cr_assert_eq(weft_runtime_shutdown(rt, 5000), 0);
    cr_assert_eq(atomic_load(&started), 1, "a queued compute job ran during the shutdown");
    struct weft_waker w = { NULL, &noop_ops };
    struct weft_cx cx = weft_cx_from_waker(&w); /* a budget: a ready handle spends a unit */
    cr_assert_eq(weft_future_poll(&a.base, &cx), WEFT_READY);
    cr_assert_eq(a.res, 0);
    cr_assert_eq((uintptr_t)a.output, 3);
    weft_future_drop(&a.base);
    for (int i = 0; i < QUEUED; i++) {
        cr_assert_eq(weft_future_poll(&q[i].base, &cx), WEFT_READY);
        cr_assert_eq(q[i].res, -ECANCELED);
        weft_future_drop(&q[i].base);
    }

    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 1;
    cfg.compute_max_threads = 65537;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), -EINVAL);
    cfg.compute_max_threads = UINT32_MAX;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), -EINVAL);
    cfg.compute_max_threads = 65536;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    weft_runtime_destroy(rt);
    cfg.compute_max_threads = 0;
    uint32_t bad_slices[] = { 49, 1000001 }, good_slices[] = { 50, 1000000, WEFT_COMPUTE_SLICE_OFF };
    for (size_t i = 0; i < sizeof bad_slices / sizeof bad_slices[0]; i++) {
        cfg.compute_slice_us = bad_slices[i];
        cr_assert_eq(weft_runtime_create(&rt, &cfg), -EINVAL, "slice %u", bad_slices[i]);
    }
    for (size_t i = 0; i < sizeof good_slices / sizeof good_slices[0]; i++) {
        cfg.compute_slice_us = good_slices[i];
        cr_assert_eq(weft_runtime_create(&rt, &cfg), 0, "slice %u", good_slices[i]);
        weft_runtime_destroy(rt);
    }
}

/* ---- slices ------------------------------------------------------------------------ */

static struct weft_runtime *slice_rt;

static uint64_t slices_now(void)
{
    struct weft_metrics m;
    CHECK(weft_metrics_read(slice_rt, &m) == 0);
    return m.compute_slices;
}

/* Spins until the slice count rose by `arg` or for 40 ms when arg is 0 (20 s
 * at most); returns how much it rose meanwhile. */
static void *job_spin_slices(void *arg)
{
    uint64_t want = (uintptr_t)arg, s0 = slices_now();
    double end = now_s() + (want ? 20.0 : 0.04);
    while (now_s() < end && (!want || slices_now() - s0 < want))
        ;
    return (void *)(uintptr_t)(slices_now() - s0);
}

static struct weft_runtime *start_sliced(uint32_t slice_us)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.compute_slice_us = slice_us;
    /* Nice 19 rather than SCHED_IDLE: lowered (so sliced) but not starved
     * when other tests keep both CPUs busy. */
    cfg.blocking_priority = WEFT_BLOCKING_PRIO_NICE;
    cr_assert_eq(weft_runtime_create(&slice_rt, &cfg), 0);
    return slice_rt;
}

/* Runs job_spin_slices(want) as a compute or a blocking job. */
static uintptr_t run_spin(bool compute, uintptr_t want)
{
    struct weft_blocking_join h;
    int (*spawn)(struct weft_runtime *, weft_blocking_fn *, void *, struct weft_blocking_join *) =
        compute ? weft_spawn_compute : weft_spawn_blocking;
    cr_assert_eq(spawn(slice_rt, job_spin_slices, (void *)want, &h), 0);
    return join(slice_rt, &h);
}

/* A lowered compute job yields at every slice (100 us: 10 of them come
 * within 20 s even on a loaded machine); a blocking job spinning 40 ms, which
 * the monitor lowers too, is not sliced. */
Test(compute, sliced_while_lowered, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("this process may not raise a thread back (no CAP_SYS_NICE)");
    start_sliced(100);
    uintptr_t rose = run_spin(true, 10);
    cr_assert_geq(rose, 10, "a 100 us slice yielded %lu times", (unsigned long)rose);
    sleep_us(20000); /* a signal still pending from the job's last slice lands */
    cr_assert_eq(run_spin(false, 0), 0, "a blocking job was sliced");
    struct sigaction sa;
    cr_assert_eq(sigaction(SIGURG, NULL, &sa), 0);
    cr_assert(sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN, "no SIGURG handler");
    weft_runtime_destroy(slice_rt);
}

/* Spins until the slice count rose by 40 (20 s at most); returns the CPU
 * time it took, in ns. */
static void *job_cpu_for_40_slices(void *arg)
{
    (void)arg;
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    uint64_t s0 = slices_now();
    double end = now_s() + 20.0;
    while (now_s() < end && slices_now() - s0 < 40)
        ;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    return (void *)(uintptr_t)((b.tv_sec - a.tv_sec) * 1000000000 + (b.tv_nsec - a.tv_nsec));
}

/* The default slice, 250 us (runtime.h): a slice counts only once the job
 * had half of it on a CPU, so 40 of them take 10 ms of the job's CPU time,
 * whatever else runs (2.5 ms slices would take 100). */
Test(compute, the_default_slice_is_250_us, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("this process may not raise a thread back (no CAP_SYS_NICE)");
    start_sliced(0);
    struct weft_blocking_join h;
    cr_assert_eq(weft_spawn_compute(slice_rt, job_cpu_for_40_slices, NULL, &h), 0);
    uintptr_t ns = join(slice_rt, &h);
    cr_assert_lt(ns, 40 * 1000000u, "40 slices took %.1f ms of CPU", (double)ns / 1e6);
    cr_assert_geq(ns, 40 * 125000u, "40 slices took %.1f ms of CPU", (double)ns / 1e6);
    weft_runtime_destroy(slice_rt);
}

/* WEFT_COMPUTE_SLICE_OFF: a compute job spinning 40 ms yields never. */
Test(compute, slices_off, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("nothing is lowered, so nothing would be sliced anyway");
    start_sliced(WEFT_COMPUTE_SLICE_OFF);
    cr_assert_eq(run_spin(true, 0), 0);
    weft_runtime_destroy(slice_rt);
}

/* A SIGURG that no slice timer sent (kill, out-of-band data) does nothing to
 * a sliced job, nor to any other thread: the job ends with its output. */
Test(compute, stray_sigurg_ignored, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("nothing is lowered, so nothing would be sliced anyway");
    start_sliced(100);
    struct weft_blocking_join h;
    cr_assert_eq(weft_spawn_compute(slice_rt, job_spin_slices, (void *)(uintptr_t)20, &h), 0);
    for (int i = 0; i < 200; i++) {
        cr_assert_eq(kill(getpid(), SIGURG), 0);
        sleep_us(100);
    }
    cr_assert_geq(join(slice_rt, &h), 20);
    cr_assert_eq(raise(SIGURG), 0);
    weft_runtime_destroy(slice_rt);
}

static _Atomic int app_urgs;

static void app_urg(int sig)
{
    (void)sig;
    atomic_fetch_add(&app_urgs, 1);
}

/* A program that handles SIGURG itself keeps its handler; compute jobs then
 * run unsliced (and send it nothing). */
Test(compute, program_sigurg_handler_kept, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("nothing is lowered, so nothing would be sliced anyway");
    struct sigaction mine = { 0 }, now;
    mine.sa_handler = app_urg;
    sigemptyset(&mine.sa_mask);
    cr_assert_eq(sigaction(SIGURG, &mine, NULL), 0);
    start_sliced(100);
    cr_assert_eq(run_spin(true, 0), 0);
    cr_assert_eq(atomic_load(&app_urgs), 0);
    cr_assert_eq(sigaction(SIGURG, NULL, &now), 0);
    cr_assert_eq(now.sa_handler, app_urg, "the program's SIGURG handler was replaced");
    weft_runtime_destroy(slice_rt);
}

/* Waits up to 1 s for one SIGURG on the signalfd; true if it came. */
static bool urg_arrived(int sfd)
{
    struct pollfd pfd = { sfd, POLLIN, 0 };
    if (poll(&pfd, 1, 1000) != 1)
        return false;
    struct signalfd_siginfo si;
    return read(sfd, &si, sizeof si) == (ssize_t)sizeof si && si.ssi_signo == SIGURG;
}

/* Spins until told to stop (10 s at most); returns how much the slice count
 * rose meanwhile. */
static _Atomic int stop_spin;

static void *job_spin_until_told(void *arg)
{
    (void)arg;
    uint64_t s0 = slices_now();
    double end = now_s() + 10.0;
    while (!atomic_load(&stop_spin) && now_s() < end)
        ;
    return (void *)(uintptr_t)(slices_now() - s0);
}

/* A program that blocks SIGURG and reads it itself (signalfd) gets every one
 * sent to the process: with an idle pool thread, and while a compute job
 * runs (that runtime's jobs are not sliced, so no pool thread lets SIGURG
 * in). Pool threads used to unblock SIGURG as they started and took the
 * program's signals: 0 of 20 arrived. */
Test(compute, a_program_reading_sigurg_gets_every_one, .timeout = 60)
{
    sigset_t urg;
    sigemptyset(&urg);
    sigaddset(&urg, SIGURG);
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, &urg, NULL), 0); /* before the runtime's threads */
    int sfd = signalfd(-1, &urg, SFD_CLOEXEC);
    cr_assert_geq(sfd, 0);
    start_sliced(100);
    cr_assert_eq(run_spin(false, 0), 0); /* a pool thread now waits for work */
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(kill(getpid(), SIGURG), 0);
        cr_assert(urg_arrived(sfd), "SIGURG %d of 20 (pool idle) did not reach the program", i);
    }
    struct weft_blocking_join h;
    atomic_store(&stop_spin, 0);
    cr_assert_eq(weft_spawn_compute(slice_rt, job_spin_until_told, NULL, &h), 0);
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(kill(getpid(), SIGURG), 0);
        cr_assert(urg_arrived(sfd), "SIGURG %d of 20 (compute job) did not reach the program", i);
    }
    atomic_store(&stop_spin, 1);
    cr_assert_eq(join(slice_rt, &h), 0, "the compute job was sliced");
    weft_runtime_destroy(slice_rt);
    close(sfd);
}

/* A program's own POSIX timer sending SIGURG with a payload of its own (not
 * a slicer) while sliced jobs run: the handler reads no payload that is not
 * its thread's slicer. It used to take any timer SIGURG's payload for one
 * (a crash: SIGSEGV in the handler). */
Test(compute, a_program_timer_on_sigurg_is_not_a_slice, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("nothing is lowered, so nothing would be sliced anyway");
    start_sliced(100);
    struct sigevent ev = { 0 };
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGURG;
    /* A payload no thread may read: a page with no access. */
    void *none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(none, MAP_FAILED);
    ev.sigev_value.sival_ptr = none;
    timer_t t;
    cr_assert_eq(timer_create(CLOCK_MONOTONIC, &ev, &t), 0);
    struct itimerspec every = { { 0, 200000 }, { 0, 200000 } };
    cr_assert_eq(timer_settime(t, 0, &every, NULL), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_geq(run_spin(true, 10), 10, "the job was not sliced");
    cr_assert_eq(timer_delete(t), 0);
    weft_runtime_destroy(slice_rt);
    munmap(none, 4096);
}

/* A runtime created on a pool thread (inside a blocking job of another
 * runtime) slices its compute jobs like one created by the program: the
 * pool thread's mask is the one it inherited, not one weft blocked SIGURG in
 * (which made the inner runtime look like a program reading SIGURG itself:
 * no slices at all, a helper's review). */
static void *job_make_sliced_runtime(void *arg)
{
    (void)arg;
    /* As start_sliced, without cr_assert (not the test's thread). */
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.compute_slice_us = 100;
    cfg.blocking_priority = WEFT_BLOCKING_PRIO_NICE;
    if (weft_runtime_create(&slice_rt, &cfg) != 0)
        return NULL;
    struct weft_blocking_join h = { 0 };
    uintptr_t rose = 0;
    if (weft_spawn_compute(slice_rt, job_spin_slices, (void *)(uintptr_t)10, &h) == 0 &&
        weft_block_on(slice_rt, &h.base) == 0 && h.res == 0)
        rose = (uintptr_t)h.output;
    weft_future_drop(&h.base);
    weft_runtime_destroy(slice_rt);
    return (void *)rose;
}

Test(compute, a_runtime_made_on_a_pool_thread_is_sliced, .timeout = 60)
{
    if (!may_raise_back())
        cr_skip_test("nothing is lowered, so nothing would be sliced anyway");
    struct weft_runtime *outer = start(0, WEFT_BLOCKING_PRIO_NICE);
    struct weft_blocking_join h;
    cr_assert_eq(weft_spawn_blocking(outer, job_make_sliced_runtime, NULL, &h), 0);
    uintptr_t rose = join(outer, &h);
    cr_assert_geq(rose, 10, "the inner runtime's compute job yielded %lu times", (unsigned long)rose);
    weft_runtime_destroy(outer);
}
