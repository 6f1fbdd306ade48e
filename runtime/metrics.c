/* metrics.c: the metrics snapshot and dump, the task dump, and the stall
 * monitor.
 *
 * Workers count into their own `struct wstats` (internal.h) with relaxed
 * load+store pairs; the readers here load them relaxed. Nothing here is on a
 * worker's path except weft__hist_record.
 *
 * The stall monitor is one thread that wakes every threshold/4 and reads each
 * worker's poll seqlock (written in weft__poll_begin/_end): a sequence that
 * is odd means "inside a poll", and the same odd sequence seen on two looks
 * at least `threshold` apart is a poll that has lasted at least that long.
 * The first look's clock is read after the sequence, so after the poll
 * began: a report is never early (no false alarm), and comes at most one
 * look late (threshold/4, or up to the threshold after looks that found no
 * poll: the pace backs off); a poll shorter than threshold plus one look
 * may go unreported. A poll seen on two looks also gets the tasks queued behind it
 * a sibling worker (sched.c wakes none for tasks woken between polls). The task's id
 * and name are read from the seqlock, never from the task, which may be
 * freed at any moment; the name is the spawner's string, which outlives the
 * task by contract. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "../io/io.h"

/* ---- histograms ---------------------------------------------------------------- */

static uint32_t bucket_of(uint64_t ns)
{
    if (ns < 128)
        return 0;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(ns); /* >= 7 */
    uint32_t i = (e - 7) * 4 + (uint32_t)((ns >> (e - 2)) & 3) + 1;
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

void weft__hist_record(struct hist *h, uint64_t ns)
{
    stat_add(&h->buckets[bucket_of(ns)], 1);
}

uint64_t weft_histogram_bucket_min(uint32_t i)
{
    if (i >= HIST_BUCKETS)
        return UINT64_MAX;
    if (i == 0)
        return 0;
    uint32_t e = (i - 1) / 4 + 7, sub = (i - 1) % 4;
    return (uint64_t)(4 + sub) << (e - 2);
}

uint64_t weft_histogram_quantile(const struct weft_histogram *h, double q)
{
    if (!h || h->count == 0)
        return 0;
    if (!(q >= 0)) /* also NaN */
        q = 0;
    if (q > 1)
        q = 1;
    /* At most the count: near 2^64, q * count rounds up to 2^64, which no
     * uint64_t holds (the conversion would be undefined). */
    double x = q * (double)h->count + 0.999999;
    uint64_t rank = x < 0x1p64 ? (uint64_t)x : h->count, seen = 0;
    if (rank > h->count)
        rank = h->count;
    if (rank == 0)
        rank = 1;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank)
            return weft_histogram_bucket_min(i + 1);
    }
    return UINT64_MAX;
}

static void hist_add(struct weft_histogram *out, const struct hist *h)
{
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        uint64_t n = atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        out->buckets[i] += n;
        out->count += n;
    }
}

/* ---- the snapshot ---------------------------------------------------------------- */

static uint64_t load(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

int weft_metrics_read(struct weft_runtime *rt, struct weft_metrics *m)
{
    if (!rt || !m)
        return -EINVAL;
    memset(m, 0, sizeof(*m));
    m->workers = rt->nworkers;
    int64_t live = weft__runtime_foreign_live(rt);
    uint64_t now = weft_now_ns();
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        struct weft__worker *w = &rt->workers[i];
        struct wstats *st = w->stats;
        m->worker[i] = (struct weft_worker_metrics){
            .polls = load(&st->polls),
            .steals = load(&st->steals),
            .steal_ops = load(&st->steal_ops),
            .parks = load(&st->parks),
            .unparks = load(&st->unparks),
            .local_schedules = load(&st->local_schedules),
            .overflows = load(&st->overflows),
            .budget_yields = load(&st->budget_yields),
            .lifo_hits = load(&st->lifo_hits),
            .sqes = load(&st->sqes),
            .cqes = load(&st->cqes),
            .enters = load(&st->enters),
            .cq_overflows = load(&st->cq_overflows),
            .queue_depth = queue_len(&w->run),
            .ring_flags = weft__io_ring_flags(w->io),
            .ring_buffers = weft__io_ring_buffers(w->io),
        };
        /* busy_ns plus the stretch in progress, read as one (the park's
         * seqlock, sched.c): acquire pairs with its release store of the
         * even sequence; the acquire fence orders the two loads before the
         * re-read, which sees the odd sequence if a park changed them. A
         * reader that keeps finding the sequence odd sleeps 50 us: the
         * worker may be preempted inside its few instructions by this very
         * thread, and a real-time reader on the worker's CPU would spin
         * until the kernel's real-time throttling (950 ms here; a yield
         * lets only threads of its own priority run: a review measured
         * 950 ms with sched_yield, 3 ms with the sleep). */
        uint64_t seq, since;
        for (unsigned spins = 1;; spins++) {
            seq = atomic_load_explicit(&st->busy_seq, memory_order_acquire);
            m->worker[i].busy_ns = load(&st->busy_ns);
            since = load(&st->busy_since);
            atomic_thread_fence(memory_order_acquire);
            if (!(seq & 1) && atomic_load_explicit(&st->busy_seq, memory_order_relaxed) == seq)
                break;
            if (spins % 64 == 0)
                nanosleep(&(struct timespec){ 0, 50000 }, NULL);
        }
        if (since && now > since)
            m->worker[i].busy_ns += now - since;
        m->spawned += load(&st->spawns);
        live += (int64_t)atomic_load_explicit(&st->live_delta, memory_order_relaxed);
        hist_add(&m->poll_ns, &st->poll_ns);
        hist_add(&m->sched_latency, &st->sched_latency);
    }
    m->spawned += atomic_load_explicit(&rt->foreign_ids, memory_order_relaxed);
    m->global_queue_depth = atomic_load_explicit(&rt->inject.len, memory_order_relaxed);
    m->remote_schedules = load(&rt->remote_schedules);
    m->stalls = load(&rt->stalls);
    struct blocking_pool *p = &rt->blocking;
    pthread_mutex_lock(&p->lock);
    m->blocking_threads = p->threads;
    m->blocking_idle = p->idle;
    m->blocking_queue_depth = p->queued;
    m->blocking_jobs = p->jobs_done;
    m->compute_running = p->computing;
    m->compute_slices = weft__compute_slices();
    m->compute_handovers = weft__handovers();
    live -= p->threads; /* each pool thread holds the runtime's memory as one */
    pthread_mutex_unlock(&p->lock);
    m->live_tasks = live > 0 ? (uint64_t)live : 0;
    return 0;
}

/* fprintf that notes a failure in *bad. The dumps judge their writes by the
 * calls' results, not by ferror: the error flag is sticky, and one set
 * before the dump is not its failure (a review: -EIO with every line
 * written). */
static void say(FILE *out, bool *bad, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(FILE *out, bool *bad, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vfprintf(out, fmt, ap) < 0)
        *bad = true;
    va_end(ap);
}

static void print_hist(FILE *out, bool *bad, const char *name, const struct weft_histogram *h)
{
    say(out, bad, "%-14s samples %" PRIu64, name, h->count);
    if (h->count) {
        static const double qs[] = { 0.5, 0.9, 0.99, 0.999, 1.0 };
        static const char *const qn[] = { "p50", "p90", "p99", "p99.9", "max" };
        for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++)
            say(out, bad, "  %s<%.1fus", qn[i], (double)weft_histogram_quantile(h, qs[i]) / 1e3);
    }
    say(out, bad, "\n");
}

int weft_metrics_dump(struct weft_runtime *rt, FILE *out)
{
    if (!rt || !out)
        return -EINVAL;
    struct weft_metrics *m = malloc(sizeof(*m));
    if (!m)
        return -ENOMEM;
    weft_metrics_read(rt, m);
    bool bad = false;
    say(out, &bad, "weft runtime: %u workers, %" PRIu64 " live tasks, %" PRIu64
                 " spawned, global queue %" PRIu64 ", remote schedules %" PRIu64
                 ", stalls %" PRIu64 "\n",
            m->workers, m->live_tasks, m->spawned, m->global_queue_depth, m->remote_schedules,
            m->stalls);
    say(out, &bad, "%-3s %10s %9s %7s %8s %8s %10s %6s %7s %8s %9s %10s %10s %9s %5s\n", "w",
            "polls", "busy_ms", "steals", "parks", "unparks", "local", "ovfl", "budget",
            "lifo", "enters", "sqes", "cqes", "steal_ops", "queue");
    for (uint32_t i = 0; i < m->workers; i++) {
        const struct weft_worker_metrics *w = &m->worker[i];
        say(out, &bad, "%-3u %10" PRIu64 " %9.1f %7" PRIu64 " %8" PRIu64 " %8" PRIu64 " %10" PRIu64
                     " %6" PRIu64 " %7" PRIu64 " %8" PRIu64 " %9" PRIu64 " %10" PRIu64
                     " %10" PRIu64 " %9" PRIu64 " %5" PRIu64 "\n",
                i, w->polls, (double)w->busy_ns / 1e6, w->steals, w->parks, w->unparks,
                w->local_schedules, w->overflows, w->budget_yields, w->lifo_hits, w->enters,
                w->sqes, w->cqes, w->steal_ops, w->queue_depth);
    }
    uint64_t cq_overflows = 0;
    for (uint32_t i = 0; i < m->workers; i++)
        cq_overflows += m->worker[i].cq_overflows;
    if (m->worker[0].ring_flags == WEFT_NO_RING)
        say(out, &bad, "io_uring: none (timers only, files on the blocking pool)\n");
    else if (m->worker[0].ring_buffers)
        say(out, &bad, "io_uring: setup flags %#" PRIx32 ", %" PRIu32 " ring buffers, "
                     "completion queue overflows %" PRIu64 "\n", m->worker[0].ring_flags,
            m->worker[0].ring_buffers, cq_overflows);
    else
        say(out, &bad, "io_uring: setup flags %#" PRIx32 ", no buffer ring (receives into heap "
                     "buffers), completion queue overflows %" PRIu64 "\n",
            m->worker[0].ring_flags, cq_overflows);
    say(out, &bad, "blocking pool: %" PRIu64 " threads (%" PRIu64 " idle, %" PRIu64
                 " computing), %" PRIu64 " queued, %" PRIu64 " jobs done, %" PRIu64
                 " compute slices, %" PRIu64 " handed over\n",
            m->blocking_threads, m->blocking_idle, m->compute_running, m->blocking_queue_depth,
            m->blocking_jobs, m->compute_slices, m->compute_handovers);
    print_hist(out, &bad, "poll time", &m->poll_ns);
    print_hist(out, &bad, "sched latency", &m->sched_latency);
    free(m);
    return bad || fflush(out) == EOF ? -EIO : 0;
}

/* ---- the task dump ----------------------------------------------------------------- */

struct task_line {
    uint64_t id, state;
    uint32_t polled;
    const char *name;
};

static const char *state_name(uint64_t s)
{
    if (s & TASK_RUNNING)
        return "running";
    if (s & TASK_CANCELLED)
        return "cancelling";
    if (s & TASK_NOTIFIED)
        return "queued";
    return "idle";
}

/* Copies the owned lists into *lines (grown as needed), under each shard's
 * lock: a task on a list is not freed before it leaves it (task.c). The
 * printing happens after, with no lock held. Returns the count or -ENOMEM. */
static int64_t collect_tasks(struct weft_runtime *rt, struct task_line **lines, size_t *cap)
{
    size_t n = 0;
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        struct owned_shard *s = &rt->shards[i];
        for (;;) {
            size_t start = n;
            bool full = false;
            weft__owned_lock(s);
            for (struct weft_task *t = s->head; t; t = t->owned_next) {
                if (n == *cap) {
                    full = true;
                    break;
                }
                (*lines)[n++] = (struct task_line){
                    t->id, atomic_load_explicit(&t->state, memory_order_relaxed),
                    atomic_load_explicit(&t->polled_ms, memory_order_relaxed), t->name
                };
            }
            weft__owned_unlock(s);
            if (!full)
                break;
            n = start; /* grow and copy this shard again */
            size_t ncap = *cap * 2;
            struct task_line *bigger = realloc(*lines, ncap * sizeof(**lines));
            if (!bigger)
                return -ENOMEM;
            *lines = bigger;
            *cap = ncap;
        }
    }
    return (int64_t)n;
}

/* Adds the task each worker is polling, from its seqlock, unless already
 * listed: a task in its first poll is on no owned list yet (a stuck one is
 * the one a dump is most wanted for). Its time since poll is its worker's
 * clock. Returns the new count or -ENOMEM. */
static int64_t add_running(struct weft_runtime *rt, struct task_line **lines, size_t *cap,
                           int64_t n)
{
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        struct wstats *st = rt->workers[i].stats;
        uint64_t s1 = atomic_load_explicit(&st->poll_seq, memory_order_acquire);
        uint64_t id = atomic_load_explicit(&st->poll_task, memory_order_relaxed);
        const char *name = atomic_load_explicit(&st->poll_name, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire); /* the seqlock read of look_at */
        if (!(s1 & 1) || atomic_load_explicit(&st->poll_seq, memory_order_relaxed) != s1)
            continue;
        bool listed = false;
        for (int64_t k = 0; k < n && !listed; k++)
            listed = (*lines)[k].id == id;
        if (listed)
            continue;
        if ((size_t)n == *cap) {
            struct task_line *bigger = realloc(*lines, *cap * 2 * sizeof(**lines));
            if (!bigger)
                return -ENOMEM;
            *lines = bigger;
            *cap *= 2;
        }
        (*lines)[n++] = (struct task_line){
            id, TASK_RUNNING, atomic_load_explicit(&rt->workers[i].clock, memory_order_relaxed), name
        };
    }
    return n;
}

int weft_task_dump(struct weft_runtime *rt, FILE *out)
{
    if (!rt || !out)
        return -EINVAL;
    size_t cap = 256;
    struct task_line *lines = malloc(cap * sizeof(*lines));
    if (!lines)
        return -ENOMEM;
    int64_t n = collect_tasks(rt, &lines, &cap);
    if (n < 0) {
        free(lines);
        return (int)n;
    }
    n = add_running(rt, &lines, &cap, n);
    if (n < 0) {
        free(lines);
        return (int)n;
    }
    uint32_t now = (uint32_t)(weft_now_ns() >> POLLED_SHIFT);
    bool bad = false;
    say(out, &bad, "%-20s %-10s %14s  %s\n", "task", "state", "since poll ms", "name");
    for (int64_t i = 0; i < n; i++) {
        const struct task_line *l = &lines[i];
        double ms = (double)((uint64_t)(uint32_t)(now - l->polled) << POLLED_SHIFT) / 1e6;
        say(out, &bad, "%-20" PRIu64 " %-10s %14.1f  %s\n", l->id, state_name(l->state), ms,
                l->name ? l->name : "-");
    }
    struct weft_metrics *m = malloc(sizeof(*m));
    if (m) {
        weft_metrics_read(rt, m);
        if (m->live_tasks > (uint64_t)n)
            say(out, &bad, "(and about %" PRIu64 " tasks not polled yet, or finished and still "
                         "referenced)\n", m->live_tasks - (uint64_t)n);
        free(m);
    }
    free(lines);
    return bad || fflush(out) == EOF ? -EIO : (int)n;
}

/* ---- the stall monitor ----------------------------------------------------------- */

#define DEFAULT_STALL_US 10000u
/* The monitor's pace while blocking jobs run (they are lowered after 1 ms:
 * blocking.c), and when it only watches the pool and no job runs. */
#define DEMOTE_PERIOD_NS 500000u
#define IDLE_PERIOD_NS 20000000u
/* After the last job seen, the monitor keeps the demotion pace this long
 * before it dozes (and lets the next job wake it): jobs that come one after
 * another then wake it never (a wake per job cost a futex call each). */
#define QUIET_NS 10000000u

struct mon_worker {
    uint64_t seq;        /* the odd sequence last seen, or an even one */
    uint64_t first_ns;   /* when that sequence was first seen */
    bool reported;       /* this poll's stall was reported */
    bool helped;         /* a sibling was woken for this poll's queue */
};

struct weft__monitor {
    struct weft_runtime *rt;
    pthread_t thread;
    _Atomic uint32_t stop;      /* futex word: 1 = exit */
    bool stalls;                /* the stall detector is on */
    uint64_t threshold_ns, period_ns;
    struct mon_worker w[];
};

static void stall_to_stderr(const struct weft_stall *s, void *ctx)
{
    const struct weft_runtime *rt = ctx;
    fprintf(stderr, "weft: stall: worker %u has been in one poll of task %" PRIu64 " (%s) for "
                    "%.1f ms (threshold %.1f ms)\n",
            s->worker, s->task_id, s->task_name ? s->task_name : "unnamed",
            (double)s->elapsed_ns / 1e6, (double)rt->stall_threshold_ns / 1e6);
}

/* Reports the stall of poll `seq` on worker i once: the monitor and the
 * worker (weft__stall_late) may both get there; the CAS picks one. */
static void report_stall(struct weft_runtime *rt, uint32_t i, uint64_t seq, uint64_t id,
                         const char *name, uint64_t elapsed)
{
    struct wstats *st = rt->workers[i].stats;
    uint64_t prev = atomic_load_explicit(&st->reported_seq, memory_order_relaxed);
    if (prev == seq || !atomic_compare_exchange_strong_explicit(&st->reported_seq, &prev, seq,
                                                                memory_order_relaxed,
                                                                memory_order_relaxed))
        return;
    atomic_fetch_add_explicit(&rt->stalls, 1, memory_order_relaxed);
    struct weft_stall s = { i, id, name, elapsed };
    rt->stall_fn(&s, rt->stall_ctx);
}

void weft__stall_late(struct weft__worker *w, uint64_t seq)
{
    struct weft_runtime *rt = w->rt;
    struct wstats *st = w->stats;
    /* Acquire pairs with the monitor's release store of seen_seq: seen_ns is
     * that sighting's, and the stall settings (written before the monitor
     * started) are visible. */
    if (atomic_load_explicit(&st->seen_seq, memory_order_acquire) != seq || !rt->stall_threshold_ns)
        return;
    uint64_t seen = atomic_load_explicit(&st->seen_ns, memory_order_relaxed);
    uint64_t now = weft_now_ns();
    if (now - seen < rt->stall_threshold_ns)
        return;
    /* The poll's id and name: this thread wrote them for this poll. */
    report_stall(rt, w->index, seq, atomic_load_explicit(&st->poll_task, memory_order_relaxed),
                 atomic_load_explicit(&st->poll_name, memory_order_relaxed), now - seen);
}

/* Returns true if worker i was inside a poll. */
static bool look_at(struct weft__monitor *m, uint32_t i)
{
    struct weft__worker *w = &m->rt->workers[i];
    struct wstats *st = w->stats;
    struct mon_worker *mw = &m->w[i];
    /* Seqlock read: acquire pairs with the poll's release store of the odd
     * sequence (the fields are this poll's); the acquire fence then orders
     * the field loads before the re-read, which sees a later sequence if the
     * fields came from a later poll (that poll's release fence). */
    uint64_t s1 = atomic_load_explicit(&st->poll_seq, memory_order_acquire);
    if (!(s1 & 1)) {
        mw->seq = s1;
        return false;
    }
    uint64_t id = atomic_load_explicit(&st->poll_task, memory_order_relaxed);
    const char *name = atomic_load_explicit(&st->poll_name, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&st->poll_seq, memory_order_relaxed) != s1)
        return false; /* the poll ended meanwhile */
    /* Read after the sequence: the poll began before this moment. */
    uint64_t now = weft_now_ns();
    if (mw->seq != s1) {
        *mw = (struct mon_worker){ s1, now, false, false };
        /* Release: the worker that reads this sequence sees seen_ns. */
        atomic_store_explicit(&st->seen_ns, now, memory_order_relaxed);
        atomic_store_explicit(&st->seen_seq, s1, memory_order_release);
        return true;
    }
    /* A poll seen on two looks is a long one: tasks queued behind it (woken
     * between polls, which wake no sibling: sched.c) go to a sibling. */
    if (!mw->helped && !queue_is_empty(&w->run)) {
        mw->helped = true;
        weft__notify_parked_except(m->rt, i);
    }
    if (mw->reported || now - mw->first_ns < m->threshold_ns)
        return true;
    mw->reported = true;
    report_stall(m->rt, i, s1, id, name, now - mw->first_ns);
    return true;
}

_Thread_local const struct weft_runtime *weft__monitor_of;

static void *monitor_main(void *arg)
{
    struct weft__monitor *m = arg;
    weft__monitor_of = m->rt;
    struct blocking_pool *p = &m->rt->blocking;
    bool fast = false;      /* look at the demotion pace */
    uint64_t pace = m->period_ns, last_job = 0;
    /* Dozing from the start: weft__monitor_start announced it before this
     * thread existed (a job may start before we run), so the first job
     * wakes us too. */
    bool announced = p->demotes && pace > DEMOTE_PERIOD_NS;
    /* Acquire pairs with monitor_stop's release store. */
    while (!atomic_load(&m->stop)) {
        /* While blocking jobs run unlowered, and for QUIET_NS after, look
         * every DEMOTE_PERIOD_NS for long ones to lower (blocking.c); else
         * at the stall detector's pace, dozing: a job that starts meanwhile
         * wakes us (the dozing word, stored before the look that found no
         * job). */
        uint64_t period = fast && DEMOTE_PERIOD_NS < pace ? DEMOTE_PERIOD_NS : pace;
        struct timespec ts = { (time_t)(period / 1000000000u), (long)(period % 1000000000u) };
        if (announced) {
            /* On the word we announced, not on what it holds now: a job that
             * started since our look took the 1 (and woke nobody), and this
             * wait then returns at once. */
            syscall(SYS_futex, &p->monitor_dozing, FUTEX_WAIT_PRIVATE, 1, &ts, NULL, 0);
            if (atomic_load_explicit(&p->monitor_dozing, memory_order_relaxed) == 0)
                last_job = weft_now_ns(); /* a job took it (or stop: it ends the loop) */
        } else {
            syscall(SYS_futex, &m->stop, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
        }
        bool polling = false;
        for (uint32_t i = 0; m->stalls && i < m->rt->nworkers; i++)
            polling |= look_at(m, i);
        /* Looks that find no poll going on slow down, doubling up to the
         * threshold (as Go's sysmon backs off): a server whose workers
         * mostly sleep in the kernel wakes the monitor ~100 times a second
         * instead of ~400 at the default. A poll seen brings the pace back. */
        pace = polling || !m->stalls ? m->period_ns
                                     : (2 * pace < m->threshold_ns ? 2 * pace : m->threshold_ns);
        /* Seq_cst store before the look (which takes the pool's lock): a
         * job that starts after the look sees it (blocking.c). Then stop's
         * check, for monitor_stop's exchange (the other half of that pair). */
        uint64_t now = weft_now_ns();
        announced = p->demotes && pace > DEMOTE_PERIOD_NS && now - last_job >= QUIET_NS;
        if (announced)
            atomic_store(&p->monitor_dozing, 1);
        bool jobs = weft__blocking_demote(m->rt, now);
        if (jobs)
            last_job = now;
        if (announced && (jobs || atomic_load(&m->stop))) {
            atomic_store(&p->monitor_dozing, 0);
            announced = false;
        }
        fast = p->demotes && now - last_job < QUIET_NS;
    }
    atomic_store(&p->monitor_dozing, 0);
    return NULL;
}

int weft__monitor_start(struct weft_runtime *rt, const struct weft_runtime_config *cfg)
{
    rt->monitor = NULL;
    rt->stall_threshold_ns = 0;
    bool demotes = cfg->blocking_priority != WEFT_BLOCKING_PRIO_NORMAL;
    if (cfg->no_stall_detector && !demotes)
        return 0;
    struct weft__monitor *m = calloc(1, sizeof(*m) + rt->nworkers * sizeof(m->w[0]));
    if (!m)
        return -ENOMEM;
    m->rt = rt;
    m->stalls = !cfg->no_stall_detector;
    m->threshold_ns = (uint64_t)(cfg->stall_threshold_us ? cfg->stall_threshold_us
                                                         : DEFAULT_STALL_US) * 1000u;
    m->period_ns = m->threshold_ns / 4 > 100000u ? m->threshold_ns / 4 : 100000u;
    if (!m->stalls)
        m->period_ns = IDLE_PERIOD_NS; /* only the pool to watch */
    /* Set before the monitor exists: a worker reads them only after it sees
     * the monitor's seen_seq (acquire), which comes after. */
    rt->stall_fn = cfg->on_stall ? cfg->on_stall : stall_to_stderr;
    rt->stall_ctx = cfg->on_stall ? cfg->stall_ctx : rt;
    rt->stall_threshold_ns = m->stalls ? m->threshold_ns : 0;
    /* The monitor starts dozing (monitor_main): announced here, before any
     * job can start (create has not returned), and before the thread runs. */
    if (rt->blocking.demotes && m->period_ns > DEMOTE_PERIOD_NS)
        atomic_store(&rt->blocking.monitor_dozing, 1);
    int err = -pthread_create(&m->thread, NULL, monitor_main, m);
    if (err) {
        atomic_store(&rt->blocking.monitor_dozing, 0);
        rt->stall_threshold_ns = 0;
        free(m);
        return err;
    }
    pthread_setname_np(m->thread, "weft-monitor");
    rt->monitor = m;
    return 0;
}

void weft__monitor_rouse(struct blocking_pool *p)
{
    /* Seq_cst load, then the exchange: the other halves of the monitor's
     * store of 1 and its look (under the pool's lock) or its check of stop. */
    if (atomic_load(&p->monitor_dozing) && atomic_exchange(&p->monitor_dozing, 0))
        syscall(SYS_futex, &p->monitor_dozing, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

void weft__monitor_stop(struct weft_runtime *rt)
{
    struct weft__monitor *m = rt->monitor;
    if (!m)
        return;
    atomic_store(&m->stop, 1); /* seq_cst: before the rouse's load (monitor_main) */
    syscall(SYS_futex, &m->stop, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    weft__monitor_rouse(&rt->blocking);
    pthread_join(m->thread, NULL);
    free(m);
    rt->monitor = NULL;
}
