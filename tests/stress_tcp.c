/* tests/stress_tcp.c: many TCP connections echoing across 4 workers while
 * tasks move between workers and operations are dropped mid-flight.
 *
 * A plain program rather than a Criterion test so that it runs under
 * ThreadSanitizer (which cannot start Criterion). Usage: stress_tcp [full|small].
 *
 * An acceptor task spawns an echo task per connection (weft_recv, then
 * send_all of the same buffer, until end of stream; on odd client ports,
 * weft_send_recv_from of each received buffer linked to the next receive). Clients run in waves of
 * WAVE (full: 60 waves, small: 12); each connects, then does 1-8 round trips
 * of 1..8192 bytes of its own pattern, receiving the echo alternately with
 * weft_recv and recv_into and checking every byte. Before a quarter of the
 * round trips a client first drops a receive mid-wait (a 100-300 us timeout
 * around a weft_recv, or around a recv_into into a heap buffer that is freed
 * as soon as the drop returns): nothing is due then, so the stream must go on
 * intact. Half of each wave is spawned from this thread (with join handles;
 * an eighth of those are aborted at a random moment, their drops running on
 * whichever worker picks them up), half by a task on a worker (so the others
 * steal them); a task spinning 2 ms per wave unbalances the workers.
 *
 * Then rounds of a listener closed from this thread 0-500 us after an accept
 * loop started on it, with 0-3 clients connecting (full: 400, small: 100):
 * the loop must end with -EBADF, and no accepted socket may leak.
 *
 * Checked: every client either finished with every byte right or was
 * aborted; every echo task ended; the descriptor count is back where it was;
 * the runtime's allocations balance after destroy. A wave's connections
 * arrive as one burst; 128 stays below the accept queue's ring of 256 (past
 * it the overflow path takes them: test_tcp_load.c's accept_burst test). A
 * watchdog exits with status 2 if no client finishes for WATCHDOG_SECS,
 * listing the stuck clients and echo tasks and where their bytes are.
 * Prints one line; exits 0 only on success. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <weft.h>

#include "pattern.h"

#define WORKERS 4
#define WAVE 128
#define FULL_WAVES 60
#define SMALL_WAVES 12
#define MAX_CLIENTS (FULL_WAVES * WAVE)
#define MAXMSG 8192
#define WATCHDOG_SECS 20
#define FULL_CLOSE_ROUNDS 400
#define SMALL_CLOSE_ROUNDS 100

static struct weft_runtime *rt;
static struct weft_tcp_listener lst;
static uint16_t port;

static _Atomic uint64_t echo_started, echo_done, echo_bytes, clients_ok, clients_failed,
    recv_drops, recv_into_drops, round_trips, progress;
static _Atomic int first_error;

/* ---- diagnostics: what each client and echo task is doing, for the watchdog -- */

enum phase { PH_NONE, PH_CONNECT, PH_DROP, PH_SEND, PH_RECV, PH_RECV_INTO, PH_DONE, PH_GONE };
static const char *const phase_name[] = { "not started", "connecting", "dropping a receive",
                                          "sending", "in weft_recv", "in recv_into", "done",
                                          "dropped" };

struct client_diag {
    _Atomic uint8_t phase;
    _Atomic uint8_t last_drop;     /* 1: a weft_recv, 2: a recv_into */
    _Atomic uint16_t port;         /* its local port */
    _Atomic int fd;
    _Atomic uint32_t polls;
    _Atomic uint64_t sent, got;    /* stream offsets */
};

struct echo_diag {                 /* indexed by the client's port */
    _Atomic int fd;
    _Atomic uint8_t alive;
    _Atomic uint8_t waiting;       /* in weft_recv */
    _Atomic uint64_t in, out;
};

static struct client_diag cdiag[MAX_CLIENTS];
static struct echo_diag ediag[65536];

static void set_phase(uint32_t id, enum phase p)
{
    atomic_store_explicit(&cdiag[id].phase, (uint8_t)p, memory_order_relaxed);
}

static _Atomic long allocs, frees, bad_frees;

static void fail_client(int err, uint32_t id)
{
    int none = 0;
    if (atomic_compare_exchange_strong(&first_error, &none, err))
        fprintf(stderr, "stress_tcp: client %u failed: %d (%s)\n", id, err, strerror(-err));
    atomic_fetch_add(&clients_failed, 1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

/* ---- a counting allocator (the runtime's memory must balance) ------------------- */

static void *count_alloc(void *ctx, size_t size)
{
    (void)ctx;
    size_t *p = malloc(sizeof(max_align_t) + size);
    if (!p)
        return NULL;
    *p = size;
    atomic_fetch_add(&allocs, 1);
    return (char *)p + sizeof(max_align_t);
}

static void count_free(void *ctx, void *q, size_t size)
{
    (void)ctx;
    size_t *p = (size_t *)((char *)q - sizeof(max_align_t));
    if (*p != size)
        atomic_fetch_add(&bad_frees, 1);
    atomic_fetch_add(&frees, 1);
    free(p);
}

static const struct weft_allocator counting = { count_alloc, count_free, NULL };

/* ---- echo ------------------------------------------------------------------------------ */

struct echo {
    struct weft_future base;
    int fd;
    uint16_t pport;
    struct weft_recv r;
    struct weft_io io;
    struct weft_recv rx[2];        /* odd ports: weft_send_recv_from */
    uint8_t cur;
    bool from_mode;
    uint32_t sending;              /* bytes of the pair in flight */
};

/* The round trips of an odd port's echo: each receive's buffer is sent back
 * linked to the next receive, and goes back to its ring (maybe another
 * worker's, as tasks move) once sent. */
static enum weft_poll echo_from_poll(struct echo *e, struct weft_cx *cx)
{
    for (;;) {
        struct weft_recv *rx = &e->rx[e->cur];
        if (weft_future_poll(&rx->base, cx) == WEFT_PENDING)
            return WEFT_PENDING;
        atomic_store(&ediag[e->pport].waiting, 0);
        if (rx->result >= 0 && e->sending) { /* the last echo went out */
            atomic_fetch_add(&echo_bytes, e->sending);
            atomic_fetch_add(&ediag[e->pport].out, e->sending);
        }
        e->sending = 0;
        if (rx->result <= 0)
            return WEFT_READY; /* end of stream, or a reset from an aborted client */
        atomic_fetch_add(&ediag[e->pport].in, (uint64_t)rx->result);
        e->sending = (uint32_t)rx->result;
        e->cur = !e->cur;
        weft_send_recv_from_init(&e->rx[e->cur], rx, 0, (size_t)rx->result);
        weft_future_drop(&rx->base);
        atomic_store(&ediag[e->pport].waiting, 1);
    }
}

static enum weft_poll echo_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct echo *e = (struct echo *)f;
    if (e->from_mode)
        return echo_from_poll(e, cx);
    WEFT_ASYNC_BEGIN(f);
    {
        char a[64];
        weft_tcp_peer_addr(e->fd, a, sizeof a, &e->pport);
        atomic_store(&ediag[e->pport].fd, e->fd);
        atomic_store(&ediag[e->pport].alive, 1);
        atomic_store(&ediag[e->pport].in, 0);
        atomic_store(&ediag[e->pport].out, 0);
    }
    if (e->pport & 1) {
        e->from_mode = true;
        weft_recv_init(&e->rx[0], e->fd);
        atomic_store(&ediag[e->pport].waiting, 1);
        return echo_from_poll(e, cx);
    }
    for (;;) {
        atomic_store(&ediag[e->pport].waiting, 1);
        weft_recv_init(&e->r, e->fd);
        WEFT_AWAIT(f, cx, &e->r.base);
        atomic_store(&ediag[e->pport].waiting, 0);
        if (e->r.result > 0)
            atomic_fetch_add(&ediag[e->pport].in, (uint64_t)e->r.result);
        if (e->r.result <= 0)
            break; /* end of stream, or a reset from an aborted client */
        weft_send_all_init(&e->io, e->fd, e->r.data, (size_t)e->r.result);
        WEFT_AWAIT(f, cx, &e->io.base);
        if (e->io.result < 0)
            break;
        atomic_fetch_add(&echo_bytes, (uint64_t)e->io.result);
        atomic_fetch_add(&ediag[e->pport].out, (uint64_t)e->io.result);
        weft_future_drop(&e->io.base);
        weft_future_drop(&e->r.base);
    }
    WEFT_ASYNC_END(f);
}

static void echo_drop(struct weft_future *f)
{
    struct echo *e = (struct echo *)f;
    if (e->pport)
        atomic_store(&ediag[e->pport].alive, 0);
    weft_future_drop(&e->io.base);
    weft_future_drop(&e->r.base);
    weft_future_drop(&e->rx[e->cur].base); /* the pair first: it sends the other's bytes */
    weft_future_drop(&e->rx[!e->cur].base);
    close(e->fd);
    atomic_fetch_add(&echo_done, 1);
}

static const struct weft_future_ops echo_ops = { echo_poll, echo_drop };

struct acceptor {
    struct weft_future base;
    struct weft_accept a;
};

static enum weft_poll acceptor_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct acceptor *s = (struct acceptor *)f;
    WEFT_ASYNC_BEGIN(f);
    for (;;) {
        weft_accept_init(&s->a, &lst);
        WEFT_AWAIT(f, cx, &s->a.base);
        if (s->a.result >= 0) {
            struct echo e = { .base = { &echo_ops, 0 }, .fd = s->a.result };
            atomic_fetch_add(&echo_started, 1);
            if (weft_spawn(rt, &e.base, sizeof e, NULL) != 0) {
                close(e.fd);
                atomic_fetch_add(&echo_done, 1);
            }
        } else {
            fprintf(stderr, "stress_tcp: accept: %d (%s)\n", s->a.result, strerror(-s->a.result));
        }
        weft_future_drop(&s->a.base);
    }
    WEFT_ASYNC_END(f);
}

static void acceptor_drop(struct weft_future *f)
{
    weft_future_drop(&((struct acceptor *)f)->a.base);
}

static const struct weft_future_ops acceptor_ops = { acceptor_poll, acceptor_drop };

/* ---- closing a listener under a waiting accept -------------------------------------------- */

static void check(int err, const char *what);

/* Accepts until an error (closing what it gets); `res` is that error. */
struct close_acceptor {
    struct weft_future base;
    struct weft_tcp_listener *l;
    struct weft_accept a;
    int res;
};

static enum weft_poll close_acceptor_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct close_acceptor *s = (struct close_acceptor *)f;
    WEFT_ASYNC_BEGIN(f);
    for (;;) {
        weft_accept_init(&s->a, s->l);
        WEFT_AWAIT(f, cx, &s->a.base);
        weft_future_drop(&s->a.base);
        if (s->a.result < 0)
            break;
        close(s->a.result);
    }
    s->res = s->a.result;
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops close_acceptor_ops = { close_acceptor_poll, NULL };

/* Rounds of: a listener, an accept loop on it, 0-3 clients connecting, and
 * the listener closed from this thread 0-500 us later, while the accept waits
 * or is being re-armed. The loop must end with -EBADF; the descriptor count at
 * the end shows that nothing accepted before or after the close leaked. */
static uint32_t close_rounds(uint32_t rounds, uint64_t *rng)
{
    uint32_t bad = 0;
    for (uint32_t r = 0; r < rounds; r++) {
        struct weft_tcp_listener l;
        check(weft_tcp_listen(&l, "127.0.0.1", 0, NULL), "listen (close rounds)");
        uint16_t p = (uint16_t)weft_tcp_listener_port(&l);
        struct close_acceptor ca = { .base = { &close_acceptor_ops, 0 }, .l = &l };
        struct weft_join j;
        check(weft_spawn(rt, &ca.base, sizeof ca, &j), "spawn close acceptor");
        int cli[3];
        *rng = mix64(*rng);
        uint32_t n = (uint32_t)(*rng % 4);
        for (uint32_t i = 0; i < n; i++) {
            cli[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(p),
                                      .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
            connect(cli[i], (struct sockaddr *)&sa, sizeof sa); /* EINPROGRESS, or refused */
        }
        usleep((useconds_t)(*rng >> 8) % 500);
        weft_tcp_listener_close(&l);
        check(weft_block_on(rt, &j.base), "join close acceptor");
        struct close_acceptor *done = (struct close_acceptor *)weft_join_output(&j);
        if (done->res != -EBADF) {
            fprintf(stderr, "stress_tcp: close round %u: the accept loop ended with %d\n", r,
                    done->res);
            bad++;
        }
        weft_future_drop(&j.base);
        for (uint32_t i = 0; i < n; i++)
            close(cli[i]);
    }
    return bad;
}

/* ---- clients ------------------------------------------------------------------------------ */

struct client {
    struct weft_future base;
    uint32_t id, rounds, round, len, got;
    uint64_t rng, off;
    int fd;
    unsigned char *buf;        /* MAXMSG out, MAXMSG in */
    unsigned char *scratch;    /* a recv_into buffer to drop mid-wait */
    struct weft_connect conn;
    struct weft_io io;
    struct weft_recv r;
    struct weft_timeout to;
};

static uint64_t next_rng(struct client *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

static enum weft_poll client_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct client *c = (struct client *)f;
    atomic_fetch_add_explicit(&cdiag[c->id].polls, 1, memory_order_relaxed);
    WEFT_ASYNC_BEGIN(f);
    set_phase(c->id, PH_CONNECT);
    weft_connect_init(&c->conn, "127.0.0.1", port, 10 * WEFT_NS_PER_SEC);
    WEFT_AWAIT(f, cx, &c->conn.base);
    if (c->conn.result < 0) {
        fail_client(c->conn.result, c->id);
        WEFT_RETURN(f);
    }
    c->fd = c->conn.result;
    {
        char a[64];
        uint16_t lp = 0;
        weft_tcp_local_addr(c->fd, a, sizeof a, &lp);
        atomic_store(&cdiag[c->id].port, lp);
        atomic_store(&cdiag[c->id].fd, c->fd);
    }
    c->buf = malloc(2 * MAXMSG);
    c->rounds = 1 + (uint32_t)(next_rng(c) % 8);
    for (c->round = 0; c->round < c->rounds; c->round++) {
        if (next_rng(c) % 4 == 0) {
            set_phase(c->id, PH_DROP);
            /* Nothing is due: a receive dropped now must leave the stream alone. */
            if (c->rng & 16) {
                weft_recv_init(&c->r, c->fd);
                weft_timeout_init(&c->to, &c->r.base, (100 + c->rng % 200) * 1000);
            } else {
                c->scratch = malloc(512);
                weft_recv_into_init(&c->io, c->fd, c->scratch, 512);
                weft_timeout_init(&c->to, &c->io.base, (100 + c->rng % 200) * 1000);
            }
            WEFT_AWAIT(f, cx, &c->to.base);
            if (c->to.result != -ETIMEDOUT) {
                fail_client(c->to.result ? c->to.result : -EPROTO, c->id);
                WEFT_RETURN(f);
            }
            weft_future_drop(&c->to.base);
            weft_future_drop(&c->r.base);
            weft_future_drop(&c->io.base);
            atomic_fetch_add(c->scratch ? &recv_into_drops : &recv_drops, 1);
            atomic_store(&cdiag[c->id].last_drop, c->scratch ? 2 : 1);
            free(c->scratch); /* the drop waited for the kernel to let go */
            c->scratch = NULL;
        }
        c->len = 1 + (uint32_t)(next_rng(c) % MAXMSG);
        for (uint32_t i = 0; i < c->len; i++)
            c->buf[i] = pat_byte(c->id, c->off + i);
        set_phase(c->id, PH_SEND);
        weft_send_all_init(&c->io, c->fd, c->buf, c->len);
        WEFT_AWAIT(f, cx, &c->io.base);
        if (c->io.result != (int)c->len) {
            fail_client(c->io.result < 0 ? c->io.result : -EIO, c->id);
            WEFT_RETURN(f);
        }
        weft_future_drop(&c->io.base);
        atomic_store(&cdiag[c->id].sent, c->off + c->len);
        for (c->got = 0; c->got < c->len;) {
            set_phase(c->id, (c->got + c->round) % 2 ? PH_RECV : PH_RECV_INTO);
            if ((c->got + c->round) % 2) {
                weft_recv_init(&c->r, c->fd);
                WEFT_AWAIT(f, cx, &c->r.base);
                if (c->r.result <= 0 || (uint32_t)c->r.result > c->len - c->got) {
                    fail_client(c->r.result <= 0 ? (c->r.result ? c->r.result : -EPIPE) : -E2BIG,
                                c->id);
                    WEFT_RETURN(f);
                }
                memcpy(c->buf + MAXMSG + c->got, c->r.data, (size_t)c->r.result);
                c->got += (uint32_t)c->r.result;
                atomic_store(&cdiag[c->id].got, c->off + c->got);
                weft_future_drop(&c->r.base);
            } else {
                weft_recv_into_init(&c->io, c->fd, c->buf + MAXMSG + c->got, c->len - c->got);
                WEFT_AWAIT(f, cx, &c->io.base);
                if (c->io.result <= 0) {
                    fail_client(c->io.result ? c->io.result : -EPIPE, c->id);
                    WEFT_RETURN(f);
                }
                c->got += (uint32_t)c->io.result;
                atomic_store(&cdiag[c->id].got, c->off + c->got);
                weft_future_drop(&c->io.base);
            }
        }
        for (uint32_t i = 0; i < c->len; i++) {
            if (c->buf[MAXMSG + i] != pat_byte(c->id, c->off + i)) {
                fail_client(-EBADMSG, c->id);
                WEFT_RETURN(f);
            }
        }
        c->off += c->len;
        atomic_fetch_add(&round_trips, 1);
    }
    set_phase(c->id, PH_DONE);
    atomic_fetch_add(&clients_ok, 1);
    atomic_fetch_add(&progress, 1);
    WEFT_ASYNC_END(f);
}

static void client_drop(struct weft_future *f)
{
    struct client *c = (struct client *)f;
    if (atomic_load_explicit(&cdiag[c->id].phase, memory_order_relaxed) != PH_DONE)
        set_phase(c->id, PH_GONE);
    weft_future_drop(&c->to.base);
    weft_future_drop(&c->conn.base);
    weft_future_drop(&c->io.base); /* waits while the kernel may use buf or scratch */
    weft_future_drop(&c->r.base);
    free(c->buf);
    free(c->scratch);
    c->buf = c->scratch = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static const struct weft_future_ops client_ops = { client_poll, client_drop };

static struct client client_make(uint32_t id)
{
    struct client c;
    memset(&c, 0, sizeof c);
    c.base.ops = &client_ops;
    c.id = id;
    c.rng = mix64(id + 1) | 1;
    c.fd = -1;
    return c;
}

/* Spawns clients [first, first + n) from a worker (detached). */
struct spawner {
    struct weft_future base;
    uint32_t first, n;
};

static enum weft_poll spawner_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct spawner *s = (struct spawner *)f;
    (void)cx;
    for (uint32_t i = 0; i < s->n; i++) {
        struct client c = client_make(s->first + i);
        if (weft_spawn(rt, &c.base, sizeof c, NULL) != 0)
            fail_client(-ENOMEM, s->first + i);
    }
    return WEFT_READY;
}

static const struct weft_future_ops spawner_ops = { spawner_poll, NULL };

static enum weft_poll spin_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    double end = now_s() + 0.002;
    while (now_s() < end)
        ;
    return WEFT_READY;
}

static const struct weft_future_ops spin_ops = { spin_poll, NULL };

/* ---- the watchdog -------------------------------------------------------------------- */

static void *watchdog(void *arg)
{
    (void)arg;
    uint64_t last = UINT64_MAX;
    double since = now_s();
    for (;;) {
        usleep(200000);
        uint64_t p = atomic_load(&progress);
        if (p != last) {
            last = p;
            since = now_s();
        } else if (now_s() - since > WATCHDOG_SECS) {
            fprintf(stderr, "stress_tcp: FAIL: no client finished for %d s (%" PRIu64 " ok, %"
                    PRIu64 " failed; echo tasks %" PRIu64 " started, %" PRIu64 " ended)\n",
                    WATCHDOG_SECS, atomic_load(&clients_ok), atomic_load(&clients_failed),
                    atomic_load(&echo_started), atomic_load(&echo_done));
            /* Where the bytes are: in the futures, in the sockets, or nowhere. */
            uint32_t shown = 0;
            for (uint32_t i = 0; i < MAX_CLIENTS && shown < 20; i++) {
                struct client_diag *d = &cdiag[i];
                uint8_t ph = atomic_load(&d->phase);
                if (ph == PH_NONE || ph == PH_DONE || ph == PH_GONE)
                    continue;
                struct echo_diag *e = &ediag[atomic_load(&d->port)];
                int cin = -1, cout = -1, sin = -1, sout = -1;
                ioctl(atomic_load(&d->fd), FIONREAD, &cin);
                ioctl(atomic_load(&d->fd), TIOCOUTQ, &cout);
                ioctl(atomic_load(&e->fd), FIONREAD, &sin);
                ioctl(atomic_load(&e->fd), TIOCOUTQ, &sout);
                fprintf(stderr, "  client %u: %s (polled %u times), sent %" PRIu64 " got %" PRIu64
                        ", last drop %s; its echo task %s, got %" PRIu64 " sent %" PRIu64
                        "; queued: client %d in %d out, server %d in %d out\n", i,
                        phase_name[ph], atomic_load(&d->polls), atomic_load(&d->sent),
                        atomic_load(&d->got),
                        atomic_load(&d->last_drop) == 1   ? "a weft_recv"
                        : atomic_load(&d->last_drop) == 2 ? "a recv_into"
                                                          : "none",
                        atomic_load(&e->waiting) ? "waits in weft_recv" : "is elsewhere",
                        atomic_load(&e->in), atomic_load(&e->out), cin, cout, sin, sout);
                shown++;
            }
            /* Echo tasks whose client is gone wait for its end of stream. */
            for (uint32_t p = 1; p < 65536 && shown < 20; p++) {
                struct echo_diag *e = &ediag[p];
                if (!atomic_load(&e->alive) || !atomic_load(&e->waiting))
                    continue;
                char c;
                ssize_t n = recv(atomic_load(&e->fd), &c, 1, MSG_PEEK | MSG_DONTWAIT);
                fprintf(stderr, "  echo task for port %u: waits in weft_recv, got %" PRIu64
                        " sent %" PRIu64 "; its socket %s\n", p, atomic_load(&e->in),
                        atomic_load(&e->out),
                        n == 0 ? "is at end of stream (the receive missed it)"
                        : n > 0 ? "has bytes (the receive missed them)"
                                : "is idle: the client end is still open (a leaked socket?)");
                shown++;
            }
            _exit(2);
        }
    }
    return NULL;
}

static void check(int err, const char *what)
{
    if (err) {
        fprintf(stderr, "stress_tcp: %s: %s\n", what, strerror(-err));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    bool small = argc > 1 && strcmp(argv[1], "small") == 0;
    uint32_t waves = small ? SMALL_WAVES : FULL_WAVES;
    double t0 = now_s();
    pthread_t wd;
    pthread_create(&wd, NULL, watchdog, NULL);
    pthread_detach(wd);

    int base_fds = count_fds();
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = WORKERS;
    cfg.allocator = &counting;
    check(weft_runtime_create(&rt, &cfg), "runtime");
    check(weft_tcp_listen(&lst, "127.0.0.1", 0, NULL), "listen");
    port = (uint16_t)weft_tcp_listener_port(&lst);
    struct acceptor a = { .base = { &acceptor_ops, 0 } };
    struct weft_join ja;
    check(weft_spawn(rt, &a.base, sizeof a, &ja), "spawn acceptor");

    uint64_t cancelled = 0, rng = 42;
    struct weft_join joins[WAVE / 2];
    for (uint32_t w = 0; w < waves; w++) {
        uint32_t first = w * WAVE;
        uint64_t detached_before = atomic_load(&clients_ok) + atomic_load(&clients_failed);
        struct spawner sp = { .base = { &spawner_ops, 0 }, .first = first + WAVE / 2,
                              .n = WAVE / 2 };
        check(weft_spawn(rt, &sp.base, sizeof sp, NULL), "spawn spawner");
        struct weft_future spin = { &spin_ops, 0 };
        check(weft_spawn(rt, &spin, sizeof spin, NULL), "spawn spinner");
        for (uint32_t i = 0; i < WAVE / 2; i++) {
            struct client c = client_make(first + i);
            check(weft_spawn(rt, &c.base, sizeof c, &joins[i]), "spawn client");
        }
        rng = mix64(rng);
        usleep((useconds_t)(rng % 3000));
        for (uint32_t i = 0; i < WAVE / 2; i++) {
            rng = mix64(rng);
            if (rng % 8 == 0)
                weft_join_abort(&joins[i]);
        }
        uint64_t finished_joined = 0;
        for (uint32_t i = 0; i < WAVE / 2; i++) {
            check(weft_block_on(rt, &joins[i].base), "join");
            if (joins[i].res == -ECANCELED)
                cancelled++;
            else
                finished_joined++;
            weft_future_drop(&joins[i].base);
        }
        /* The detached half: wait until each finished one way or the other. */
        while (atomic_load(&clients_ok) + atomic_load(&clients_failed) <
               detached_before + finished_joined + WAVE / 2)
            usleep(200);
        atomic_fetch_add(&progress, 1);
    }
    uint64_t total = (uint64_t)waves * WAVE;
    /* Every echo task ends once its client is gone. An aborted client's
     * connection may still be accepted late (its socket closed already), so
     * wait until the counts have been equal for a while. */
    for (double equal_since = now_s(); now_s() - equal_since < 0.2;) {
        if (atomic_load(&echo_done) != atomic_load(&echo_started))
            equal_since = now_s();
        usleep(1000);
    }
    weft_join_abort(&ja);
    check(weft_block_on(rt, &ja.base), "join acceptor");
    weft_future_drop(&ja.base);
    weft_tcp_listener_close(&lst);
    uint32_t nclose = small ? SMALL_CLOSE_ROUNDS : FULL_CLOSE_ROUNDS;
    uint32_t close_bad = close_rounds(nclose, &rng);
    weft_runtime_destroy(rt);
    int fds = count_fds();

    uint64_t ok = atomic_load(&clients_ok), failed = atomic_load(&clients_failed);
    bool pass = failed == 0 && ok + cancelled == total && fds == base_fds && close_bad == 0 &&
                atomic_load(&allocs) == atomic_load(&frees) && atomic_load(&bad_frees) == 0;
    printf("stress_tcp: %s: %" PRIu64 " clients (%" PRIu64 " ok, %" PRIu64 " aborted, %" PRIu64
           " failed), %" PRIu64 " round trips, %" PRIu64 " echo bytes, %" PRIu64 " echo tasks, "
           "drops mid-recv %" PRIu64 " / mid-recv_into %" PRIu64 ", fds %d -> %d, allocs %ld / "
           "frees %ld, listeners closed under an accept %u (%u wrong), %.1f s\n",
           pass ? "ok" : "FAIL", total, ok, cancelled, failed, atomic_load(&round_trips),
           atomic_load(&echo_bytes), atomic_load(&echo_done), atomic_load(&recv_drops),
           atomic_load(&recv_into_drops), base_fds, fds, atomic_load(&allocs),
           atomic_load(&frees), nclose, close_bad, now_s() - t0);
    return pass ? 0 : 1;
}
