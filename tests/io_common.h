/* tests/io_common.h: helpers shared by the TCP test files: a generic task
 * future holding one of each I/O child, blocking-socket helpers for the peers
 * driven from plain threads, a data pattern to check streams byte for byte,
 * file-descriptor counting, and a gate many tasks can wait on.
 * Include it after defining _GNU_SOURCE; everything is static inline. */
#ifndef WEFT_TESTS_IO_COMMON_H
#define WEFT_TESTS_IO_COMMON_H

#include "common.h"
#include "pattern.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- a gate: tasks wait until it opens --------------------------------------------
 * A future that is ready once the gate is open. Waiters park their wakers in a
 * mutex-protected array; opening wakes them all. */

struct gate {
    pthread_mutex_t lock;
    bool open;
    struct weft_waker *w;
    size_t n, cap;
};

static inline void gate_init(struct gate *g, size_t cap)
{
    pthread_mutex_init(&g->lock, NULL);
    g->open = false;
    g->w = calloc(cap, sizeof *g->w);
    cr_assert_not_null(g->w);
    g->n = 0;
    g->cap = cap;
}

static inline void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = true;
    size_t n = g->n;
    g->n = 0;
    pthread_mutex_unlock(&g->lock);
    for (size_t i = 0; i < n; i++)
        weft_waker_wake(&g->w[i]);
}

static inline void gate_fini(struct gate *g)
{
    for (size_t i = 0; i < g->n; i++)
        weft_waker_drop(&g->w[i]);
    free(g->w);
    pthread_mutex_destroy(&g->lock);
}

struct gate_wait {
    struct weft_future base;
    struct gate *g;
    bool queued;
};

/* Every poll before the gate opens queues one more waker clone: a waiter
 * is polled again only when woken, so that happens once per opening. */
static inline enum weft_poll gate_wait_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct gate_wait *gw = (struct gate_wait *)f;
    pthread_mutex_lock(&gw->g->lock);
    bool open = gw->g->open;
    if (!open && !gw->queued) {
        CHECK(gw->g->n < gw->g->cap);
        gw->g->w[gw->g->n++] = weft_waker_clone(cx->waker);
        gw->queued = true;
    }
    pthread_mutex_unlock(&gw->g->lock);
    return open ? WEFT_READY : WEFT_PENDING;
}

static const struct weft_future_ops gate_wait_ops = { gate_wait_poll, NULL };

static inline void gate_wait_init(struct gate_wait *gw, struct gate *g)
{
    gw->base.ops = &gate_wait_ops;
    gw->base.resume = 0;
    gw->g = g;
    gw->queued = false;
}

/* ---- a task future with one child of each kind ------------------------------
 * A test writes a body (a poll function with the WEFT_ASYNC macros) and keeps
 * its state in these fields. The drop calls on_drop first (it may record the
 * dropping thread), then drops every child, then closes `fd` if `own_fd`. */

struct iot;
typedef enum weft_poll iot_body_fn(struct iot *t, struct weft_cx *cx);

struct iot {
    struct weft_future base;
    iot_body_fn *body;
    void (*on_drop)(struct iot *t);
    void *arg;                 /* the test's shared state */
    uint32_t idx;
    int fd;
    bool own_fd;               /* the drop closes fd */
    int res;                   /* the body's result */
    uint32_t i, n, polls;
    uint64_t got, sent, u64;
    unsigned char *buf;        /* a buffer the test hands the body */
    unsigned char msg[128];    /* a small buffer of the task's own */
    struct weft_tcp_listener *lst;
    struct weft_recv r, r2;
    struct weft_io io, io2;
    struct weft_accept acc;
    struct weft_connect conn;
    struct weft_sleep sl;
    struct weft_timeout to;
    struct weft_yield_now y;
    struct weft_join_all ja;
    struct weft_future *futs[2];
    struct gate_wait gw;
};

static inline enum weft_poll iot_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct iot *t = (struct iot *)f;
    t->polls++;
    return t->body(t, cx);
}

static inline void iot_drop(struct weft_future *f)
{
    struct iot *t = (struct iot *)f;
    if (t->on_drop)
        t->on_drop(t);
    weft_future_drop(&t->to.base); /* before its inner future */
    weft_future_drop(&t->ja.base);
    weft_future_drop(&t->r.base);
    weft_future_drop(&t->r2.base);
    weft_future_drop(&t->io.base);
    weft_future_drop(&t->io2.base);
    weft_future_drop(&t->acc.base);
    weft_future_drop(&t->conn.base);
    weft_future_drop(&t->sl.base);
    weft_future_drop(&t->y.base);
    if (t->own_fd && t->fd >= 0)
        close(t->fd);
    t->own_fd = false;
}

static const struct weft_future_ops iot_ops = { iot_poll, iot_drop };

static inline struct iot iot_make(iot_body_fn *body, void *arg, uint32_t idx, int fd)
{
    struct iot t;
    memset(&t, 0, sizeof t);
    t.base.ops = &iot_ops;
    t.body = body;
    t.arg = arg;
    t.idx = idx;
    t.fd = fd;
    return t;
}

static inline int iot_spawn(struct weft_runtime *rt, iot_body_fn *body, void *arg, uint32_t idx,
                            int fd, struct weft_join *j)
{
    struct iot t = iot_make(body, arg, idx, fd);
    return weft_spawn(rt, &t.base, sizeof t, j);
}

/* Runs a body to completion with weft_block_on; returns the finished (and
 * dropped) task for its fields. */
static inline struct iot iot_run(struct weft_runtime *rt, iot_body_fn *body, void *arg, int fd)
{
    struct iot t = iot_make(body, arg, 0, fd);
    cr_assert_eq(weft_block_on(rt, &t.base), 0);
    weft_future_drop(&t.base);
    return t;
}

/* Joins a task from the test thread; returns the join result (0 or
 * -ECANCELED) and copies the finished task to *out when it finished. */
static inline int32_t iot_join(struct weft_runtime *rt, struct weft_join *j, struct iot *out)
{
    cr_assert_eq(weft_block_on(rt, &j->base), 0);
    int32_t res = j->res;
    if (res == 0 && out)
        memcpy(out, weft_join_output(j), sizeof *out);
    weft_future_drop(&j->base);
    return res;
}

/* ---- threads ---------------------------------------------------------------------- */

static inline pid_t tid_now(void)
{
    return gettid();
}

/* ---- blocking sockets (the peer side, driven from plain threads) ------------------ */

static inline socklen_t make_addr(const char *addr, uint16_t port, struct sockaddr_in6 *sa)
{
    memset(sa, 0, sizeof *sa);
    struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
    if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        return sizeof *in4;
    }
    CHECK(inet_pton(AF_INET6, addr, &sa->sin6_addr) == 1);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(port);
    return sizeof *sa;
}

/* A connected blocking socket, or -errno. */
static inline int cli_connect(const char *addr, uint16_t port)
{
    struct sockaddr_in6 sa;
    socklen_t sl = make_addr(addr, port, &sa);
    int fd = socket(sa.sin6_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sl) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* A socket with a non-blocking connect started (for filling a backlog). */
static inline int cli_connect_nb(const char *addr, uint16_t port)
{
    struct sockaddr_in6 sa;
    socklen_t sl = make_addr(addr, port, &sa);
    int fd = socket(sa.sin6_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (struct sockaddr *)&sa, sl) == 0 || errno == EINPROGRESS);
    return fd;
}

/* A connected blocking socket; fails the test when the connect fails. */
static inline int cli_dial(const char *addr, uint16_t port)
{
    int fd = cli_connect(addr, port);
    cr_assert_geq(fd, 0, "connect: %s", strerror(-fd));
    return fd;
}

/* n blocking clients connected to addr:port (to a listener nobody accepts
 * from, each waits in its backlog); fails the test when one cannot connect. */
static inline void cli_dial_n(int *cli, int n, const char *addr, uint16_t port)
{
    for (int i = 0; i < n; i++) {
        cli[i] = cli_connect(addr, port);
        cr_assert_geq(cli[i], 0, "client %d: %s", i, strerror(-cli[i]));
    }
}

/* How many of the n clients see their connection closed by the server: a
 * read that would not block gives end of stream. */
static inline int count_closed_by_peer(const int *cli, int n)
{
    int closed = 0;
    for (int i = 0; i < n; i++) {
        char c;
        closed += recv(cli[i], &c, 1, MSG_DONTWAIT | MSG_PEEK) == 0;
    }
    return closed;
}

static inline void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

static inline void close_pair(int a, int b)
{
    close(a);
    close(b);
}

static inline void write_full(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

/* Reads until `len` bytes or end of stream; returns the bytes read, or
 * -errno (-EAGAIN when SO_RCVTIMEO ran out first). */
static inline ssize_t read_full(int fd, void *buf, size_t len)
{
    unsigned char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static inline void set_rcvtimeo(int fd, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
}

/* A client of an echo: writes `total` bytes of stream `seed`, `chunk` (at
 * most 1000) at a time, and reads each chunk back before the next; a read
 * that waits 10 s, or a wrong byte, clears `ok`. Run it on a thread of its
 * own (pthread_create(..., echo_client_run, c)) or call it. */
struct echo_client {
    int fd;
    uint64_t seed;
    size_t total, chunk;
    bool ok;
};

static inline void *echo_client_run(void *arg)
{
    struct echo_client *c = arg;
    unsigned char out[1000], in[1000];
    size_t done = 0;
    set_rcvtimeo(c->fd, 10000);
    c->ok = true;
    while (done < c->total && c->ok) {
        size_t n = c->total - done < c->chunk ? c->total - done : c->chunk;
        pat_fill(out, n, c->seed, done);
        write_full(c->fd, out, n);
        c->ok = read_full(c->fd, in, n) == (ssize_t)n && pat_ok(in, n, c->seed, done);
        done += n;
    }
    return NULL;
}

/* Listens on addr:0 and returns the port. */
static inline uint16_t listen_any(struct weft_tcp_listener *l, const char *addr)
{
    cr_assert_eq(weft_tcp_listen(l, addr, 0, NULL), 0);
    int port = weft_tcp_listener_port(l);
    cr_assert_gt(port, 0);
    return (uint16_t)port;
}

static inline bool have_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* The number of open file descriptors of this process. */
static inline int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* Raises RLIMIT_NOFILE to `want` if this process may raise its hard limit, else
 * the soft limit to the hard one; returns the hard limit now in force. */
static inline rlim_t raise_nofile(rlim_t want)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max < want) { /* root may raise the hard limit (up to fs.nr_open) */
        struct rlimit up = { want, want };
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            return want;
    }
    rl.rlim_cur = rl.rlim_max;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    return rl.rlim_max;
}


/* Makes the runtimes this test creates from here on run as on a kernel
 * without multishot accept (5.10-5.18): the kernel refuses it with EINVAL and
 * listeners fall back to single-shot accepts (io/tcp.c). Each test runs in a
 * process of its own, so this stays in the test. */
static inline void without_multishot_accept(void)
{
    cr_assert_eq(setenv("WEFT_IO_NO_OPS", "accept_multishot", 1), 0);
}

/* Skips a test of the provided-buffer ring's own mechanics where the rings
 * have none: WEFT_IO_NO_OPS=buf_ring (ctest's *_old_kernel entries), as on
 * a kernel before 5.19, where receives wait with a peek and read into heap
 * buffers (io/bufring.c). */
static inline void skip_without_buffer_ring(void)
{
    const char *e = getenv("WEFT_IO_NO_OPS");
    if (e && strstr(e, "buf_ring"))
        cr_skip_test("no provided-buffer ring here (WEFT_IO_NO_OPS=buf_ring): receives use "
                     "heap buffers");
}

/* SQEs the runtime's rings have submitted so far (the metrics' sum). */
static inline uint64_t rt_sqes(struct weft_runtime *rt)
{
    struct weft_metrics *m = malloc(sizeof *m);
    cr_assert_not_null(m);
    cr_assert_eq(weft_metrics_read(rt, m), 0);
    uint64_t n = 0;
    for (uint32_t i = 0; i < m->workers; i++)
        n += m->worker[i].sqes;
    free(m);
    return n;
}

/* FNV-1a, continued from `h` (start with FNV_START). */
#define FNV_START UINT64_C(0xcbf29ce484222325)
static inline uint64_t fnv(uint64_t h, const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * UINT64_C(0x100000001b3);
    return h;
}

/* ---- TCP helpers shared by the test files ---------------------------------------- */

#define MS WEFT_NS_PER_MS
#define MIB (1024 * 1024)

/* A connected pair made by weft_accept and weft_connect together. */
struct pairing {
    struct weft_tcp_listener *l;
    const char *addr;
    uint16_t port;
};

static inline enum weft_poll body_pair(struct iot *t, struct weft_cx *cx)
{
    struct pairing *p = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    weft_accept_init(&t->acc, p->l);
    weft_connect_init(&t->conn, p->addr, p->port, 0);
    t->futs[0] = &t->acc.base;
    t->futs[1] = &t->conn.base;
    CHECK(weft_join_all_init(&t->ja, t->futs, 2) == 0);
    WEFT_AWAIT(&t->base, cx, &t->ja.base);
    t->fd = t->acc.result;
    t->res = t->conn.result;
    WEFT_ASYNC_END(&t->base);
}

/* *srv is the accepted socket, *cli the connected one (both blocking). */
/* Closes `l` and waits until its socket is closed too: the descriptor goes
 * with the listener's last reference (its multishot accept's final CQE, at
 * the ring's next turn), and tests count descriptors. */
static inline void listener_close_wait(struct weft_tcp_listener *l)
{
    int fd = l->fd;
    struct stat before, now;
    cr_assert_eq(fstat(fd, &before), 0);
    weft_tcp_listener_close(l);
    double end = now_s() + 5;
    while (fstat(fd, &now) == 0 && now.st_ino == before.st_ino) {
        cr_assert_lt(now_s(), end, "the listener's socket is still open after 5 s");
        sleep_us(100);
    }
}

static inline void tcp_pair(struct weft_runtime *rt, const char *addr, int *srv, int *cli)
{
    struct weft_tcp_listener l;
    struct pairing p = { &l, addr, listen_any(&l, addr) };
    struct iot t = iot_run(rt, body_pair, &p, -1);
    cr_assert_geq(t.fd, 0, "accept: %s", strerror(-t.fd));
    cr_assert_geq(t.res, 0, "connect: %s", strerror(-t.res));
    listener_close_wait(&l);
    *srv = t.fd;
    *cli = t.res;
}

/* Runs `n` echo connections at once: a task running `body` on each server
 * side, an echo_client thread of `per_conn` bytes (1000 at a time) on each
 * client side; checks every byte came back, then that each task ended with
 * res 0 after counting `per_conn` bytes in `got`. */
static inline void run_echo_clients(struct weft_runtime *rt, iot_body_fn *body, int n,
                                    size_t per_conn)
{
    struct echo_client *c = calloc((size_t)n, sizeof *c);
    int *srv = calloc((size_t)n, sizeof *srv);
    struct weft_join *j = calloc((size_t)n, sizeof *j);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    cr_assert(c && srv && j && th);
    for (int i = 0; i < n; i++) {
        tcp_pair(rt, "127.0.0.1", &srv[i], &c[i].fd);
        c[i] = (struct echo_client){ c[i].fd, (uint64_t)i + 1, per_conn, 1000, false };
        cr_assert_eq(iot_spawn(rt, body, NULL, (uint32_t)i, srv[i], &j[i]), 0);
    }
    for (int i = 0; i < n; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, echo_client_run, &c[i]), 0);
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        cr_assert(c[i].ok, "connection %d lost, stalled or corrupted bytes", i);
        shutdown(c[i].fd, SHUT_WR);
        struct iot out;
        cr_assert_eq(iot_join(rt, &j[i], &out), 0);
        cr_assert_eq(out.res, 0, "connection %d ended with %d", i, out.res);
        cr_assert_eq(out.got, per_conn);
        close_pair(srv[i], c[i].fd);
    }
    free(c);
    free(srv);
    free(j);
    free(th);
}

/* Starts a runtime as start_rt does and makes a tcp_pair on 127.0.0.1. */
static inline struct weft_runtime *start_rt_pair_on(uint32_t workers, struct counting_alloc *ca,
                                                    const char *addr, int *srv, int *cli)
{
    struct weft_runtime *rt = start_rt(workers, ca);
    tcp_pair(rt, addr, srv, cli);
    return rt;
}

static inline struct weft_runtime *start_rt_pair(uint32_t workers, struct counting_alloc *ca,
                                                 int *srv, int *cli)
{
    return start_rt_pair_on(workers, ca, "127.0.0.1", srv, cli);
}

static inline void check_addr(int fd, bool peer, const char *want, uint16_t want_port)
{
    char a[WEFT_ADDR_STRLEN];
    uint16_t port = 0;
    int err = peer ? weft_tcp_peer_addr(fd, a, sizeof a, &port)
                   : weft_tcp_local_addr(fd, a, sizeof a, &port);
    cr_assert_eq(err, 0, "%s_addr: %s", peer ? "peer" : "local", strerror(-err));
    cr_assert_str_eq(a, want);
    if (want_port)
        cr_assert_eq(port, want_port, "%s port %u, want %u", peer ? "peer" : "local", port,
                     want_port);
}

struct conn_args {
    const char *addr;
    uint16_t port;
    uint64_t timeout_ns;
};

/* Connects to a->addr:a->port (a->timeout_ns); t->res is the result. */
static inline enum weft_poll body_connect(struct iot *t, struct weft_cx *cx)
{
    struct conn_args *a = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    weft_connect_init(&t->conn, a->addr, a->port, a->timeout_ns);
    WEFT_AWAIT(&t->base, cx, &t->conn.base);
    t->res = t->conn.result;
    WEFT_ASYNC_END(&t->base);
}

/* A listener with backlog 0 and its queue full: further SYNs are dropped, so
 * a connect hangs (the kernel would retry for minutes). */
struct full_backlog {
    int lfd;
    uint16_t port;
    int fill[3];
};

/* A plain listening socket on 127.0.0.1 (not a weft listener) with the given
 * backlog; *port is its port. */
static inline int plain_listen(int backlog, uint16_t *port)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(lfd, 0);
    struct sockaddr_in6 sa;
    socklen_t sl = make_addr("127.0.0.1", 0, &sa);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sl), 0);
    cr_assert_eq(listen(lfd, backlog), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin6_port); /* same offset in sockaddr_in */
    return lfd;
}

static inline void full_backlog_open(struct full_backlog *b)
{
    b->lfd = plain_listen(0, &b->port);
    for (int i = 0; i < 3; i++)
        b->fill[i] = cli_connect_nb("127.0.0.1", b->port);
    sleep_us(50000);
}

static inline void full_backlog_close(struct full_backlog *b)
{
    for (int i = 0; i < 3; i++)
        close(b->fill[i]);
    close(b->lfd);
}

#endif
