/* ring.c: a worker's io_uring: setup with feature fallback, the reactor turn,
 * and the park point.
 *
 * Setup: the ring is created by weft_runtime_create with IORING_SETUP_R_DISABLED
 * (so errors reach the caller) and enabled by its worker thread, which makes
 * that thread the single issuer. Flags are tried from the best set down:
 * SINGLE_ISSUER|DEFER_TASKRUN|COOP_TASKRUN|TASKRUN_FLAG|SUBMIT_ALL, then
 * COOP_TASKRUN|TASKRUN_FLAG|SUBMIT_ALL, then none. Without io_uring at all
 * (an old kernel, a seccomp filter, io_uring_disabled) the runtime still runs:
 * the worker parks on its futex with the next timer as timeout, timers work,
 * file operations run on the blocking pool, and socket futures give
 * -EOPNOTSUPP.
 *
 * The turn (weft__io_tick, every few dozen polls and whenever the worker runs
 * out of local work): handle slots other threads pushed, then one
 * io_uring_enter that both submits every SQE queued since the last turn and
 * runs the deferred completions, only if there is something to submit or the
 * kernel flags pending completions (IORING_SQ_TASKRUN, CQ overflow); then reap
 * and fire expired timers.
 *
 * Parking (weft__io_park) follows park.h's contract: an unpark that comes
 * first is remembered, several collapse into one. The owner moves the park
 * word EMPTY -> PARKED and sleeps in io_uring_enter(min_complete = 1, timeout
 * = next timer) with a read of its eventfd armed; an unparker that swaps the
 * word from PARKED writes the eventfd, which completes that read and ends the
 * wait. An eventfd was chosen over IORING_OP_MSG_RING because any thread can
 * write it (MSG_RING needs a ring of the sender's own) and it costs the same
 * one syscall. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "../runtime/internal.h"

#define DEFAULT_ENTRIES 256u
#define CQ_FACTOR 16u
#define DEFAULT_BUFFERS 256u
#define DEFAULT_BUFFER_SIZE 4096u

uint64_t weft_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * WEFT_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

struct weft__io *weft__io_current(void)
{
    return weft__current ? weft__current->io : NULL;
}

void weft__io_unsupported(struct weft__io *io, enum op_kind kind, const char *name)
{
    uint32_t bit = UINT32_C(1) << kind;
    if (io->warned & bit)
        return;
    for (uint32_t k = 0; k < OP_NKINDS; k++) /* one line per opcode: both receives are "recv" */
        if (weft__op_opcode((enum op_kind)k) == weft__op_opcode(kind))
            io->warned |= UINT32_C(1) << k;
    bool file = weft__op_has_fallback(kind);
    fprintf(stderr, "weft: io_uring %s is not available (%s): %s\n", name,
            io->has_ring ? "kernel too old" : "no io_uring",
            file ? "files go through the blocking pool instead" : "it fails with EOPNOTSUPP");
}

static const unsigned setup_ladder[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN |
        IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
    0,
};

#define LADDER_RUNGS (sizeof(setup_ladder) / sizeof(setup_ladder[0]))

/* The rung to start from: 0, or WEFT_IO_RUNG (1 or 2), which runs on a new
 * kernel what an older one would get, so that the tests cover the fallbacks. */
static size_t ladder_start(void)
{
    const char *e = getenv("WEFT_IO_RUNG");
    return e && e[0] >= '1' && e[0] < (char)('0' + LADDER_RUNGS) && !e[1] ? (size_t)(e[0] - '0')
                                                                          : 0;
}

static int ring_create(struct weft__io *io, uint32_t entries)
{
    int err = -EINVAL;
    for (size_t i = ladder_start(); i < LADDER_RUNGS; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = setup_ladder[i] | IORING_SETUP_R_DISABLED | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * CQ_FACTOR;
        err = io_uring_queue_init_params(entries, &io->ring, &p);
        if (err == 0) {
            io->features = p.features;
            return 0;
        }
        if (err != -EINVAL)
            break; /* ENOSYS, EPERM, ENOMEM: not a matter of flags */
    }
    return err;
}

/* True if WEFT_IO_NO_OPS's comma-separated list holds `name`. */
static bool no_ops_lists(const char *name)
{
    const char *e = getenv("WEFT_IO_NO_OPS");
    size_t n = strlen(name);
    for (const char *p = e; p && (p = strstr(p, name)); p += n)
        if ((p == e || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* The kinds WEFT_IO_NO_OPS names ("recv,openat": the names of the missing-
 * operation messages), treated as missing as on an older kernel, so that the
 * tests cover what happens then. Timers are no opcode: never masked. Two more
 * names are no opcode: "accept_multishot" makes the kernel refuse the
 * multishot accept as 5.10-5.18 do (weft__io_init), so that the listeners'
 * single-shot fallback (tcp.c) runs here, and "buf_ring" leaves the rings
 * without a provided-buffer ring, as before 5.19 (bufring.c: peek mode). */
static uint32_t ops_masked(void)
{
    uint32_t mask = 0;
    for (uint32_t k = 0; k < OP_NKINDS; k++)
        if (k != OP_TIMER && no_ops_lists(weft__op_name((enum op_kind)k)))
            mask |= UINT32_C(1) << k;
    return mask;
}

#define PROBE_OPS 256

/* 0, or the error the kernel gave for the probe itself (every kernel that
 * makes our rings, IORING_SETUP_R_DISABLED: 5.10, has the probe: 5.6). */
static int probe(struct weft__io *io)
{
    /* On the stack: liburing's io_uring_get_probe_ring mallocs, and its NULL
     * on a failed malloc read as a kernel with no opcode at all, so that one
     * worker gave -EOPNOTSUPP for every socket future while create succeeded
     * (a helper's fault injection). */
    union {
        struct io_uring_probe p;
        unsigned char room[sizeof(struct io_uring_probe) +
                           PROBE_OPS * sizeof(struct io_uring_probe_op)];
    } pb;
    memset(&pb, 0, sizeof pb);
    int r = io_uring_register_probe(&io->ring, &pb.p, PROBE_OPS);
    if (r < 0)
        return r;
    io->supported = UINT32_C(1) << OP_TIMER;
    for (uint32_t k = 0; k < OP_NKINDS; k++)
        if (k != OP_TIMER && io_uring_opcode_supported(&pb.p, weft__op_opcode(k)))
            io->supported |= UINT32_C(1) << k;
    io->supported &= ~ops_masked();
    return 0;
}

int weft__io_init(struct weft__io *io, struct weft_runtime *rt, uint32_t index,
                  const struct weft_runtime_config *cfg)
{
    io->rt = rt;
    io->index = index;
    io->stats = rt->workers[index].stats;
    io->efd = -1;
    atomic_init(&io->remote, NULL);
    atomic_init(&io->park.state, PARK_EMPTY);
    atomic_init(&io->ring_flags, UINT32_MAX);
    atomic_init(&io->ring_bufs, 0);
    io->supported = UINT32_C(1) << OP_TIMER;
    if (cfg->no_io_uring) {
        io->warned = ~UINT32_C(0); /* asked for: no line on stderr about it */
        return 0;
    }
    int err = ring_create(io, cfg->io_entries ? cfg->io_entries : DEFAULT_ENTRIES);
    if (err == -ENOSYS || err == -EPERM)
        return 0; /* no io_uring here: timers only (see the top) */
    if (err)
        return err;
    io->has_ring = true;
    atomic_store_explicit(&io->ring_flags, io->ring.flags & ~(unsigned)IORING_SETUP_R_DISABLED,
                          memory_order_relaxed);
    /* The kernel's own answer, not a probe, tells whether multishot accept
     * is there (tcp.c: the fallback); this makes it say no. */
    io->accept_refuse_sim = no_ops_lists("accept_multishot");
    err = probe(io);
    if (!err) {
        io->efd = eventfd(0, EFD_CLOEXEC);
        err = io->efd < 0 ? -errno : 0;
    }
    if (err) {
        io_uring_queue_exit(&io->ring);
        io->has_ring = false;
        return err;
    }
    io->buf_size = cfg->io_buffer_size ? cfg->io_buffer_size : DEFAULT_BUFFER_SIZE;
    /* WEFT_IO_NO_OPS=buf_ring: as a kernel without provided-buffer rings. */
    err = no_ops_lists("buf_ring")
              ? -EINVAL
              : weft__bufring_init(io, cfg->io_buffers ? cfg->io_buffers : DEFAULT_BUFFERS,
                                   io->buf_size);
    if (!err)
        atomic_store_explicit(&io->ring_bufs, io->nbufs, memory_order_relaxed);
    if (err == -EINVAL || err == -EOPNOTSUPP) {
        /* A kernel without buffer rings (before 5.19): receives wait with a
         * peek, then read into heap buffers (bufring.c); that takes the recv
         * opcode, as the ring's receives do. */
        err = 0;
    }
    if (err)
        weft__io_fini(io);
    return err;
}

int weft__io_start(struct weft__io *io)
{
    if (!io->has_ring)
        return 0;
    /* io_uring_enable_rings is not exported by liburing 2.3 (TOOLCHAIN.md). */
    int err = io_uring_register(io->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (err >= 0) {
        /* Registered with this thread's io_uring context, the ring is
         * entered by index: every io_uring_enter skips looking the
         * descriptor up (and its reference count). A kernel before 5.18
         * says no: enters then pass the descriptor, as before. */
        io->fd_registered = io_uring_register_ring_fd(&io->ring) == 1;
        return 0;
    }
    /* A disabled ring cannot be used: run this worker without one (timers
     * only, parks on the futex) rather than spin on failing enters. */
    weft__bufring_fini(io);
    io_uring_queue_exit(&io->ring);
    io->has_ring = false;
    atomic_store_explicit(&io->ring_flags, UINT32_MAX, memory_order_relaxed);
    atomic_store_explicit(&io->ring_bufs, 0, memory_order_relaxed);
    weft__io_free(io); /* no unparker yet: none acts before the first park */
    io->supported = UINT32_C(1) << OP_TIMER;
    return err;
}

void weft__io_stop(struct weft__io *io)
{
    /* On the owner: the registration is its thread's. Left for
     * io_uring_queue_exit, it would be undone on whichever thread destroys
     * the runtime, in that thread's own table. */
    if (io->fd_registered)
        io_uring_unregister_ring_fd(&io->ring);
    io->fd_registered = false;
}

void weft__io_fini(struct weft__io *io)
{
    if (!io->rt)
        return; /* never initialised, or already finished */
    if (io->has_ring) {
        weft__bufring_fini(io);
        io_uring_queue_exit(&io->ring);
        io->has_ring = false;
    }
    weft__slab_fini(io);
    if (io->heap)
        rt_free(io->rt, io->heap, io->heap_cap * sizeof(*io->heap));
    io->heap = NULL;
    io->rt = NULL;
}

void weft__io_free(struct weft__io *io)
{
    /* Not in weft__io_fini (weft_runtime_destroy): an unparker that swapped
     * PARKED may be about to write the eventfd when the worker, woken by
     * something else, exits and destroy runs on. Closed then, its number
     * could be reused and the 8 bytes land in another file. Every unparker
     * holds the runtime's memory, this included: a waker or a spawn through
     * its task (docs/lifetimes.md, rule 11), a sibling worker by being
     * joined first, a ring owner waking a waiting dropper by a hold
     * (op.c, signal_waiter). */
    if (io->efd >= 0)
        close(io->efd);
    io->efd = -1;
}

/* ---- the turn ------------------------------------------------------------------ */

void weft__io_reap(struct weft__io *io)
{
    struct io_uring_cqe *cqe;
    /* __io_uring_peek_cqe, not io_uring_peek_cqe: on an empty CQ the latter
     * enters the kernel (GETEVENTS) whenever IORING_SQ_TASKRUN or
     * IORING_SQ_CQ_OVERFLOW is set, an io_uring_enter per emptying that the
     * turn does not count and that can repeat while completions keep coming.
     * What the kernel still holds is left to the next turn (kernel_pending
     * makes weft__io_has_events true). A liburing timeout CQE (kernels
     * without EXT_ARG) comes back as an error with no CQE: skip it. */
    for (;;) {
        int e = __io_uring_peek_cqe(&io->ring, &cqe, NULL);
        if (!cqe) {
            if (e)
                continue;
            break;
        }
        uint64_t ud = cqe->user_data;
        int32_t res = cqe->res;
        uint32_t flags = cqe->flags;
        /* Consumed before dispatch: a dispatch may reap again (a drop that
         * waits for its cancel), and must not see this CQE twice. */
        io_uring_cqe_seen(&io->ring, cqe);
        stat_add(&io->stats->cqes, 1);
        if (ud == IO_UD_IGNORE)
            continue;
        if (ud == IO_UD_EVENTFD) {
            io->efd_armed = false;
            continue;
        }
        struct weft__op *op = (struct weft__op *)(uintptr_t)(ud & ~IO_UD_TAGS);
        if (ud & IO_UD_CANCEL) {
            weft__op_cancel_done(io, op, res, ud & IO_UD_SEND_PART);
            continue;
        }
        if (ud & IO_UD_SEND_PART) {
            if (!io->br) { /* no buffer ring: the pair's send went alone */
                weft__bufring_sent(io, op, res);
                continue;
            }
            if (op->u.sr.send_posts) {
                /* Not the final CQE: the recv's comes after (op.c: submit). */
                weft__op_send_done(op, res);
                continue;
            }
            /* Only a failed (or cut short) send posts, and then its linked
             * recv posts nothing (the kernel skips the CQEs of a failed
             * CQE_SKIP_SUCCESS request's link): this is the final CQE. */
            weft__op_complete(io, op, res < 0 ? res : -EIO, 0);
            continue;
        }
        if (!io->br && op->kind == OP_RECV_BUF) {
            weft__bufring_peeked(io, op, res); /* no buffer ring: its peek */
            continue;
        }
        if (flags & IORING_CQE_F_BUFFER)
            io->bufs_free--;
        if (op->kind == OP_ACCEPT) {
            weft__accept_complete(io, op, res, flags);
        } else if ((op->kind == OP_RECV_BUF || op->kind == OP_SEND_RECV) && res == -ENOBUFS &&
                   atomic_load_explicit(&op->state, memory_order_relaxed) == OPS_PENDING) {
            /* The send (if any) went out, and its buffer can go back; the
             * recv is retried when a buffer comes back. */
            if (op->kind == OP_SEND_RECV)
                weft__op_drop(&op->u.sr.held);
            op->kind = OP_RECV_BUF;
            weft__bufring_wait(io, op);
        } else if ((op->kind == OP_RECV_BUF || op->kind == OP_SEND_RECV) &&
                   !(flags & IORING_CQE_F_BUFFER)) {
            /* A receive may have had a returned buffer's turn and ended
             * without using it (end of stream, an error): pass the turn on. */
            weft__op_complete(io, op, res, flags);
            weft__bufring_kick(io);
        } else
            weft__op_complete(io, op, res, flags);
    }
}

/* Completions the kernel holds back for us (DEFER_TASKRUN or COOP_TASKRUN
 * with TASKRUN_FLAG set the flag), or an overflowing CQ. */
static bool kernel_pending(struct weft__io *io)
{
    return IO_URING_READ_ONCE(*io->ring.sq.kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW);
}

static bool kernel_has_work(struct weft__io *io)
{
    return io_uring_sq_ready(&io->ring) > 0 || kernel_pending(io);
}

bool weft__io_has_events(struct weft__io *io)
{
    if (atomic_load_explicit(&io->remote, memory_order_relaxed))
        return true;
    if (io->has_ring &&
        (io_uring_cq_ready(&io->ring) || kernel_pending(io) || weft__bufring_kick_due(io)))
        return true;
    return io->nheap && io->heap[0].deadline <= weft_now_ns();
}


static void enter(struct weft__io *io, struct __kernel_timespec *ts, unsigned wait_nr)
{
    struct io_uring_cqe *cqe;
    int ret;
    do {
        weft__io_count_enter(io);
        if (wait_nr)
            ret = io_uring_submit_and_wait_timeout(&io->ring, &cqe, wait_nr, ts, NULL);
        else
            ret = io_uring_submit_and_get_events(&io->ring);
        if (ret == -EBUSY) /* CQ overflowing: make room and go again */
            weft__io_reap(io);
        /* The kernel could not keep an overflowing completion (its overflow
         * list's allocation failed) and says so at a waiting enter. Which
         * one is unknown: an operation's (its future, and a drop that waits
         * for it, wait for good; its slot stays in flight, so the shutdown
         * drain and weft_runtime_destroy never end) or the wake eventfd's
         * read (never re-armed: this worker no longer hears unparks, and
         * the runtime's wakeups may stall). Nothing to recover; say so once
         * per worker rather than hang in silence. The SQEs went in. */
        if (ret == -EBADR && !io->dropped_reported) {
            io->dropped_reported = true;
            fprintf(stderr, "weft: worker %u: the kernel dropped io_uring completions "
                    "(-EBADR: out of memory); an operation or this worker's wake-up is "
                    "lost: tasks may hang, and weft_runtime_destroy may not return\n",
                    io->index);
        }
    } while (ret == -EBUSY);
}

uint32_t weft__io_ring_flags(const struct weft__io *io)
{
    return atomic_load_explicit(&io->ring_flags, memory_order_relaxed);
}

uint32_t weft__io_ring_buffers(const struct weft__io *io)
{
    return atomic_load_explicit(&io->ring_bufs, memory_order_relaxed);
}

void weft__io_flush(struct weft__io *io)
{
    if (io->has_ring && io_uring_sq_ready(&io->ring))
        enter(io, NULL, 0);
}

void weft__io_tick(struct weft__io *io)
{
    if (atomic_load_explicit(&io->remote, memory_order_relaxed))
        weft__io_run_remote(io);
    if (io->has_ring) {
        if (kernel_has_work(io))
            enter(io, NULL, 0);
        if (io_uring_cq_ready(&io->ring))
            weft__io_reap(io);
        if (weft__bufring_kick_due(io)) /* the last kick's were on idle sockets */
            weft__bufring_kick(io);
    }
    if (io->nheap)
        weft__timers_run(io);
}

/* ---- parking -------------------------------------------------------------------- */

static void arm_eventfd(struct weft__io *io)
{
    if (io->efd_armed)
        return;
    struct io_uring_sqe *sqe = weft__io_sqe(io);
    io_uring_prep_read(sqe, io->efd, &io->efd_val, sizeof(io->efd_val), 0);
    io_uring_sqe_set_data64(sqe, IO_UD_EVENTFD);
    io->efd_armed = true;
}

/* How long a park may sleep before `deadline`: at most a day, so that a
 * timer set centuries ahead (a deadline near 2^63 ns, not UINT64_MAX) never
 * becomes a relative timeout near the kernel's limits (a kernel that adds it
 * to the current time without saturating would return at once, and the
 * worker would spin; this one does not). The park after a day looks again. */
static uint64_t park_ns(uint64_t deadline)
{
    uint64_t now = weft_now_ns(), d = deadline > now ? deadline - now : 0;
    return d < 86400 * WEFT_NS_PER_SEC ? d : 86400 * WEFT_NS_PER_SEC;
}

static void futex_wait_until(struct park *p, uint64_t deadline, uint32_t parked)
{
    struct timespec ts, *tsp = NULL;
    if (deadline != UINT64_MAX) {
        uint64_t d = park_ns(deadline);
        ts.tv_sec = (time_t)(d / WEFT_NS_PER_SEC);
        ts.tv_nsec = (long)(d % WEFT_NS_PER_SEC);
        tsp = &ts;
    }
    syscall(SYS_futex, &p->state, FUTEX_WAIT_PRIVATE, parked, tsp, NULL, 0);
}

/* weft__io_park, announcing itself as `parked`: PARK_PARKED in the worker's
 * loop, PARK_NESTED inside a poll (weft__io_park_nested). */
static bool park_as(struct weft__io *io, uint32_t parked)
{
    uint64_t next = UINT64_MAX, wakes = io->wakes;
    if (io->nheap)
        next = weft__timers_run(io);
    uint32_t expect = PARK_EMPTY;
    /* A timer that just fired woke a task: run it rather than sleep; nor
     * sleep while receives wait for a buffer the ring has (bufring.c: kick),
     * nor with slots on the remote list: their pusher's unpark may be the one
     * the worker's loop just took (weft__io_take_unpark) and dropped as
     * bringing no task, and a dropping thread waits for this list's pass (a
     * helper's review: a drop off the owner hung for good). The relaxed load
     * sees such a push: that take's acquire exchange pairs with the
     * unparker's release, which follows the push; a push after this load
     * unparks after it too, and finds EMPTY or PARKED, never lost.
     * Release CAS: an unparker that sees PARKED (acquire) also sees `efd` as
     * this thread left it (a failed weft__io_start closes it and sets -1, and
     * the unparker then takes the futex). On failure
     * (NOTIFIED) the unpark came first: consume it below without sleeping. */
    if (io->wakes == wakes && !weft__bufring_kick_due(io) &&
        !atomic_load_explicit(&io->remote, memory_order_relaxed) &&
        atomic_compare_exchange_strong_explicit(&io->park.state, &expect, parked,
                                                memory_order_release, memory_order_relaxed)) {
        if (io->has_ring) {
            arm_eventfd(io);
            struct __kernel_timespec ts, *tsp = NULL;
            if (next != UINT64_MAX) {
                uint64_t d = park_ns(next);
                ts.tv_sec = (int64_t)(d / WEFT_NS_PER_SEC);
                ts.tv_nsec = (long long)(d % WEFT_NS_PER_SEC);
                tsp = &ts;
            }
            /* Arming may have had to make room in a full SQ, and so reaped
             * (a ring review): if that woke a task, run it rather than sleep
             * (the read stays armed for the next park). */
            enter(io, io->wakes == wakes ? tsp : NULL, io->wakes == wakes);
        } else {
            futex_wait_until(&io->park, next, parked);
        }
    }
    /* Acquire pairs with the unparker's release: what it wrote before
     * unparking is visible from here on. */
    uint32_t was = atomic_exchange_explicit(&io->park.state, PARK_EMPTY, memory_order_acquire);
    weft__io_tick(io);
    return was == PARK_NOTIFIED;
}

bool weft__io_park(struct weft__io *io)
{
    return park_as(io, PARK_PARKED);
}

bool weft__io_park_nested(struct weft__io *io)
{
    return park_as(io, PARK_NESTED);
}

bool weft__io_take_unpark(struct weft__io *io)
{
    /* Relaxed peek first (the common answer is no); the exchange's acquire
     * pairs with the unparker's release, as at the end of weft__io_park. */
    return atomic_load_explicit(&io->park.state, memory_order_relaxed) == PARK_NOTIFIED &&
           atomic_exchange_explicit(&io->park.state, PARK_EMPTY, memory_order_acquire) ==
               PARK_NOTIFIED;
}

bool weft__io_unpark(struct weft__io *io)
{
    /* Release pairs with the acquire exchange at the end of weft__io_park;
     * acquire with the parker's release CAS to PARKED or NESTED (efd in the
     * kick: fixed from before the first park until the runtime's memory goes). */
    uint32_t was = atomic_exchange_explicit(&io->park.state, PARK_NOTIFIED, memory_order_acq_rel);
    if (was != PARK_PARKED && was != PARK_NESTED)
        return false;
    weft__io_unpark_kick(io);
    return true;
}

bool weft__io_unpark_mark(struct weft__io *io)
{
    /* Only a worker asleep in its loop's park is marked (PARKED ->
     * NOTIFIED); any other word is left as it is, for a plain unpark. The
     * orderings as weft__io_unpark's; a failed CAS writes nothing. */
    uint32_t parked = PARK_PARKED;
    return atomic_compare_exchange_strong_explicit(&io->park.state, &parked, PARK_NOTIFIED,
                                                   memory_order_acq_rel, memory_order_relaxed);
}

void weft__io_unpark_kick(struct weft__io *io)
{
    if (io->efd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(io->efd, &one, sizeof(one));
        (void)r; /* the counter cannot near saturation (one read drains it all), where
                  * a write would block: nothing to handle */
    } else {
        syscall(SYS_futex, &io->park.state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
}

void weft__io_cancel_all(struct weft__io *io)
{
    while (io->nheap) {
        struct weft__op *op = io->heap[0].op;
        weft__timer_remove(io, op);
        weft__op_complete(io, op, -ECANCELED, 0);
    }
    while (io->bufwait_head) {
        struct weft__op *op = io->bufwait_head;
        io->bufwait_head = op->next;
        weft__op_complete(io, op, -ECANCELED, 0);
    }
    io->bufwait_tail = NULL;
    if (io->has_ring) {
        /* What is left has no future (each was dropped before, and an
         * orphan's own cancels go on until they reach it: op.c,
         * weft__op_cancel_done), such as a listener's accept never closed.
         * CANCEL_ANY came with multishot accept (5.19): on an older kernel
         * the cancel fails (-EINVAL, ignored), and what is left there is a
         * listener's single-shot accept, which tcp.c cancels by its slot.
         * The simulation of such a kernel leaves CANCEL_ANY out too, so that
         * the tests see a shutdown that depends on those cancels alone. */
        weft__accepts_cancel(io);
        if (!io->accept_refuse_sim) {
            struct io_uring_sqe *sqe = weft__io_sqe(io);
            io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
            io_uring_sqe_set_data64(sqe, IO_UD_IGNORE);
        }
    }
}
