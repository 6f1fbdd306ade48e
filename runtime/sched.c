/* sched.c: the worker loop, scheduling, work stealing and parking.
 *
 * Design (Tokio's multi-thread scheduler and Go's proc.go are the models):
 *
 * Each worker owns a bounded lock-free run queue (queue.h) and a one-task LIFO
 * slot. A task woken by the task running on the same worker goes to the LIFO
 * slot, so a message and its reply are handled back to back while the data is
 * in cache; the slot is polled at most LIFO_MAX_POLLS times in a row, so two
 * tasks waking each other cannot starve the queue. A task spawned on a worker
 * goes to the LIFO slot too (as in Tokio: a spawned child usually runs next,
 * in cache); yields and the LIFO slot's previous occupant go to the back of
 * the local queue. Wakes from
 * other threads (or other runtimes' workers) go to the global inject queue, a
 * mutex-protected list, which also takes half of a local queue when it
 * overflows, moved in one batch.
 *
 * The loop, per tick: every `global_interval` ticks take from the global queue
 * first (so it cannot starve behind a busy local queue), otherwise the LIFO
 * slot's chain after each poll, then the local queue, then a batch from the
 * global queue; with nothing there, become a searcher (if fewer than half the
 * workers are) and steal half of a random victim's queue; with nothing found,
 * park. idle.c explains why no wakeup is lost between a push and a park.
 *
 * Rejected: one shared queue (every poll contends on it), work pushing
 * (the busy worker pays for balancing), and waking a worker per spawn (a
 * thundering herd of futex calls when a burst arrives; one searcher wakes the
 * next instead). */
#include <linux/futex.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "../io/io.h"

#define LIFO_MAX_POLLS 3
/* Tasks queued by a reactor turn before a parked sibling is woken. */
#define REAP_NOTIFY_BACKLOG 16

_Thread_local struct weft__worker *weft__current;

/* ---- the global queue ------------------------------------------------------ */

static void inject_link(struct inject *q, struct weft_task *first, struct weft_task *last, size_t n)
{
    last->next = NULL;
    if (q->tail)
        q->tail->next = first;
    else
        q->head = first;
    q->tail = last;
    atomic_store_explicit(&q->len, atomic_load_explicit(&q->len, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* Pushes `n` linked tasks (first..last) and wakes a worker. Once shutdown has
 * closed the queue, a task that was ever polled (on the owned list) keeps
 * its NOTIFIED state for the shutdown's sweep of that list, which cancels
 * it: only the queue's reference is released here. Cancelling it here would
 * run its future's drop inside whatever thread woke it, under whatever lock
 * that thread holds while it wakes (and the drop may want that lock: a
 * deadlock, found by a helper's review). A task never polled (a spawn that
 * raced with shutdown) is on no list: the pushing thread, its spawner,
 * cancels it. Reading `owned` is safe: a wake pushes only a task that is
 * neither running nor queued, and the poll that set `owned` ended with the
 * release the wake's state CAS acquired. */
static void inject_push_list(struct weft_runtime *rt, struct weft_task *first,
                             struct weft_task *last, size_t n)
{
    struct inject *q = &rt->inject;
    pthread_mutex_lock(&q->lock);
    if (q->closed) {
        pthread_mutex_unlock(&q->lock);
        for (struct weft_task *t = first, *next; n--; t = next) {
            next = t->next;
            if (t->owned)
                weft__task_unref(t);
            else
                weft__task_drop_notified(t);
        }
        return;
    }
    inject_link(q, first, last, n);
    pthread_mutex_unlock(&q->lock);
    weft__notify_parked(rt);
}

void weft__inject_push_batch(struct weft_runtime *rt, void **items, uint32_t n)
{
    for (uint32_t i = 0; i + 1 < n; i++)
        ((struct weft_task *)items[i])->next = items[i + 1];
    inject_push_list(rt, items[0], items[n - 1], n);
}

/* Pops up to `max` tasks: returns the first, the rest go into `w`'s queue. */
static struct weft_task *inject_pop(struct weft__worker *w, uint32_t max)
{
    struct inject *q = &w->rt->inject;
    /* A relaxed hint: a push we miss here is found through the idle protocol. */
    if (atomic_load_explicit(&q->len, memory_order_relaxed) == 0)
        return NULL;
    pthread_mutex_lock(&q->lock);
    size_t len = atomic_load_explicit(&q->len, memory_order_relaxed);
    size_t n = len / w->rt->nworkers + 1;
    if (n > max)
        n = max;
    if (n > len)
        n = len;
    struct weft_task *first = q->head;
    for (size_t i = 0; i < n; i++) {
        struct weft_task *t = q->head;
        q->head = t->next;
        if (i > 0)
            w->overflow[i - 1] = t;
    }
    if (!q->head)
        q->tail = NULL;
    atomic_store_explicit(&q->len, len - n, memory_order_relaxed);
    pthread_mutex_unlock(&q->lock);
    if (n > 1)
        queue_push_batch(&w->run, w->overflow, (uint32_t)(n - 1));
    return first;
}

void weft__inject_close_and_drain(struct weft_runtime *rt)
{
    struct inject *q = &rt->inject;
    pthread_mutex_lock(&q->lock);
    q->closed = true;
    struct weft_task *t = q->head;
    q->head = q->tail = NULL;
    atomic_store_explicit(&q->len, 0, memory_order_relaxed);
    pthread_mutex_unlock(&q->lock);
    while (t) {
        struct weft_task *next = t->next;
        weft__task_drop_notified(t);
        t = next;
    }
}

/* ---- waking workers ---------------------------------------------------------- */

void weft__worker_unpark(struct weft__worker *w)
{
    if (weft__io_unpark(w->io))
        atomic_fetch_add_explicit(&w->stats->unparks, 1, memory_order_relaxed);
}

/* Takes the calling worker off the sleepers list, where it stayed while it
 * ran what its own ring woke (park_worker): counted unparked again, or
 * searching if a notifier took it off first (its unpark is then pending on
 * the park word, and the next park consumes it without sleeping). */
static void leave_list(struct weft__worker *w)
{
    w->listed = false;
    if (weft__idle_wake_self(&w->rt->idle, w->index, true) == IDLE_NOTIFIED)
        w->searching = true;
}

void weft__notify_parked_except(struct weft_runtime *rt, uint32_t skip)
{
    /* A listed worker must not pick itself: the wakeup is for a sibling. */
    struct weft__worker *me = weft__current;
    if (me && me->listed && me->rt == rt)
        leave_list(me);
    bool asleep;
    int64_t i = weft__idle_worker_to_notify(&rt->idle, rt->workers, skip, &asleep);
    if (i < 0)
        return;
    if (asleep) { /* marked under the idle lock: only the wakeup is left */
        atomic_fetch_add_explicit(&rt->workers[i].stats->unparks, 1, memory_order_relaxed);
        weft__io_unpark_kick(rt->workers[i].io);
    } else {
        weft__worker_unpark(&rt->workers[i]);
    }
}

/* A parker that leaves no searcher behind re-checks every queue before it
 * sleeps (see idle.c); if it finds work, it stays up and takes it itself. */
static void stay_if_work_pending(struct weft__worker *w)
{
    struct weft_runtime *rt = w->rt;
    /* Orders the queue loads below after the seq_cst RMW of idle_to_parked
     * (the parker's side of the protocol in idle.c), also for the local
     * queues' acquire loads. */
    atomic_thread_fence(memory_order_seq_cst);
    bool work = atomic_load_explicit(&rt->inject.len, memory_order_seq_cst) > 0;
    for (uint32_t i = 0; i < rt->nworkers && !work; i++)
        work = !queue_is_empty(&rt->workers[i].run);
    if (work)
        leave_list(w);
}

/* ---- scheduling -------------------------------------------------------------- */

static void push_local(struct weft__worker *w, struct weft_task *t)
{
    uint32_t n = queue_push(&w->run, t, w->overflow);
    if (n > 0) {
        stat_add(&w->stats->overflows, 1);
        weft__inject_push_batch(w->rt, w->overflow, n);
    }
}

/* One wake in WEFT_METRICS_SAMPLE is timed, for the schedule latency
 * histogram; the poll that follows reads the stamp (weft__poll_begin). */
static void sample_wake(struct weft_task *t, uint64_t count)
{
    if (count % WEFT_METRICS_SAMPLE == 0) {
        uint32_t stamp = (uint32_t)(weft_now_ns() >> STAMP_SHIFT);
        t->sched_stamp = stamp ? stamp : 1;
    }
}

void weft__schedule(struct weft_task *t, bool yield)
{
    struct weft__worker *w = weft__current;
    if (!w || w->rt != t->rt || w->draining) {
        sample_wake(t, atomic_fetch_add_explicit(&t->rt->remote_schedules, 1,
                                                 memory_order_relaxed));
        /* Our reference keeps the task, and so the runtime's memory, alive
         * through the push and the notify: once pushed, the queue's reference
         * may be dropped at any time by a shutdown on another thread. */
        weft__task_ref(t);
        inject_push_list(t->rt, t, t, 1);
        weft__task_unref(t);
        return;
    }
    bool notify = true;
    uint64_t n = atomic_load_explicit(&w->stats->local_schedules, memory_order_relaxed);
    stat_add(&w->stats->local_schedules, 1);
    sample_wake(t, n);
    /* Outside a poll (a completion or timer reaped by the worker's reactor
     * turn) there is no running task to follow: the LIFO slot is only
     * drained after a poll, so go to the queue. */
    if (yield || !w->running) {
        push_local(w, t);
    } else {
        /* The task just woken by the running one runs next, in cache. */
        struct weft_task *prev = w->lifo;
        w->lifo = t;
        notify = prev != NULL;
        if (prev)
            push_local(w, prev);
    }
    /* Wake a sibling for any task queued behind the running one (unless one
     * is already searching, checked in idle.c): that poll may run long, and
     * the task would wait it out. Tasks woken by this worker's own
     * completions, between polls, need a deeper backlog first: their I/O is
     * on this ring, and a sibling woken for a short batch costs two context
     * switches and takes the connections to its own ring, where they wake it
     * again and again (measured: 3-4x the context switches and 1.4x the CPU
     * per request of an HTTP server on 2 cores). If one of those then polls
     * long, the stall monitor wakes a sibling for the rest (metrics.c). */
    uint32_t len = queue_len(&w->run);
    if (notify && !w->searching && (w->running ? len > 0 : len > REAP_NOTIFY_BACKLOG))
        weft__notify_parked(w->rt);
}

/* ---- the worker loop ------------------------------------------------------------ */

static struct weft_task *next_local(struct weft__worker *w)
{
    struct weft_runtime *rt = w->rt;
    if (--w->global_countdown == 0) {
        w->global_countdown = rt->global_interval;
        struct weft_task *t = inject_pop(w, 1);
        if (t)
            return t;
    }
    struct weft_task *t = queue_pop(&w->run);
    if (t)
        return t;
    uint32_t room = queue_free_slots(&w->run);
    if (room > rt->queue_size / 2)
        room = rt->queue_size / 2;
    return inject_pop(w, room + 1);
}

static uint32_t next_rand(struct weft__worker *w)
{
    uint32_t x = w->rand;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return w->rand = x;
}

static struct weft_task *steal_work(struct weft__worker *w)
{
    struct weft_runtime *rt = w->rt;
    if (!w->searching) {
        if (!weft__idle_to_searching(&rt->idle))
            return NULL;
        w->searching = true;
    }
    uint32_t n = rt->nworkers, start = next_rand(w) % n;
    for (uint32_t i = 0; i < n; i++) {
        struct weft__worker *victim = &rt->workers[(start + i) % n];
        if (victim == w)
            continue;
        struct weft_task *t = queue_steal_into(&victim->run, &w->run);
        if (t) {
            /* Our queue was empty: what is in it now came with t. */
            stat_add(&w->stats->steals, 1 + queue_len(&w->run));
            stat_add(&w->stats->steal_ops, 1);
            return t;
        }
    }
    return inject_pop(w, rt->queue_size / 2);
}

static void run_task(struct weft__worker *w, struct weft_task *t)
{
    /* A searcher that found work stops searching; if it was the last one, it
     * wakes another so the rest of the burst is picked up too. */
    if (w->searching) {
        w->searching = false;
        if (weft__idle_from_searching(&w->rt->idle))
            weft__notify_parked(w->rt);
    }
    weft__task_run(t, w);
    for (w->lifo_polls = 0; w->lifo; w->lifo_polls++) {
        t = w->lifo;
        w->lifo = NULL;
        if (w->lifo_polls >= LIFO_MAX_POLLS) {
            push_local(w, t);
            break;
        }
        stat_add(&w->stats->lifo_hits, 1);
        weft__task_run(t, w);
    }
}

static bool has_local_work(struct weft__worker *w)
{
    return w->lifo || !queue_is_empty(&w->run);
}

/* Sleeps until there is work. A worker that only its own ring woke (its
 * completions or timers queued tasks) stays on the sleepers list while it
 * runs them, counted as parked, and comes back here without the two trips
 * through the list's lock: a notifier that picks it meanwhile finds it busy,
 * and its unpark, left on the park word, is consumed at the next park (or
 * right after the reaping turn, below, which takes it off the list at once);
 * a listed worker that notifies leaves the list first (weft__notify_parked).
 * It does not steal while listed: wakeups bring the siblings' work to it. */
static void park_worker(struct weft__worker *w)
{
    struct weft_runtime *rt = w->rt;
    if (!w->listed) {
        bool was_searching = w->searching;
        w->searching = false;
        w->listed = true;
        if (weft__idle_to_parked(&rt->idle, w->index, was_searching))
            stay_if_work_pending(w);
    }
    while (w->listed) {
        /* Sleeps in io_uring_enter until an unpark, a completion or the next
         * timer; completions and timers it reaps may queue work here. Busy
         * time is counted up to here and from the wake-up on. */
        struct wstats *st = w->stats;
        /* busy_ns and busy_since change together here: a seqlock, so that
         * weft_metrics_read never sees the old busy_ns with busy_since
         * already 0 (the stretch lost: busy time going backwards). The
         * release fence orders the odd sequence before the field stores (a
         * reader that sees one of those sees the odd sequence on its
         * re-read); the release store publishes them with the even one. The
         * clock is read inside, after the odd store. On x86, plain moves.
         * (The wake-up below changes busy_since alone: no tear to hide.) */
        uint64_t seq = atomic_load_explicit(&st->busy_seq, memory_order_relaxed);
        atomic_store_explicit(&st->busy_seq, seq + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        uint64_t now = weft_now_ns();
        stat_add(&st->busy_ns, now - atomic_load_explicit(&st->busy_since, memory_order_relaxed));
        atomic_store_explicit(&st->busy_since, 0, memory_order_relaxed);
        atomic_store_explicit(&st->busy_seq, seq + 2, memory_order_release);
        stat_add(&st->parks, 1);
        bool unparked = weft__io_park(w->io);
        /* A compute job may have moved us while we slept (handover.c); a
         * wake that brings no task parks again without passing the loop's
         * top, and would sleep narrowed to that one CPU (a helper's review). */
        weft__handover_undo(w);
        now = weft_now_ns();
        atomic_store_explicit(&st->busy_since, now, memory_order_relaxed);
        atomic_store_explicit(&w->clock, (uint32_t)(now >> POLLED_SHIFT), memory_order_relaxed);
        if (atomic_load_explicit(&rt->shutdown, memory_order_acquire) || !w->listed)
            return; /* (the reaping turn may have notified, leaving the list) */
        /* A notifier may have taken us off the list during the park's
         * reaping turn, after our closing exchange (it found us awake and
         * counted us unparked, the busy pick): its unpark is on the word.
         * Taken here, we leave the list now rather than at the next park.
         * One relaxed load when nobody came. */
        if (!unparked) {
            unparked = weft__io_take_unpark(w->io);
            /* The unpark taken may be shutdown's (stop_workers stores
             * `shutdown` and then unparks every worker): come in after the
             * check above, it would be consumed here and the next park would
             * sleep for good, destroy waiting on it (a helper's review:
             * 4 hangs in 6 runs of 20,000 destroys right after an accept's
             * completion that woke no task). Its acquire exchange pairs with
             * that unpark's release, which follows the store. */
            if (unparked && atomic_load_explicit(&rt->shutdown, memory_order_relaxed))
                return;
        }
        if (!unparked) {
            /* No unpark: a notifier that took us off the list has yet to
             * unpark us (a moment's window), and the next park sees it. */
            if (has_local_work(w))
                return;
            continue;
        }
        switch (weft__idle_wake_self(&rt->idle, w->index, has_local_work(w))) {
        case IDLE_NOTIFIED: /* off the sleepers list: a notifier counted us searching */
            w->listed = false;
            w->searching = true;
            return;
        case IDLE_TAKEN_BUSY: /* taken off while it ran: counted unparked only */
        case IDLE_SELF:
            w->listed = false;
            return;
        case IDLE_STILL_PARKED:
            break;
        }
    }
}

void *weft__worker_main(void *arg)
{
    struct weft__worker *w = arg;
    struct weft_runtime *rt = w->rt;
    weft__current = w;
    w->global_countdown = rt->global_interval;
    w->event_countdown = rt->event_interval;
    atomic_store_explicit(&w->stats->busy_since, weft_now_ns(), memory_order_relaxed);
    /* Timer wakeups to the microsecond: the default 50 us of slack is a
     * quarter of the oversleep budget of a 1 ms sleep. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    /* What a sliced compute job looks at to hand its CPU over (handover.c);
     * release: cpu_clock before tid. */
    if (pthread_getcpuclockid(pthread_self(), &w->cpu_clock) == 0)
        atomic_store_explicit(&w->tid, (pid_t)syscall(SYS_gettid), memory_order_release);
    int err = weft__io_start(w->io);
    if (err)
        fprintf(stderr, "weft: worker %u: enabling its io_uring failed (%s); I/O on it "
                        "fails with EOPNOTSUPP\n", w->index, strerror(-err));
    /* Acquire pairs with the release store in weft_runtime_destroy. */
    while (!atomic_load_explicit(&rt->shutdown, memory_order_acquire)) {
        /* One load, unless a compute job moved us (handover.c). */
        weft__handover_undo(w);
        struct weft_task *t = next_local(w);
        if (!t && weft__io_has_events(w->io)) {
            /* Out of local work: completions and timers make some. */
            weft__io_tick(w->io);
            t = next_local(w);
        }
        if (!t && !w->listed) {
            /* Queued SQEs wait for the park's io_uring_enter, which submits
             * them and sleeps in one syscall; a worker that finds work to
             * steal submits them first instead. */
            t = steal_work(w);
            if (t)
                weft__io_flush(w->io);
        }
        if (t) {
            run_task(w, t);
            if (--w->event_countdown == 0) {
                w->event_countdown = rt->event_interval;
                weft__io_tick(w->io);
            }
        } else {
            park_worker(w);
        }
    }
    weft__worker_drain(w);
    weft__io_stop(w->io);
    weft__current = NULL;
    return NULL;
}

void weft__worker_drain(struct weft__worker *w)
{
    struct weft_runtime *rt = w->rt;
    /* Queued tasks are cancelled here, on their worker, so a dropped
     * future's operations are cancelled on this ring directly. */
    w->draining = true;
    if (w->lifo)
        weft__task_drop_notified(w->lifo);
    w->lifo = NULL;
    for (struct weft_task *t; (t = queue_pop(&w->run));)
        weft__task_drop_notified(t);
    /* Release: our queue is empty before destroy goes on (its acquire). */
    atomic_fetch_add_explicit(&rt->drained, 1, memory_order_release);
    syscall(SYS_futex, &rt->drained, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    /* Destroy now drops every other task, which releases their operations;
     * keep the ring turning (cancels, final completions) until it says all
     * futures are gone, then cancel whatever is left and wait for it. */
    bool cancelled = false;
    for (;;) {
        if (atomic_load_explicit(&rt->io_closing, memory_order_acquire)) {
            /* The acquire orders every drop's push before this pass: slots
             * finished but never read (a connect's socket) are released. */
            weft__io_run_remote(w->io);
            if (w->io->inflight == 0)
                break;
            if (!cancelled) {
                weft__io_cancel_all(w->io);
                cancelled = true;
            }
        }
        weft__io_park(w->io);
    }
}
