/* server.h: the skeleton the example servers share (examples/echo.c,
 * examples/http.c): the command line, signals, the accept loop, the list of
 * live connections and the graceful stop. A program defines its connection
 * future, whose struct embeds a `struct conn_sock`, and a function that spawns
 * one; then its main calls server_main. Every function here is static: the
 * header is included by one file of each program.
 *
 *   NAME [--port P] [--workers N] [--addr A] [--drain-ms MS]
 *
 * Defaults: port 8080, one worker per CPU (0), address 127.0.0.1, a drain
 * timeout of 5000 ms. At start the server prints one line to stdout, "NAME
 * listening on ADDR:PORT", with the port actually bound (so --port 0 works).
 * With WEFT_METRICS set in the environment, it prints weft_metrics_dump to
 * stderr at exit.
 *
 * The shape of it:
 *  - main blocks SIGINT and SIGTERM before the runtime starts its threads
 *    (they inherit the mask), so the signals wait in a signalfd; it binds the
 *    listener and runs the server future with weft_block_on.
 *  - The server future accepts in a loop and spawns one detached task per
 *    connection. It waits for the accept and for a read of the signalfd at
 *    the same time (the `either` future), so a signal stops it at once.
 *  - On a signal it drops the pending accept, closes the listener, shuts down
 *    the reading side of every connection not in the middle of a request (an
 *    idle one then sees end of stream and finishes; the others finish their
 *    request, see server_stopping() and close), and waits until the last
 *    connection task is gone or the drain timeout passes (a connection
 *    closes once the client has all it was sent: conn_linger below; signals
 *    that come within 100 ms of the first are part of the same stop). main then destroys
 *    the runtime, which drops the tasks still running (their drop closes the
 *    socket), and exits 0. A second signal during the drain ends it at once
 *    (the second Ctrl-C of an impatient user). */
#ifndef EXAMPLES_SERVER_H
#define EXAMPLES_SERVER_H

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <weft.h>

/* ---- the live connections ----------------------------------------------------- */

/* A connection's socket, and its place on the list of live connections. Every
 * running connection is on the list, so that a stop can reach the idle ones
 * (they sit in a receive, and would otherwise wait for the drain timeout).
 * The lock is taken when a connection starts and when it ends, never per read. */
struct conn_sock {
    struct conn_sock *prev, *next;
    int fd;
    _Atomic bool partial;      /* holds part of a request: a stop lets it finish */
};

static struct {
    pthread_mutex_t lock;
    struct conn_sock head;     /* sentinel of a circular list */
    atomic_bool stopping;      /* set under the lock; connections may read it without */
} conns = { PTHREAD_MUTEX_INITIALIZER, { .prev = &conns.head, .next = &conns.head }, false };

static atomic_uint live;       /* connection tasks spawned and not yet dropped */

/* Spawns the connection future f (size bytes) for socket fd, detached, as a
 * task called `name` (weft_spawn_named: a string literal). */
static void conn_spawn(struct weft_runtime *rt, const struct weft_future *f, size_t size, int fd,
                       const char *name)
{
    weft_tcp_set_nodelay(fd, true);
    atomic_fetch_add(&live, 1);
    if (weft_spawn_named(rt, f, size, NULL, name) < 0) { /* nothing ran: undo by hand */
        atomic_fetch_sub(&live, 1);
        close(fd);
    }
}

/* At the connection's first poll (its address is final then): puts it on the
 * list. False when the server is stopping already: finish at once. */
static bool conn_join(struct conn_sock *s)
{
    pthread_mutex_lock(&conns.lock);
    bool ok = !atomic_load(&conns.stopping);
    if (ok) {
        s->prev = &conns.head;
        s->next = conns.head.next;
        s->next->prev = s;
        conns.head.next = s;
    }
    pthread_mutex_unlock(&conns.lock);
    return ok;
}

/* In the connection's drop, after its operations are dropped: leaves the list
 * (before the close, so that a stop never shuts down a reused descriptor),
 * closes the socket, and stops counting the connection. */
static void conn_close(struct conn_sock *s)
{
    pthread_mutex_lock(&conns.lock);
    if (s->next) {
        s->prev->next = s->next;
        s->next->prev = s->prev;
        s->next = s->prev = NULL;
    }
    pthread_mutex_unlock(&conns.lock);
    close(s->fd);
    atomic_fetch_sub(&live, 1);
}

/* True once the server is stopping: a connection closes after the request in hand. */
static inline bool server_stopping(void)
{
    return atomic_load_explicit(&conns.stopping, memory_order_relaxed);
}

/* No connection joins from now on, and the reading side of those not in the
 * middle of a request is shut down: their receive ends with 0 (end of stream)
 * once the bytes already there are read. (A request whose first bytes arrive
 * while this runs may still be cut: the window is one read wide.) */
static void conns_stop(void)
{
    pthread_mutex_lock(&conns.lock);
    atomic_store(&conns.stopping, true);
    for (struct conn_sock *s = conns.head.next; s != &conns.head; s = s->next)
        if (!atomic_load_explicit(&s->partial, memory_order_relaxed))
            shutdown(s->fd, SHUT_RD);
    pthread_mutex_unlock(&conns.lock);
}

/* ---- closing without losing what was sent ------------------------------------------
 * A socket closed while bytes the client sent are still unread (or that
 * arrive after the close) makes the kernel answer with a reset, which throws
 * away whatever the send queue still holds: a client reading a little late
 * lost the responses before a `Connection: close` (RFC 9112, 9.6), or what
 * an echo had sent before a stop. So a connection about to close first
 * reads and drops its input until the client's kernel has taken everything
 * (the send queue is empty), checking every 10 ms, for LINGER_NS at most (a
 * client that never reads is not waited for longer; nor beyond the drain
 * timeout, after which the stop drops the task). Then, so that a client
 * whose last bytes were still on their way gets its end of stream rather
 * than a reset, it drains what still comes until a look finds none, for
 * DRAIN_LOOKS looks at most (a client that keeps sending is reset then, as
 * it would be anyway); each look ACKs at once what it read (TCP_QUICKACK),
 * so that bytes a client's Nagle holds back for that ACK come before the
 * next look. A look drops at most DROP_MAX while the client still has
 * responses to read (it may flood without reading for the whole LINGER_NS),
 * DRAIN_MAX after. Not shutdown(SHUT_WR) first: a socket shut down both ways
 * (a stop shuts the reading side) resets on any input. */
#define LINGER_NS (2000 * WEFT_NS_PER_MS)
#define DRAIN_LOOKS 10
#define DROP_MAX (32 * 1024)
#define DRAIN_MAX (1024 * 1024)

/* Reads and drops up to `max` bytes of what the client sent and we did not
 * read. Never blocks. True when there was some. */
static bool discard_input(int fd, size_t max)
{
    char sink[4096];
    size_t got = 0;
    ssize_t n;
    while (got < max && (n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
        got += (size_t)n;
    if (got) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    return got > 0;
}

/* Ready once fd's send queue is empty and input has stopped (above), the
 * connection is gone (a reset: what it held is lost anyway, though SIOCOUTQ
 * still counts it), or after LINGER_NS; drops input meanwhile. */
struct conn_linger {
    struct weft_future base;
    int fd;
    uint8_t drains;             /* looks that found input after the send queue emptied */
    uint64_t deadline;
    struct weft_sleep tick;
};

static enum weft_poll linger_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct conn_linger *l = (struct conn_linger *)f;
    WEFT_ASYNC_BEGIN(f);
    for (;;) {
        int unsent;
        struct tcp_info ti;
        socklen_t tl = sizeof ti;
        bool gone = getsockopt(l->fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
                    ti.tcpi_state != TCP_ESTABLISHED && ti.tcpi_state != TCP_CLOSE_WAIT;
        if (gone || ioctl(l->fd, SIOCOUTQ, &unsent) < 0 || weft_now_ns() >= l->deadline)
            WEFT_RETURN(f);
        bool input = discard_input(l->fd, unsent ? DROP_MAX : DRAIN_MAX);
        if (unsent == 0 && (!input || ++l->drains > DRAIN_LOOKS))
            WEFT_RETURN(f);
        weft_sleep_init(&l->tick, 10 * WEFT_NS_PER_MS);
        WEFT_AWAIT(f, cx, &l->tick);
        weft_future_drop(&l->tick.base);
    }
    WEFT_ASYNC_END(f);
}

static void linger_drop(struct weft_future *f)
{
    weft_future_drop(&((struct conn_linger *)f)->tick.base);
}

static const struct weft_future_ops linger_ops = { linger_poll, linger_drop };

static void conn_linger_init(struct conn_linger *l, int fd)
{
    *l = (struct conn_linger){ .base = { &linger_ops, 0 }, .fd = fd,
                               .deadline = weft_now_ns() + LINGER_NS };
}

/* ---- the server future ------------------------------------------------------------ */

/* Ready as soon as one of two futures is; `which` says which (0: a, 1: b).
 * Neither is dropped: the caller reads the ready one and decides. */
struct either {
    struct weft_future base;
    struct weft_future *a, *b;
    int which;
};

static enum weft_poll either_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct either *e = (struct either *)f;
    e->which = 0;
    if (weft_future_poll(e->a, cx) == WEFT_READY)
        return WEFT_READY;
    e->which = 1;
    return weft_future_poll(e->b, cx);
}

static const struct weft_future_ops either_ops = { either_poll, NULL };

/* Errors after which accepting again is pointless (the listener is unusable);
 * the others are transient (out of descriptors or memory, for which the
 * accept backs off by itself, or a connection that failed early). */
static bool accept_fatal(int err)
{
    return err == -EBADF || err == -EINVAL || err == -ENOTSOCK || err == -EBUSY ||
           err == -ENXIO || err == -EOPNOTSUPP;
}

struct server {
    struct weft_future base;
    const char *name;
    void (*conn_start)(struct weft_runtime *rt, int fd);
    struct weft_runtime *rt;
    struct weft_tcp_listener *l;
    int sfd;                       /* signalfd of SIGINT and SIGTERM */
    int status;                    /* exit status: 1 after a fatal error */
    uint64_t drain_ns, deadline, stopped_at;
    struct signalfd_siginfo si;
    struct weft_io sig;            /* the read of sfd into si */
    struct weft_accept accept;
    struct either first;           /* the signal or the accept */
    struct weft_sleep tick;        /* while draining */
};

/* While draining: reads the signals waiting; true if one came 100 ms or
 * more after the stop began. Those that came with the one that stopped us
 * (a SIGINT to the process group and a SIGTERM forwarded by a wrapper, which
 * may reach us a moment apart) are part of the same stop, not an impatient
 * user's second Ctrl-C. */
static bool second_signal(struct server *self)
{
    bool second = false;
    while (poll(&(struct pollfd){ self->sfd, POLLIN, 0 }, 1, 0) == 1 &&
           read(self->sfd, &self->si, sizeof(self->si)) == (ssize_t)sizeof(self->si))
        second |= weft_now_ns() - self->stopped_at >= 100 * WEFT_NS_PER_MS;
    return second;
}

static enum weft_poll server_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct server *self = (struct server *)f;
    WEFT_ASYNC_BEGIN(f);
    /* Offset -1: read at the current position, as read(2) does. */
    weft_read_at_init(&self->sig, self->sfd, &self->si, sizeof(self->si), (uint64_t)-1);
    for (;;) {
        weft_accept_init(&self->accept, self->l);
        self->first = (struct either){ { &either_ops, 0 }, &self->sig.base, &self->accept.base, 0 };
        WEFT_AWAIT(f, cx, &self->first);
        if (self->first.which == 0) { /* a signal, or the read failed */
            if (self->sig.result < 0) {
                fprintf(stderr, "%s: signalfd read: %s\n", self->name, strerror(-self->sig.result));
                self->status = 1;
            }
            break;
        }
        weft_future_drop(&self->accept.base);
        if (self->accept.result >= 0) {
            self->conn_start(self->rt, self->accept.result);
        } else if (accept_fatal(self->accept.result)) {
            fprintf(stderr, "%s: accept: %s\n", self->name, strerror(-self->accept.result));
            self->status = 1;
            break;
        }
    }

    /* Stop: the listener may close only once no accept is pending on it. */
    weft_future_drop(&self->accept.base);
    weft_future_drop(&self->sig.base);
    weft_tcp_listener_close(self->l);
    conns_stop();
    /* The last connection could wake us, but polling the count every 10 ms
     * while draining is simpler and costs nothing the rest of the time. A
     * second SIGINT or SIGTERM meanwhile ends the drain at once. */
    self->stopped_at = weft_now_ns();
    self->deadline = self->stopped_at + self->drain_ns;
    while (atomic_load(&live) > 0 && weft_now_ns() < self->deadline && !second_signal(self)) {
        weft_sleep_init(&self->tick, 10 * WEFT_NS_PER_MS);
        WEFT_AWAIT(f, cx, &self->tick);
        weft_future_drop(&self->tick.base);
    }
    WEFT_ASYNC_END(f);
}

static void server_drop(struct weft_future *f)
{
    struct server *self = (struct server *)f;
    weft_future_drop(&self->accept.base);
    weft_future_drop(&self->sig.base);
    weft_future_drop(&self->tick.base);
}

static const struct weft_future_ops server_ops = { server_poll, server_drop };

/* ---- main ------------------------------------------------------------------------- */

static const char *usage_extra = ""; /* the program's own options (server_def) */

static void usage(const char *name)
{
    fprintf(stderr, "usage: %s [--port P] [--workers N] [--addr A] [--drain-ms MS]%s\n", name,
            usage_extra);
    exit(2);
}

static unsigned long number(const char *name, const char *s, unsigned long max)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v > max)
        usage(name);
    return v;
}

/* What a program gives server_main. */
#define MAX_EXTRA_OPTS 8
struct server_def {
    const char *name;              /* for the messages */
    void (*conn_start)(struct weft_runtime *rt, int fd); /* spawns a connection task */
    uint32_t io_buffer_size;       /* bytes per provided receive buffer; 0: the default */
    /* Options of the program's own, each taking a value (at most
     * MAX_EXTRA_OPTS names, NULL-terminated): `option` gets each one given
     * and returns false for a bad value; `configure` may then adjust the
     * runtime's configuration. All may be NULL. */
    const char *const *extra;
    const char *extra_usage;       /* appended to the usage line */
    bool (*option)(const char *opt, const char *value);
    void (*configure)(struct weft_runtime_config *cfg);
};

/* Parses the command line, serves until SIGINT or SIGTERM, and returns the
 * exit status: 0, 1 on an error, 2 (with a usage line) for a bad command line. */
static int server_main(int argc, char **argv, const struct server_def *def)
{
    struct option opts[4 + MAX_EXTRA_OPTS + 1] = {
        { "port", required_argument, NULL, 'p' },
        { "workers", required_argument, NULL, 'w' },
        { "addr", required_argument, NULL, 'a' },
        { "drain-ms", required_argument, NULL, 'd' },
    };
    const char *name = def->name, *addr = "127.0.0.1";
    for (int i = 0; def->extra && def->extra[i]; i++) {
        if (i == MAX_EXTRA_OPTS) { /* the program's own mistake: say so, not "unrecognized" */
            fprintf(stderr, "%s: more than %d options of its own\n", name, MAX_EXTRA_OPTS);
            return 1;
        }
        opts[4 + i] = (struct option){ def->extra[i], required_argument, NULL, 256 + i };
    }
    if (def->extra_usage)
        usage_extra = def->extra_usage;
    unsigned long port = 8080, workers = 0, drain_ms = 5000;
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (c >= 256) {
            if (!def->option(def->extra[c - 256], optarg))
                usage(name);
        } else if (c == 'p')
            port = number(name, optarg, 65535);
        else if (c == 'w')
            workers = number(name, optarg, WEFT_MAX_WORKERS);
        else if (c == 'a')
            addr = optarg;
        else if (c == 'd')
            drain_ms = number(name, optarg, 24 * 3600 * 1000UL);
        else
            usage(name);
    }
    if (optind < argc)
        usage(name);

    /* Blocked before any thread exists, so that every thread inherits the
     * mask and the signals stay queued for the signalfd. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    int sfd = signalfd(-1, &stop, SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "%s: signalfd: %s\n", name, strerror(errno));
        return 1;
    }

    /* Configured before the listener exists: a program's setup (the stall
     * demo's calibration) must not keep early clients waiting. */
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = (uint32_t)workers;
    cfg.io_buffer_size = def->io_buffer_size;
    if (def->configure)
        def->configure(&cfg);
    struct weft_tcp_listener l;
    int err = weft_tcp_listen(&l, addr, (uint16_t)port, NULL);
    if (err) {
        fprintf(stderr, "%s: listen on %s port %lu: %s\n", name, addr, port, strerror(-err));
        return 1;
    }
    struct weft_runtime *rt;
    err = weft_runtime_create(&rt, &cfg);
    if (err) {
        fprintf(stderr, "%s: runtime: %s\n", name, strerror(-err));
        weft_tcp_listener_close(&l);
        return 1;
    }
    printf(strchr(addr, ':') ? "%s listening on [%s]:%d\n" : "%s listening on %s:%d\n", name,
           addr, weft_tcp_listener_port(&l));
    fflush(stdout);

    struct server srv = { .base = { &server_ops, 0 }, .name = name, .conn_start = def->conn_start,
                          .rt = rt, .l = &l, .sfd = sfd, .drain_ns = drain_ms * WEFT_NS_PER_MS };
    err = weft_block_on(rt, &srv.base);
    if (err)
        fprintf(stderr, "%s: %s\n", name, strerror(-err));
    weft_future_drop(&srv.base);
    if (getenv("WEFT_METRICS")) /* the runtime's counters, at exit (docs/blocking.md) */
        weft_metrics_dump(rt, stderr);
    unsigned left = atomic_load(&live);
    weft_runtime_destroy(rt);    /* drops the connections still running */
    weft_tcp_listener_close(&l); /* closed already, unless block_on failed */
    close(sfd);
    if (left)
        fprintf(stderr, "%s: drain timeout: closed %u connection(s)\n", name, left);
    return err ? 1 : srv.status;
}

#endif
