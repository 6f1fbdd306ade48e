/* tests/test_stall.c: the stall detector and the task dump
 * (runtime/metrics.c; the per-poll seqlock of internal.h and task.c).
 *
 * The stall detector is checked with a recording callback: a 150 ms poll is
 * reported once, two are reported twice, each report carrying the task id
 * the task dump shows (not 0 for a task spawned by a task), its worker and a
 * duration no longer than the poll; well-behaved tasks (300 ms of short
 * polls, sleeps and spawns) are never reported; the detector switched off
 * reports nothing; the default callback writes one line on stderr naming the
 * task. The task dump lists each polled task once with its state (idle,
 * queued, running) and name, leaves out a task never polled, and (a
 * regression) shows a task stuck in its first poll.
 *
 * Bad inputs tried: a stall threshold of 1 us (the long poll still reported
 * once) and of UINT32_MAX us (no report; destroy does not wait for the
 * monitor's period); weft_spawn_named with a NULL name (dumped as "-"); the
 * NULL and read-only-FILE inputs of weft_task_dump are in test_metrics.c. */
#include "metrics_common.h"

/* ---- weft_task_dump ---------------------------------------------------------------------------- */

struct dump_line {
    uint64_t id;
    char state[16];
    double ms;
    char name[64];
};

/* Dumps the tasks of rt and parses the lines; returns weft_task_dump's value
 * and the parsed lines in out[0..*n). */
static int dump_tasks(struct weft_runtime *rt, struct dump_line *out, int max, int *n)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    int ret = weft_task_dump(rt, f);
    fclose(f);
    *n = 0;
    char *save = NULL;
    char *l = strtok_r(text, "\n", &save); /* the header */
    cr_assert_not_null(l);
    cr_assert_not_null(strstr(l, "state"));
    for (l = strtok_r(NULL, "\n", &save); l && *n < max; l = strtok_r(NULL, "\n", &save)) {
        if (l[0] == '(')
            continue; /* the count of tasks not listed */
        struct dump_line *d = &out[*n];
        cr_assert_eq(sscanf(l, "%" SCNu64 " %15s %lf %63s", &d->id, d->state, &d->ms, d->name), 4,
                     "unparsable line: %s", l);
        (*n)++;
    }
    free(text);
    return ret;
}

static const struct dump_line *find_line(const struct dump_line *d, int n, const char *name)
{
    const struct dump_line *found = NULL;
    for (int i = 0; i < n; i++)
        if (strcmp(d[i].name, name) == 0) {
            cr_assert_null(found, "task %s listed twice", name);
            found = &d[i];
        }
    return found;
}

/* Waits on a channel (its arg) that gets a message only at the end. */
static enum weft_poll body_wait_channel(struct mt *t, struct weft_cx *cx)
{
    struct weft_mpsc *ch = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    weft_mpsc_recv_init(&t->rx, ch, &t->v);
    WEFT_AWAIT(&t->base, cx, &t->rx.base);
    weft_future_drop(&t->rx.base);
    WEFT_ASYNC_END(&t->base);
}

struct gate_spin {
    struct gate *g;
    _Atomic int release;
};

/* Yields once (so that it has been polled and is known to the dump), then
 * keeps its worker until released. */
static enum weft_poll body_yield_then_hold(struct mt *t, struct weft_cx *cx)
{
    struct gate_spin *a = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    weft_yield_now_init(&t->y);
    WEFT_AWAIT(&t->base, cx, &t->y.base);
    atomic_fetch_add(&done, 1000); /* marks "holding" without counting as done */
    spin_until(&a->release);
    atomic_fetch_sub(&done, 1000);
    WEFT_ASYNC_END(&t->base);
}

/* Three named tasks and an unnamed one idle on channels, a named task holding
 * the only worker, one task queued behind it (woken by this thread) and one
 * never polled: the dump lists the five polled ones with their states, the
 * unnamed one as "-", and returns 5; "never" is not listed. */
Test(metrics, task_dump_lists_polled_tasks, .timeout = 30)
{
    static const char *const names[] = { "idle-a", "idle-b", "idle-c" };
    struct weft_runtime *rt = start_rt(1, NULL);
    struct weft_mpsc *ch[4];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(weft_mpsc_create(&ch[i], 1, sizeof(uint64_t)), 0);
        cr_assert_eq(spawn_mt(rt, body_wait_channel, ch[i], 0, NULL, i < 3 ? names[i] : NULL), 0);
    }
    struct dump_line d[16];
    int n = 0, ret = 0;
    double deadline = now_s() + WAIT_SECS;
    while ((ret = dump_tasks(rt, d, 16, &n)) != 4 && now_s() < deadline)
        sleep_us(1000);
    cr_assert_eq(ret, 4);
    cr_assert_eq(n, 4);
    for (int i = 0; i < 3; i++) {
        const struct dump_line *l = find_line(d, n, names[i]);
        cr_assert_not_null(l, "%s not listed", names[i]);
        cr_assert_str_eq(l->state, "idle");
        cr_assert_geq(l->ms, 0.0);
    }
    cr_assert_not_null(find_line(d, n, "-"));
    /* Ids are distinct. */
    for (int i = 0; i < n; i++)
        for (int k = i + 1; k < n; k++)
            cr_assert_neq(d[i].id, d[k].id);

    struct gate_spin gs = { 0 };
    cr_assert_eq(spawn_mt(rt, body_yield_then_hold, &gs, 0, NULL, "holder"), 0);
    WAIT_UNTIL(atomic_load(&done) >= 1000);
    /* idle-a is woken from this thread: queued behind the holder. */
    uint64_t one = 1;
    cr_assert_eq(weft_mpsc_try_send(ch[0], &one), 0);
    cr_assert_eq(spawn_mt(rt, body_ready, NULL, 0, NULL, "never"), 0);
    ret = dump_tasks(rt, d, 16, &n);
    cr_assert_eq(ret, 5);
    cr_assert_eq(n, 5);
    cr_assert_null(find_line(d, n, "never"), "a task never polled is listed");
    const struct dump_line *h = find_line(d, n, "holder");
    cr_assert_not_null(h);
    cr_assert_str_eq(h->state, "running");
    cr_assert_str_eq(find_line(d, n, "idle-a")->state, "queued");
    cr_assert_str_eq(find_line(d, n, "idle-b")->state, "idle");
    snap(rt, &m1);
    cr_assert_eq(m1.live_tasks, 6);
    atomic_store(&gs.release, 1);
    WAIT_UNTIL(atomic_load(&done) == 3); /* holder, idle-a, never */
    for (int i = 1; i < 4; i++)
        cr_assert_eq(weft_mpsc_try_send(ch[i], &one), 0);
    WAIT_UNTIL(atomic_load(&done) == 6);
    WAIT_NO_TASKS(rt);
    ret = dump_tasks(rt, d, 16, &n);
    cr_assert_eq(ret, 0);
    cr_assert_eq(n, 0);
    for (int i = 0; i < 4; i++) {
        weft_mpsc_receiver_drop(ch[i]);
        weft_mpsc_sender_drop(ch[i]);
    }
    weft_runtime_destroy(rt);
}

/* ---- the stall detector --------------------------------------------------------------------- */

#define MAX_REPORTS 16

struct stall_log {
    pthread_mutex_t lock;
    int n;
    struct weft_stall s[MAX_REPORTS];
    char names[MAX_REPORTS][32];
};

static void record_stall(const struct weft_stall *s, void *ctx)
{
    struct stall_log *log = ctx;
    pthread_mutex_lock(&log->lock);
    if (log->n < MAX_REPORTS) {
        log->s[log->n] = *s;
        snprintf(log->names[log->n], sizeof log->names[0], "%s",
                 s->task_name ? s->task_name : "(null)");
        log->s[log->n].task_name = log->names[log->n];
    }
    log->n++;
    pthread_mutex_unlock(&log->lock);
}

struct spinner {
    struct gate g;
    uint32_t spins;     /* polls that spin */
    double spin_s;
    _Atomic int worker[4];
    double start[4], end[4]; /* written by the task, read after it finished */
};

/* Waits at the gate (idle: the test finds its id in the dump meanwhile), then
 * spins spin_s seconds in each of `spins` polls, yielding between them. */
static enum weft_poll body_spinner(struct mt *t, struct weft_cx *cx)
{
    struct spinner *s = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    gate_wait_init(&t->gw, &s->g);
    WEFT_AWAIT(&t->base, cx, &t->gw.base);
    for (t->i = 0; t->i < s->spins; t->i++) {
        if (t->i > 0) {
            weft_yield_now_init(&t->y);
            WEFT_AWAIT(&t->base, cx, &t->y.base);
        }
        atomic_store(&s->worker[t->i], worker_index());
        s->start[t->i] = now_s();
        spin_for(s->spin_s);
        s->end[t->i] = now_s();
    }
    WEFT_ASYNC_END(&t->base);
}

/* Runs a "spinner" on rt: finds its id in the task dump while it waits at its
 * gate, opens the gate, waits until it finished. Returns its id. */
static uint64_t run_spinner(struct weft_runtime *rt, struct spinner *s)
{
    gate_init(&s->g, 4);
    uint32_t before = atomic_load(&done);
    cr_assert_eq(spawn_mt(rt, body_spinner, s, 0, NULL, "spinner"), 0);
    struct dump_line d[16];
    int n = 0;
    const struct dump_line *l = NULL;
    double deadline = now_s() + WAIT_SECS;
    /* Until it waits at the gate: in its first poll it shows as running. */
    while ((!l || strcmp(l->state, "idle") != 0) && now_s() < deadline) {
        dump_tasks(rt, d, 16, &n);
        l = find_line(d, n, "spinner");
        if (!l || strcmp(l->state, "idle") != 0)
            sleep_us(500);
    }
    cr_assert_not_null(l, "the spinner never showed up in the task dump");
    cr_assert_str_eq(l->state, "idle");
    uint64_t id = l->id;
    gate_open(&s->g);
    WAIT_UNTIL(atomic_load(&done) == before + 1);
    gate_fini(&s->g);
    return id;
}

static void check_report(const struct stall_log *log, int i, const struct spinner *s,
                         uint32_t poll, uint64_t id, uint64_t threshold_ns)
{
    const struct weft_stall *r = &log->s[i];
    cr_assert_str_eq(r->task_name, "spinner");
    cr_assert_eq(r->task_id, id, "report %d: task id %" PRIu64 ", the dump said %" PRIu64, i,
                 r->task_id, id);
    cr_assert_eq(r->worker, (uint32_t)atomic_load(&s->worker[poll]));
    cr_assert_gt(r->elapsed_ns, threshold_ns);
    /* Measured from a look taken after the poll began, while it still ran. */
    uint64_t poll_ns = (uint64_t)((s->end[poll] - s->start[poll]) * 1e9);
    cr_assert_leq(r->elapsed_ns, poll_ns + 1 * MS, "report %d: %" PRIu64 " ns for a poll of %"
                  PRIu64 " ns", i, r->elapsed_ns, poll_ns);
}

/* A 150 ms poll (long enough for a monitor starved by parallel tests) with a 10 ms threshold: reported once, with the spinner's
 * name, the id the task dump shows, its worker and a plausible duration. */
Test(stall, one_long_poll_reported_once, .timeout = 30)
{
    struct stall_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct weft_runtime *rt = start_cfg(2, 0, 10000, false, record_stall, &log);
    struct spinner s = { .spins = 1, .spin_s = 0.150 };
    uint64_t id = run_spinner(rt, &s);
    snap(rt, &m1);
    weft_runtime_destroy(rt); /* joins the monitor: no report can follow */
    cr_assert_eq(log.n, 1, "%d reports", log.n);
    check_report(&log, 0, &s, 0, id, 10 * MS);
    cr_assert_eq(m1.stalls, 1);
}

/* A stall callback that shuts its runtime down: refused (-EDEADLK). It runs
 * on the monitor thread (or on the worker, for a report the monitor missed),
 * and the shutdown joined the monitor from itself and freed it under its
 * own loop: ASan heap-use-after-free in monitor_main (a helper's review). */
struct self_shutdown {
    struct weft_runtime *_Atomic rt;
    _Atomic int calls, res;
};

static void shutdown_from_callback(const struct weft_stall *st, void *ctx)
{
    (void)st;
    struct self_shutdown *x = ctx;
    struct weft_runtime *rt = atomic_load(&x->rt);
    if (rt && atomic_fetch_add(&x->calls, 1) == 0)
        atomic_store(&x->res, weft_runtime_shutdown(rt, 0));
}

Test(stall, a_callback_cannot_shut_its_runtime_down, .timeout = 30)
{
    struct self_shutdown x = { .res = 1 };
    struct weft_runtime *rt = start_cfg(2, 0, 10000, false, shutdown_from_callback, &x);
    atomic_store(&x.rt, rt);
    struct spinner s = { .spins = 1, .spin_s = 0.150 };
    run_spinner(rt, &s);
    weft_runtime_destroy(rt);
    cr_assert_geq(atomic_load(&x.calls), 1, "no stall was reported");
    cr_assert_eq(atomic_load(&x.res), -EDEADLK, "shutdown from the callback gave %d",
                 atomic_load(&x.res));
}

/* Two 150 ms polls of one task, a yield between them: two reports, same id. */
Test(stall, two_long_polls_two_reports, .timeout = 30)
{
    struct stall_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct weft_runtime *rt = start_cfg(2, 0, 10000, false, record_stall, &log);
    struct spinner s = { .spins = 2, .spin_s = 0.150 };
    uint64_t id = run_spinner(rt, &s);
    snap(rt, &m1);
    weft_runtime_destroy(rt);
    cr_assert_eq(log.n, 2, "%d reports", log.n);
    check_report(&log, 0, &s, 0, id, 10 * MS);
    check_report(&log, 1, &s, 1, id, 10 * MS);
    cr_assert_eq(m1.stalls, 2);
}

/* The spinner spawned by a task: a worker-made id, not 0. */
static enum weft_poll body_spawn_spinner(struct mt *t, struct weft_cx *cx)
{
    (void)cx;
    struct mt child = mt_make(body_spinner, t->arg, 0);
    struct weft_runtime *rt = weft_runtime_current();
    CHECK(rt != NULL);
    CHECK(weft_spawn_named(rt, &child.base, sizeof child, NULL, "spinner") == 0);
    return WEFT_READY;
}

Test(stall, task_spawned_spinner_has_nonzero_id, .timeout = 30)
{
    struct stall_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct weft_runtime *rt = start_cfg(2, 0, 10000, false, record_stall, &log);
    struct spinner s = { .spins = 1, .spin_s = 0.150 };
    gate_init(&s.g, 4);
    cr_assert_eq(spawn_mt(rt, body_spawn_spinner, &s, 0, NULL, NULL), 0);
    struct dump_line d[16];
    int n = 0;
    const struct dump_line *l = NULL;
    double deadline = now_s() + WAIT_SECS;
    while (!l && now_s() < deadline) {
        dump_tasks(rt, d, 16, &n);
        l = find_line(d, n, "spinner");
        if (!l)
            sleep_us(500);
    }
    cr_assert_not_null(l);
    uint64_t id = l->id;
    cr_assert_neq(id, 0);
    gate_open(&s.g);
    WAIT_UNTIL(atomic_load(&done) == 2);
    weft_runtime_destroy(rt);
    gate_fini(&s.g);
    cr_assert_eq(log.n, 1, "%d reports", log.n);
    check_report(&log, 0, &s, 0, id, 10 * MS);
}

struct busy_loop {
    struct weft_runtime *rt;
    double until;
};

/* Yields, spawns a short child every 16 rounds and sleeps 1 ms every 64,
 * until the deadline: many short polls, none long. */
static enum weft_poll body_well_behaved(struct mt *t, struct weft_cx *cx)
{
    struct busy_loop *b = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; now_s() < b->until; t->i++) {
        if (t->i % 16 == 0)
            CHECK(spawn_mt(b->rt, body_ready, NULL, 0, NULL, "child") == 0);
        if (t->i % 64 == 0) {
            weft_sleep_init(&t->sl, 1 * MS);
            WEFT_AWAIT(&t->base, cx, &t->sl.base);
            weft_future_drop(&t->sl.base);
        } else {
            weft_yield_now_init(&t->y);
            WEFT_AWAIT(&t->base, cx, &t->y.base);
        }
    }
    WEFT_ASYNC_END(&t->base);
}

/* 300 ms of short polls on both workers, threshold 50 ms: no report. */
Test(stall, well_behaved_tasks_not_reported, .timeout = 30)
{
    struct stall_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct weft_runtime *rt = start_cfg(2, 0, 50000, false, record_stall, &log);
    struct busy_loop b = { rt, now_s() + 0.300 };
    for (int i = 0; i < 2; i++)
        cr_assert_eq(spawn_mt(rt, body_well_behaved, &b, 0, NULL, "worker-bee"), 0);
    WAIT_UNTIL(now_s() > b.until);
    WAIT_NO_TASKS(rt);
    snap(rt, &m1);
    cr_assert_gt(SUM(&m1, polls), 100);
    weft_runtime_destroy(rt);
    cr_assert_eq(log.n, 0, "%d reports, the first for %s after %" PRIu64 " ns", log.n,
                 log.n ? log.s[0].task_name : "-", log.n ? log.s[0].elapsed_ns : 0);
    cr_assert_eq(m1.stalls, 0);
}

/* no_stall_detector: no monitor, no report, even with on_stall set. */
Test(stall, detector_off, .timeout = 30)
{
    struct stall_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct weft_runtime *rt = start_cfg(2, 0, 10000, true, record_stall, &log);
    struct spinner s = { .spins = 1, .spin_s = 0.150 };
    run_spinner(rt, &s);
    snap(rt, &m1);
    weft_runtime_destroy(rt);
    cr_assert_eq(log.n, 0);
    cr_assert_eq(m1.stalls, 0);
}

/* A threshold of UINT32_MAX us (over an hour): no report, and destroy does
 * not wait for the monitor's next look (a quarter of that). */
Test(stall, huge_threshold, .timeout = 30)
{
    struct stall_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct weft_runtime *rt = start_cfg(2, 0, UINT32_MAX, false, record_stall, &log);
    struct spinner s = { .spins = 1, .spin_s = 0.150 };
    run_spinner(rt, &s);
    double t0 = now_s();
    weft_runtime_destroy(rt);
    cr_assert_lt(now_s() - t0, 5.0);
    cr_assert_eq(log.n, 0);
}

/* A threshold of 1 us: the monitor looks every 100 us; the 150 ms poll is
 * reported exactly once (other reports, of the spinner's short first poll,
 * are possible but not of the long one twice). */
Test(stall, tiny_threshold, .timeout = 30)
{
    struct stall_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    struct weft_runtime *rt = start_cfg(2, 0, 1, false, record_stall, &log);
    struct spinner s = { .spins = 1, .spin_s = 0.150 };
    uint64_t id = run_spinner(rt, &s);
    weft_runtime_destroy(rt);
    cr_assert_geq(log.n, 1);
    cr_assert_leq(log.n, 2, "%d reports for two polls", log.n);
    for (int i = 0; i < log.n; i++) {
        cr_assert_eq(log.s[i].task_id, id);
        cr_assert_str_eq(log.s[i].task_name, "spinner");
        cr_assert_geq(log.s[i].elapsed_ns, 1000);
    }
}

/* The whole of f, NUL-terminated (malloc'd). */
static char *read_all(FILE *f)
{
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    cr_assert_geq(n, 0);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    cr_assert_not_null(s);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    return s;
}

/* The default callback: one line on stderr naming the task. */
Test(stall, default_report_on_stderr, .timeout = 30)
{
    fflush(stderr);
    FILE *tmp = tmpfile();
    cr_assert_not_null(tmp);
    int saved = dup(STDERR_FILENO);
    cr_assert_geq(saved, 0);
    cr_assert_eq(dup2(fileno(tmp), STDERR_FILENO), STDERR_FILENO);
    struct weft_runtime *rt = start_cfg(2, 0, 0, false, NULL, NULL); /* 10 ms, stderr */
    struct spinner s = { .spins = 1, .spin_s = 0.400 }; /* a loaded CI machine may starve the monitor for a while */
    run_spinner(rt, &s);
    snap(rt, &m1);
    weft_runtime_destroy(rt);
    fflush(stderr);
    cr_assert_eq(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    char *text = read_all(tmp);
    fclose(tmp);
    fprintf(stderr, "captured: %s", text);
    if (m1.stalls != 1)
        free(text); /* the assertion below ends the test */
    cr_assert_eq(m1.stalls, 1);
    cr_assert_not_null(strstr(text, "weft: stall: worker"), "%s", text);
    cr_assert_not_null(strstr(text, "(spinner)"), "%s", text);
    cr_assert_not_null(strstr(text, "threshold 10.0 ms"), "%s", text);
    /* Exactly one line. */
    char *nl = strchr(text, '\n');
    cr_assert_not_null(nl);
    cr_assert_eq(nl[1], '\0', "more than one line: %s", text);
    free(text);
}

/* A task stuck in its first poll (the stall the dump is most wanted for) is
 * not on the owned list yet, so weft_task_dump leaves it out, though it is
 * being polled: the dump now adds each worker's running task from its
 * seqlock. */
Test(regressions, task_dump_misses_a_task_in_its_first_poll, .timeout = 30)
{
    struct weft_runtime *rt = start_cfg(2, 0, 0, true, NULL, NULL);
    struct first_poll f = { 0 };
    cr_assert_eq(spawn_mt(rt, body_hold_first_poll, &f, 0, NULL, "stuck"), 0);
    WAIT_UNTIL(atomic_load(&f.started));
    sleep_us(20000);
    struct dump_line d[16];
    int n = 0;
    int ret = dump_tasks(rt, d, 16, &n);
    atomic_store(&f.release, 1);
    WAIT_UNTIL(atomic_load(&done) == 1);
    weft_runtime_destroy(rt);
    cr_assert_eq(ret, 1, "%d tasks listed while one has been in its first poll for 20 ms",
                 ret);
    cr_assert_not_null(find_line(d, n, "stuck"));
}

