/* stream.c: the single-operation futures: weft_recv (provided buffers) and
 * struct weft_io (recv_into, send, send_all, writev, shutdown, close, and the
 * file operations). Each poll: take a unit of budget; at the first poll start
 * the operation on the polling worker's ring; later, wait for its slot to be
 * DONE, read the result and let the slot go. A file operation the ring
 * cannot do goes to the blocking pool instead (file_job). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "../runtime/internal.h"

/* Kinds of struct weft_io (its `kind` field). */
enum io_kind {
    IO_RECV,
    IO_SEND,
    IO_SEND_ALL,
    IO_WRITEV,
    IO_SHUTDOWN,
    IO_CLOSE,
    IO_OPEN,
    IO_READ,
    IO_WRITE,
    IO_FSYNC,
};

static const struct { uint8_t op; uint8_t borrowed; } io_kinds[] = {
    [IO_RECV] = { OP_RECV, 1 },      [IO_SEND] = { OP_SEND, 1 },
    [IO_SEND_ALL] = { OP_SEND, 1 },  [IO_WRITEV] = { OP_WRITEV, 1 },
    [IO_SHUTDOWN] = { OP_SHUTDOWN, 0 }, [IO_CLOSE] = { OP_CLOSE, 0 },
    [IO_OPEN] = { OP_OPEN, 1 },      [IO_READ] = { OP_READ, 1 },
    [IO_WRITE] = { OP_WRITE, 1 },    [IO_FSYNC] = { OP_FSYNC, 0 },
};

/* A length the kernel's 32-bit result can report. */
static uint32_t clamp_len(uint64_t len)
{
    return len > INT_MAX ? INT_MAX : (uint32_t)len;
}

/* An open the kernel always runs on its async workers (O_CREAT, O_TRUNC,
 * O_TMPFILE: io_openat_force_async) never gets the O_NONBLOCK first try its
 * inline issue gives every other open, so a FIFO with no peer held it (and
 * the task) until one came, where the pool answers at once. Such an open is
 * sent with O_NONBLOCK, cleared after unless asked for; -EAGAIN (a lease to
 * break) sends it again without (`done` set: unused by a ring open), to wait
 * on the kernel's worker, which a drop's cancel interrupts. */
static bool open_adds_nonblock(const struct weft_io *io)
{
    int flags = (int)io->len;
    return io->kind == IO_OPEN && !io->done &&
           (flags & (O_CREAT | O_TRUNC | (O_TMPFILE & ~O_DIRECTORY))) &&
           !(flags & (O_NONBLOCK | O_PATH));
}

/* Clears the O_NONBLOCK an open added (the ring's, open_adds_nonblock, or the
 * pool's, open_job); the descriptor, or -errno with it closed. */
static int clear_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

/* Starts the next operation of `io`; returns 0 or the error to finish with. */
static int io_start(struct weft_io *io, struct weft_cx *cx)
{
    if (io->kind == IO_WRITEV && io->len > IOV_MAX)
        return -EINVAL; /* a negative count included */
    int err = weft__op_start(cx, &io->op, (enum op_kind)io_kinds[io->kind].op);
    if (err)
        return err;
    struct weft__op *op = io->op;
    op->borrowed = io_kinds[io->kind].borrowed;
    op->fd = io->fd;
    op->addr = (uint64_t)(uintptr_t)io->buf;
    op->len = clamp_len(io->len);
    op->off = io->off;
    if (io->kind == IO_SEND_ALL) {
        op->addr += io->done;
        op->len = clamp_len(io->len - io->done);
    } else if (io->kind == IO_OPEN) {
        op->len = (uint32_t)io->len | (open_adds_nonblock(io) ? O_NONBLOCK : 0); /* the flags */
    }
    weft__op_submit(op->io, op);
    return 0;
}

/* ---- the blocking-pool fallback of file operations ------------------------------- */

/* A read or write on the pool waits for its descriptor in steps of
 * CANCEL_POLL_MS, so that a drop (or destroy) is never stuck behind a pipe or
 * socket that stays silent: the drop sets `done` (unused by file kinds) and
 * the job gives up at the next step. A regular file is always ready. */
#define CANCEL_POLL_MS 50

static bool wait_ready(struct weft_io *io, short events)
{
    if (io->fd < 0)
        return true; /* poll would wait on it for good: the syscall says -EBADF */
    struct pollfd p = { io->fd, events, 0 };
    /* Acquire pairs with the drop's release store (nothing else rides on it). */
    while (!__atomic_load_n(&io->done, __ATOMIC_ACQUIRE))
        if (poll(&p, 1, CANCEL_POLL_MS) != 0)
            return true; /* ready, or an error the syscall will report */
    return false;
}

/* A read or write on a pool thread, of a pipe or socket: it never blocks in
 * the syscall (RWF_NOWAIT, and wait_ready's steps while there is nothing to
 * read or no room): a blocking call would wait for the peer, and the drop
 * with it. Like the ring, it tries the call first, so a wrong-way descriptor
 * or a zero length answers at once, and a write may be short. True when it
 * produced the result (in *r, errno set when < 0); false for a regular file
 * or block device, or a descriptor without RWF_NOWAIT (a terminal, an
 * eventfd's write, most character devices), which take the plain call, after
 * waiting for readiness in the latter case: that call may block, and a drop
 * waits for it. */
static bool nowait_io(struct weft_io *io, bool out, long *r)
{
    struct stat st;
    if (fstat(io->fd, &st) != 0 || S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))
        return false;
    struct iovec v = { (void *)io->buf, clamp_len(io->len) };
    short ev = out ? POLLOUT : POLLIN;
    while ((*r = out ? pwritev2(io->fd, &v, 1, -1, RWF_NOWAIT)
                       : preadv2(io->fd, &v, 1, -1, RWF_NOWAIT)) < 0 &&
           errno == EAGAIN)
        if (!wait_ready(io, ev))
            goto cancelled;
    if (!(*r < 0 && errno == EOPNOTSUPP)) /* EOPNOTSUPP: a kernel before 4.14, or a file without it */
        return true;
    if (wait_ready(io, ev))
        return false;
cancelled:
    errno = ECANCELED;
    *r = -1;
    return true;
}

/* A read or write at the offset; offset -1, or a pipe: the file position, as
 * the ring does. */
static long plain_io(struct weft_io *io, bool out)
{
    long r;
    if (nowait_io(io, out, &r))
        return r;
    void *b = (void *)io->buf;
    size_t n = clamp_len(io->len);
    if (io->off != UINT64_MAX) {
        r = out ? pwrite(io->fd, b, n, (off_t)io->off) : pread(io->fd, b, n, (off_t)io->off);
        if (!(r < 0 && errno == ESPIPE))
            return r;
    }
    return out ? write(io->fd, b, n) : read(io->fd, b, n);
}

/* An open, as the ring does it: O_NONBLOCK first, so a FIFO with no peer
 * does not hold the thread (and the drop) for good, cleared after unless
 * asked for. A NULL path: what the kernel says through the ring (open's
 * argument is nonnull). */
static long open_job(struct weft_io *io)
{
    int flags = (int)io->len;
    if (!io->buf) {
        errno = EFAULT;
        return -1;
    }
    int extra = flags & (O_NONBLOCK | O_PATH) ? 0 : O_NONBLOCK;
    int fd = open(io->buf, flags | extra | O_CLOEXEC, (mode_t)io->off);
    /* A lease to break (or an NFS delegation): the first try started the
     * break; wait for it, as the ring's blocking retry does, but by trying
     * again in steps (1 ms doubling up to CANCEL_POLL_MS) rather than in one
     * blocking open, which no drop could stop for up to lease-break-time (45
     * s by default) while the ring's is cancelled at once: the drop sets
     * `done` (as for a read) and the job gives up at the next step. A FIFO
     * never says EAGAIN here. */
    for (long ms = 1; fd < 0 && errno == EAGAIN && extra; ms = ms < CANCEL_POLL_MS ? 2 * ms : ms) {
        /* Acquire pairs with the drop's release store. */
        if (__atomic_load_n(&io->done, __ATOMIC_ACQUIRE)) {
            errno = ECANCELED;
            return -1;
        }
        nanosleep(&(struct timespec){ 0, ms * 1000000L }, NULL);
        fd = open(io->buf, flags | extra | O_CLOEXEC, (mode_t)io->off);
    }
    if (fd < 0 || !extra)
        return fd;
    fd = clear_nonblock(fd);
    if (fd < 0) {
        errno = -fd;
        return -1;
    }
    return fd;
}

/* The syscall itself, on a pool thread; returns the result as the ring would. */
static void *file_job(void *arg)
{
    struct weft_io *io = arg;
    long r;
    switch (io->kind) {
    case IO_OPEN:
        r = open_job(io);
        break;
    case IO_READ:
    case IO_WRITE:
        /* As the ring says for any descriptor (a pipe's or socket's too,
         * which plain_io would read at the position): io.h's -EINVAL. */
        if (io->off != UINT64_MAX && io->off > (uint64_t)INT64_MAX) {
            errno = EINVAL;
            r = -1;
            break;
        }
        r = plain_io(io, io->kind == IO_WRITE);
        break;
    case IO_FSYNC:
        r = io->off ? fdatasync(io->fd) : fsync(io->fd);
        break;
    default:
        r = close(io->fd);
        break;
    }
    return (void *)(intptr_t)(r < 0 ? -errno : r);
}

/* Starts `io` on the blocking pool; 0 or the error to finish with. */
static int file_job_start(struct weft_io *io, struct weft_cx *cx)
{
    return weft__job_start(cx->worker->rt, file_job, io, &io->job);
}

static enum weft_poll io_step(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_io *io = (struct weft_io *)f;
    for (;;) {
        int res;
        if (io->job) {
            void *out;
            if (!weft__job_poll(io->job, cx->waker, &res, &out))
                return WEFT_PENDING;
            if (res == 0)
                res = (int)(intptr_t)out;
            else if (io->kind == IO_CLOSE) /* cancelled by a shutdown: still ours to close */
                res = close(io->fd) < 0 ? -errno : 0;
            weft__job_release(io->job);
            io->job = NULL;
        } else if (!io->op) {
            res = io_start(io, cx);
            if (res == -EOPNOTSUPP && weft__op_has_fallback(io_kinds[io->kind].op)) {
                if (io->kind == IO_OPEN)
                    io->done = 0; /* the ring's retry mark: the job's stop flag from here on */
                res = file_job_start(io, cx);
                if (res == 0)
                    continue; /* registers the waker with the job */
            }
            if (res == 0)
                return WEFT_PENDING;
        } else {
            if (!weft__op_ready(io->op, cx->waker))
                return WEFT_PENDING;
            res = io->op->res;
            weft__op_take(io->op); /* an opened file is ours now */
            weft__op_release(io->op);
            io->op = NULL;
            if (open_adds_nonblock(io)) {
                if (res == -EAGAIN) {
                    io->done = 1; /* again, waiting for the lease */
                    continue;
                }
                if (res >= 0)
                    res = clear_nonblock(res);
            }
        }
        if (io->kind == IO_SEND_ALL && res > 0) {
            io->done += (uint64_t)res;
            if (io->done < io->len)
                continue; /* the rest, in another send */
            res = (int)clamp_len(io->len);
        }
        io->result = res;
        io->base.resume = 1;
        return WEFT_READY;
    }
}

static void io_drop(struct weft_future *f)
{
    struct weft_io *io = (struct weft_io *)f;
    /* Waits if the kernel may still use the caller's memory. */
    weft__op_drop(&io->op);
    if (io->job) {
        /* A job no thread has started yet is taken back; a running one uses
         * the caller's memory (and this future's) until its syscall returns:
         * tell a read or write still waiting for its descriptor to give up,
         * and wait for it. A file it opened is closed; a close it never ran is
         * done here. */
        weft__job_cancel(io->job);
        if (io->kind == IO_READ || io->kind == IO_WRITE || io->kind == IO_OPEN)
            __atomic_store_n(&io->done, 1, __ATOMIC_RELEASE); /* stops its wait_ready or lease wait */
        bool ran = weft__job_wait(io->job);
        if (ran && io->kind == IO_OPEN) {
            int res;
            void *out;
            weft__job_poll(io->job, NULL, &res, &out);
            if ((intptr_t)out >= 0)
                close((int)(intptr_t)out);
        } else if (!ran && io->kind == IO_CLOSE) {
            close(io->fd);
        }
        weft__job_release(io->job);
        io->job = NULL;
    }
}

static enum weft_poll io_poll(struct weft_future *f, struct weft_cx *cx)
{
    return weft__leaf_poll_once(f, cx, io_step);
}

static const struct weft_future_ops io_ops = { io_poll, io_drop };

static void io_init(struct weft_io *io, enum io_kind kind, int fd, const void *buf, uint64_t len,
                    uint64_t off)
{
    io->base.ops = &io_ops;
    io->base.resume = 0;
    io->result = 0;
    io->kind = (uint8_t)kind;
    io->fd = fd;
    io->buf = buf;
    io->len = len;
    io->off = off;
    io->done = 0;
    io->op = NULL;
    io->job = NULL;
}

void weft_recv_into_init(struct weft_io *io, int fd, void *buf, size_t len)
{
    io_init(io, IO_RECV, fd, buf, len, 0);
}

void weft_send_init(struct weft_io *io, int fd, const void *buf, size_t len)
{
    io_init(io, IO_SEND, fd, buf, len, 0);
}

void weft_send_all_init(struct weft_io *io, int fd, const void *buf, size_t len)
{
    io_init(io, IO_SEND_ALL, fd, buf, len, 0);
}

void weft_writev_init(struct weft_io *io, int fd, const struct iovec *iov, int iovcnt)
{
    io_init(io, IO_WRITEV, fd, iov, iovcnt < 0 ? UINT64_MAX : (uint64_t)iovcnt, 0);
}

void weft_shutdown_init(struct weft_io *io, int fd, int how)
{
    io_init(io, IO_SHUTDOWN, fd, NULL, 0, (uint64_t)how);
}

void weft_close_init(struct weft_io *io, int fd)
{
    io_init(io, IO_CLOSE, fd, NULL, 0, 0);
}

void weft_open_init(struct weft_io *io, const char *path, int flags, unsigned mode)
{
    io_init(io, IO_OPEN, -1, path, (uint64_t)(unsigned)flags, mode);
}

void weft_read_at_init(struct weft_io *io, int fd, void *buf, size_t len, uint64_t offset)
{
    io_init(io, IO_READ, fd, buf, len, offset);
}

void weft_write_at_init(struct weft_io *io, int fd, const void *buf, size_t len,
                        uint64_t offset)
{
    io_init(io, IO_WRITE, fd, buf, len, offset);
}

void weft_fsync_init(struct weft_io *io, int fd, bool data_only)
{
    io_init(io, IO_FSYNC, fd, NULL, 0, data_only);
}

/* ---- weft_recv: from the provided-buffer ring ------------------------------------ */

static enum weft_poll recv_step(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_recv *r = (struct weft_recv *)f;
    if (!r->op) {
        /* With something to send first: a send linked to the recv, one CQE. */
        enum op_kind kind = r->send_len ? OP_SEND_RECV : OP_RECV_BUF;
        int err = weft__op_start(cx, &r->op, kind);
        if (err) {
            weft__op_drop(&r->held);
            r->result = err;
            r->base.resume = 1;
            return WEFT_READY;
        }
        r->op->fd = r->fd;
        r->op->addr = (uint64_t)(uintptr_t)r->send;
        r->op->len = r->send_len;
        r->op->off = 0;
        if (kind == OP_SEND_RECV) {
            r->op->u.sr.held = r->held; /* the slot gives it back (op.c) */
            r->op->u.sr.send_err = 0;
            r->held = NULL;
        }
        /* A drop waits for the final completion: the caller's bytes to send,
         * and a receive still armed would take bytes sent after the drop. */
        r->op->borrowed = 1;
        weft__op_submit(r->op->io, r->op);
        return WEFT_PENDING;
    }
    if (!weft__op_ready(r->op, cx->waker))
        return WEFT_PENDING;
    /* The slot keeps the buffer until the drop gives both back. */
    struct weft__op *op = r->op;
    r->result = op->res; /* the recv's, or the failed send's */
    if (weft__op_has_buffer(op))
        r->data = weft__op_buffer(op);
    r->base.resume = 1;
    return WEFT_READY;
}

static void recv_drop(struct weft_future *f)
{
    struct weft_recv *r = (struct weft_recv *)f;
    weft__op_drop(&r->held); /* moved in, never polled */
    weft__op_drop(&r->op);
}

static enum weft_poll recv_poll(struct weft_future *f, struct weft_cx *cx)
{
    return weft__leaf_poll_once(f, cx, recv_step);
}

static const struct weft_future_ops recv_ops = { recv_poll, recv_drop };

void weft_send_recv_init(struct weft_recv *r, int fd, const void *buf, size_t len)
{
    r->base.ops = &recv_ops;
    r->base.resume = 0;
    r->result = 0;
    r->fd = fd;
    r->data = NULL;
    r->op = NULL;
    r->held = NULL;
    r->send = buf;
    r->send_len = (uint32_t)len;
    /* The kernel moves at most MAX_RW_COUNT (INT_MAX rounded down to a
     * page) in one send, and reports the cut as success: the linked receive
     * would then run as if everything had gone. (The first test spares
     * every receive's init the page-size call.) */
    if (len > (size_t)INT_MAX / 2 && len > ((size_t)INT_MAX & ~((size_t)getpagesize() - 1))) {
        r->send_len = 0;
        r->result = -EINVAL;
        r->base.resume = 1;
    }
}

void weft_send_recv_from_init(struct weft_recv *r, struct weft_recv *from, size_t off,
                              size_t len)
{
    if (from == r && r->base.ops == &recv_ops) {
        /* Its own source: left as it is (a fresh init would lose the slot
         * and buffer it holds until the runtime's destroy), but failed, so
         * its poll gives -EINVAL and its drop gives them back. */
        r->result = -EINVAL;
        r->data = NULL;
        r->base.resume = 1;
        return;
    }
    bool ok = from && from != r && from->base.ops == &recv_ops && from->base.resume &&
              from->op && weft__op_has_buffer(from->op) && from->result > 0 && len > 0 &&
              off < (size_t)from->result && len <= (size_t)from->result - off;
    weft_send_recv_init(r, ok ? from->fd : -1, ok ? from->data + off : NULL, ok ? len : 0);
    if (!ok) {
        r->result = -EINVAL;
        r->base.resume = 1;
        return;
    }
    r->held = from->op; /* the buffer moves here; `from` holds nothing */
    from->op = NULL;
    from->data = NULL;
}

void weft_recv_init(struct weft_recv *r, int fd)
{
    weft_send_recv_init(r, fd, NULL, 0);
}
