/* bufring.c: the worker's provided-buffer ring (buffer group 0).
 *
 * A weft_recv asks the kernel to pick a buffer only when data arrives, so an
 * idle connection holds none. liburing 2.3 has no io_uring_setup_buf_ring:
 * the ring is mapped here and registered with io_uring_register_buf_ring.
 * Only the owner adds buffers (the ring's tail is ours); a buffer used by a
 * future on another thread comes back through the owner's remote list with
 * its slot (op.c).
 *
 * A receive that finds the ring empty (-ENOBUFS) does not wait for a buffer
 * to come back: a buffer can be held for good, by an echo's send to a peer
 * that never reads (the send waits for room in its socket, and the buffer
 * is the kernel's until it completes). 256 such peers per worker held every
 * buffer of weft-echo, and every other connection of the worker waited
 * behind them, a new one included. Instead the receive falls back to a heap
 * buffer of the ring's buffer size (weft__bufring_wait): a plain recv(2),
 * MSG_DONTWAIT, on this thread (the kernel is done with the slot: this was
 * its final completion). With no data it goes back to the kernel with
 * IORING_RECVSEND_POLL_FIRST, holding nothing: it takes a buffer only once
 * data came, and if the ring is still empty then, falls back again, now
 * with data to read. The heap buffer goes wherever a ring buffer would (a
 * send moved from it, the future's drop) and is freed at the same points
 * (op.c: release_products); its send always posts, so it is freed as soon
 * as sent. A slow peer thus holds memory of its own, as with a buffer per
 * connection, and never the worker's ring. Only when the heap buffer cannot
 * be had (-ENOMEM) does the receive wait here for a ring buffer, as before:
 * the data stays in the socket meanwhile, so none is lost. */
#include <errno.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "io.h"
#include "../runtime/internal.h"

/* The largest buffer area (per worker) faulted in at the first receive. */
#define BUFS_POPULATE_MAX ((size_t)16 << 20)

int weft__bufring_init(struct weft__io *io, uint32_t nbufs, uint32_t size)
{
    size_t bytes = nbufs * sizeof(struct io_uring_buf);
    void *ring = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED)
        return -ENOMEM;
    /* Mapped, not allocated: a runtime that never receives into them leaves
     * them untouched (weft__bufring_warm). */
    unsigned char *bufs = mmap(NULL, (size_t)nbufs * size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (bufs == MAP_FAILED) {
        munmap(ring, bytes);
        return -ENOMEM;
    }
    struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)ring,
                                    .ring_entries = nbufs, .bgid = 0 };
    int err = io_uring_register_buf_ring(&io->ring, &reg, 0);
    if (err) {
        munmap(bufs, (size_t)nbufs * size);
        munmap(ring, bytes);
        return err;
    }
    io->br = ring;
    io->bufs = bufs;
    io->nbufs = nbufs;
    io->buf_size = size;
    io->br_bytes = bytes;
    io->br_mask = (uint32_t)io_uring_buf_ring_mask(nbufs);
    io_uring_buf_ring_init(io->br);
    for (uint32_t i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(io->br, bufs + (size_t)i * size, size, (uint16_t)i, (int)io->br_mask,
                              (int)i);
    io_uring_buf_ring_advance(io->br, (int)nbufs);
    io->bufs_free = nbufs;
    return 0;
}

void weft__bufring_warm(struct weft__io *io)
{
    /* The kernel hands the buffers out in ring order, so a busy worker
     * writes into every one of them within its first nbufs receives, and a
     * page's first write is a page fault inside a receive's completion (10 us
     * each in this VM: the default 256 per worker put 5 ms of faults into the
     * first 20 ms of load and a third on the open-loop echo's p99). Faulting
     * the area in here, before the first receive goes to the kernel, takes
     * 0.7 us a page. A larger area (an unusual config) is left to fault in
     * as it is used, as is any area on kernels before 5.14 (no
     * MADV_POPULATE_WRITE: madvise fails and nothing else changes). */
    io->bufs_warm = true;
    size_t area = (size_t)io->nbufs * io->buf_size;
    if (area <= BUFS_POPULATE_MAX)
        (void)madvise(io->bufs, area, MADV_POPULATE_WRITE);
}

void weft__bufring_fini(struct weft__io *io)
{
    if (io->spare)
        rt_free(io->rt, io->spare, io->buf_size);
    io->spare = NULL;
    if (!io->br)
        return;
    io_uring_unregister_buf_ring(&io->ring, 0);
    munmap(io->bufs, (size_t)io->nbufs * io->buf_size);
    munmap(io->br, io->br_bytes);
    io->br = NULL;
}

void weft__bufring_put(struct weft__io *io, uint16_t bid)
{
    io_uring_buf_ring_add(io->br, io->bufs + (size_t)bid * io->buf_size, io->buf_size, bid,
                          (int)io->br_mask, 0);
    io_uring_buf_ring_advance(io->br, 1);
    io->bufs_free++;
    weft__bufring_kick(io);
}

void weft__bufring_kick(struct weft__io *io)
{
    /* As many as the ring has buffers. One whose socket has data takes a
     * buffer, and its CQE says so (bufs_free--); one on an idle socket takes
     * none: the kernel gives the buffer back and waits for data, with the
     * receive off this list for good. Then the buffer is still free while
     * receives wait here, so the turn kicks again (weft__io_tick) and the
     * park does not sleep on it (weft__io_park). Each kick shrinks the list
     * or ends with the ring empty: no receive waits behind an idle one. */
    for (uint32_t n = io->bufs_free; n > 0 && io->bufwait_head; n--) {
        struct weft__op *op = io->bufwait_head;
        io->bufwait_head = op->next; /* first: the submit may reap, and park another */
        if (!io->bufwait_head)
            io->bufwait_tail = NULL;
        io->inflight--; /* weft__op_submit counts it again */
        weft__op_submit(io, op);
    }
}

/* The ring is empty: receive into a heap buffer instead (top of file).
 * False if none could be had. */
static bool fallback(struct weft__io *io, struct weft__op *op)
{
    if (!io->spare)
        io->spare = rt_alloc(io->rt, io->buf_size);
    if (!io->spare)
        return false;
    ssize_t n = recv(op->fd, io->spare, io->buf_size, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        /* Nothing to read yet (the kernel picks a buffer before it looks
         * at the socket): wait for data in the kernel, holding nothing.
         * The spare stays for the next fallback. */
        op->off |= RB_POLL_FIRST;
        io->inflight--; /* weft__op_submit counts it again */
        weft__op_submit(io, op);
        return true;
    }
    if (n > 0) {
        op->addr = (uint64_t)(uintptr_t)io->spare; /* the slot's now (op.c frees it) */
        op->off |= RB_HEAP;
        io->spare = NULL;
    }
    weft__op_complete(io, op, n < 0 ? -errno : (int32_t)n, 0);
    return true;
}

/* A kernel without provided-buffer rings (before 5.19; WEFT_IO_NO_OPS=
 * buf_ring here), peek mode: a receive goes to the kernel as a recv of one
 * byte with MSG_PEEK (op.c: prep_peek), which waits for data holding no
 * buffer (its byte lands in a scratch byte of the worker's) and fails as the
 * receive would (-ENOTSOCK on a pipe, -ECONNRESET); then the data is read
 * into a heap buffer as the fallback above does (one allocation per receive
 * that brings data, which the ring saves on newer kernels; -ENOMEM when there
 * is none, the data left queued for the next receive). A pair's send goes
 * alone (op.c: submit), not linked: before 5.19 the kernel may end a send
 * short rather than finish it (MSG_WAITALL is retried from 5.19, and 5.15.90),
 * and a link broken there would lose the receive, or (5.10, 5.11) keep it
 * after a short send. So weft__bufring_sent sends the rest itself, as
 * weft_send_all does, and only then peeks. */
void weft__bufring_peeked(struct weft__io *io, struct weft__op *op, int32_t res)
{
    /* An error, or an orphan whose cancel came too late: final as it is. A
     * peek of 0 (the end of the stream, or an empty datagram, which a peek
     * leaves queued) goes to the read too, which consumes it. */
    if (res < 0 || atomic_load_explicit(&op->state, memory_order_relaxed) != OPS_PENDING) {
        weft__op_complete(io, op, res, 0);
        return;
    }
    if (!fallback(io, op))
        weft__op_complete(io, op, -ENOMEM, 0);
}

void weft__bufring_sent(struct weft__io *io, struct weft__op *op, int32_t res)
{
    bool pending = atomic_load_explicit(&op->state, memory_order_relaxed) == OPS_PENDING;
    if (pending && res > 0 && (uint32_t)res < op->len) { /* short: the rest */
        op->addr += (uint64_t)res;
        op->len -= (uint32_t)res;
        io->inflight--; /* weft__op_submit counts it again */
        weft__op_submit(io, op);
        return;
    }
    if (pending && res >= 0 && (uint32_t)res == op->len) { /* all sent: now the receive */
        weft__op_drop(&op->u.sr.held);
        op->kind = OP_RECV_BUF;
        op->off = 0;
        io->inflight--;
        weft__op_submit(io, op);
        return;
    }
    /* The send's error (0 for bytes left: -EIO), or an orphan: final. */
    weft__op_complete(io, op, res < 0 ? res : -EIO, 0);
}

void weft__bufring_wait(struct weft__io *io, struct weft__op *op)
{
    /* Buffers may have come back between the kernel's miss and this CQE:
     * then go again now, with the ring. */
    if (io->bufs_free > 0) {
        io->inflight--;
        weft__op_submit(io, op);
        return;
    }
    if (fallback(io, op))
        return;
    /* No memory for the fallback: wait for a ring buffer to come back.
     * Still counted in flight: the ring owns the slot until it completes. */
    op->next = NULL;
    if (io->bufwait_tail)
        io->bufwait_tail->next = op;
    else
        io->bufwait_head = op;
    io->bufwait_tail = op;
}

bool weft__bufring_unwait(struct weft__io *io, struct weft__op *op)
{
    struct weft__op **pp = &io->bufwait_head, *prev = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp == op) {
            *pp = op->next;
            if (io->bufwait_tail == op)
                io->bufwait_tail = prev;
            return true;
        }
    }
    return false;
}
