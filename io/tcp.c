/* tcp.c: listeners (one multishot accept each), connect, and socket options.
 *
 * The accept queue. A listener's multishot accept runs on the ring of the
 * worker that first needed it; each accepted socket goes into the listener's
 * single-producer (that worker) / single-consumer (the one pending accept
 * future) queue, and the future takes sockets from it. The producer publishes
 * `tail` with a seq_cst store and then checks the awaker (seq_cst); the
 * consumer registers (seq_cst) and then re-reads `tail`, `error` and `armed`
 * (seq_cst): the Dekker pattern, so a socket is never left unseen. When the
 * queue holds ACCEPTQ_PAUSE sockets the multishot is cancelled (the backlog
 * stays in the kernel) and re-armed when the queue is empty again. The
 * multishot may post many more completions before that cancel lands (the
 * whole backlog at once): what the ring cannot hold goes to an overflow array
 * under a mutex, taken only on that path, so an accepted socket is never
 * dropped; the producer keeps using the overflow until the consumer empties
 * it, and `novf` (seq_cst, like `tail`) tells the consumer to look there.
 *
 * `armed` is 0 (no multishot), 1 (armed) or 2 (armed, and the listener is
 * closing: the closer owns the cancel). The multishot's final CQE (F_MORE
 * clear: an error such as -EMFILE, or a cancel) disarms it; the next accept
 * future re-arms, after a back-off for resource errors, so accepting never
 * stops for good.
 *
 * Closing. The queue is reference-counted: the listener, the armed
 * multishot, and a waiting accept future each hold one, so a listener may be
 * closed while an accept waits on it (on any thread). An accept starting
 * reads the listener's `q` inside a window counted in `entering`: increment,
 * load `q`, take its reference, decrement (seq_cst all). The closer exchanges
 * `q` for NULL and then waits for `entering` to be 0 before dropping the
 * listener's reference: if a starter loaded the old `q`, its increment came
 * before that load, which came before the exchange, so the closer sees it and
 * waits (the window is a few instructions). The closer stores `closed` and
 * then wakes the acceptor (seq_cst both), which registers and then re-reads
 * `closed` (seq_cst), and finishes with -EBADF. The closer then
 * claims an armed multishot (1 -> 2); an acceptor that armed one (a seq_cst
 * store of 1) re-reads `closed` and claims it itself: Dekker again, so one of
 * the two cancels it. Sockets left in the queue are closed by the last
 * reference's drop, when nobody can take one any more; one accepted after the
 * close is closed as it arrives. So is the listening socket itself: an accept
 * SQE names its number and may still wait for the owner's next enter when the
 * close comes, and a number closed at once could be reused by a new socket,
 * whose connections the stale multishot would take (Go's netFD defers its
 * close to the last reference the same way).
 *
 * Kernels without multishot accept (5.10-5.18: the accept opcode is there,
 * and the probe says so, but the IORING_ACCEPT_MULTISHOT flag is -EINVAL).
 * The kernel's own answer decides, per ring: the first multishot's final CQE
 * of -EINVAL resubmits the same slot at once as a single-shot accept, marked
 * ACC_PROBE; when that one brings a socket, the refusal was the flag's, and
 * the ring arms single-shot accepts from then on (`accept_single`). A
 * single-shot -EINVAL is the socket's own error (not listening), which the
 * next accept gets, as a multishot's would be; the ring is not switched. (A
 * proxy at init, such as the provided-buffer ring's registration, also 5.19,
 * failing, was not chosen: it is true of mainline kernels only, and the
 * answer costs one failed SQE per ring, once.) A single-shot accept is the
 * same slot, armed and owned the same way; only its completions differ: each
 * one is final for the kernel, and the owner resubmits the slot at once
 * (accept_rearm), still armed, unless the queue reached ACCEPTQ_PAUSE (then
 * it disarms, as the multishot's pause does, and the next accept re-arms once
 * the queue is empty), the listener is closing, or it was an error (handled
 * as a multishot's final CQE: -EMFILE gives the same back-off). No new
 * ordering: the decision reads `closed`, `armed` and the slot's state
 * relaxed, and rests on the owner's program order. A closer's cancel of the
 * slot is queued by the owner itself (op.c: the remote list's pass, or the
 * acceptor's own claim in arm), which first stores ORPHAN in the slot: if
 * that came before this completion, the owner sees its own store and does
 * not resubmit (the new accept would escape the cancel); if it comes after,
 * the cancel's SQE follows the resubmitted one and finds it. `closed` and
 * `armed` only spare an SQE when a close is on its way. At shutdown the ring
 * cancels each single-shot accept by its slot
 * (weft__accepts_cancel, from the owner's list `io->accepts`, which
 * accept_final leaves), since IORING_ASYNC_CANCEL_ANY came with 5.19 too. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io.h"
#include "../runtime/internal.h"

#define ACCEPTQ_CAP 256u
#define ACCEPTQ_PAUSE 128u
#define ACCEPT_BACKOFF_NS (10 * WEFT_NS_PER_MS)

struct weft__acceptq {
    _Atomic uint32_t refs;         /* the listener, the armed multishot, a waiting accept */
    _Atomic uint32_t armed;
    _Atomic uint32_t acceptor;     /* an accept future is pending */
    _Atomic bool closed;
    _Atomic int error;             /* a final CQE's error, for the next accept */
    _Atomic uint64_t backoff_until;
    int lfd;
    bool pausing;                  /* owner: a cancel for the pause is on its way */
    struct weft__op *op;           /* the multishot, while armed */
    struct awaker waker;
    _Atomic uint32_t head;         /* consumer */
    _Atomic uint32_t tail;         /* producer */
    int fds[ACCEPTQ_CAP];
    pthread_mutex_t ovf_lock;      /* guards the overflow array */
    _Atomic uint32_t novf;         /* sockets in the overflow */
    uint32_t ovf_head, ovf_cap;
    int *ovf;
};

/* ---- addresses -------------------------------------------------------------------- */

/* An IPv6 scope: an interface's name ("eth0") or index ("2"); false if it
 * names none. */
static bool parse_scope(const char *s, uint32_t *id)
{
    if (*s >= '0' && *s <= '9') {
        char *end, name[IF_NAMESIZE];
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (*end || errno || v > UINT32_MAX || !if_indextoname((unsigned)v, name))
            return false;
        *id = (uint32_t)v;
        return true;
    }
    *id = *s ? if_nametoindex(s) : 0;
    return *id != 0;
}

/* Parses a numeric IPv4/IPv6 address, an IPv6 one with a scope too
 * ("fe80::1%eth0"), into `sa`; returns its length or 0. */
static socklen_t parse_addr(const char *addr, uint16_t port, struct sockaddr_in6 *sa)
{
    memset(sa, 0, sizeof(*sa));
    struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
    if (!addr)
        addr = "0.0.0.0";
    if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        return sizeof(*in4);
    }
    char host[INET6_ADDRSTRLEN];
    const char *pct = strchr(addr, '%');
    if (pct) {
        size_t n = (size_t)(pct - addr);
        if (n >= sizeof host || !parse_scope(pct + 1, &sa->sin6_scope_id))
            return 0;
        memcpy(host, addr, n);
        host[n] = '\0';
        addr = host;
    }
    if (inet_pton(AF_INET6, addr, &sa->sin6_addr) == 1) {
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons(port);
        return sizeof(*sa);
    }
    return 0;
}

static int format_addr(const struct sockaddr_storage *ss, char *buf, size_t len, uint16_t *port)
{
    const void *src;
    uint16_t p;
    uint32_t scope = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)ss;
        src = &in4->sin_addr;
        p = ntohs(in4->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        src = &in6->sin6_addr;
        p = ntohs(in6->sin6_port);
        scope = in6->sin6_scope_id;
    } else {
        return -EAFNOSUPPORT;
    }
    /* inet_ntop takes a socklen_t: a length past its range must not be cut
     * to its low bits (2^32 + 5 would give 5); any address fits in 64. */
    if (!inet_ntop(ss->ss_family, src, buf, (socklen_t)(len < 64 ? len : 64)))
        return -ENOSPC;
    if (scope) { /* "%eth0", or "%7" for an interface gone meanwhile */
        char name[IF_NAMESIZE];
        if (!if_indextoname(scope, name))
            snprintf(name, sizeof name, "%" PRIu32, scope);
        size_t n = strlen(buf), m = strlen(name);
        if (n + 1 + m >= len)
            return -ENOSPC;
        buf[n] = '%';
        memcpy(buf + n + 1, name, m + 1);
    }
    *port = p; /* only on success, as every out-parameter */
    return 0;
}

static int sock_addr(int fd, char *buf, size_t len, uint16_t *port,
                     int (*get)(int, struct sockaddr *, socklen_t *))
{
    if (!buf || !port)
        return -EINVAL;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (get(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -errno;
    return format_addr(&ss, buf, len, port);
}

int weft_tcp_peer_addr(int fd, char *buf, size_t len, uint16_t *port)
{
    return sock_addr(fd, buf, len, port, getpeername);
}

int weft_tcp_local_addr(int fd, char *buf, size_t len, uint16_t *port)
{
    return sock_addr(fd, buf, len, port, getsockname);
}

/* ---- options ------------------------------------------------------------------------ */

static int set_int(int fd, int level, int name, int value)
{
    return setsockopt(fd, level, name, &value, sizeof(value)) < 0 ? -errno : 0;
}

int weft_tcp_set_nodelay(int fd, bool on)
{
    return set_int(fd, IPPROTO_TCP, TCP_NODELAY, on);
}

int weft_tcp_set_keepalive(int fd, bool on)
{
    return set_int(fd, SOL_SOCKET, SO_KEEPALIVE, on);
}

int weft_socket_set_sndbuf(int fd, int bytes)
{
    return bytes < 0 ? -EINVAL : set_int(fd, SOL_SOCKET, SO_SNDBUF, bytes);
}

int weft_socket_set_rcvbuf(int fd, int bytes)
{
    return bytes < 0 ? -EINVAL : set_int(fd, SOL_SOCKET, SO_RCVBUF, bytes);
}

int weft_socket_set_linger(int fd, bool on, int seconds)
{
    if (seconds < 0)
        return -EINVAL;
    struct linger lg = { on, seconds };
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0 ? -errno : 0;
}

/* ---- listen ---------------------------------------------------------------------------- */

/* Producer: queues an accepted socket; false only when memory ran out. */
static bool acceptq_push(struct weft__acceptq *q, int fd)
{
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t len = tail - atomic_load_explicit(&q->head, memory_order_acquire);
    if (len < ACCEPTQ_CAP && atomic_load_explicit(&q->novf, memory_order_relaxed) == 0) {
        q->fds[tail % ACCEPTQ_CAP] = fd;
        atomic_store(&q->tail, tail + 1); /* seq_cst: Dekker with the consumer */
        return true;
    }
    pthread_mutex_lock(&q->ovf_lock);
    uint32_t n = atomic_load_explicit(&q->novf, memory_order_relaxed);
    if (q->ovf_head + n == q->ovf_cap) { /* full: compact, or grow */
        if (n)
            memmove(q->ovf, q->ovf + q->ovf_head, n * sizeof(int));
        q->ovf_head = 0;
        if (n == q->ovf_cap) {
            uint32_t cap = q->ovf_cap ? 2 * q->ovf_cap : ACCEPTQ_CAP;
            int *grown = realloc(q->ovf, cap * sizeof(int));
            if (!grown) {
                pthread_mutex_unlock(&q->ovf_lock);
                return false;
            }
            q->ovf = grown;
            q->ovf_cap = cap;
        }
    }
    q->ovf[q->ovf_head + n] = fd;
    atomic_store(&q->novf, n + 1); /* seq_cst: Dekker with the consumer */
    pthread_mutex_unlock(&q->ovf_lock);
    return true;
}

/* Consumer: the next socket, or -1. */
static int acceptq_pop(struct weft__acceptq *q)
{
    uint32_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
    /* Seq_cst: the consumer's re-check of the Dekker pair (top). */
    if (head != atomic_load(&q->tail)) {
        int fd = q->fds[head % ACCEPTQ_CAP];
        atomic_store_explicit(&q->head, head + 1, memory_order_release);
        return fd;
    }
    if (atomic_load(&q->novf) == 0)
        return -1;
    pthread_mutex_lock(&q->ovf_lock);
    int fd = q->ovf[q->ovf_head++];
    atomic_store(&q->novf, atomic_load_explicit(&q->novf, memory_order_relaxed) - 1);
    pthread_mutex_unlock(&q->ovf_lock);
    return fd;
}

/* Closes every queued socket (no producer or consumer runs any more). */
static void acceptq_drain(struct weft__acceptq *q)
{
    for (int fd; (fd = acceptq_pop(q)) >= 0;)
        close(fd);
}

/* The last reference closes the listening socket: every SQE naming `lfd` was
 * made by a holder, so its number cannot be reused while one may still reach
 * the kernel (a reused number would have a dead multishot accept, and close,
 * another listener's connections). */
static void acceptq_unref(struct weft__acceptq *q)
{
    /* Acq_rel: the last one sees every other holder's writes. */
    if (atomic_fetch_sub_explicit(&q->refs, 1, memory_order_acq_rel) == 1) {
        acceptq_drain(q);
        close(q->lfd);
        pthread_mutex_destroy(&q->ovf_lock);
        free(q->ovf);
        free(q);
    }
}

int weft_tcp_listen(struct weft_tcp_listener *l, const char *addr, uint16_t port,
                    const struct weft_listen_opts *opts)
{
    if (!l)
        return -EINVAL;
    l->fd = -1;
    atomic_init(&l->q, NULL);
    atomic_init(&l->entering, 0);
    struct sockaddr_in6 sa;
    socklen_t sl = parse_addr(addr, port, &sa);
    if (!sl)
        return -EINVAL;
    struct weft__acceptq *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    int fd = socket(sa.sin6_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? -errno : 0;
    if (!err)
        err = set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (!err && opts && opts->reuseport)
        err = set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (!err && bind(fd, (struct sockaddr *)&sa, sl) < 0)
        err = -errno;
    if (!err && listen(fd, opts && opts->backlog > 0 ? opts->backlog : 4096) < 0)
        err = -errno;
    if (err) {
        if (fd >= 0)
            close(fd);
        free(q);
        return err;
    }
    atomic_init(&q->refs, 1);
    pthread_mutex_init(&q->ovf_lock, NULL);
    awaker_init(&q->waker);
    q->lfd = fd;
    l->fd = fd;
    atomic_store(&l->q, q);
    return 0;
}

int weft_tcp_listener_port(const struct weft_tcp_listener *l)
{
    /* Relaxed: a close may store -1 from another thread (no order rides on
     * it). A listener with no queue was never listened (a zeroed one's fd 0
     * is not its own) or is closing. */
    int fd = l && atomic_load_explicit(&l->q, memory_order_relaxed)
                 ? __atomic_load_n(&l->fd, __ATOMIC_RELAXED)
                 : -1;
    if (fd < 0)
        return -EBADF;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -errno;
    char buf[WEFT_ADDR_STRLEN];
    uint16_t port;
    int err = format_addr(&ss, buf, sizeof(buf), &port);
    return err ? err : port;
}

void weft_tcp_listener_close(struct weft_tcp_listener *l)
{
    struct weft__acceptq *q = l ? atomic_exchange(&l->q, NULL) : NULL;
    if (!q)
        return;
    atomic_store(&q->closed, true);
    uint32_t a = 1;
    /* Claiming the multishot (1 -> 2) keeps its slot alive until our release,
     * which cancels it on its ring; its final CQE closes what it queued. */
    if (atomic_compare_exchange_strong(&q->armed, &a, 2)) {
        /* The claimed slot keeps its worker, so the runtime, alive until
         * the owner takes our release's push (it stays counted in flight:
         * accept_final); the unpark that follows the push comes after, when
         * a destroying runtime may already be freed: hold its memory across
         * (a review: ASan use-after-free in weft__io_unpark with a delay
         * injected between the push and the unpark). */
        struct weft_runtime *rt = q->op->io->rt;
        weft__runtime_hold(rt);
        weft__op_release(q->op);
        weft__runtime_release(rt);
    }
    awaker_wake(&q->waker); /* a waiting accept finishes with -EBADF */
    /* The descriptor is closed by the last reference: at once when nothing
     * else holds one, else when the multishot's final CQE is reaped or the
     * waiting accept wakes. (Not shutdown(): a listening socket may be shared
     * with forked processes, which must go on accepting.) */
    __atomic_store_n(&l->fd, -1, __ATOMIC_RELAXED); /* weft_tcp_listener_port may read it */
    while (atomic_load(&l->entering)) /* an accept starting read the old q: let it take a ref */
        sched_yield();
    acceptq_unref(q);
}

/* ---- the multishot's completions (owner) --------------------------------------------- */

/* The ring's list of its single-shot accepts (owner only). */
static void accepts_link(struct weft__io *io, struct weft__op *op)
{
    op->u.acc.next = io->accepts;
    if (io->accepts)
        io->accepts->u.acc.pprev = &op->u.acc.next;
    op->u.acc.pprev = &io->accepts;
    io->accepts = op;
}

static void accepts_unlink(struct weft__op *op)
{
    if (!op->u.acc.pprev)
        return; /* taken off by weft__accepts_cancel */
    *op->u.acc.pprev = op->u.acc.next;
    if (op->u.acc.next)
        op->u.acc.next->u.acc.pprev = op->u.acc.pprev;
    op->u.acc.pprev = NULL;
}

void weft__accepts_cancel(struct weft__io *io)
{
    io->accepts_stopped = true; /* first: no completion resubmits one from here on */
    for (struct weft__op *op; (op = io->accepts);) {
        /* Off the list before the cancel: getting its SQE may reap, and
         * so end any of them (accept_final), this one included. Its cancel
         * then names a freed slot, which is harmless: no poll runs inside
         * that reap, so nothing takes the slot again before the cancel
         * reaches the kernel, which finds nothing (-ENOENT, ignored). */
        accepts_unlink(op);
        weft__op_cancel(io, op);
    }
}

static void accept_final(struct weft__io *io, struct weft__op *op, struct weft__acceptq *q)
{
    if (op->off & ACC_SINGLE)
        accepts_unlink(op);
    q->pausing = false;
    uint32_t a = 1;
    /* Seq_cst: the store half of the Dekker with the acceptor, which
     * registers and then reads `armed` (the wake below comes after). */
    if (atomic_compare_exchange_strong(&q->armed, &a, 0)) {
        io->inflight--;
        weft__op_free(io, op);
    } else {
        /* The closer claimed the slot: hand it over as any finished op. A
         * DONE slot stays counted in flight until the closer's release
         * frees it (free_done), so a destroy cannot free the slab under it. */
        uint32_t s = OPS_PENDING;
        if (!atomic_compare_exchange_strong(&op->state, &s, OPS_DONE)) {
            io->inflight--;
            weft__op_orphan_final(io, op, s);
        }
    }
    /* Woken after the disarm, so the acceptor's re-check sees armed == 0. */
    awaker_wake(&q->waker);
    acceptq_unref(q);
}

/* A single-shot accept's completion, or the multishot's -EINVAL (the
 * fallback, top of the file): true if the slot went back to the kernel,
 * armed as before, and the CQE is handled; false to end it as a multishot's
 * final CQE is ended (its socket queued, its error kept, the slot disarmed). */
static bool accept_rearm(struct weft__io *io, struct weft__op *op, struct weft__acceptq *q,
                         int32_t res)
{
    if (res < 0 && (res != -EINVAL || (op->off & ACC_SINGLE)))
        return false; /* an error for the next accept, or a cancel */
    /* Relaxed loads (top of the file): the state is this thread's own
     * ORPHAN once it queued a cancel of the slot, which a resubmitted accept
     * would escape; a cancel it queues later comes after the SQE below.
     * `closed` and `armed` spare an SQE when a close is on its way. */
    if (io->accepts_stopped || atomic_load_explicit(&q->closed, memory_order_relaxed) ||
        atomic_load_explicit(&q->armed, memory_order_relaxed) != 1 ||
        atomic_load_explicit(&op->state, memory_order_relaxed) != OPS_PENDING)
        return false;
    if (res < 0) { /* the multishot refused: maybe the flag (5.10-5.18) */
        op->off = ACC_SINGLE | ACC_PROBE;
        accepts_link(io, op);
    } else {
        if (op->off & ACC_PROBE) { /* the socket accepts: the flag was refused */
            io->accept_single = true;
            op->off = ACC_SINGLE;
        }
        uint32_t len = atomic_load_explicit(&q->tail, memory_order_relaxed) -
                       atomic_load_explicit(&q->head, memory_order_relaxed);
        if (len + 1 >= ACCEPTQ_PAUSE)
            return false; /* the pause: queued and disarmed as a final CQE */
        if (!acceptq_push(q, res))
            close(res);
        io->wakes++; /* as in weft__accept_complete */
        awaker_wake(&q->waker);
    }
    io->inflight--; /* weft__op_submit counts it again */
    weft__op_submit(io, op);
    return true;
}

void weft__accept_complete(struct weft__io *io, struct weft__op *op, int32_t res, uint32_t flags)
{
    struct weft__acceptq *q = op->u.acc.q;
    bool more = flags & IORING_CQE_F_MORE, pause = false;
    /* A running multishot's CQEs (F_MORE) never take this branch. */
    if (!more && ((op->off & ACC_SINGLE) || res == -EINVAL) && accept_rearm(io, op, q, res))
        return;
    if (res >= 0) {
        /* Closed: nobody will take it (the last reference drains the queue). */
        if (atomic_load_explicit(&q->closed, memory_order_relaxed) || !acceptq_push(q, res))
            close(res);
        uint32_t len = atomic_load_explicit(&q->tail, memory_order_relaxed) -
                       atomic_load_explicit(&q->head, memory_order_relaxed);
        pause = more && len >= ACCEPTQ_PAUSE && !q->pausing;
    } else if (!more && res != -ECANCELED) {
        if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM)
            atomic_store(&q->backoff_until, weft_now_ns() + ACCEPT_BACKOFF_NS);
        atomic_store(&q->error, res);
    }
    /* Counted as a wake, as an op's completion is (op.c): a park whose
     * arming reaped this (a full SQ) must not sleep past the acceptor. */
    io->wakes++;
    if (!more) {
        accept_final(io, op, q); /* wakes, and may free q */
        return;
    }
    awaker_wake(&q->waker);
    if (pause) {
        q->pausing = true;
        /* Last: making room for the cancel's SQE may reap (a submit's
         * -EBUSY on old kernels), and so run this multishot's final CQE,
         * which frees op and may free q. */
        weft__op_cancel(io, op);
    }
}

/* ---- the accept future ----------------------------------------------------------------- */

static int arm(struct weft_cx *cx, struct weft__acceptq *q)
{
    struct weft__op *op;
    int err = weft__op_start(cx, &op, OP_ACCEPT);
    if (err)
        return err;
    awaker_unregister(&op->waker); /* the queue's awaker wakes the acceptor */
    op->fd = q->lfd;
    op->u.acc.q = q;
    op->off = 0;
    if (op->io->accept_single) { /* the kernel refused the multishot (top of the file) */
        op->off = ACC_SINGLE;
        accepts_link(op->io, op);
    }
    /* Relaxed: the acceptor's own reference keeps q alive meanwhile. */
    atomic_fetch_add_explicit(&q->refs, 1, memory_order_relaxed);
    q->op = op;
    /* Seq_cst (its release half publishes q->op to a claimer): Dekker with a
     * closer, which stores `closed` and then tries the claim. */
    atomic_store(&q->armed, 1);
    weft__op_submit(op->io, op);
    uint32_t one = 1;
    if (atomic_load(&q->closed) && atomic_compare_exchange_strong(&q->armed, &one, 2))
        weft__op_release(op); /* closed meanwhile: cancel it, as the closer would */
    return 0;
}

static enum weft_poll accept_finish(struct weft_accept *a, int result)
{
    a->result = result;
    if (a->waiting) {
        struct weft__acceptq *q = a->q;
        awaker_unregister(&q->waker);
        /* Release: the next acceptor's CAS (accept_start) sees our pops. */
        atomic_store_explicit(&q->acceptor, 0, memory_order_release);
        a->waiting = false;
        a->q = NULL;
        acceptq_unref(q);
    }
    weft_future_drop(&a->backoff.base);
    return WEFT_READY;
}

/* Makes `a` its listener's acceptor, holding a reference to the queue, inside
 * the `entering` window (top of the file); 0, -EBADF (closed) or -EBUSY. */
static int accept_start(struct weft_accept *a)
{
    struct weft_tcp_listener *l = a->l;
    if (!l)
        return -EBADF;
    atomic_fetch_add(&l->entering, 1);
    struct weft__acceptq *q = atomic_load(&l->q);
    uint32_t none = 0;
    int err = 0;
    if (!q) {
        err = -EBADF;
    } else if (!atomic_compare_exchange_strong(&q->acceptor, &none, 1)) {
        err = -EBUSY;
    } else {
        /* Relaxed: the listener's reference stays until our decrement. */
        atomic_fetch_add_explicit(&q->refs, 1, memory_order_relaxed);
        a->q = q;
        a->waiting = true;
    }
    atomic_fetch_sub(&l->entering, 1);
    return err;
}

static enum weft_poll accept_step(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_accept *a = (struct weft_accept *)f;
    if (!a->waiting) {
        int err = accept_start(a);
        if (err)
            return accept_finish(a, err);
    }
    struct weft__acceptq *q = a->q; /* our own reference: the listener may close meanwhile */
    for (bool registered = false;; registered = true) {
        if (atomic_load(&q->closed)) /* seq_cst: after registering, see a closer's wake */
            return accept_finish(a, -EBADF);
        int fd = acceptq_pop(q);
        if (fd >= 0)
            return accept_finish(a, fd);
        int err = atomic_exchange(&q->error, 0);
        if (err)
            return accept_finish(a, err);
        if (atomic_load(&q->armed) == 0) {
            uint64_t until = atomic_load_explicit(&q->backoff_until, memory_order_relaxed);
            if (until > weft_now_ns()) {
                if (!a->backoff.base.ops)
                    weft_sleep_until_init(&a->backoff, until);
                if (weft_future_poll(&a->backoff.base, cx) == WEFT_PENDING) {
                    /* Registered too, so that a close ends the back-off at
                     * once; then the re-check of contract 3. */
                    awaker_register(&q->waker, cx->waker);
                    if (!atomic_load(&q->closed))
                        return WEFT_PENDING;
                    return accept_finish(a, -EBADF);
                }
            }
            weft_future_drop(&a->backoff.base);
            err = arm(cx, q);
            if (err)
                return accept_finish(a, err);
        }
        if (registered)
            return WEFT_PENDING;
        awaker_register(&q->waker, cx->waker);
    }
}

static void accept_drop(struct weft_future *f)
{
    struct weft_accept *a = (struct weft_accept *)f;
    if (a->waiting)
        accept_finish(a, a->result);
    weft_future_drop(&a->backoff.base);
}

static enum weft_poll accept_poll(struct weft_future *f, struct weft_cx *cx)
{
    return weft__leaf_poll_once(f, cx, accept_step);
}

static const struct weft_future_ops accept_ops = { accept_poll, accept_drop };

void weft_accept_init(struct weft_accept *a, struct weft_tcp_listener *l)
{
    a->base.ops = &accept_ops;
    a->base.resume = 0;
    a->result = 0;
    a->l = l;
    a->q = NULL;
    a->waiting = false;
    a->backoff.base.ops = NULL;
    a->backoff.op = NULL;
}

/* ---- connect ----------------------------------------------------------------------------- */

static enum weft_poll connect_step(struct weft_future *f, struct weft_cx *cx)
{
    struct weft_connect *c = (struct weft_connect *)f;
    if (!c->op) {
        if (!c->addrlen) {
            c->result = -EINVAL;
            return WEFT_READY;
        }
        int family = ((struct sockaddr *)c->addr)->sa_family;
        int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int err = fd < 0 ? -errno : weft__op_start(cx, &c->op, OP_CONNECT);
        if (err) {
            if (fd >= 0)
                close(fd);
            c->result = err;
            return WEFT_READY;
        }
        struct weft__op *op = c->op;
        op->fd = fd;
        memcpy(&op->u.conn.sa, c->addr, c->addrlen);
        op->u.conn.salen = c->addrlen;
        if (c->timeout_ns) {
            op->linked = 1;
            op->u.conn.ts.tv_sec = (int64_t)(c->timeout_ns / WEFT_NS_PER_SEC);
            op->u.conn.ts.tv_nsec = (long long)(c->timeout_ns % WEFT_NS_PER_SEC);
        }
        weft__op_submit(op->io, op);
        return WEFT_PENDING;
    }
    if (!weft__op_ready(c->op, cx->waker))
        return WEFT_PENDING;
    int res = c->op->res, fd = c->op->fd;
    weft__op_take(c->op); /* the socket is ours now */
    weft__op_release(c->op);
    c->op = NULL;
    if (res < 0) {
        close(fd);
        c->result = res == -ECANCELED && c->timeout_ns ? -ETIMEDOUT : res;
    } else {
        c->result = fd;
    }
    return WEFT_READY;
}

static void connect_drop(struct weft_future *f)
{
    /* In flight: the final CQE closes the socket. */
    weft__op_drop(&((struct weft_connect *)f)->op);
}

static enum weft_poll connect_poll(struct weft_future *f, struct weft_cx *cx)
{
    return weft__leaf_poll_once(f, cx, connect_step);
}

static const struct weft_future_ops connect_ops = { connect_poll, connect_drop };

void weft_connect_init(struct weft_connect *c, const char *addr, uint16_t port,
                       uint64_t timeout_ns)
{
    c->base.ops = &connect_ops;
    c->base.resume = 0;
    c->result = 0;
    c->timeout_ns = timeout_ns;
    c->op = NULL;
    struct sockaddr_in6 sa;
    memset(&sa, 0, sizeof sa); /* copied whole below, a NULL addr included */
    c->addrlen = addr ? parse_addr(addr, port, &sa) : 0;
    memcpy(c->addr, &sa, sizeof(c->addr));
}
