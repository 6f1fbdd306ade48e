/* tests/test_blocking_shutdown.c: the blocking pool at shutdown
 * (runtime/blocking.c, weft_runtime_shutdown and weft_runtime_destroy):
 * queued jobs cancelled (-ECANCELED to every kind of joiner: tasks, the test
 * thread, a foreign thread's block_on), a running job waited for up to the
 * timeout and then left behind (the count returned; it finishes later on
 * memory still alive), jobs that finish in time waited for, idle threads
 * ended at once and not counted as left behind, a job blocked in
 * weft_block_on released.
 *
 * Bad inputs tried: a spawn (blocking, try_ and task) from a job running
 * while the runtime shuts down (-ESHUTDOWN, join left empty);
 * weft_runtime_shutdown(NULL) (-EINVAL). Common set-up: blocking_common.h. */
#include "blocking_common.h"

/* ---- shutdown ---------------------------------------------------------------------------------- */

static struct weft_runtime *long_rt;
static _Atomic int long_started, long_done, long_spawn_rc = 1;

/* Sleeps 2 s, then (the runtime shut down meanwhile) tries to spawn. */
static void *job_long(void *arg)
{
    (void)arg;
    atomic_store(&long_started, 1);
    double end = now_s() + 2.0;
    while (now_s() < end)
        sleep_us(10000);
    atomic_store(&long_spawn_rc, weft_spawn_blocking(long_rt, job_noop, NULL, NULL));
    atomic_store(&long_done, 1);
    return (void *)7;
}

/* Awaits the handle in h[0] and nothing else (a cancelled job's task is
 * dropped before it could see the result). */
static _Atomic int foreign_rc = 1;

static enum weft_poll body_await_quietly(struct bt *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    WEFT_AWAIT(&t->base, cx, &t->h[0].base);
    WEFT_ASYNC_END(&t->base);
}

static void *foreign_block_on(void *p)
{
    struct bt *t = p;
    atomic_store(&foreign_rc, weft_block_on(t->rt, &t->base));
    return NULL;
}

/* One thread stuck in a 2 s job, ten jobs queued behind it, joined by tasks,
 * by the test thread and by a foreign thread's block_on. A shutdown waiting
 * 50 ms leaves the long job behind (returns 1) and cancels the others; the
 * long job finishes later on the runtime's memory, which is still alive. */
Test(blocking, shutdown_cancels_queued_and_leaves_running, .timeout = 60)
{
    enum { QUEUED = 10, IN_TASKS = 4, BY_HAND = 4 };
    struct weft_runtime_config cfg = base_cfg();
    cfg.blocking_max_threads = 1;
    struct weft_runtime *rt = start_cfg(&cfg);
    long_rt = rt;
    struct weft_blocking_join hl, hq[QUEUED];
    struct fw fl = { 0 }, fq[QUEUED];
    memset(fq, 0, sizeof fq);

    cr_assert_eq(weft_spawn_blocking(rt, job_long, NULL, &hl), 0);
    WAIT_UNTIL(atomic_load(&long_started));
    for (uintptr_t i = 0; i < QUEUED; i++)
        cr_assert_eq(weft_spawn_blocking(rt, job_twice, (void *)(100 + i),
                                         i == QUEUED - 1 ? NULL : &hq[i]), 0);
    cr_assert_eq(metrics(rt).blocking_queue_depth, QUEUED);
    /* Joined by tasks (handles moved into them). */
    for (uint32_t i = 0; i < IN_TASKS; i++) {
        struct bt b = bt_make(rt, body_await_quietly, 100 + i, 0);
        b.h[0] = hq[i];
        cr_assert_eq(weft_spawn(rt, &b.base, sizeof b, NULL), 0);
    }
    WAIT_UNTIL(atomic_load(&bt_polled) == IN_TASKS);
    /* By hand, from this thread: pending, with a waker registered. */
    for (uint32_t i = IN_TASKS; i < IN_TASKS + BY_HAND; i++)
        cr_assert_eq(poll_with(&hq[i].base, &fq[i]), WEFT_PENDING);
    cr_assert_eq(poll_with(&hl.base, &fl), WEFT_PENDING);
    /* By a foreign thread's block_on. */
    struct bt fb = bt_make(rt, body_await_quietly, 100 + IN_TASKS + BY_HAND, 0);
    fb.h[0] = hq[IN_TASKS + BY_HAND];
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, foreign_block_on, &fb), 0);
    WAIT_UNTIL(atomic_load(&bt_polled) == IN_TASKS + 1);

    double t0 = now_s();
    int left = weft_runtime_shutdown(rt, 50);
    double dt = now_s() - t0;
    cr_assert_eq(left, 1, "shutdown left %d jobs behind", left);
    cr_assert_geq(dt, 0.045, "shutdown waited %.3f s, asked for 50 ms", dt);
    cr_assert_lt(dt, 1.5, "shutdown took %.3f s", dt);
    cr_assert_eq(atomic_load(&long_done), 0, "the long job finished inside the shutdown");

    pthread_join(th, NULL);
    cr_assert_eq(atomic_load(&foreign_rc), -ECANCELED, "block_on gave %d", atomic_load(&foreign_rc));
    cr_assert_eq(atomic_load(&bt_dropped), IN_TASKS + 1); /* + the block_on's future */
    cr_assert_eq(atomic_load(&bt_finished), 0);
    for (uint32_t i = IN_TASKS; i < IN_TASKS + BY_HAND; i++) {
        cr_assert_eq(atomic_load(&fq[i].woken), 1, "handle %u not woken by the cancel", i);
        hq[i].output = (void *)1;
        cr_assert_eq(poll_with(&hq[i].base, &fq[i]), WEFT_READY);
        cr_assert_eq(hq[i].res, -ECANCELED);
        cr_assert_null(hq[i].output);
        weft_future_drop(&hq[i].base);
        assert_waker_balanced(&fq[i]);
    }
    for (uint32_t i = 0; i < QUEUED; i++)
        cr_assert_eq(atomic_load(&ran[100 + i]), 0, "cancelled job %u ran", i);

    /* The job left behind finishes on its own, and wakes its handle. */
    WAIT_UNTIL(atomic_load(&long_done));
    WAIT_UNTIL(atomic_load(&fl.woken) == 1);
    cr_assert_eq(poll_with(&hl.base, &fl), WEFT_READY);
    cr_assert_eq(hl.res, 0);
    cr_assert_eq((uintptr_t)hl.output, 7);
    weft_future_drop(&hl.base);
    assert_waker_balanced(&fl);
    cr_assert_eq(atomic_load(&long_spawn_rc), -ESHUTDOWN);
    wait_pool_gone();
}

static _Atomic int closing_seen, closing_spawns;
static _Atomic int closing_try_rc = 1, closing_task_rc = 1, closing_join_empty;

static enum weft_poll body_nothing(struct bt *t, struct weft_cx *cx)
{
    (void)t, (void)cx;
    return WEFT_READY;
}

/* Spawns (successfully) until the pool closes; then checks every spawn fails. */
static void *job_until_closed(void *arg)
{
    (void)arg;
    atomic_store(&long_started, 1);
    double deadline = now_s() + WAIT_SECS;
    while (now_s() < deadline) {
        int rc = weft_spawn_blocking(long_rt, job_noop, NULL, NULL);
        if (rc == -ESHUTDOWN) {
            atomic_store(&closing_seen, 1);
            break;
        }
        CHECK(rc == 0);
        atomic_fetch_add(&closing_spawns, 1);
        sleep_us(2000);
    }
    struct weft_blocking_join h;
    memset(&h, 0xab, sizeof h);
    atomic_store(&closing_try_rc, weft_try_spawn_blocking(long_rt, job_noop, NULL, &h));
    atomic_store(&closing_join_empty, h.job == NULL && h.base.ops == NULL);
    struct bt b = bt_make(long_rt, body_nothing, 0, 0);
    atomic_store(&closing_task_rc, weft_spawn(long_rt, &b.base, sizeof b, NULL));
    sleep_us(100000); /* still running a while after the close */
    atomic_store(&long_done, 1);
    return NULL;
}

/* A job still running when shutdown begins sees its spawns refused, and a
 * shutdown that gives it time returns 0 once it finished. */
Test(blocking, spawn_from_job_during_shutdown, .timeout = 60)
{
    struct weft_runtime_config cfg = base_cfg();
    cfg.blocking_max_threads = 1;
    struct weft_runtime *rt = start_cfg(&cfg);
    long_rt = rt;
    cr_assert_eq(weft_spawn_blocking(rt, job_until_closed, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&closing_spawns) >= 3);
    int left = weft_runtime_shutdown(rt, 5000);
    cr_assert_eq(left, 0);
    cr_assert(atomic_load(&long_done), "shutdown returned before the job finished");
    cr_assert(atomic_load(&closing_seen));
    cr_assert_eq(atomic_load(&closing_try_rc), -ESHUTDOWN);
    cr_assert(atomic_load(&closing_join_empty));
    cr_assert_eq(atomic_load(&closing_task_rc), -ESHUTDOWN);
    wait_pool_gone();
}

static _Atomic uint32_t sleepers_started, sleepers_done;

static void *job_sleep_200ms(void *arg)
{
    atomic_fetch_add(&sleepers_started, 1);
    sleep_us(200000);
    atomic_fetch_add(&sleepers_done, 1);
    return arg;
}

/* weft_runtime_destroy waits for running jobs that end within
 * blocking_shutdown_ms, and so does weft_runtime_shutdown (returning 0). */
Test(blocking, destroy_waits_for_jobs_that_finish_in_time, .timeout = 60)
{
    struct weft_runtime_config cfg = base_cfg();
    cfg.blocking_shutdown_ms = 5000;
    cfg.blocking_max_threads = 4;
    struct weft_runtime *rt = start_cfg(&cfg);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(weft_spawn_blocking(rt, job_sleep_200ms, NULL, NULL), 0);
    WAIT_UNTIL(atomic_load(&sleepers_started) == 3);
    weft_runtime_destroy(rt);
    cr_assert_eq(atomic_load(&sleepers_done), 3, "destroy returned before its jobs finished");

    atomic_store(&sleepers_started, 0);
    atomic_store(&sleepers_done, 0);
    rt = start_cfg(&cfg);
    struct weft_blocking_join h[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(weft_spawn_blocking(rt, job_sleep_200ms, (void *)9, &h[i]), 0);
    WAIT_UNTIL(atomic_load(&sleepers_started) == 2);
    cr_assert_eq(weft_runtime_shutdown(rt, 5000), 0);
    cr_assert_eq(atomic_load(&sleepers_done), 2);
    struct fw f = { 0 };
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(poll_with(&h[i].base, &f), WEFT_READY);
        cr_assert_eq(h[i].res, 0);
        cr_assert_eq((uintptr_t)h[i].output, 9);
        weft_future_drop(&h[i].base);
    }
    cr_assert_eq(atomic_load(&f.clones), 0);
    cr_assert_eq(weft_runtime_shutdown(NULL, 0), -EINVAL);
    wait_pool_gone();
}

/* Spins for arg microseconds. */
static void *job_spin_us(void *arg)
{
    spin_for((double)(uintptr_t)arg * 1e-6);
    return arg;
}

/* Destroy while the pool's threads go idle: they (keep-alive 60 s) must
 * notice the close and exit at once, and the shutdown, which waits for them,
 * frees the runtime before it returns (the counting allocator sees it). Each round ends its job a little later
 * relative to the close (0 to 3 ms, in 10 us steps), so that some round
 * lands the close in each moment between a job's end and its thread's sleep. */
Test(blocking, destroy_ends_idle_threads_at_once, .timeout = 120)
{
    struct counting_alloc ca;
    for (int round = 0; round < 300; round++) {
        struct weft_runtime_config cfg = base_cfg();
        cfg.workers = 1;
        cfg.no_stall_detector = true;
        cfg.blocking_keepalive_ms = 60000;
        counting_init(&ca, -1);
        cfg.allocator = &ca.a;
        struct weft_runtime *rt = start_cfg(&cfg);
        uintptr_t us = (uintptr_t)(round * 10) % 3000;
        cr_assert_eq(weft_spawn_blocking(rt, job_spin_us, (void *)us, NULL), 0);
        if (round % 2)
            cr_assert_eq(weft_spawn_blocking(rt, job_spin_us, (void *)(us / 2), NULL), 0);
        cr_assert_eq(weft_runtime_shutdown(rt, 5000), 0);
        /* Every thread gone and nothing else held: the runtime is freed
         * before the shutdown returns. */
        cr_assert_eq(atomic_load(&ca.allocs), atomic_load(&ca.frees),
                     "round %d: the runtime was still held after its shutdown (a pool thread "
                     "missed the close?)", round);
        assert_balanced(&ca);
    }
    wait_pool_gone();
}

/* The count weft_runtime_shutdown returns is of jobs left running: idle
 * threads (woken by the close, on their way out) are not jobs, even with a
 * timeout too short for them to be gone. Ten rounds of 15 idle threads and
 * one busy one, as the idle ones are sometimes all gone in time. */
Test(blocking, shutdown_counts_running_jobs_not_idle_threads, .timeout = 120)
{
    enum { THREADS = 16, ROUNDS = 10 };
    for (int round = 0; round < ROUNDS; round++) {
        struct weft_runtime_config cfg = base_cfg();
        cfg.blocking_keepalive_ms = 60000;
        struct weft_runtime *rt = start_cfg(&cfg);
        struct weft_blocking_join h[THREADS];
        atomic_store(&arrived, 0);
        atomic_store(&go, 0);
        gate_reset(&gate_a);
        for (uintptr_t i = 0; i < THREADS; i++)
            cr_assert_eq(weft_spawn_blocking(rt, job_rendezvous, (void *)i, &h[i]), 0);
        WAIT_UNTIL(atomic_load(&arrived) == THREADS);
        atomic_store(&go, 1);
        for (uintptr_t i = 0; i < THREADS; i++)
            block_on_twice(rt, &h[i], i);
        WAIT_UNTIL(metrics(rt).blocking_idle == THREADS);
        /* One of them takes a job that outlives the shutdown. */
        cr_assert_eq(weft_spawn_blocking(rt, job_gate_a, (void *)70, NULL), 0);
        WAIT_UNTIL(atomic_load(&gate_a.started) == 1);
        struct weft_metrics m = metrics(rt);
        cr_assert_eq(m.blocking_threads, THREADS);
        cr_assert_eq(m.blocking_idle, THREADS - 1);
        int left = weft_runtime_shutdown(rt, 0);
        atomic_store(&gate_a.open, 1);
        WAIT_UNTIL(atomic_load(&gate_a.finished) == 1);
        wait_pool_gone();
        cr_assert_eq(left, 1, "round %d: shutdown reported %d jobs left running; one was",
                     round, left);
    }
}

/* A future that never finishes (and keeps no waker). */
static enum weft_poll never_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    return WEFT_PENDING;
}

static const struct weft_future_ops never_ops = { never_poll, NULL };

/* Blocks in weft_block_on on a never-ready future; returns what it gave. */
static void *job_block_on_forever(void *arg)
{
    (void)arg;
    struct weft_future never = { &never_ops, 0 };
    atomic_store(&long_started, 1);
    int rc = weft_block_on(long_rt, &never);
    return (void *)(intptr_t)rc;
}

/* A job blocked in weft_block_on does not hold up destroy: the workers stop
 * first, which cancels the block_on, and the job ends. */
Test(blocking, job_in_block_on_released_by_shutdown, .timeout = 60)
{
    struct weft_runtime_config cfg = base_cfg();
    struct weft_runtime *rt = start_cfg(&cfg);
    long_rt = rt;
    struct weft_blocking_join h;
    cr_assert_eq(weft_spawn_blocking(rt, job_block_on_forever, NULL, &h), 0);
    WAIT_UNTIL(atomic_load(&long_started));
    sleep_us(20000);
    double t0 = now_s();
    cr_assert_eq(weft_runtime_shutdown(rt, 8000), 0);
    cr_assert_lt(now_s() - t0, 4.0, "shutdown waited for the job's block_on");
    struct fw f = { 0 };
    cr_assert_eq(poll_with(&h.base, &f), WEFT_READY);
    cr_assert_eq(h.res, 0);
    cr_assert_eq((intptr_t)h.output, -ECANCELED);
    weft_future_drop(&h.base);
    wait_pool_gone();
}


/* weft_runtime_shutdown(rt, 0) with idle pool threads only (every job done):
 * it returns 0, and the runtime must be gone by then, allocator and all. The
 * idle threads used to be left on their way out: one of them then freed the
 * runtime through the allocator after the return, with the workers' eventfds
 * open until then (a lifecycle review: 23 rounds of 100). */
Test(blocking, shutdown_zero_with_idle_threads_frees_the_runtime_first, .timeout = 120)
{
    enum { THREADS = 16, ROUNDS = 40 };
    struct counting_alloc ca;
    for (int round = 0; round < ROUNDS; round++) {
        struct weft_runtime_config cfg = base_cfg();
        cfg.blocking_keepalive_ms = 60000;
        counting_init(&ca, -1);
        cfg.allocator = &ca.a;
        struct weft_runtime *rt = start_cfg(&cfg);
        atomic_store(&arrived, 0);
        atomic_store(&go, 0);
        for (uintptr_t i = 0; i < THREADS; i++)
            cr_assert_eq(weft_spawn_blocking(rt, job_rendezvous, (void *)i, NULL), 0);
        WAIT_UNTIL(atomic_load(&arrived) == THREADS);
        atomic_store(&go, 1);
        WAIT_UNTIL(metrics(rt).blocking_idle == THREADS);
        cr_assert_eq(weft_runtime_shutdown(rt, 0), 0);
        cr_assert_eq(atomic_load(&ca.allocs), atomic_load(&ca.frees),
                     "round %d: shutdown gave 0 with the runtime still held (%ld allocations "
                     "live)", round, atomic_load(&ca.allocs) - atomic_load(&ca.frees));
        assert_balanced(&ca);
    }
    wait_pool_gone();
}

static _Atomic int late_go, late_started;

static void *job_until_late_go(void *arg)
{
    (void)arg;
    atomic_store(&late_started, 1);
    while (!atomic_load(&late_go))
        sleep_us(200);
    return NULL;
}

/* A job left running by a shutdown: once its handle is ready (the program's
 * only sign that the job ended), the runtime is done with its allocator. It
 * used to be freed through it after that, on the job's thread (a lifecycle
 * review: an arena freed once the handle was ready, then written by the
 * runtime's free; 3 runs of 40). */
Test(blocking, left_job_handle_ready_after_the_runtime_is_freed, .timeout = 120)
{
    enum { ROUNDS = 40 };
    struct counting_alloc ca;
    for (int round = 0; round < ROUNDS; round++) {
        struct weft_runtime_config cfg = base_cfg();
        cfg.workers = 1;
        counting_init(&ca, -1);
        cfg.allocator = &ca.a;
        struct weft_runtime *rt = start_cfg(&cfg);
        struct weft_blocking_join h;
        atomic_store(&late_go, 0);
        atomic_store(&late_started, 0);
        cr_assert_eq(weft_spawn_blocking(rt, job_until_late_go, NULL, &h), 0);
        WAIT_UNTIL(atomic_load(&late_started));
        cr_assert_eq(weft_runtime_shutdown(rt, 1), 1);
        atomic_store(&late_go, 1);
        static struct fw fw; /* a clone may be woken just after the handle is ready */
        struct weft_waker w = { &fw, &fw_ops };
        struct weft_cx cx = weft_cx_from_waker(&w);
        double deadline = now_s() + WAIT_SECS;
        while (weft_future_poll(&h.base, &cx) == WEFT_PENDING)
            cr_assert(now_s() < deadline, "the job left running never ended");
        cr_assert_eq(h.res, 0);
        cr_assert_eq(atomic_load(&ca.allocs), atomic_load(&ca.frees),
                     "round %d: the job's handle was ready with the runtime still held", round);
        assert_balanced(&ca);
        weft_future_drop(&h.base);
    }
    wait_pool_gone();
}
