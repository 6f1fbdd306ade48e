/* op.c: operation slots, their SQEs, and who frees them (the states are in io.h).
 *
 * Orderings:
 * - The owner publishes a result with a seq_cst CAS PENDING -> DONE and then
 *   reads the awaker (awaker_wake's seq_cst load). The future registers its
 *   waker (a seq_cst store) and then re-reads the state (seq_cst). Dekker: either
 *   the future sees DONE, or the owner sees the armed waker and wakes it. The
 *   CAS's release half publishes `res` and `cqe_flags` to the future's load.
 * - A dropper on another thread CASes PENDING -> ORPHAN|QUEUED (acq_rel: its
 *   release publishes `waiter`; on failure, its acquire sees the owner's DONE)
 *   and pushes the slot with a release CAS on the remote list, which the
 *   owner's acquire exchange pairs with. From then on only the owner writes
 *   the state.
 * - A waiter's `done` is stored with release after the owner's last use of the
 *   slot and the caller's memory; the waiter reads it with acquire. */
#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "io.h"
#include "../runtime/internal.h"

#define SLAB_CHUNK 256

/* SLAB_CHUNK slots of one size: full ones, or timers' short ones. */
struct slab_chunk {
    struct slab_chunk *next;
    size_t bytes;
    _Alignas(struct weft__op) unsigned char mem[];
};

_Static_assert(TIMER_SLOT % _Alignof(struct weft__op) == 0, "short slots stay aligned");
_Static_assert(TIMER_SLOT == 88, "a timer's slot (io.h): update the comment there");

static const struct { uint8_t opcode; const char *name; } kind_info[OP_NKINDS] = {
    [OP_TIMER] = { IORING_OP_NOP, "timer" },
    [OP_RECV_BUF] = { IORING_OP_RECV, "recv" },
    [OP_RECV] = { IORING_OP_RECV, "recv" },
    [OP_SEND] = { IORING_OP_SEND, "send" },
    [OP_WRITEV] = { IORING_OP_SENDMSG, "sendmsg" },
    [OP_SHUTDOWN] = { IORING_OP_SHUTDOWN, "shutdown" },
    [OP_CLOSE] = { IORING_OP_CLOSE, "close" },
    [OP_CONNECT] = { IORING_OP_CONNECT, "connect" },
    [OP_OPEN] = { IORING_OP_OPENAT, "openat" },
    [OP_READ] = { IORING_OP_READ, "read" },
    [OP_WRITE] = { IORING_OP_WRITE, "write" },
    [OP_FSYNC] = { IORING_OP_FSYNC, "fsync" },
    [OP_ACCEPT] = { IORING_OP_ACCEPT, "accept" },
    [OP_SEND_RECV] = { IORING_OP_SEND, "send" },
};

uint8_t weft__op_opcode(enum op_kind kind)
{
    return kind_info[kind].opcode;
}

const char *weft__op_name(enum op_kind kind)
{
    return kind_info[kind].name;
}

/* ---- the slab --------------------------------------------------------------- */

/* Slots of `stride` bytes onto the free list *list. */
static bool slab_grow(struct weft__io *io, struct weft__op **list, size_t stride)
{
    size_t bytes = sizeof(struct slab_chunk) + SLAB_CHUNK * stride;
    struct slab_chunk *c = rt_alloc(io->rt, bytes);
    if (!c)
        return false;
    c->next = io->chunks;
    c->bytes = bytes;
    io->chunks = c;
    for (uint32_t i = SLAB_CHUNK; i-- > 0;) {
        struct weft__op *op = (struct weft__op *)(void *)(c->mem + i * stride);
        op->next = *list;
        *list = op;
    }
    return true;
}

void weft__slab_fini(struct weft__io *io)
{
    for (struct slab_chunk *c = io->chunks, *next; c; c = next) {
        next = c->next;
        rt_free(io->rt, c, c->bytes);
    }
    io->chunks = NULL;
    io->free = io->tfree = NULL;
}

/* The free list of a kind's slots. */
static struct weft__op **free_list(struct weft__io *io, uint8_t kind)
{
    return kind == OP_TIMER ? &io->tfree : &io->free;
}

struct weft__op *weft__op_alloc(struct weft__io *io, enum op_kind kind,
                                const struct weft_waker *waker)
{
    struct weft__op **list = free_list(io, (uint8_t)kind);
    if (!*list && !slab_grow(io, list, kind == OP_TIMER ? TIMER_SLOT : sizeof(struct weft__op)))
        return NULL;
    struct weft__op *op = *list;
    *list = op->next;
    atomic_init(&op->state, OPS_PENDING);
    op->kind = (uint8_t)kind;
    op->borrowed = 0;
    op->linked = 0;
    op->cancels = 0;
    op->res = 0;
    op->cqe_flags = 0;
    op->io = io;
    op->next = op->rnext = NULL;
    op->waiter = NULL;
    /* Armed before the slot is visible to anyone: the SQE goes to the kernel
     * from this thread later, so the owner's completion happens after. */
    op->waker.waker = weft_waker_clone(waker);
    atomic_init(&op->waker.state, AWAKER_ARMED);
    return op;
}

void weft__op_free(struct weft__io *io, struct weft__op *op)
{
    struct weft__op **list = free_list(io, op->kind);
    op->next = *list;
    *list = op;
}

/* ---- SQEs ------------------------------------------------------------------- */

void weft__io_count_enter(struct weft__io *io)
{
    stat_add(&io->stats->sqes, io_uring_sq_ready(&io->ring));
    stat_add(&io->stats->enters, 1);
    if (IO_URING_READ_ONCE(*io->ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW)
        stat_add(&io->stats->cq_overflows, 1);
}

/* The SQ is full: submit what is queued to make room. -EBUSY means the CQ
 * is overflowing: reaping makes room there first. */
static void make_room(struct weft__io *io)
{
    weft__io_count_enter(io);
    if (io_uring_submit(&io->ring) == -EBUSY)
        weft__io_reap(io);
}

struct io_uring_sqe *weft__io_sqe(struct weft__io *io)
{
    for (;;) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
        if (sqe)
            return sqe;
        make_room(io);
    }
}

/* Without a buffer ring: wait for data (or the end of the stream, or an
 * error) by peeking at one byte, into a scratch byte nobody reads
 * (bufring.c: weft__bufring_peeked reads the data itself). */
static void prep_peek(struct weft__io *io, struct io_uring_sqe *sqe, int fd)
{
    io_uring_prep_recv(sqe, fd, &io->peek_byte, 1, MSG_PEEK);
}

/* A receive into a buffer the kernel picks from the worker's ring. */
static void prep_buffer_recv(struct weft__io *io, struct io_uring_sqe *sqe, int fd)
{
    if (!io->bufs_warm)
        weft__bufring_warm(io);
    io_uring_prep_recv(sqe, fd, NULL, io->buf_size, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
}

/* A socket whose last close waits for its unsent data (SO_LINGER with a
 * timeout): run inline, that close would wait inside this worker's
 * io_uring_enter, for up to the timeout. It goes to the kernel's own async
 * workers instead (IOSQE_ASYNC); one getsockopt per close decides. */
static bool lingers(int fd)
{
    struct linger l;
    socklen_t n = sizeof l;
    /* Not > 0: a linger of -1 set with setsockopt means for good, and reads
     * back as any nonzero value. */
    return getsockopt(fd, SOL_SOCKET, SO_LINGER, &l, &n) == 0 && l.l_onoff && l.l_linger != 0;
}

void weft__op_submit(struct weft__io *io, struct weft__op *op)
{
    /* A linked pair must go to the kernel in one submission: make room for
     * both first (a split pair would run unlinked, and the second's CQE
     * could land on a slot already freed). */
    while ((op->linked || op->kind == OP_SEND_RECV) && io_uring_sq_space_left(&io->ring) < 2)
        make_room(io);
    struct io_uring_sqe *sqe = weft__io_sqe(io);
    int fd = op->fd;
    void *addr = (void *)(uintptr_t)op->addr;
    switch ((enum op_kind)op->kind) {
    case OP_SEND_RECV:
        if (!io->br) {
            /* No buffer ring (bufring.c: peek mode): the send goes alone,
             * without MSG_WAITALL (before 5.19 the kernel may not finish a
             * short one); weft__bufring_sent sends the rest, then peeks. */
            op->u.sr.send_posts = true;
            io_uring_prep_send(sqe, fd, addr, op->len, MSG_NOSIGNAL);
            io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op | IO_UD_SEND_PART);
            io->inflight++;
            return;
        }
        /* The send posts a CQE only if it fails, and then the recv none.
         * A buffer moved from a receive goes back to the ring at the final
         * CQE, or at the recv's -ENOBUFS (the send is done by then); when
         * the buffer's ring runs low (or is another worker's),
         * the send posts on success too, and the buffer goes back at once:
         * buffers held by connections that went quiet after an echo cannot
         * starve the rest, yet the common round costs one CQE. */
        struct weft__op *h = op->u.sr.held;
        op->u.sr.send_posts = !(io->features & IORING_FEAT_CQE_SKIP) ||
                              (h && (h->io != io || (h->off & RB_HEAP) ||
                                     2 * h->io->bufs_free <= h->io->nbufs));
        io_uring_prep_send(sqe, fd, addr, op->len, MSG_NOSIGNAL | MSG_WAITALL);
        sqe->flags |= IOSQE_IO_LINK | (op->u.sr.send_posts ? 0 : IOSQE_CQE_SKIP_SUCCESS);
        io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op | IO_UD_SEND_PART);
        sqe = weft__io_sqe(io);
        prep_buffer_recv(io, sqe, fd);
        /* The peer answers what we just sent: nothing to read yet, so wait
         * for data rather than try (and fail) first. */
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
        break;
    case OP_RECV_BUF:
        if (!io->br) {
            prep_peek(io, sqe, fd);
            break;
        }
        prep_buffer_recv(io, sqe, fd);
        if (op->off & RB_POLL_FIRST)
            sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
        break;
    case OP_RECV:
        io_uring_prep_recv(sqe, fd, addr, op->len, 0);
        break;
    case OP_SEND:
        io_uring_prep_send(sqe, fd, addr, op->len, MSG_NOSIGNAL);
        break;
    case OP_WRITEV:
        op->u.msg = (struct msghdr){ .msg_iov = addr, .msg_iovlen = op->len };
        io_uring_prep_sendmsg(sqe, fd, &op->u.msg, MSG_NOSIGNAL);
        break;
    case OP_SHUTDOWN:
        io_uring_prep_shutdown(sqe, fd, (int)op->off);
        break;
    case OP_CLOSE:
        io_uring_prep_close(sqe, fd);
        if (lingers(fd))
            sqe->flags |= IOSQE_ASYNC;
        break;
    case OP_CONNECT:
        io_uring_prep_connect(sqe, fd, (struct sockaddr *)&op->u.conn.sa, op->u.conn.salen);
        if (op->linked) {
            sqe->flags |= IOSQE_IO_LINK;
            io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op);
            sqe = weft__io_sqe(io);
            io_uring_prep_link_timeout(sqe, &op->u.conn.ts, 0);
            io_uring_sqe_set_data64(sqe, IO_UD_IGNORE);
            io->inflight++;
            return;
        }
        break;
    case OP_OPEN:
        io_uring_prep_openat(sqe, AT_FDCWD, addr, (int)op->len | O_CLOEXEC, (mode_t)op->off);
        break;
    case OP_READ:
        io_uring_prep_read(sqe, fd, addr, op->len, op->off);
        break;
    case OP_WRITE:
        io_uring_prep_write(sqe, fd, addr, op->len, op->off);
        break;
    case OP_FSYNC:
        io_uring_prep_fsync(sqe, fd, op->off ? IORING_FSYNC_DATASYNC : 0);
        break;
    case OP_ACCEPT:
        if (op->off & ACC_SINGLE) { /* the kernel refused the multishot (tcp.c) */
            io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
            break;
        }
        io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
        /* The simulation of a kernel before 5.19 (WEFT_IO_NO_OPS): there, any
         * accept flag in ioprio, IORING_ACCEPT_MULTISHOT included, is -EINVAL;
         * this kernel says the same for a bit it does not know either. */
        if (io->accept_refuse_sim)
            sqe->ioprio |= 1u << 15;
        break;
    case OP_TIMER:
    case OP_NKINDS:
        abort();
    }
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op);
    io->inflight++;
}

void weft__op_cancel(struct weft__io *io, struct weft__op *op)
{
    struct io_uring_sqe *sqe = weft__io_sqe(io);
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
    io_uring_sqe_set_data64(sqe, IO_UD_IGNORE);
}

int weft__op_start(struct weft_cx *cx, struct weft__op **opp, enum op_kind kind)
{
    struct weft__io *io = cx->worker ? cx->worker->io : NULL;
    if (!io)
        return -ENXIO;
    if (!(io->supported & (UINT32_C(1) << kind))) {
        weft__io_unsupported(io, kind, kind_info[kind].name);
        return -EOPNOTSUPP;
    }
    struct weft__op *op = weft__op_alloc(io, kind, cx->waker);
    if (!op)
        return -ENOMEM;
    *opp = op;
    return 0;
}

/* ---- completion and release -------------------------------------------------- */

static void signal_waiter(struct op_waiter *w)
{
    struct weft__io *wio = w->io;
    if (!wio) {
        /* Release: the kernel and the owner are done with the caller's memory. */
        atomic_store_explicit(&w->done, 1, memory_order_release);
        /* w may be gone by now; a stray wake of its address is harmless. */
        syscall(SYS_futex, &w->done, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        return;
    }
    /* The waiter is a worker, maybe of another runtime (a future moved
     * between runtimes), which may be destroyed and freed as soon as it sees
     * `done`: hold its memory across the unpark. The hold is taken while the
     * waiter still waits, so that runtime's destroy has not dropped its own
     * count yet (it joins the waiter first). */
    struct weft_runtime *wrt = wio->rt;
    weft__runtime_hold(wrt);
    atomic_store_explicit(&w->done, 1, memory_order_release); /* as above */
    weft__io_unpark(wio);
    weft__runtime_release(wrt); /* may free it: nothing after this */
}

/* Releases what a finished operation produced and its future did not take
 * (weft__op_take): a connect's socket, an opened file, a provided buffer. */
static void release_products(struct weft__io *io, struct weft__op *op)
{
    if (op->kind == OP_CONNECT && op->fd >= 0)
        close(op->fd);
    else if (op->kind == OP_OPEN && op->res >= 0)
        close(op->res);
    op->fd = op->res = -1;
    if (!weft__op_has_buffer(op))
        return;
    if (op->off & RB_HEAP) { /* the fallback's (bufring.c) */
        op->off = 0;
        rt_free(io->rt, (void *)(uintptr_t)op->addr, io->buf_size);
        return;
    }
    uint16_t bid = (uint16_t)(op->cqe_flags >> IORING_CQE_BUFFER_SHIFT);
    op->cqe_flags = 0; /* before the put, which may submit (and so reap) */
    weft__bufring_put(io, bid);
}

/* Frees a slot whose result the future consumed (or will never read). */
static void free_done(struct weft__io *io, struct weft__op *op)
{
    if (op->kind == OP_ACCEPT) /* a claimed multishot, kept counted (tcp.c: accept_final) */
        io->inflight--;
    release_products(io, op);
    weft__op_free(io, op);
}

/* Frees an orphan whose final completion and cancels all came back. */
static void orphan_free(struct weft__io *io, struct weft__op *op, uint32_t s)
{
    if (s & OPS_WAITER)
        signal_waiter(op->waiter);
    weft__op_free(io, op);
}

/* The final completion of an orphan: release what the operation produced. */
void weft__op_orphan_final(struct weft__io *io, struct weft__op *op, uint32_t s)
{
    release_products(io, op);
    if ((s & OPS_QUEUED) || op->cancels) {
        /* The remote list still holds it (its pass frees it), or a cancel's
         * CQE is still to come and names it (the last one frees it). */
        atomic_store_explicit(&op->state, s | OPS_FINAL, memory_order_relaxed);
        return;
    }
    orphan_free(io, op, s);
}

void weft__op_send_done(struct weft__op *op, int32_t res)
{
    if (res < (int32_t)op->len) /* the receive is cancelled: report this */
        op->u.sr.send_err = res < 0 ? res : -EIO;
    weft__op_drop(&op->u.sr.held); /* from any ring: op_release routes it */
}

void weft__op_complete(struct weft__io *io, struct weft__op *op, int32_t res, uint32_t flags)
{
    io->inflight--;
    if (op->kind == OP_SEND_RECV) {
        /* The final CQE: the send is over, its buffer goes back now (not
         * when this slot is freed: a slot moved into the next pair would
         * hold its own moved buffer until then, and so on down a chain). */
        weft__op_drop(&op->u.sr.held);
        if (op->u.sr.send_err)
            res = op->u.sr.send_err;
    }
    op->res = res;
    op->cqe_flags = flags;
    uint32_t s = OPS_PENDING;
    /* Seq_cst: the owner's half of the Dekker pair (top of file). */
    if (atomic_compare_exchange_strong(&op->state, &s, OPS_DONE)) {
        io->wakes++;
        awaker_wake(&op->waker);
        return;
    }
    weft__op_orphan_final(io, op, s);
}

/* Queues a cancel of an orphan's operation (`part`: IO_UD_SEND_PART for a
 * pair's send) whose CQE comes back to the slot. Counted first: getting the
 * SQE may submit and reap, and the final completion reaped then must not
 * free the slot this cancel names. */
static void cancel_tagged(struct weft__io *io, struct weft__op *op, uint64_t part)
{
    op->cancels++;
    io->inflight++; /* the shutdown drain waits for the cancel too */
    struct io_uring_sqe *sqe = weft__io_sqe(io);
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op | part, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op | part | IO_UD_CANCEL);
}

void weft__op_cancel_done(struct weft__io *io, struct weft__op *op, int32_t res, bool send_part)
{
    io->inflight--;
    op->cancels--;
    uint32_t s = atomic_load_explicit(&op->state, memory_order_relaxed);
    if (s & OPS_FINAL) {
        if (!op->cancels)
            orphan_free(io, op, s);
    } else if (res == -ENOENT && !send_part && op->kind == OP_SEND_RECV) {
        /* Nothing found, and not over: a pair's receive sits in the
         * kernel's task work between its send's completion and its own
         * issue, out of a cancel's reach, and would then wait for the
         * peer's next bytes (and eat them). Each enter runs task work, so
         * a cancel sent again finds it issued (armed as a poll first), or
         * finds it over. Only this kind: any other was issued when its
         * SQE went in, before this cancel, and one the kernel cannot
         * cancel (a read waiting on the disk also says -ENOENT) ends by
         * itself; cancels sent after it would only spin until then. */
        cancel_tagged(io, op, 0);
    }
}

/* Stops an orphan's operation (owner). Returns true if the slot is gone. */
static bool cancel_orphan(struct weft__io *io, struct weft__op *op)
{
    if (op->kind == OP_TIMER) {
        weft__timer_remove(io, op);
    } else if (op->kind == OP_RECV_BUF && weft__bufring_unwait(io, op)) {
        /* it was waiting for a buffer, never in the kernel */
    } else {
        if (op->kind == OP_SEND_RECV) /* the send may still be running */
            cancel_tagged(io, op, IO_UD_SEND_PART);
        cancel_tagged(io, op, 0);
        return false;
    }
    io->inflight--;
    if (atomic_load_explicit(&op->state, memory_order_relaxed) & OPS_WAITER)
        signal_waiter(op->waiter); /* a receive parked for a buffer, dropped elsewhere */
    weft__op_free(io, op);
    return true;
}

void weft__io_run_remote(struct weft__io *io)
{
    /* Acquire pairs with the release of every push. */
    struct weft__op *op = atomic_exchange_explicit(&io->remote, NULL, memory_order_acquire);
    while (op) {
        struct weft__op *next = op->rnext;
        uint32_t s = atomic_load_explicit(&op->state, memory_order_relaxed);
        if (s & OPS_DONE) {
            free_done(io, op);
        } else if (s & OPS_FINAL) {
            orphan_free(io, op, s); /* queued before its cancel: none in flight */
        } else {
            atomic_store_explicit(&op->state, s & ~(uint32_t)OPS_QUEUED, memory_order_relaxed);
            cancel_orphan(io, op);
        }
        op = next;
    }
}

static void push_remote(struct weft__io *io, struct weft__op *op)
{
    struct weft__op *head = atomic_load_explicit(&io->remote, memory_order_relaxed);
    do
        op->rnext = head;
    /* Release: the slot's state and waiter are visible to the owner's pass. */
    while (!atomic_compare_exchange_weak_explicit(&io->remote, &head, op, memory_order_release,
                                                  memory_order_relaxed));
    /* One unpark per batch: a list that was not empty has a pusher that
     * unparks (or did), and the owner takes the whole list at once. */
    if (!head)
        weft__io_unpark(io);
}

static void wait_done(struct op_waiter *w)
{
    bool unparked = false;
    /* Acquire pairs with signal_waiter's release. */
    while (!atomic_load_explicit(&w->done, memory_order_acquire)) {
        if (w->io)
            unparked |= weft__io_park_nested(w->io); /* keeps our own ring going meanwhile */
        else
            syscall(SYS_futex, &w->done, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    }
    /* An unpark this nested park consumed was meant for the worker's loop
     * (a notifier may have picked it to steal work): hand it back. */
    if (unparked)
        weft__io_unpark(w->io);
}

bool weft__op_ready(struct weft__op *op, const struct weft_waker *waker)
{
    /* Acquire pairs with the owner's CAS: res and cqe_flags are visible. */
    if (atomic_load_explicit(&op->state, memory_order_acquire) == OPS_DONE)
        return true;
    awaker_register(&op->waker, waker);
    /* Seq_cst: the future's half of the Dekker pair. */
    return atomic_load(&op->state) == OPS_DONE;
}

void weft__op_release(struct weft__op *op)
{
    struct weft__io *io = op->io, *me = weft__io_current();
    bool borrowed = op->borrowed; /* the slot may be gone once pushed */
    awaker_unregister(&op->waker);
    struct op_waiter w = { 0, me };
    if (me == io) {
        if (atomic_load_explicit(&op->state, memory_order_relaxed) == OPS_DONE) {
            free_done(io, op);
            return;
        }
        /* Only this thread completes the slot: no race with the owner. */
        uint32_t s = OPS_ORPHAN;
        if (borrowed) {
            op->waiter = &w;
            s |= OPS_WAITER;
        }
        atomic_store_explicit(&op->state, s, memory_order_relaxed);
        if (!cancel_orphan(io, op) && borrowed)
            wait_done(&w);
        return;
    }
    uint32_t s = OPS_PENDING, orphan = OPS_ORPHAN | OPS_QUEUED;
    if (borrowed) {
        op->waiter = &w;
        orphan |= OPS_WAITER;
    }
    if (atomic_compare_exchange_strong_explicit(&op->state, &s, orphan, memory_order_acq_rel,
                                                memory_order_acquire)) {
        push_remote(io, op);
        if (borrowed)
            wait_done(&w);
        return;
    }
    /* DONE: the owner frees it at its next pass. */
    atomic_store_explicit(&op->state, OPS_DONE | OPS_QUEUED, memory_order_relaxed);
    push_remote(io, op);
}
