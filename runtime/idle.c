/* idle.c: which workers are searching for work and which are parked.
 *
 * `state` packs the number of searching workers (low 16 bits) and of unparked
 * workers (high 16 bits). The list of parked workers is under `lock`.
 *
 * The protocol that keeps a wakeup from being lost (Go's spinning protocol, as
 * Tokio's idle.rs also does it):
 *
 * - Whoever makes work available (a push to a local or the global queue) then
 *   runs a seq_cst fence and reads `state` (weft__idle_worker_to_notify). It
 *   wakes a parked worker only if nobody is searching and some worker is
 *   parked: a searcher is bound to find the new work.
 * - A worker about to park first decrements `state` with a seq_cst RMW
 *   (weft__idle_to_parked). If no searcher is left (it was the last one, or
 *   it was not searching and nobody is), it then re-checks every queue
 *   (sched.c: stay_if_work_pending) and, if it finds anything, stays up to
 *   take it itself.
 *
 * Either the pusher's read of `state` comes after the parker's decrement in
 * the seq_cst order, and it sees the parker parked and wakes someone unless
 * a searcher is left (whose own decrement comes later still); or it comes
 * before, and then the push (before the pusher's fence) is visible to the
 * parker's re-check (after its RMW), or to that of a searcher still left.
 * Every order ends with the work found. (A parker that was refused a search
 * by the cap below re-checks too when nobody searches any more: the searcher
 * that refused it may have found other work, and a pusher that read `state`
 * before the parker's decrement saw nobody parked and woke nobody.)
 *
 * A worker's pushes to its own queue that it will run itself skip the notify
 * and so the fence (its LIFO slot, a backlog under sched.c's notify
 * threshold, a searcher's own pushes, a batch taken from the global queue):
 * that work needs no other worker, since the pusher is awake and finds it
 * before it parks (its own queue is the first place it looks).
 *
 * A worker that only its own ring woke stays on the list while it runs those
 * tasks (sched.c: park_worker), counted as parked. That keeps the argument:
 * a notifier that picks it leaves the unpark on its park word, so it cannot
 * sleep again without acting on it; while it is listed it never searches,
 * and it leaves the list (under the lock) before it notifies anyone. A
 * notifier prefers a sleeping worker, and counts a running one it had to
 * pick as unparked but not searching, so that it does not hold a searcher's
 * place while it finishes what it runs.
 *
 * At most half of the workers search at once (weft__idle_to_searching), so an
 * idle runtime does not burn every core stealing from empty queues; a searcher
 * that finds work and stops searching as the last one wakes the next
 * (sched.c), so a burst of work spreads one worker at a time, never with a
 * thundering herd. */
#include <assert.h>

#include "internal.h"
#include "../io/io.h"

#define SEARCH_MASK UINT32_C(0xffff)
#define UNPARK_ONE  (UINT32_C(1) << 16)

static inline uint32_t searching(uint32_t s)
{
    return s & SEARCH_MASK;
}

static inline uint32_t unparked(uint32_t s)
{
    return s >> 16;
}

bool weft__idle_to_searching(struct idle *idle)
{
    uint32_t s = atomic_load_explicit(&idle->state, memory_order_seq_cst);
    if (2 * searching(s) >= idle->nworkers)
        return false;
    /* Seq_cst: part of the total order the notify/park protocol relies on. */
    atomic_fetch_add_explicit(&idle->state, 1, memory_order_seq_cst);
    return true;
}

/* Returns true if the caller was the last searcher (it must then wake one). */
bool weft__idle_from_searching(struct idle *idle)
{
    uint32_t prev = atomic_fetch_sub_explicit(&idle->state, 1, memory_order_seq_cst);
    assert(searching(prev) > 0);
    return searching(prev) == 1;
}

/* Returns true if no other worker is searching once the caller parks (it
 * must then re-check every queue before sleeping): the last searcher, and
 * also a worker that was not searching (idle_to_searching refused it) when
 * no searcher is left, since a pusher that read `state` before this RMW may
 * have seen nobody parked, and the searcher that refused it may since have
 * found other work, leaving nobody bound to find the push. */
bool weft__idle_to_parked(struct idle *idle, uint32_t worker, bool is_searching)
{
    pthread_mutex_lock(&idle->lock);
    uint32_t dec = UNPARK_ONE | (is_searching ? 1u : 0u);
    /* Seq_cst RMW: the parker's side of the protocol above. */
    uint32_t prev = atomic_fetch_sub_explicit(&idle->state, dec, memory_order_seq_cst);
    idle->sleepers[idle->nsleepers++] = worker;
    pthread_mutex_unlock(&idle->lock);
    return searching(prev) == (is_searching ? 1u : 0u);
}

/* A parked worker that woke up: if it is off the sleepers list, a notifier
 * took it off and counted it as searching (NOTIFIED), or as merely unparked
 * when it was out of its park at the time (TAKEN_BUSY). If it is still on the
 * list (a spurious wakeup, a shutdown, or its own ring's completions), it
 * stays there unless it has work of its own (`has_work`): then it takes itself
 * off and counts itself as unparked, not searching (SELF). */
enum idle_wake weft__idle_wake_self(struct idle *idle, uint32_t worker, bool has_work)
{
    pthread_mutex_lock(&idle->lock);
    enum idle_wake r = idle->taken_busy[worker] ? IDLE_TAKEN_BUSY : IDLE_NOTIFIED;
    for (uint32_t i = 0; i < idle->nsleepers; i++) {
        if (idle->sleepers[i] != worker)
            continue;
        r = IDLE_STILL_PARKED;
        if (has_work) {
            idle->sleepers[i] = idle->sleepers[--idle->nsleepers];
            /* Seq_cst, as every change of the counts (see the top). */
            atomic_fetch_add_explicit(&idle->state, UNPARK_ONE, memory_order_seq_cst);
            r = IDLE_SELF;
        }
        break;
    }
    pthread_mutex_unlock(&idle->lock);
    return r;
}

static bool should_wake(struct idle *idle)
{
    /* The pusher's side of the protocol: its push happens before this fence,
     * which orders it against the parker's seq_cst RMW. */
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t s = atomic_load_explicit(&idle->state, memory_order_seq_cst);
    return searching(s) == 0 && unparked(s) < idle->nworkers;
}

/* True if listed worker `i` looks out of its park, running what its own
 * ring woke (sched.c: park_worker). A hint, read relaxed, that only spares
 * a running worker the mark's CAS below. */
static bool runs(const struct weft__worker *workers, uint32_t i)
{
    return atomic_load_explicit(&workers[i].stats->busy_since, memory_order_relaxed) != 0;
}

/* Picks a parked worker other than `skip` to wake, one asleep if there is
 * one (the last to park first), and counts it as unparked and searching;
 * returns its index, or -1 when no wakeup is needed; *asleep says whether
 * it was found asleep, already marked, and so must be kicked (outside the
 * lock: weft__io_unpark_kick), else it is to be unparked as usual. A listed
 * worker that is running (none asleep) is counted unparked only: it will
 * act on the wakeup at its next park, and until then must not hold a
 * searcher's place, which would keep the others from searching
 * (idle_to_searching's cap).
 *
 * Asleep means its park word was PARKED when we marked it (NOTIFIED), here
 * under the lock, not a guess from the busy hint: a worker its own ring woke
 * a moment before looked asleep, was counted searching while it ran a long
 * poll, and every notify was refused meanwhile (should_wake sees a
 * searcher), a task in the global queue waiting for that poll (a helper's
 * review: 100 ms in 4 of 700 trials; 300 ms in 12 of 12 with a delay
 * injected before the unpark). The mark (a CAS PARKED -> NOTIFIED) and the
 * worker's own CAS and exchanges of its park word are RMWs of one word, so
 * one order: PARKED means the worker is between its CAS to PARKED in its
 * loop's park and its closing exchange, which then reads NOTIFIED (acquire,
 * pairing with the mark's release) and sends it to weft__idle_wake_self,
 * which takes this lock after we drop it and so finds it off the list,
 * counted searching, as we counted it. A park nested in a poll (op.c:
 * wait_done) says NESTED instead: woken, that worker goes on with its poll,
 * and counted searching it would hold the searcher's place all the while
 * (the same refusal of every notify; a review, with a delay injected).
 * Any other word is left untouched: the worker is awake or in a poll, and
 * taken as the running one (the caller's plain unpark marks and, for a
 * nested park, kicks it). */
int64_t weft__idle_worker_to_notify(struct idle *idle, const struct weft__worker *workers,
                                    uint32_t skip, bool *asleep)
{
    *asleep = false;
    if (!should_wake(idle))
        return -1;
    pthread_mutex_lock(&idle->lock);
    int64_t worker = -1;
    uint32_t pick = UINT32_MAX;
    if (should_wake(idle)) {
        for (uint32_t k = idle->nsleepers; k-- > 0;) {
            uint32_t i = idle->sleepers[k];
            if (i == skip)
                continue;
            if (!runs(workers, i) && weft__io_unpark_mark(workers[i].io)) {
                pick = k;
                *asleep = true;
                break;
            }
            if (pick == UINT32_MAX)
                pick = k; /* running: the one to take if none is asleep */
        }
    }
    if (pick != UINT32_MAX) {
        bool busy = !*asleep;
        worker = idle->sleepers[pick];
        idle->taken_busy[worker] = busy;
        atomic_fetch_add_explicit(&idle->state, UNPARK_ONE | (busy ? 0u : 1u),
                                  memory_order_seq_cst);
        idle->sleepers[pick] = idle->sleepers[--idle->nsleepers];
    }
    pthread_mutex_unlock(&idle->lock);
    return worker;
}
