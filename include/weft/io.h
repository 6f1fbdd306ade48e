/* weft/io.h: timers, TCP, and files as leaf futures over io_uring.
 *
 * Included by <weft.h>; not meant to be included on its own.
 *
 * Every worker owns an io_uring. A leaf future submits its operation on the
 * ring of the worker that first polls it and returns WEFT_PENDING; the
 * completion wakes the task wherever it runs next (tasks move between
 * workers). These futures must be polled by a runtime's worker (a task, or
 * weft_block_on); polled anywhere else they are ready at once with -ENXIO.
 *
 * Ownership (docs/io.md): the kernel may use an operation's memory until its
 * final completion. Dropping a future whose operation is in flight cancels it.
 * Where the operation only uses memory the runtime owns (sleeps, accept,
 * connect, close, shutdown, fsync) the drop returns at once and the runtime
 * frees that memory later; where it uses the caller's memory (a buffer, an
 * iovec array, a path) the drop waits until the kernel has let go of it, so
 * the caller may free the memory as soon as the drop returns. A receive's drop
 * (weft_recv and its kin included) also waits: a receive still armed would
 * take bytes the peer sends after the drop. A resource that
 * a cancelled operation produced anyway (an accepted socket, an opened file) is
 * closed, never leaked.
 *
 * Results follow the rest of weft: a byte count or descriptor >= 0, or -errno.
 * An operation the kernel lacks gives -EOPNOTSUPP (with one line on stderr). */
#ifndef WEFT_IO_H
#define WEFT_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "future.h"

struct weft__op;
struct weft__job;
struct weft__acceptq;

#define WEFT_NS_PER_MS UINT64_C(1000000)
#define WEFT_NS_PER_SEC UINT64_C(1000000000)

/* ---- time ------------------------------------------------------------------ */

/* The monotonic clock (CLOCK_MONOTONIC) in nanoseconds: the clock of deadlines. */
uint64_t weft_now_ns(void);

/* Ready once the deadline has passed (never earlier). result: 0, -ENXIO
 * (a sleep not yet due, polled off a worker), -ENOMEM, or -ECANCELED (the
 * runtime is shutting down: its timers end early). */
struct weft_sleep {
    struct weft_future base;
    int result;
    uint64_t deadline_ns;      /* on the weft_now_ns clock */
    struct weft__op *op;       /* the registered timer, or NULL */
};

/* Initialises a sleep of `duration_ns` from now. */
void weft_sleep_init(struct weft_sleep *s, uint64_t duration_ns);

/* Initialises a sleep until `deadline_ns` (weft_now_ns clock; a past
 * deadline is ready at the first poll). */
void weft_sleep_until_init(struct weft_sleep *s, uint64_t deadline_ns);

/* Moves the sleep's deadline to `deadline_ns`, whether it was waiting, finished or
 * dropped (Tokio's Sleep::reset): it is pending again until then; poll it again to wait.
 * Call it from the task that polls the sleep (the future is that task's); from anywhere
 * else, with that task not polling, wake the task after it, as nothing else will.
 * On the worker that holds its timer, before it fired, the timer moves in place (no
 * allocation: an idle timeout pushed back at every read costs one heap sift); else it is
 * let go and the next poll takes a new one. 0, or -EINVAL (NULL). */
int weft_sleep_reset(struct weft_sleep *s, uint64_t deadline_ns);

/* Ticks every `period_ns`: the first poll is ready at once, and each poll
 * after a READY waits for the next tick. Ticks missed while the task was busy
 * are skipped (counted in `missed`), not delivered in a burst. */
struct weft_interval {
    struct weft_future base;
    int result;                /* 0 at each tick, or the sleep's error */
    uint64_t period_ns;
    uint64_t ticks;            /* ticks delivered so far */
    uint64_t missed;           /* ticks skipped because the task was late */
    struct weft_sleep sleep;
};

/* Initialises an interval of `period_ns` (> 0, else every poll gives -EINVAL). */
void weft_interval_init(struct weft_interval *iv, uint64_t period_ns);

/* Makes the next tick one period from now (Tokio's Interval::reset: a heartbeat
 * postponed by other traffic), through weft_sleep_reset. 0, or -EINVAL (NULL). */
int weft_interval_reset(struct weft_interval *iv);

/* Polls `inner` until it is ready or `duration_ns` passes; at the deadline the
 * inner future is dropped (cancelling its I/O) and result is -ETIMEDOUT. On
 * time, result is 0 and the inner future is left as it finished, for the
 * caller to read and drop; the sleep's error otherwise (-ECANCELED at
 * shutdown). Polled again once ready, it stays ready with the same result
 * (the inner future is not polled again). `inner` is the caller's and must
 * outlive this: dropping the timeout never drops `inner` (after -ETIMEDOUT it
 * is already dropped and empty), so a parent drops both, the timeout first.
 * The inner future is dropped on the worker at the deadline; a drop that
 * must wait for the kernel to let go of memory (a file read or write, a
 * recv_into: docs/io.md) holds that worker until it does, so -ETIMEDOUT may
 * come late by that much. A deadline around a compute job counts its time in
 * the compute lane's queue too. Around a weft_join_all, the drop ends the
 * join-all only: its children are the caller's, and their I/O goes on until
 * the caller drops them. An inner future that spends the whole cooperative
 * budget at every poll (a loop over a socket that always has data) still
 * times out: the deadline is looked at after it, with one unit lent (when
 * the timeout itself was polled with budget left, as a task's poll and
 * weft_join_all's rotation give it). */
struct weft_timeout {
    struct weft_future base;
    int result;
    struct weft_future *inner;
    uint64_t duration_ns;
    struct weft_sleep sleep;   /* started at the first poll that finds `inner` pending */
};

/* Initialises a timeout around `inner` (NULL, empty, without a poll or `t` itself gives
 * -EINVAL). The duration runs from the first poll; a ready inner future never starts a timer.
 * A longer cycle (two timeouts around each other) recurses, as any future polling itself. */
void weft_timeout_init(struct weft_timeout *t, struct weft_future *inner, uint64_t duration_ns);

/* ---- TCP --------------------------------------------------------------------- */

struct weft_listen_opts {
    int backlog;               /* 0 or less: 4096 (the kernel caps it at somaxconn) */
    bool reuseport;            /* SO_REUSEPORT, for one listener per worker */
};

/* A listening socket. Accepts run as one multishot accept underneath (one
 * single-shot accept at a time, resubmitted, on kernels before 5.19); accepted
 * sockets wait in a small queue until an accept future takes them. */
struct weft_tcp_listener {
    int fd;
#ifndef __cplusplus
    _Atomic(struct weft__acceptq *) q;
    _Atomic uint32_t entering;  /* accepts reading `q` as they start (tcp.c) */
#else /* C++ has no _Atomic: the same size and alignment, touched only by tcp.c */
    struct weft__acceptq *q;
    uint32_t entering;
#endif
};

/* Binds and listens on `addr` (a numeric IPv4 or IPv6 address such as
 * "127.0.0.1", "::1" or, with its scope, "fe80::1%eth0"; NULL: "0.0.0.0";
 * "::" takes IPv4 too, as the system's IPV6_V6ONLY default says) and `port`
 * (0: any free port), with SO_REUSEADDR. `opts` may be NULL. Synchronous.
 * Returns 0, or -EINVAL (NULL listener, bad address), -EADDRINUSE, -ENOMEM or
 * another socket error. */
int weft_tcp_listen(struct weft_tcp_listener *l, const char *addr, uint16_t port,
                    const struct weft_listen_opts *opts);

/* The port the listener is bound to, or -EBADF for a closed listener or one never
 * listened (zeroed); one closing meanwhile on another thread may give either. */
int weft_tcp_listener_port(const struct weft_tcp_listener *l);

/* Stops accepting and closes the listener; sockets accepted but not yet taken
 * are closed, and an accept waiting on it, or starting meanwhile, finishes
 * with -EBADF: it may be called from any thread while a task accepts (as a
 * Go listener's Close ends its Accept loop). The socket is closed once no
 * operation can name it any more: at once, or at the ring's next turn. Safe
 * on a closed one. The struct itself must stay valid until every
 * accept and every close call on it has returned. */
void weft_tcp_listener_close(struct weft_tcp_listener *l);

/* Ready with the next accepted connection. result: the new socket (yours to
 * close), or -errno: -EMFILE/-ENFILE/-ENOBUFS/-ENOMEM when the process is out
 * of resources (the next accept re-arms after a short back-off; accepting never
 * stops for good), -EBADF for a closed listener, -EBUSY when another accept is
 * pending on the same listener. Dropping it mid-wait loses no connection. */
struct weft_accept {
    struct weft_future base;
    int result;
    struct weft_tcp_listener *l;
    struct weft__acceptq *q;   /* while waiting: the queue, a reference held */
    bool waiting;              /* registered as the listener's acceptor */
    struct weft_sleep backoff;
};

/* Initialises an accept on `l`. */
void weft_accept_init(struct weft_accept *a, struct weft_tcp_listener *l);

/* Connects to `addr`:`port` (numeric IPv4 or IPv6, a link-local one with its scope:
 * "fe80::1%eth0" or "fe80::1%2"; without one the kernel refuses it, -EINVAL; on any
 * other address a scope is ignored). result: the connected
 * socket (yours to close), or -errno: -ECONNREFUSED, -ETIMEDOUT (after
 * `timeout_ns`, if not 0), -EINVAL (bad address). */
struct weft_connect {
    struct weft_future base;
    int result;
    uint64_t timeout_ns;
    unsigned char addr[28];    /* the parsed sockaddr_in or sockaddr_in6 */
    uint32_t addrlen;
    struct weft__op *op;
};

/* Initialises a connect (the address is checked at the first poll). */
void weft_connect_init(struct weft_connect *c, const char *addr, uint16_t port,
                       uint64_t timeout_ns);

/* Receives into a buffer of the worker's provided-buffer ring, so a connection
 * waiting for data holds no buffer. result: bytes received (0 at end of
 * stream) or -errno; the bytes are at `data` until the future is dropped, which
 * gives the buffer back (so drop it before the runtime is destroyed). When
 * the ring is empty (its buffers held, say, by echoes to peers that do not
 * read) the receive takes a heap buffer of the same size instead, freed where
 * a ring buffer would go back: no receive waits for another connection's
 * buffer. A kernel without buffer rings (before 5.19) gets a heap buffer for
 * every receive that brings data (docs/io.md), and -ENOMEM when none can be
 * had (the data stays queued for the next receive). */
struct weft_recv {
    struct weft_future base;
    int result;
    int fd;
    const unsigned char *data;
    struct weft__op *op;
    const void *send;          /* weft_send_recv_init: sent first */
    uint32_t send_len;
    struct weft__op *held;     /* weft_send_recv_from_init: the buffer sent */
};

/* Initialises a receive from the buffer ring on socket `fd`. */
void weft_recv_init(struct weft_recv *r, int fd);

/* Sends all `len` bytes of `buf`, then receives as weft_recv: the two are
 * linked in the kernel and only the receive completes, so a request/response
 * loop costs one completion and one wakeup per round (the shape of the best
 * hand-written io_uring servers). result: the bytes received (0 at end of
 * stream), or the send's error (-EPIPE, -ECONNRESET; then nothing was
 * received), or the receive's. `buf` must stay valid until the future is
 * dropped. On kernels before 5.19 (no buffer ring) the send goes alone, the
 * rest of a short one again, and the receive after it: two completions or
 * more per round. -EINVAL (at the first poll) if `len` is above the most one send moves
 * (INT_MAX rounded down to a page: 2 GiB - 4 KiB with 4 KiB pages). */
void weft_send_recv_init(struct weft_recv *r, int fd, const void *buf, size_t len);

/* Sends bytes [off, off + len) of what the finished receive `from` got, then
 * receives on the same socket, as weft_send_recv_init. The buffer moves from
 * `from` (which then holds nothing: its drop gives nothing back) to `r`, and
 * goes back to the ring once sent: when `r` completes, or at once when the
 * ring runs low (or the buffer is a heap one, weft_recv), so no number of
 * connections echoing at once can hold every buffer while they wait for
 * their next bytes (an echo server's loop). result as weft_send_recv_init; -EINVAL
 * (at the first poll, `from` untouched) if `from` is NULL, is `r`, has not
 * completed with bytes in a buffer it still holds, or the range is empty or
 * beyond what it received (`from` being `r`, r keeps what it holds for its
 * drop to give back). */
void weft_send_recv_from_init(struct weft_recv *r, struct weft_recv *from, size_t off,
                              size_t len);

/* One future type for the operations below: initialise it with one of the
 * weft_*_init functions that follow, await it, read `result`, drop it. */
struct weft_io {
    struct weft_future base;
    int result;
    uint8_t kind;
    int fd;
    const void *buf;           /* or the iovec array, or the path */
    uint64_t len;              /* bytes, or iovec count, or open flags */
    uint64_t off;              /* file offset, or open mode, or shutdown how */
    uint64_t done;             /* bytes sent so far (send_all) */
    struct weft__op *op;
    struct weft__job *job;     /* a file operation the ring cannot do, on the blocking pool */
};

/* Receives up to `len` bytes into `buf` (the caller's; it must stay valid
 * until the future is dropped). result: bytes (0 at end of stream) or -errno.
 * With len 0 it waits until the socket is readable and gives 0, as the
 * kernel's receive does: not a way to test for end of stream. */
void weft_recv_into_init(struct weft_io *io, int fd, void *buf, size_t len);

/* Sends once: result is the bytes sent (possibly fewer than `len`) or -errno
 * (-EPIPE after the peer closed, -ECONNRESET). `buf` must stay valid until the
 * future is dropped. */
void weft_send_init(struct weft_io *io, int fd, const void *buf, size_t len);

/* Sends all `len` bytes, as many sends as it takes. result: `len` (INT_MAX
 * if `len` is larger: `done` holds the count) or -errno (`done` says how many
 * bytes went before the error). */
void weft_send_all_init(struct weft_io *io, int fd, const void *buf, size_t len);

/* Writes the `iovcnt` buffers of `iov` in order to a socket (once: may be
 * short; it is a sendmsg: -ENOTSOCK on a pipe or file). `iov` and the
 * buffers must stay valid until the future is dropped. -EINVAL for an
 * `iovcnt` below 0 or above IOV_MAX. */
void weft_writev_init(struct weft_io *io, int fd, const struct iovec *iov, int iovcnt);

/* Shuts down the reading and/or writing side (SHUT_RD, SHUT_WR, SHUT_RDWR). */
void weft_shutdown_init(struct weft_io *io, int fd, int how);

/* Closes `fd` through the ring. result: 0 or -errno. A socket with SO_LINGER
 * on and a timeout closes on the kernel's async workers, so its wait for
 * unsent data never holds the worker. No other operation on `fd` may be
 * pending: every one must have completed or been dropped (a shutdown or an
 * abort alone does not wait for that: docs/io.md, Limits). */
void weft_close_init(struct weft_io *io, int fd);

/* Socket options, synchronous; each returns 0 or -errno (-EBADF, -ENOTSOCK;
 * -EINVAL for a negative size or linger time). */
int weft_tcp_set_nodelay(int fd, bool on);
int weft_tcp_set_keepalive(int fd, bool on);
int weft_socket_set_sndbuf(int fd, int bytes);
int weft_socket_set_rcvbuf(int fd, int bytes);
/* Sets SO_LINGER; `seconds` 0 makes close send a reset. */
int weft_socket_set_linger(int fd, bool on, int seconds);

/* Room for any address weft prints: IPv6 with a scope ("fe80::1%eth0") included. */
#define WEFT_ADDR_STRLEN 64

/* Writes the peer's (or the local) numeric address into buf[len] (an IPv6 one with a
 * scope as "fe80::1%eth0"; WEFT_ADDR_STRLEN always fits, and the string's length plus
 * one is enough) and its port into *port. Returns 0 or -errno: -ENOTCONN, -ENOSPC (a
 * short buffer), -EINVAL (NULL buf or port), -EBADF, -ENOTSOCK, -EAFNOSUPPORT (not an
 * IPv4 or IPv6 socket). */
int weft_tcp_peer_addr(int fd, char *buf, size_t len, uint16_t *port);
int weft_tcp_local_addr(int fd, char *buf, size_t len, uint16_t *port);

/* ---- files ---------------------------------------------------------------------
 * When the ring cannot do a file operation (a kernel without the opcode, or
 * a runtime without io_uring), it runs on the blocking pool instead, with the
 * same results; dropping such a future takes back a job not started, stops a
 * read or write still waiting for its descriptor, or an open waiting for a
 * lease to break, within 50 ms, and waits for one inside its syscall (a read
 * or write of a pipe or socket never waits there: it writes what there is
 * room for, as the ring does; an open never waits for a FIFO's peer, on
 * either path, O_CREAT or O_TRUNC included). */

/* Opens `path` (open(2) flags and mode; O_CLOEXEC is added). result: the file
 * descriptor or -errno. `path` must stay valid until the future is dropped. */
void weft_open_init(struct weft_io *io, const char *path, int flags, unsigned mode);

/* Reads up to `len` bytes at `offset` (UINT64_MAX: at the file position,
 * advancing it, as read(2); other offsets past INT64_MAX give -EINVAL).
 * result: bytes (0 at end of file; fewer than `len` before it is possible: loop). */
void weft_read_at_init(struct weft_io *io, int fd, void *buf, size_t len, uint64_t offset);

/* Writes up to `len` bytes at `offset` (once: may be short; UINT64_MAX: at
 * the file position, as for weft_read_at_init). It is write(2):
 * to a pipe or socket whose reader is gone it raises SIGPIPE, which kills
 * the process unless it is ignored (weft_send* on a socket never do). */
void weft_write_at_init(struct weft_io *io, int fd, const void *buf, size_t len,
                        uint64_t offset);

/* Flushes the file to storage (fdatasync when `data_only`). */
void weft_fsync_init(struct weft_io *io, int fd, bool data_only);

#endif
