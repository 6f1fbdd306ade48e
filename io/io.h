/* io/io.h: the reactor's internal types: a worker's ring and its operations.
 * Never installed. docs/io.md tells the same story for users.
 *
 * Each worker owns a `struct weft__io`: an io_uring created disabled by
 * weft_runtime_create and enabled by the worker itself (so SINGLE_ISSUER names
 * it), a slab of operation slots, a timer heap and a provided-buffer ring.
 * Only the owner submits SQEs, reaps CQEs, and touches the slab, the heap and
 * the buffer ring. Other threads reach the owner through one lock-free list
 * (`remote`) and its park word (park.h, with the ring's eventfd).
 *
 * An operation slot (`struct weft__op`) is the memory the kernel may use: its
 * address is the SQE's user_data, and addresses, timespecs and iovecs the
 * kernel reads live in it. The future points at its slot. The slot's `state`
 * says who owns it:
 *
 *   PENDING  in flight (or a timer in the heap, or a receive waiting for a
 *            buffer); the owner publishes the result with PENDING -> DONE
 *            and wakes the future's task.
 *   DONE     the result is published; the future reads it and then frees the
 *            slot (directly on the owner, else by pushing it, DONE|QUEUED, on
 *            the owner's remote list).
 *   ORPHAN   the future was dropped in flight: the owner cancels the operation
 *            and frees the slot at the final completion, closing a descriptor
 *            or returning a buffer the operation produced anyway.
 *   QUEUED   (flag) the slot is on the owner's remote list, which must see it
 *            before the slot is freed; FINAL (flag) marks a final completion
 *            that arrived meanwhile (or before the orphan's cancels came
 *            back), so the list's pass (or the last cancel's CQE) frees it.
 *   WAITER   (flag) the dropper waits until the kernel let go of memory the
 *            caller owns (a buffer, an iovec array, a path), or for a
 *            receive to stop taking bytes: the owner signals
 *            `waiter` after the final completion.
 *
 * The future's thread drives PENDING -> ORPHAN/DONE|QUEUED with a CAS; the
 * owner drives PENDING -> DONE with a CAS; after an ORPHAN only the owner
 * writes the state. The orderings are stated at the top of op.c. */
#ifndef WEFT_IO_INTERNAL_H
#define WEFT_IO_INTERNAL_H

#include <liburing.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "weft.h"
#include "../runtime/atomic_waker.h"
#include "../runtime/park.h"

enum op_kind {
    OP_TIMER,
    OP_RECV_BUF,     /* recv from the provided-buffer ring */
    OP_RECV,
    OP_SEND,
    OP_WRITEV,
    OP_SHUTDOWN,
    OP_CLOSE,
    OP_CONNECT,
    OP_OPEN,
    OP_READ,
    OP_WRITE,
    OP_FSYNC,
    OP_ACCEPT,       /* the listener's accept: multishot, or single-shot re-armed (tcp.c) */
    OP_SEND_RECV,    /* a send linked to a recv from the buffer ring */
    OP_NKINDS,
};

/* op->off of a receive from the buffer ring (OP_RECV_BUF, OP_SEND_RECV). */
enum {
    RB_POLL_FIRST = 1, /* wait for data before taking a buffer (bufring.c: fallback) */
    RB_HEAP = 2,       /* received into a heap buffer at op->addr, not the ring */
};

/* op->off of an OP_ACCEPT (tcp.c: the single-shot fallback). */
enum {
    ACC_SINGLE = 1,    /* a single-shot accept, resubmitted by each completion */
    ACC_PROBE = 2,     /* single-shot after the multishot's -EINVAL: not yet known
                        * to be the kernel's refusal of the multishot flag */
};

/* The kinds the blocking pool does instead when the ring cannot (stream.c). */
static inline bool weft__op_has_fallback(enum op_kind k)
{
    return k == OP_OPEN || k == OP_READ || k == OP_WRITE || k == OP_FSYNC || k == OP_CLOSE;
}

enum {
    OPS_PENDING = 0,
    OPS_DONE = 1,
    OPS_ORPHAN = 2,
    OPS_QUEUED = 4,
    OPS_FINAL = 8,
    OPS_WAITER = 16,
};

/* A dropper waiting for the kernel to let go of its memory. */
struct op_waiter {
    _Atomic uint32_t done;
    struct weft__io *io;       /* the waiter's own ring (woken through it), or NULL: futex */
};

/* A timer (OP_TIMER) uses only the slot's head, up to `off`, and takes a
 * short slot of that size from a slab of its own (op.c), with its deadline
 * and heap index in the places of `addr` and `len`: a million sleeping tasks
 * hold 88 bytes of slot each rather than 152. Code that may see a timer
 * touches nothing past the head (op.c: release_products tests the kind first). */
struct weft__op {
    _Atomic uint32_t state;
    uint8_t kind;
    uint8_t borrowed;          /* uses the caller's memory: a drop waits (WAITER) */
    uint8_t linked;            /* followed by a LINK_TIMEOUT SQE (connect) */
    uint8_t cancels;           /* an orphan's cancels in flight: it is freed after their CQEs */
    int32_t res;
    uint32_t cqe_flags;
    int32_t fd;
    union {
        uint32_t len;
        uint32_t heap_idx;     /* OP_TIMER: its index in the heap */
    };
    union {
        uint64_t addr;         /* buffer, iovec array or path; OP_RECV_BUF with
                                * RB_HEAP: the heap buffer it received into */
        uint64_t deadline;     /* OP_TIMER: on the weft_now_ns clock */
    };
    struct weft__io *io;       /* the owner */
    struct weft__op *next;     /* free list, buffer-wait list */
    struct weft__op *rnext;    /* remote list */
    struct op_waiter *waiter;  /* with OPS_WAITER */
    struct awaker waker;
    /* ---- the end of a timer's short slot (TIMER_SLOT) ---- */
    uint64_t off;              /* offset, mode, how; OP_RECV_BUF and
                                * OP_SEND_RECV: RB_* flags */
    union {
        struct { struct sockaddr_in6 sa; uint32_t salen; struct __kernel_timespec ts; } conn;
        struct msghdr msg;
        /* OP_ACCEPT: its listener's queue; while single-shot, the links
         * of the ring's list of them (`accepts`, tcp.c). */
        struct { struct weft__acceptq *q; struct weft__op *next, **pprev; } acc;
        /* OP_SEND_RECV of a buffer moved from a receive: that receive's
         * slot, given up once the send is known done (op.c: submit), and
         * whether the send posts on success; the send's error then. */
        struct { struct weft__op *held; bool send_posts; int32_t send_err; } sr;
    } u;
};

/* The bytes of a timer's short slot. */
#define TIMER_SLOT offsetof(struct weft__op, off)

/* A timer heap entry: the deadline kept beside the slot so that sifting never
 * touches the slots. */
struct timer_ent {
    uint64_t deadline;
    struct weft__op *op;
};

struct weft__io {
    struct io_uring ring;
    struct park park;                  /* unparkers write `efd` when the owner sleeps */
    char pad[64];
    _Atomic(struct weft__op *) remote; /* pushed by any thread, taken by the owner */
    char pad2[64];
    struct weft_runtime *rt;
    uint32_t index;                    /* the worker's */
    int efd;                           /* eventfd the owner keeps a read armed on; -1: the
                                        * owner parks on the futex. Fixed from the
                                        * owner's start to weft__io_free (unparkers read it) */
    bool efd_armed;
    uint64_t efd_val;
    uint32_t features;                 /* IORING_FEAT_* */
    uint32_t supported;                /* bit per op_kind the kernel can do */
    uint32_t warned;                   /* bit per op_kind already reported missing */
    bool has_ring;                     /* false: io_uring unavailable, timers only */
    /* The metrics' copies, relaxed (values read on their own): the setup
     * flags (UINT32_MAX: no ring), the provided-buffer ring's buffers (0: none). */
    _Atomic uint32_t ring_flags, ring_bufs;
    bool fd_registered;                /* entered by its registered index (owner's) */
    bool dropped_reported;             /* -EBADR (lost completions) was reported */
    uint32_t inflight;                 /* slots owned by the kernel or the heap */
    uint64_t wakes;                    /* completions delivered to a future */
    struct wstats *stats;              /* the worker's metrics: sqes, cqes, enters */
    /* slabs: full slots, and timers' short ones (TIMER_SLOT) */
    struct weft__op *free, *tfree;
    struct slab_chunk *chunks;
    /* timers: a binary min-heap */
    struct timer_ent *heap;
    uint32_t nheap, heap_cap;
    /* provided buffers */
    struct io_uring_buf_ring *br;
    unsigned char *bufs;
    uint32_t nbufs, buf_size, br_mask;
    uint32_t bufs_free;                /* buffers in the ring, as far as we know */
    bool bufs_warm;                    /* the buffers were faulted in (first receive) */
    size_t br_bytes;
    struct weft__op *bufwait_head, *bufwait_tail; /* receives waiting for a buffer */
    unsigned char *spare;              /* a heap buffer for the fallback (bufring.c), or NULL */
    unsigned char peek_byte;           /* without `br`: where a receive's MSG_PEEK of one
                                        * byte lands (bufring.c: weft__bufring_peeked) */
    bool draining;                     /* shutdown: wakes go to the global queue */
    /* accepts (owner only; tcp.c: the single-shot fallback) */
    bool accept_single;                /* the kernel refused multishot accept: listeners
                                        * arm single-shot accepts on this ring */
    bool accept_refuse_sim;            /* WEFT_IO_NO_OPS=accept_multishot: the multishot's
                                        * SQE carries a flag the kernel refuses (EINVAL) */
    bool accepts_stopped;              /* shutdown: single-shot accepts are not resubmitted */
    struct weft__op *accepts;          /* the single-shot accepts armed on this ring */
};

/* user_data of CQEs that are not a slot's */
#define IO_UD_IGNORE  UINT64_C(0) /* a pausing accept's cancel, link timeouts, the drain's cancel */
#define IO_UD_EVENTFD UINT64_C(1) /* the unpark eventfd's read */
/* Or'ed into a slot's address (slots are 8-byte aligned, so these bits are
 * free): the send of an OP_SEND_RECV; an orphan's cancel of the slot (with
 * SEND_PART: of its send). */
#define IO_UD_SEND_PART UINT64_C(1)
#define IO_UD_CANCEL UINT64_C(2)
#define IO_UD_TAGS (IO_UD_SEND_PART | IO_UD_CANCEL)

/* ---- ring.c: setup, the reactor turn, parking ---------------------------- */
struct weft_runtime_config;
/* Creates (disabled) the ring and its state for worker `index`. 0 or -errno. */
int weft__io_init(struct weft__io *io, struct weft_runtime *rt, uint32_t index,
                  const struct weft_runtime_config *cfg);
/* On the worker thread, before it polls anything: enables the ring. */
int weft__io_start(struct weft__io *io);
/* On the worker thread, after its last io_uring_enter: undoes what start
 * registered with that thread. */
void weft__io_stop(struct weft__io *io);
/* Frees everything but the wake eventfd; the ring must have no operation in flight. */
void weft__io_fini(struct weft__io *io);
/* Closes the wake eventfd, with the runtime's memory: an unparker may still be
 * about to write it until then. io->efd must be -1 or the eventfd. */
void weft__io_free(struct weft__io *io);
/* Submits queued SQEs and reaps completions and expired timers without
 * sleeping; skips the syscall when there is nothing to submit or reap. */
void weft__io_tick(struct weft__io *io);
/* True when a turn would find something without waiting: completions ready
 * or held back by the kernel, slots pushed by other threads, a timer due. No
 * syscall. */
bool weft__io_has_events(struct weft__io *io);
/* Counts, in the worker's metrics, an io_uring_enter about to submit what
 * is queued (and whether the CQ is overflowing). Owner only. */
void weft__io_count_enter(struct weft__io *io);

/* The setup flags of the ring (metrics' ring_flags; IORING_SETUP_CQSIZE
 * alone for a plain ring), UINT32_MAX for none. Any thread. */
uint32_t weft__io_ring_flags(const struct weft__io *io);
/* The buffers of its provided-buffer ring (metrics' ring_buffers), 0 for
 * none (peek mode, bufring.c). Any thread. */
uint32_t weft__io_ring_buffers(const struct weft__io *io);
/* Submits the queued SQEs, if any (one io_uring_enter that also reaps). */
void weft__io_flush(struct weft__io *io);
/* Sleeps until an unpark, a completion or the next timer, then reaps.
 * Returns true if it consumed an unpark (one that came before the sleep
 * included), false if only completions or timers ended it. */
bool weft__io_park(struct weft__io *io);
/* Shutdown: fails the timers and waiting receives, cancels all in the kernel. */
void weft__io_cancel_all(struct weft__io *io);
/* Owner, out of its park: consumes an unpark that came since the park's
 * return (during its reaping turn); true if there was one. */
bool weft__io_take_unpark(struct weft__io *io);
/* Ends the owner's weft__io_park (or makes the next one return). Any thread.
 * True if the owner was asleep in it (and so was woken). */
bool weft__io_unpark(struct weft__io *io);
/* weft__io_unpark in two steps, for an owner asleep in its loop's park
 * only: the mark (true if it was, and is now marked: it must then be kicked
 * awake; false: nothing written), and the kick, which may come later,
 * outside a lock (runtime/idle.c decides under its lock from the mark). */
bool weft__io_unpark_mark(struct weft__io *io);
void weft__io_unpark_kick(struct weft__io *io);
/* weft__io_park from inside a poll (op.c: wait_done): the park word says
 * NESTED, so a notifier does not take the worker for one asleep in its loop. */
bool weft__io_park_nested(struct weft__io *io);
/* Reaps every CQE in the ring and dispatches it (owner only). */
void weft__io_reap(struct weft__io *io);
/* Reports once per kind that the kernel lacks an operation. */
void weft__io_unsupported(struct weft__io *io, enum op_kind kind, const char *name);
/* The calling thread's ring: its worker's, or NULL. */
struct weft__io *weft__io_current(void);

/* ---- op.c: slots and their ownership ------------------------------------ */
/* A slot from `io`'s slab (owner only), PENDING with the task's waker
 * armed; NULL on ENOMEM. */
struct weft__op *weft__op_alloc(struct weft__io *io, enum op_kind kind,
                                const struct weft_waker *waker);
/* An SQE of `io` (submitting to make room when the SQ is full). */
struct io_uring_sqe *weft__io_sqe(struct weft__io *io);
/* Prepares and queues the SQE(s) of a PENDING slot (owner only). */
void weft__op_submit(struct weft__io *io, struct weft__op *op);
/* Polls a slot: true with the result in op->res once DONE; otherwise the
 * task's waker is registered and false is returned. */
bool weft__op_ready(struct weft__op *op, const struct weft_waker *waker);
/* Gives up the slot from any thread, finished or not (see the states). */
void weft__op_release(struct weft__op *op);

/* The slot holds a provided buffer the kernel picked for it, or the heap
 * buffer the ring's fallback received into (bufring.c). */
static inline bool weft__op_has_buffer(const struct weft__op *op)
{
    return (op->kind == OP_RECV_BUF || op->kind == OP_SEND_RECV) &&
           ((op->cqe_flags & IORING_CQE_F_BUFFER) || (op->off & RB_HEAP));
}

/* The bytes of a slot that has a buffer (weft__op_has_buffer). */
static inline unsigned char *weft__op_buffer(const struct weft__op *op)
{
    if (op->off & RB_HEAP)
        return (unsigned char *)(uintptr_t)op->addr;
    return op->io->bufs + (size_t)(op->cqe_flags >> IORING_CQE_BUFFER_SHIFT) * op->io->buf_size;
}

/* The future took what its operation produced (a socket, a file): the slot
 * no longer closes it when freed. */
static inline void weft__op_take(struct weft__op *op)
{
    op->fd = op->res = -1;
}

/* A future's drop: gives up its slot, if it holds one. */
static inline void weft__op_drop(struct weft__op **opp)
{
    struct weft__op *op = *opp;
    *opp = NULL; /* first: a release that submits may reap, and come back here */
    if (op)
        weft__op_release(op);
}
/* Owner: the send of an OP_SEND_RECV that holds a moved buffer finished
 * with `res` (its CQE is not the final one). */
void weft__op_send_done(struct weft__op *op, int32_t res);
/* Owner: the completion of a slot. */
void weft__op_complete(struct weft__io *io, struct weft__op *op, int32_t res, uint32_t flags);
/* Owner: submits a cancel of the slot's operation, its CQE ignored (a
 * multishot accept pausing, a single-shot one at shutdown; an orphan's
 * cancels are op.c's own). */
void weft__op_cancel(struct weft__io *io, struct weft__op *op);
/* Owner: the final completion of a slot whose future let go (state `s`). */
void weft__op_orphan_final(struct weft__io *io, struct weft__op *op, uint32_t s);
/* Owner: the CQE of an orphan's cancel (`send_part`: of its send). */
void weft__op_cancel_done(struct weft__io *io, struct weft__op *op, int32_t res, bool send_part);
/* Owner: handles the slots other threads pushed. */
void weft__io_run_remote(struct weft__io *io);
/* The io_uring opcode behind a kind (for probing), and its name. */
uint8_t weft__op_opcode(enum op_kind kind);
const char *weft__op_name(enum op_kind kind);
/* Frees every chunk of the slab (ring teardown). */
void weft__slab_fini(struct weft__io *io);
/* Owner: returns slot memory to the slab. */
void weft__op_free(struct weft__io *io, struct weft__op *op);
/* Starts an operation of `kind` on the polling worker's ring: *opp is the new
 * slot, or the result (< 0) is returned when none could start (-ENXIO off a
 * worker, -ENOMEM, -EOPNOTSUPP). 0 when submitted. */
int weft__op_start(struct weft_cx *cx, struct weft__op **opp, enum op_kind kind);

/* ---- timer.c --------------------------------------------------------------- */
void weft__timer_remove(struct weft__io *io, struct weft__op *op);
/* Fires expired timers; returns the next deadline or UINT64_MAX. */
uint64_t weft__timers_run(struct weft__io *io);

/* ---- the cooperative budget ------------------------------------------------
 * A leaf's poll: one unit of the task's budget (weft_coop_take; when it is
 * spent the task yields), given back when the leaf stays pending, as Tokio's
 * RestoreOnPending: the budget counts operations that complete, so a task
 * waiting on many futures at once (a join_all of 200 sleeps) pays nothing
 * for those still waiting. Without the give-back, the first 128 pending
 * children spent the budget at every poll and the rest were never started. */
static inline enum weft_poll weft__leaf_poll(struct weft_future *f, struct weft_cx *cx,
                                             enum weft_poll (*step)(struct weft_future *,
                                                                    struct weft_cx *))
{
    if (!weft_coop_take(cx))
        return WEFT_PENDING;
    enum weft_poll p = step(f, cx);
    if (p == WEFT_PENDING)
        cx->budget++;
    return p;
}

/* weft__leaf_poll for a leaf that, polled again once READY, stays READY with
 * its result (`resume` marks it finished): an accept or connect must not
 * take or open another socket, a read must not read again. */
static inline enum weft_poll weft__leaf_poll_once(struct weft_future *f, struct weft_cx *cx,
                                                  enum weft_poll (*step)(struct weft_future *,
                                                                         struct weft_cx *))
{
    if (f->resume)
        return WEFT_READY;
    enum weft_poll p = weft__leaf_poll(f, cx, step);
    f->resume = p == WEFT_READY;
    return p;
}

/* ---- bufring.c ----------------------------------------------------------- */
int weft__bufring_init(struct weft__io *io, uint32_t nbufs, uint32_t size);
void weft__bufring_fini(struct weft__io *io);
/* Faults the buffer area in (up to 16 MiB): before the worker's first receive into it. */
void weft__bufring_warm(struct weft__io *io);
/* Gives buffer `bid` back to the ring, resubmitting a receive waiting for one. */
void weft__bufring_put(struct weft__io *io, uint16_t bid);
/* Resubmits parked receives, as many as the ring has buffers free. */
void weft__bufring_kick(struct weft__io *io);
/* Receives wait for a buffer while the ring has one: a kick is due. */
static inline bool weft__bufring_kick_due(const struct weft__io *io)
{
    return io->bufwait_head && io->bufs_free > 0;
}
/* Without a buffer ring: a receive's peek completed (`res`: 1, 0 at the end
 * of the stream or an empty datagram, or an error); reads into a heap buffer. */
void weft__bufring_peeked(struct weft__io *io, struct weft__op *op, int32_t res);
/* Without a buffer ring: a send+recv pair's send completed (it goes alone);
 * sends the rest of a short one, then the receive as a peek. */
void weft__bufring_sent(struct weft__io *io, struct weft__op *op, int32_t res);
/* Parks a receive that found the ring empty until a buffer comes back. */
void weft__bufring_wait(struct weft__io *io, struct weft__op *op);
/* Removes a parked receive; false if it was not parked. */
bool weft__bufring_unwait(struct weft__io *io, struct weft__op *op);

/* ---- tcp.c ------------------------------------------------------------------- */
/* Owner: one CQE of a listener's accept (multishot or single-shot). */
void weft__accept_complete(struct weft__io *io, struct weft__op *op, int32_t res, uint32_t flags);
/* Owner, at shutdown: cancels the ring's single-shot accepts and stops
 * resubmitting them (a kernel without multishot accept has no CANCEL_ANY). */
void weft__accepts_cancel(struct weft__io *io);

#endif
