/* tests/test_tcp_load.c: TCP under load (io/tcp.c, io/stream.c, io/bufring.c):
 * 32 MiB echoed through one connection with the client writing and reading
 * at once (byte-exact both ways, checksummed), 10k concurrent connections of
 * 5 round trips each (the clients in a forked process, so each process holds
 * one end of every connection; skipped when the hard RLIMIT_NOFILE is below
 * 11000; WEFT_TEST_TCP_CONNS=n runs n connections instead, for machines with
 * a lower limit), accepting at the RLIMIT_NOFILE limit (-EMFILE, then accepting
 * resumes when descriptors are freed), a burst of 300 pending connections
 * (more than the listener's queue holds) all accepted, none closed by the
 * listener, a ring of 2 provided buffers shared by
 * 64 connections sending at once (the runtime's -ENOBUFS path: every byte
 * arrives, no error reaches the user), a receive parked for a buffer whose
 * turn went to a receive that met end of stream, and the cooperative budget (of
 * 200 finished sends and receives, one poll of their task sees at most
 * WEFT_COOP_BUDGET ready; a task accepting from a full queue completes at most
 * WEFT_COOP_BUDGET accepts per poll). The burst and the EMFILE test run
 * again with single-shot accepts (*_single_shot: a kernel without multishot
 * accept; the burst's SQE count shows which kind ran).
 *
 * Bad inputs tried: the descriptor limit lowered below what the clients
 * need, a buffer ring far smaller than the connections reading from it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <weft.h>

#include "io_common.h"

/* ---- an echo task: weft_recv, send_all the same bytes back, until EOF -------- */

struct echo_stats {
    _Atomic uint32_t done, errors;
    _Atomic uint64_t hash, bytes;  /* of the one connection of a big transfer */
};

static enum weft_poll body_echo(struct iot *t, struct weft_cx *cx)
{
    struct echo_stats *st = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    t->own_fd = true;
    t->u64 = FNV_START;
    for (;;) {
        weft_recv_init(&t->r, t->fd);
        WEFT_AWAIT(&t->base, cx, &t->r.base);
        if (t->r.result <= 0)
            break;
        t->u64 = fnv(t->u64, t->r.data, (size_t)t->r.result);
        t->got += (uint64_t)t->r.result;
        weft_send_all_init(&t->io, t->fd, t->r.data, (size_t)t->r.result);
        WEFT_AWAIT(&t->base, cx, &t->io.base);
        if (t->io.result != t->r.result)
            break;
        weft_future_drop(&t->io.base);
        weft_future_drop(&t->r.base);
    }
    if (t->r.result != 0)
        atomic_fetch_add(&st->errors, 1);
    atomic_store(&st->hash, t->u64);
    atomic_store(&st->bytes, t->got);
    atomic_fetch_add(&st->done, 1);
    WEFT_ASYNC_END(&t->base);
}

/* Accepts t->n connections and spawns an echo task for each. */
static enum weft_poll body_accept_echo(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < t->n; t->i++) {
        weft_accept_init(&t->acc, t->lst);
        WEFT_AWAIT(&t->base, cx, &t->acc.base);
        if (t->acc.result < 0) {
            t->res = t->acc.result;
            WEFT_RETURN(&t->base);
        }
        CHECK(iot_spawn(weft_runtime_current(), body_echo, t->arg, t->i, t->acc.result, NULL) == 0);
        weft_future_drop(&t->acc.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* ---- 32 MiB through one connection ------------------------------------------------ */

#define BIG_TOTAL (32u * 1024 * 1024)
#define BIG_CHUNK (64u * 1024)
#define BIG_SEED 5

struct big_client {
    unsigned char *wbuf, *rbuf;
    uint64_t rhash, rgot;
    bool rok;
    int wres, rres;
};

/* Sends the pattern in 64 KiB send_alls, then shuts down its writing side. */
static enum weft_poll body_big_writer(struct iot *t, struct weft_cx *cx)
{
    struct big_client *c = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->sent = 0; t->sent < BIG_TOTAL; t->sent += BIG_CHUNK) {
        pat_fill(c->wbuf, BIG_CHUNK, BIG_SEED, t->sent);
        weft_send_all_init(&t->io, t->fd, c->wbuf, BIG_CHUNK);
        WEFT_AWAIT(&t->base, cx, &t->io.base);
        c->wres = t->io.result;
        weft_future_drop(&t->io.base);
        if (c->wres != (int)BIG_CHUNK)
            WEFT_RETURN(&t->base);
    }
    weft_shutdown_init(&t->io, t->fd, SHUT_WR);
    WEFT_AWAIT(&t->base, cx, &t->io.base);
    c->wres = t->io.result;
    WEFT_ASYNC_END(&t->base);
}

/* Receives the echo until end of stream, checking every byte. */
static enum weft_poll body_big_reader(struct iot *t, struct weft_cx *cx)
{
    struct big_client *c = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    c->rok = true;
    c->rhash = FNV_START;
    for (;;) {
        weft_recv_into_init(&t->io, t->fd, c->rbuf, BIG_CHUNK);
        WEFT_AWAIT(&t->base, cx, &t->io.base);
        c->rres = t->io.result;
        weft_future_drop(&t->io.base);
        if (c->rres <= 0)
            break;
        if (!pat_ok(c->rbuf, (size_t)c->rres, BIG_SEED, c->rgot))
            c->rok = false;
        c->rhash = fnv(c->rhash, c->rbuf, (size_t)c->rres);
        c->rgot += (uint64_t)c->rres;
    }
    WEFT_ASYNC_END(&t->base);
}

Test(load, echo_32_mib_reading_while_writing, .timeout = 120)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct weft_tcp_listener l;
    uint16_t port = listen_any(&l, "127.0.0.1");
    struct echo_stats st = { 0 };
    struct iot srv = iot_make(body_accept_echo, &st, 0, -1);
    srv.lst = &l;
    srv.n = 1;
    struct weft_join js, jw, jr;
    cr_assert_eq(weft_spawn(rt, &srv.base, sizeof srv, &js), 0);
    int cli = cli_dial("127.0.0.1", port);
    struct big_client c = { .wbuf = malloc(BIG_CHUNK), .rbuf = malloc(BIG_CHUNK) };
    double t0 = now_s();
    cr_assert_eq(iot_spawn(rt, body_big_writer, &c, 0, cli, &jw), 0);
    cr_assert_eq(iot_spawn(rt, body_big_reader, &c, 1, cli, &jr), 0);
    cr_assert_eq(iot_join(rt, &jw, NULL), 0);
    cr_assert_eq(iot_join(rt, &jr, NULL), 0);
    double el = now_s() - t0;
    cr_assert_eq(iot_join(rt, &js, NULL), 0);
    WAIT_UNTIL(atomic_load(&st.done) == 1);

    /* The checksum of the stream as sent, computed here. */
    uint64_t want = FNV_START;
    for (uint64_t off = 0; off < BIG_TOTAL; off += BIG_CHUNK) {
        pat_fill(c.wbuf, BIG_CHUNK, BIG_SEED, off);
        want = fnv(want, c.wbuf, BIG_CHUNK);
    }
    cr_assert_eq(c.wres, 0, "the writer ended with %d", c.wres);
    cr_assert_eq(atomic_load(&st.errors), 0);
    cr_assert_eq(atomic_load(&st.bytes), BIG_TOTAL, "the server got %" PRIu64 " bytes",
                 atomic_load(&st.bytes));
    cr_assert_eq(atomic_load(&st.hash), want, "client -> server checksum differs");
    cr_assert_eq(c.rres, 0, "the reader ended with %d", c.rres);
    cr_assert_eq(c.rgot, BIG_TOTAL, "the echo gave %" PRIu64 " bytes", c.rgot);
    cr_assert_eq(c.rhash, want, "server -> client checksum differs");
    cr_assert(c.rok, "the echo was corrupted");
    fprintf(stderr, "32 MiB echoed in %.2f s (%.0f MiB/s each way)\n", el, 32 / el);
    free(c.wbuf);
    free(c.rbuf);
    close(cli);
    weft_tcp_listener_close(&l);
    stop_rt(rt, &ca);
}

/* ---- 10k concurrent connections ------------------------------------------------------ */

#define RT_MSG 64
#define ROUND_TRIPS 5

struct many {
    const char *addr;
    uint16_t port;
    struct gate gate;
    _Atomic uint32_t connected, done, errors;
    _Atomic int first_error;
};

static void many_error(struct many *m, int err)
{
    int none = 0;
    atomic_compare_exchange_strong(&m->first_error, &none, err);
    atomic_fetch_add(&m->errors, 1);
}

/* Connects, waits at the gate until every client is connected, then does
 * ROUND_TRIPS echoes of RT_MSG bytes, checking each. */
static enum weft_poll body_many_client(struct iot *t, struct weft_cx *cx)
{
    struct many *m = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    weft_connect_init(&t->conn, m->addr, m->port, 0);
    WEFT_AWAIT(&t->base, cx, &t->conn.base);
    if (t->conn.result < 0) {
        many_error(m, t->conn.result);
        WEFT_RETURN(&t->base);
    }
    t->fd = t->conn.result;
    t->own_fd = true;
    atomic_fetch_add(&m->connected, 1);
    gate_wait_init(&t->gw, &m->gate);
    WEFT_AWAIT(&t->base, cx, &t->gw.base);
    for (t->i = 0; t->i < ROUND_TRIPS; t->i++) {
        pat_fill(t->msg, RT_MSG, t->idx, t->i * RT_MSG);
        weft_send_all_init(&t->io, t->fd, t->msg, RT_MSG);
        WEFT_AWAIT(&t->base, cx, &t->io.base);
        if (t->io.result != RT_MSG) {
            many_error(m, t->io.result < 0 ? t->io.result : -EIO);
            WEFT_RETURN(&t->base);
        }
        weft_future_drop(&t->io.base);
        for (t->got = 0; t->got < RT_MSG; t->got += (uint64_t)t->io.result) {
            weft_recv_into_init(&t->io, t->fd, t->msg + RT_MSG + t->got, RT_MSG - t->got);
            WEFT_AWAIT(&t->base, cx, &t->io.base);
            if (t->io.result <= 0) {
                many_error(m, t->io.result < 0 ? t->io.result : -EPIPE);
                WEFT_RETURN(&t->base);
            }
            weft_future_drop(&t->io.base);
        }
        if (memcmp(t->msg, t->msg + RT_MSG, RT_MSG) != 0) {
            many_error(m, -EBADMSG);
            WEFT_RETURN(&t->base);
        }
    }
    atomic_fetch_add(&m->done, 1);
    WEFT_ASYNC_END(&t->base);
}

static uint32_t many_count(void)
{
    const char *e = getenv("WEFT_TEST_TCP_CONNS");
    return e && atoi(e) > 0 ? (uint32_t)atoi(e) : 10000;
}

/* What the clients' process writes on its pipe: once every client has
 * connected (or failed), and once every client is done (or failed). */
struct many_report {
    uint32_t connected, done, errors;
    int32_t first_error;
};

static void many_report_send(struct many *m, int up)
{
    struct many_report r = { atomic_load(&m->connected), atomic_load(&m->done),
                             atomic_load(&m->errors), atomic_load(&m->first_error) };
    if (write(up, &r, sizeof r) != (ssize_t)sizeof r)
        _exit(5);
}

static void many_wait(struct many *m, _Atomic uint32_t *count, uint32_t n, double secs)
{
    double end = now_s() + secs;
    while (atomic_load(count) + atomic_load(&m->errors) < n && now_s() < end)
        sleep_us(1000);
}

/* The clients' side, in a process of its own so that each process holds one
 * end of every connection (no Criterion asserts here: a failure goes into
 * the reports, or the process exits non-zero and its pipe ends early).
 * Connects n clients, reports, waits for the byte on `go` that says the
 * server counted its descriptors, opens the gate for the round trips, and
 * reports again. */
static void many_clients_process(struct many *m, uint32_t n, int up, int go)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a test that failed */
    struct weft_runtime_config cfg;
    struct weft_runtime *rt = NULL;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    if (weft_runtime_create(&rt, &cfg) != 0)
        _exit(3);
    /* Clients connect in waves of 1000, each wave once the last is in, so
     * the backlog (somaxconn) never drops a SYN (that costs a 1 s retry). */
    for (uint32_t i = 0; i < n; i++) {
        if (i % 1000 == 0 && i > 0)
            many_wait(m, &m->connected, i, 60);
        if (iot_spawn(rt, body_many_client, m, i, -1, NULL) != 0)
            many_error(m, -ENOMEM);
    }
    many_wait(m, &m->connected, n, 60);
    many_report_send(m, up);
    char c;
    if (read(go, &c, 1) != 1)
        _exit(4);
    gate_open(&m->gate);
    many_wait(m, &m->done, n, 120);
    many_report_send(m, up);
    weft_runtime_destroy(rt);
    _exit(0);
}

static struct many_report many_report_read(int up)
{
    struct many_report r;
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = read(up, (char *)&r + got, sizeof r - got);
        if (k < 0 && errno == EINTR)
            continue;
        cr_assert_gt(k, 0, "the clients' process ended without reporting");
        got += (size_t)k;
    }
    cr_assert_eq(r.errors, 0, "%u clients failed, the first with %d (%s)", r.errors,
                 r.first_error, strerror(-r.first_error));
    return r;
}

Test(load, ten_thousand_connections, .timeout = 240)
{
    uint32_t n = many_count();
    rlim_t need = (rlim_t)n + 1000; /* each process holds one end of every connection */
    rlim_t hard = raise_nofile(need);
    if (hard < need)
        cr_skip_test("the hard RLIMIT_NOFILE is %lu: %u connections need %lu in each of "
                     "two processes; WEFT_TEST_TCP_CONNS=n runs fewer",
                     (unsigned long)hard, n, (unsigned long)need);
    struct weft_tcp_listener l;
    struct many *m = calloc(1, sizeof *m);
    m->addr = "127.0.0.1";
    m->port = listen_any(&l, m->addr);
    gate_init(&m->gate, n);
    int up[2], go[2];
    cr_assert_eq(pipe2(up, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    double t0 = now_s();
    pid_t pid = fork(); /* before this process has a runtime: the child starts single-threaded */
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(up[0]);
        close(go[1]);
        weft_tcp_listener_close(&l);
        many_clients_process(m, n, up[1], go[0]);
    }
    close(up[1]);
    close(go[0]);
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct echo_stats st = { 0 };
    struct iot acc = iot_make(body_accept_echo, &st, 0, -1);
    acc.lst = &l;
    acc.n = n;
    struct weft_join ja;
    cr_assert_eq(weft_spawn(rt, &acc.base, sizeof acc, &ja), 0);

    struct many_report r = many_report_read(up[0]);
    cr_assert_eq(r.connected, n);
    double t1 = now_s();
    cr_assert_eq(iot_join(rt, &ja, NULL), 0); /* all n accepted */
    int fds = count_fds();
    cr_assert_geq(fds, (int)n, "only %d descriptors open: not all connections are", fds);
    cr_assert_eq(write(go[1], "g", 1), 1);
    r = many_report_read(up[0]);
    cr_assert_eq(r.done, n);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the clients' process: status %#x",
              status);
    WAIT_UNTIL(atomic_load(&st.done) == n); /* every echo task saw its client close */
    cr_assert_eq(atomic_load(&st.errors), 0);
    fprintf(stderr, "%u connections: connected in %.2f s, %u round trips each in %.2f s\n", n,
            t1 - t0, ROUND_TRIPS, now_s() - t1);
    close(up[0]);
    close(go[1]);
    weft_tcp_listener_close(&l);
    weft_runtime_destroy(rt);
    gate_fini(&m->gate);
    free(m);
    assert_balanced(&ca);
}

/* ---- a backlog of pending connections ------------------------------------------------ */

#define PENDING_CLIENTS 300 /* more than the listener's queue holds (256) */

struct accept_all {
    struct weft_tcp_listener *l;
    int fds[PENDING_CLIENTS];
    uint32_t per_poll[PENDING_CLIENTS + 2];   /* accepts completed in each poll */
    _Atomic uint32_t accepted;
    _Atomic int err;
};

/* Accepts PENDING_CLIENTS connections as fast as it can, until the first
 * error; each accept is counted against the poll it completed in. */
static enum weft_poll body_accept_all(struct iot *t, struct weft_cx *cx)
{
    struct accept_all *aa = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < PENDING_CLIENTS; t->i++) {
        weft_accept_init(&t->acc, aa->l);
        WEFT_AWAIT(&t->base, cx, &t->acc.base);
        if (t->acc.result < 0) {
            atomic_store(&aa->err, t->acc.result);
            WEFT_RETURN(&t->base);
        }
        aa->fds[t->i] = t->acc.result;
        atomic_fetch_add(&aa->accepted, 1);
        if (t->polls < PENDING_CLIENTS + 2)
            aa->per_poll[t->polls]++;
        weft_future_drop(&t->acc.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* Listens on 127.0.0.1 with PENDING_CLIENTS clients in cli[] waiting in the
 * backlog; returns an accept_all for the listener. */
static struct accept_all *listen_with_pending(struct weft_tcp_listener *l, int *cli)
{
    uint16_t port = listen_any(l, "127.0.0.1");
    cli_dial_n(cli, PENDING_CLIENTS, "127.0.0.1", port);
    struct accept_all *aa = calloc(1, sizeof *aa);
    cr_assert_not_null(aa);
    aa->l = l;
    return aa;
}

/* Closes what listen_with_pending made and what was accepted. */
static void close_pending(struct accept_all *aa, int *cli)
{
    close_fds(aa->fds, (int)atomic_load(&aa->accepted));
    close_fds(cli, PENDING_CLIENTS);
    weft_tcp_listener_close(aa->l);
    free(aa);
}

/* Waits at most 5 s for every client to be accepted or an accept to fail. */
static void wait_accepted(struct accept_all *aa)
{
    double end = now_s() + 5.0;
    while (atomic_load(&aa->accepted) < PENDING_CLIENTS && !atomic_load(&aa->err) &&
           now_s() < end)
        sleep_us(1000);
}

/* More connections wait in the backlog than the listener's queue holds (256)
 * when the first accept arms the multishot: every one must be accepted, none
 * closed by the listener. Returns the SQEs the rings submitted meanwhile. */
static uint64_t accept_burst(void)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct weft_tcp_listener l;
    int cli[PENDING_CLIENTS];
    struct accept_all *aa = listen_with_pending(&l, cli);
    struct weft_join j;
    uint64_t sqes = rt_sqes(rt);
    cr_assert_eq(iot_spawn(rt, body_accept_all, aa, 0, -1, &j), 0);
    wait_accepted(aa);
    sqes = rt_sqes(rt) - sqes;
    int closed = count_closed_by_peer(cli, PENDING_CLIENTS);
    uint32_t accepted = atomic_load(&aa->accepted);
    if (accepted < PENDING_CLIENTS)
        weft_join_abort(&j);
    iot_join(rt, &j, NULL);
    cr_assert_eq(atomic_load(&aa->err), 0, "accept: %d", atomic_load(&aa->err));
    cr_assert_eq(closed, 0, "%d clients saw their connection closed by the listener (%u of %d "
                 "accepted)", closed, accepted, PENDING_CLIENTS);
    cr_assert_eq(accepted, PENDING_CLIENTS);
    fprintf(stderr, "accept burst: %d accepts, %" PRIu64 " SQEs\n", PENDING_CLIENTS, sqes);
    close_pending(aa, cli);
    stop_rt(rt, &ca);
    return sqes;
}

/* One accept on t->lst: t->res its result. */
static enum weft_poll body_accept_one(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_accept_init(&t->acc, t->lst);
    WEFT_AWAIT(&t->base, cx, &t->acc.base);
    t->res = t->acc.result;
    WEFT_ASYNC_END(&t->base);
}

/* A listener whose accepts stop after the first: its multishot keeps
 * accepting into the queue only until 128 sockets wait there, then pauses
 * (docs/io.md), and the rest of the clients wait in the kernel's backlog
 * (no descriptor of ours); once accepts come again, every client is
 * accepted, none closed. */
Test(load, the_accept_queue_pauses_at_128, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(1, &ca);
    struct weft_tcp_listener l;
    uint16_t port = listen_any(&l, "127.0.0.1");
    struct accept_all *aa = calloc(1, sizeof *aa);
    cr_assert_not_null(aa);
    aa->l = &l;
    int first = cli_connect("127.0.0.1", port);
    struct iot t = iot_make(body_accept_one, NULL, 0, -1);
    t.lst = &l;
    cr_assert_eq(weft_block_on(rt, &t.base), 0); /* arms the multishot, takes one */
    weft_future_drop(&t.base);
    cr_assert_geq(t.res, 0, "accept: %d", t.res);
    int fds0 = count_fds();
    int cli[PENDING_CLIENTS];
    for (int i = 0; i < PENDING_CLIENTS; i += 10) { /* paced: the pause's cancel lands */
        cli_dial_n(cli + i, 10, "127.0.0.1", port);
        sleep_us(1000);
    }
    sleep_us(200000);
    int queued = count_fds() - fds0 - PENDING_CLIENTS;
    cr_assert_leq(queued, 200, "%d accepted sockets wait in the listener's queue", queued);
    cr_assert_geq(queued, 128, "only %d accepted before the pause", queued);
    struct weft_join j;
    cr_assert_eq(iot_spawn(rt, body_accept_all, aa, 0, -1, &j), 0);
    wait_accepted(aa);
    cr_assert_eq(atomic_load(&aa->accepted), PENDING_CLIENTS, "accept: %d", atomic_load(&aa->err));
    cr_assert_eq(iot_join(rt, &j, NULL), 0);
    cr_assert_eq(count_closed_by_peer(cli, PENDING_CLIENTS), 0);
    close(t.res);
    close(first);
    close_pending(aa, cli);
    stop_rt(rt, &ca);
}

Test(load, accept_burst_loses_no_connection, .timeout = 30)
{
    uint64_t sqes = accept_burst();
    const char *no = getenv("WEFT_IO_NO_OPS"); /* ctest's *_old_kernel runs */
    if (!no || !strstr(no, "accept_multishot")) /* the multishot: a few arms in all */
        cr_assert_lt(sqes, PENDING_CLIENTS / 2, "%" PRIu64 " SQEs for %d accepts", sqes,
                     PENDING_CLIENTS);
}

/* The same on a kernel without multishot accept: the single-shot accept is
 * resubmitted at each completion, through the queue's pause (128) and past
 * its capacity, one SQE per connection at least (which shows it ran). */
Test(load, accept_burst_single_shot, .timeout = 30)
{
    without_multishot_accept();
    uint64_t sqes = accept_burst();
    cr_assert_geq(sqes, PENDING_CLIENTS, "%" PRIu64 " SQEs for %d accepts: not single-shot?",
                  sqes, PENDING_CLIENTS);
}

/* ---- accepting at the descriptor limit ---------------------------------------------- */

#define EMFILE_CLIENTS 12

struct emfile {
    struct weft_tcp_listener *l;
    int fds[EMFILE_CLIENTS];
    _Atomic uint32_t accepted, emfiles;
    _Atomic int other_error;
};

/* Accepts until every client is in, counting -EMFILE results on the way. */
static enum weft_poll body_accept_through_emfile(struct iot *t, struct weft_cx *cx)
{
    struct emfile *e = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    while (atomic_load(&e->accepted) < EMFILE_CLIENTS) {
        weft_accept_init(&t->acc, e->l);
        WEFT_AWAIT(&t->base, cx, &t->acc.base);
        if (t->acc.result >= 0) {
            e->fds[atomic_load(&e->accepted)] = t->acc.result;
            atomic_fetch_add(&e->accepted, 1); /* publishes fds[] to the test thread */
        } else if (t->acc.result == -EMFILE) {
            if (atomic_fetch_add(&e->emfiles, 1) > 5000) {
                atomic_store(&e->other_error, -EMFILE); /* never resumed */
                WEFT_RETURN(&t->base);
            }
        } else {
            atomic_store(&e->other_error, t->acc.result);
            WEFT_RETURN(&t->base);
        }
        weft_future_drop(&t->acc.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* The soft limit that leaves exactly `room` descriptor numbers free. */
static rlim_t limit_leaving(int room)
{
    bool open_fd[4096] = { false };
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    for (struct dirent *e; (e = readdir(d));) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd != dirfd(d) && fd < 4096)
            open_fd[fd] = true;
    }
    closedir(d);
    int lim = 0;
    for (int free_below = 0; free_below < room || open_fd[lim]; lim++)
        if (!open_fd[lim])
            free_below++;
    return (rlim_t)lim;
}

static void emfile_then_accepting_resumes(void)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct weft_tcp_listener l;
    uint16_t port = listen_any(&l, "127.0.0.1");
    int cli[EMFILE_CLIENTS];
    uint16_t cport[EMFILE_CLIENTS];
    cli_dial_n(cli, EMFILE_CLIENTS, "127.0.0.1", port); /* each completes into the backlog */
    for (int i = 0; i < EMFILE_CLIENTS; i++) {
        char a[INET6_ADDRSTRLEN];
        cr_assert_eq(weft_tcp_local_addr(cli[i], a, sizeof a, &cport[i]), 0);
    }
    struct rlimit saved;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
    struct rlimit low = { limit_leaving(3), saved.rlim_max };
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);

    struct emfile *e = calloc(1, sizeof *e);
    e->l = &l;
    struct weft_join j;
    cr_assert_eq(iot_spawn(rt, body_accept_through_emfile, e, 0, -1, &j), 0);
    WAIT_UNTIL(atomic_load(&e->emfiles) > 0 || atomic_load(&e->other_error));
    cr_assert_eq(atomic_load(&e->other_error), 0);
    uint32_t first = atomic_load(&e->accepted);
    cr_assert_leq(first, 3, "%u accepted with room for 3", first);
    /* Still at the limit: the accept backs off 10 ms between tries (docs/io.md)
     * rather than spinning on -EMFILE. */
    uint32_t emfiles0 = atomic_load(&e->emfiles);
    double t0 = now_s();
    sleep_us(100000);
    uint32_t tries = atomic_load(&e->emfiles) - emfiles0; /* one per back-off at most */
    double ms = (now_s() - t0) * 1e3;
    cr_assert_leq(tries, (uint32_t)(ms / 10) + 2, "%u -EMFILE results in %.0f ms", tries, ms);
    /* Two freed descriptors: accepting resumes even under the low limit. */
    close(e->fds[0]);
    close(e->fds[1]);
    e->fds[0] = e->fds[1] = -1;
    WAIT_UNTIL(atomic_load(&e->accepted) >= first + 2 || atomic_load(&e->other_error));
    uint32_t emfiles = atomic_load(&e->emfiles);
    WAIT_UNTIL(atomic_load(&e->emfiles) > emfiles); /* and hits the limit again */
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);
    WAIT_UNTIL(atomic_load(&e->accepted) == EMFILE_CLIENTS || atomic_load(&e->other_error));
    cr_assert_eq(atomic_load(&e->other_error), 0, "accept gave %d",
                 atomic_load(&e->other_error));
    cr_assert_eq(iot_join(rt, &j, NULL), 0);
    /* Every client was accepted exactly once (the first two by port are gone). */
    bool seen[EMFILE_CLIENTS] = { false };
    for (int i = 2; i < EMFILE_CLIENTS; i++) {
        char a[INET6_ADDRSTRLEN];
        uint16_t p;
        cr_assert_eq(weft_tcp_peer_addr(e->fds[i], a, sizeof a, &p), 0);
        int k = 0;
        while (k < EMFILE_CLIENTS && cport[k] != p)
            k++;
        cr_assert_lt(k, EMFILE_CLIENTS, "accepted a connection from an unknown port %u", p);
        cr_assert(!seen[k], "client %d accepted twice", k);
        seen[k] = true;
        close(e->fds[i]);
    }
    fprintf(stderr, "EMFILE: %u accepted before the first -EMFILE, %u -EMFILE results in all\n",
            first, atomic_load(&e->emfiles));
    close_fds(cli, EMFILE_CLIENTS);
    free(e);
    weft_tcp_listener_close(&l);
    stop_rt(rt, &ca);
}

Test(load, emfile_then_accepting_resumes, .timeout = 60)
{
    emfile_then_accepting_resumes();
}

/* A single-shot accept that meets -EMFILE ends as the multishot does: the
 * error once, then the back-off, then accepting resumes. */
Test(load, emfile_then_accepting_resumes_single_shot, .timeout = 60)
{
    without_multishot_accept();
    emfile_then_accepting_resumes();
}

/* ---- a ring of 2 buffers, 64 connections sending at once ---------------------------------- */

#define NB_CONNS 64
#define NB_BYTES (16 * 1024)

struct nobufs {
    _Atomic uint32_t done, errors;
    _Atomic uint64_t bytes[NB_CONNS];
    _Atomic int bad[NB_CONNS];
};

/* Reads a connection to its end with weft_recv, holding each buffer across a
 * yield; the first 4 bytes name the client, the rest is its pattern. Replies
 * with the byte count. */
static enum weft_poll body_nobufs_reader(struct iot *t, struct weft_cx *cx)
{
    struct nobufs *nb = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    t->own_fd = true;
    for (;;) {
        weft_recv_init(&t->r, t->fd);
        WEFT_AWAIT(&t->base, cx, &t->r.base);
        if (t->r.result <= 0)
            break;
        for (int k = 0; k < t->r.result; k++, t->got++) {
            if (t->got < 4)
                t->msg[t->got] = t->r.data[k];
            else if (t->got == 4)
                memcpy(&t->i, t->msg, 4);
            if (t->got >= 4 && (t->i >= NB_CONNS || t->r.data[k] != pat_byte(t->i, t->got)))
                t->res = -EBADMSG;
        }
        weft_yield_now_init(&t->y);
        WEFT_AWAIT(&t->base, cx, &t->y.base);
        weft_future_drop(&t->r.base);
    }
    if (t->r.result < 0 || t->res < 0 || t->got <= 4) {
        atomic_fetch_add(&nb->errors, 1);
    } else {
        atomic_store(&nb->bytes[t->i], t->got - 4);
        atomic_store(&nb->bad[t->i], t->res);
    }
    weft_send_all_init(&t->io, t->fd, &t->got, sizeof t->got);
    WEFT_AWAIT(&t->base, cx, &t->io.base);
    atomic_fetch_add(&nb->done, 1);
    WEFT_ASYNC_END(&t->base);
}

static enum weft_poll body_accept_nobufs(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->i = 0; t->i < NB_CONNS; t->i++) {
        weft_accept_init(&t->acc, t->lst);
        WEFT_AWAIT(&t->base, cx, &t->acc.base);
        CHECK(t->acc.result >= 0);
        CHECK(iot_spawn(weft_runtime_current(), body_nobufs_reader, t->arg, t->i,
                        t->acc.result, NULL) == 0);
        weft_future_drop(&t->acc.base);
    }
    WEFT_ASYNC_END(&t->base);
}

Test(load, two_buffers_for_64_connections, .timeout = 60)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 2, .io_buffers = 2 }, &ca);
    struct weft_tcp_listener l;
    uint16_t port = listen_any(&l, "127.0.0.1");
    struct nobufs *nb = calloc(1, sizeof *nb);
    struct iot acc = iot_make(body_accept_nobufs, nb, 0, -1);
    acc.lst = &l;
    struct weft_join ja;
    cr_assert_eq(weft_spawn(rt, &acc.base, sizeof acc, &ja), 0);
    int cli[NB_CONNS];
    cli_dial_n(cli, NB_CONNS, "127.0.0.1", port);
    cr_assert_eq(iot_join(rt, &ja, NULL), 0); /* every reader is waiting */
    unsigned char *msg = malloc(4 + NB_BYTES);
    for (uint32_t i = 0; i < NB_CONNS; i++) {
        memcpy(msg, &i, 4);
        pat_fill(msg + 4, NB_BYTES, i, 4);
        write_full(cli[i], msg, 4 + NB_BYTES); /* fits the socket buffers */
    }
    for (int i = 0; i < NB_CONNS; i++)
        cr_assert_eq(shutdown(cli[i], SHUT_WR), 0);
    for (int i = 0; i < NB_CONNS; i++) {
        uint64_t n = 0;
        set_rcvtimeo(cli[i], 5000);
        ssize_t r = read_full(cli[i], &n, sizeof n);
        cr_assert_eq(r, (ssize_t)sizeof n, "client %d got no reply in 5 s (%s): its reader "
                     "(%u of %d finished) never saw its data or end of stream", i,
                     r < 0 ? strerror((int)-r) : "closed", atomic_load(&nb->done), NB_CONNS);
        cr_assert_eq(n, 4 + NB_BYTES, "connection %d: the server read %" PRIu64 " bytes", i, n);
        close(cli[i]);
    }
    WAIT_UNTIL(atomic_load(&nb->done) == NB_CONNS);
    cr_assert_eq(atomic_load(&nb->errors), 0);
    for (int i = 0; i < NB_CONNS; i++) {
        cr_assert_eq(atomic_load(&nb->bytes[i]), NB_BYTES, "client %d", i);
        cr_assert_eq(atomic_load(&nb->bad[i]), 0, "client %d: corrupted bytes", i);
    }
    free(msg);
    free(nb);
    weft_tcp_listener_close(&l);
    stop_rt(rt, &ca);
}

/* A receive parked for a buffer must get its turn even when the receive a
 * returned buffer went to ends without using it. One worker, one buffer,
 * three connections whose bytes and end of stream are queued before the
 * readers start (spawned by a task, so that their first receives go to the
 * kernel in one submission, in a fixed order); each reader holds its buffer
 * across a yield. A takes the buffer, B and C are parked; A's drop gives B
 * its turn and parks A's next receive (an empty ring gives -ENOBUFS even at
 * end of stream); B's drop gives C its turn and parks B; C's drop gives A its
 * turn: A finds end of stream, uses no buffer, and B must still be woken. */
#define TURN_CONNS 3

struct turns {
    int srv[TURN_CONNS];
    _Atomic uint32_t finished;
    _Atomic uint64_t bytes[TURN_CONNS];
};

static enum weft_poll body_turn_reader(struct iot *t, struct weft_cx *cx)
{
    struct turns *tu = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    for (;;) {
        weft_recv_init(&t->r, t->fd);
        WEFT_AWAIT(&t->base, cx, &t->r.base);
        if (t->r.result <= 0)
            break;
        atomic_fetch_add(&tu->bytes[t->idx], (uint64_t)t->r.result);
        weft_yield_now_init(&t->y);
        WEFT_AWAIT(&t->base, cx, &t->y.base);
        weft_future_drop(&t->r.base);
    }
    if (t->r.result == 0)
        atomic_fetch_add(&tu->finished, 1);
    WEFT_ASYNC_END(&t->base);
}

static enum weft_poll body_spawn_turn_readers(struct iot *t, struct weft_cx *cx)
{
    struct turns *tu = t->arg;
    (void)cx;
    for (uint32_t i = 0; i < TURN_CONNS; i++)
        CHECK(iot_spawn(weft_runtime_current(), body_turn_reader, tu, i, tu->srv[i], NULL) == 0);
    return WEFT_READY;
}

Test(load, parked_receive_gets_a_turn_unused_at_end_of_stream, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = 1 }, &ca);
    struct weft_tcp_listener l;
    uint16_t port = listen_any(&l, "127.0.0.1");
    struct turns *tu = calloc(1, sizeof *tu);
    int cli[TURN_CONNS];
    for (int i = 0; i < TURN_CONNS; i++) {
        cli[i] = cli_dial("127.0.0.1", port);
        tu->srv[i] = accept4(l.fd, NULL, NULL, SOCK_CLOEXEC);
        cr_assert_geq(tu->srv[i], 0);
        write_full(cli[i], "hello", 5);
        cr_assert_eq(shutdown(cli[i], SHUT_WR), 0);
    }
    sleep_us(10000); /* the bytes and the FINs are in the server sockets */
    cr_assert_eq(iot_spawn(rt, body_spawn_turn_readers, tu, 0, -1, NULL), 0);
    double end = now_s() + 3.0;
    while (atomic_load(&tu->finished) < TURN_CONNS && now_s() < end)
        sleep_us(1000);
    for (int i = 0; i < TURN_CONNS; i++)
        cr_assert_eq(atomic_load(&tu->bytes[i]), 5, "reader %d got %" PRIu64 " bytes", i,
                     atomic_load(&tu->bytes[i]));
    cr_assert_eq(atomic_load(&tu->finished), TURN_CONNS, "%u of %d readers saw end of stream: "
                 "a receive stays parked for a buffer while the ring has one free",
                 atomic_load(&tu->finished), TURN_CONNS);
    close_fds(tu->srv, TURN_CONNS);
    close_fds(cli, TURN_CONNS);
    free(tu);
    weft_tcp_listener_close(&l);
    stop_rt(rt, &ca);
}

/* The only buffer is held; an idle connection's receive parks for one, then
 * one whose peer has sent. When the buffer comes back, a kick of the idle
 * one alone takes none (the kernel waits for its data): the one with data
 * must get the buffer anyway (the helper's review: it waited until the idle
 * peer sent, 2 s here; also on rungs 1 and 2). */
struct behind_idle {
    struct gate g;
    _Atomic int held;
    _Atomic int got[3];
};

static enum weft_poll body_receive_once(struct iot *t, struct weft_cx *cx)
{
    struct behind_idle *b = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    weft_recv_init(&t->r, t->fd);
    WEFT_AWAIT(&t->base, cx, &t->r.base);
    atomic_store(&b->got[t->idx], t->r.result);
    if (t->idx == 0) { /* hold the ring's only buffer until the gate opens */
        atomic_store(&b->held, 1);
        gate_wait_init(&t->gw, &b->g);
        WEFT_AWAIT(&t->base, cx, &t->gw.base);
    }
    weft_future_drop(&t->r.base);
    WEFT_ASYNC_END(&t->base);
}

Test(load, parked_receive_with_data_does_not_wait_behind_an_idle_one, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = 1 }, &ca);
    int srv[3], cli[3];
    for (int i = 0; i < 3; i++)
        tcp_pair(rt, "127.0.0.1", &srv[i], &cli[i]);
    struct behind_idle *b = calloc(1, sizeof *b);
    gate_init(&b->g, 4);
    for (int i = 0; i < 3; i++)
        atomic_store(&b->got[i], -999);
    write_full(cli[0], "h", 1);
    struct weft_join j[3];
    cr_assert_eq(iot_spawn(rt, body_receive_once, b, 0, srv[0], &j[0]), 0);
    WAIT_UNTIL(atomic_load(&b->held));
    cr_assert_eq(iot_spawn(rt, body_receive_once, b, 1, srv[1], &j[1]), 0); /* idle: parks first */
    sleep_us(30000);
    cr_assert_eq(iot_spawn(rt, body_receive_once, b, 2, srv[2], &j[2]), 0); /* parks behind it */
    sleep_us(30000);
    write_full(cli[2], "data", 4);
    sleep_us(30000);
    gate_open(&b->g); /* the buffer goes back */
    double end = now_s() + 2.0;
    while (atomic_load(&b->got[2]) == -999 && now_s() < end)
        sleep_us(1000);
    int got = atomic_load(&b->got[2]);
    write_full(cli[1], "z", 1); /* ends the idle one */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(iot_join(rt, &j[i], NULL), 0);
    cr_assert_eq(got, 4, "a receive with 4 bytes waiting stayed parked 2 s while the ring had "
                         "its buffer (got %d)", got);
    cr_assert_eq(atomic_load(&b->got[1]), 1);
    close_fds(srv, 3);
    close_fds(cli, 3);
    gate_fini(&b->g);
    free(b);
    stop_rt(rt, &ca);
}

/* ---- the cooperative budget ----------------------------------------------------------------- */

#define BUDGET_IOS 200 /* more than WEFT_COOP_BUDGET */

struct budget {
    _Atomic uint64_t other_polls;
    _Atomic int stop;
};

static enum weft_poll body_other(struct iot *t, struct weft_cx *cx)
{
    struct budget *b = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    while (!atomic_load(&b->stop)) {
        atomic_fetch_add(&b->other_polls, 1);
        weft_yield_now_init(&t->y);
        WEFT_AWAIT(&t->base, cx, &t->y.base);
    }
    WEFT_ASYNC_END(&t->base);
}

/* BUDGET_IOS sends and receives of one byte on one socket, all polled in
 * every poll of the task until each is ready, with a 20 ms sleep between
 * polls so that every submitted one completes meanwhile: t->n is the most
 * that were ready in one poll, t->res the first bad result. */
struct budget_ios {
    struct weft_io io[BUDGET_IOS];
    unsigned char in[BUDGET_IOS];
    bool ready[BUDGET_IOS];
};

static enum weft_poll body_budget_ios(struct iot *t, struct weft_cx *cx)
{
    struct budget_ios *b = (struct budget_ios *)t->buf;
    WEFT_ASYNC_BEGIN(&t->base);
    for (uint32_t i = 0; i < BUDGET_IOS; i++) {
        if (i % 2)
            weft_recv_into_init(&b->io[i], t->fd, &b->in[i], 1);
        else
            weft_send_init(&b->io[i], t->fd, "x", 1);
    }
    for (;;) {
        t->i = 0; /* ready in this poll */
        for (uint32_t i = 0; i < BUDGET_IOS; i++) {
            if (b->ready[i] || weft_future_poll(&b->io[i].base, cx) != WEFT_READY)
                continue;
            b->ready[i] = true;
            t->i++;
            t->got++;
            if (b->io[i].result != 1 && t->res == 0)
                t->res = b->io[i].result < 0 ? b->io[i].result : -EIO;
        }
        if (t->i > t->n)
            t->n = t->i;
        if (t->got == BUDGET_IOS)
            break;
        weft_sleep_init(&t->sl, 20 * WEFT_NS_PER_MS);
        WEFT_AWAIT(&t->base, cx, &t->sl.base);
    }
    for (uint32_t i = 0; i < BUDGET_IOS; i++)
        weft_future_drop(&b->io[i].base);
    WEFT_ASYNC_END(&t->base);
}

/* Every leaf I/O future takes one unit of the task's budget per poll: of 200
 * finished ones, one poll of the task sees at most WEFT_COOP_BUDGET ready
 * (the sleep before them took one), and the rest in the next polls. */
Test(load, budget_bounds_ios_ready_per_poll, .timeout = 30)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_pair(1, &ca, &srv, &cli);
    char data[BUDGET_IOS / 2];
    memset(data, 'y', sizeof data);
    write_full(cli, data, sizeof data); /* for the receives */
    struct budget_ios *b = calloc(1, sizeof *b);
    struct iot t = iot_make(body_budget_ios, NULL, 0, srv);
    t.buf = (unsigned char *)b;
    cr_assert_eq(weft_block_on(rt, &t.base), 0);
    weft_future_drop(&t.base);
    cr_assert_eq(t.res, 0, "an operation gave %d", t.res);
    cr_assert_eq(t.got, BUDGET_IOS);
    cr_assert_leq(t.n, WEFT_COOP_BUDGET, "%u operations were ready in one poll", t.n);
    cr_assert_geq(t.n, WEFT_COOP_BUDGET / 2, "only %u ready in one poll: nothing completed?", t.n);
    for (uint32_t i = 1; i < BUDGET_IOS; i += 2)
        cr_assert_eq(b->in[i], 'y');
    char back[BUDGET_IOS / 2];
    read_full(cli, back, sizeof back);
    cr_assert_eq(memcmp(back, "xxxx", 4), 0);
    fprintf(stderr, "budget: at most %u of %d finished operations ready in one poll\n", t.n,
            BUDGET_IOS);
    free(b);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

/* A finished leaf that finds no budget left yields (stays pending; the task
 * is woken) and, given one unit, is ready and spends it. 0 when so, else
 * the step that went wrong. */
static int spends_one_unit(struct weft_future *f, struct weft_cx *cx)
{
    uint32_t saved = cx->budget;
    cx->budget = 0;
    enum weft_poll without = weft_future_poll(f, cx);
    cx->budget = 1;
    enum weft_poll with = without == WEFT_PENDING ? weft_future_poll(f, cx) : WEFT_PENDING;
    int res = without != WEFT_PENDING ? 1 : with != WEFT_READY ? 2 : cx->budget != 0 ? 3 : 0;
    cx->budget = saved;
    return res;
}

/* A receive (t->u64 0) or a connect to port t->u64, started, then given
 * 20 ms to finish before spends_one_unit: t->res its answer, t->n the
 * future's result. */
static enum weft_poll body_leaf_budget(struct iot *t, struct weft_cx *cx)
{
    struct weft_future *f = t->u64 ? &t->conn.base : &t->r.base;
    WEFT_ASYNC_BEGIN(&t->base);
    if (t->u64)
        weft_connect_init(&t->conn, "127.0.0.1", (uint16_t)t->u64, 0);
    else
        weft_recv_init(&t->r, t->fd);
    if (weft_future_poll(f, cx) != WEFT_PENDING) { /* submitted, not yet done */
        t->res = 10;
        WEFT_RETURN(&t->base);
    }
    weft_sleep_init(&t->sl, 20 * WEFT_NS_PER_MS);
    WEFT_AWAIT(&t->base, cx, &t->sl.base);
    t->res = spends_one_unit(f, cx);
    t->n = (uint32_t)(t->u64 ? t->conn.result : t->r.result);
    if (t->u64 && t->conn.result >= 0)
        close(t->conn.result);
    WEFT_ASYNC_END(&t->base);
}

/* weft_recv and weft_connect take their unit of the budget (docs/io.md), as
 * the weft_io operations and accepts above do. */
Test(load, budget_taken_by_a_receive_and_a_connect, .timeout = 30)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_pair(1, &ca, &srv, &cli);
    write_full(cli, "abc", 3);
    struct iot t = iot_run(rt, body_leaf_budget, NULL, srv);
    cr_assert_eq(t.res, 0, "weft_recv: step %d", t.res);
    cr_assert_eq(t.n, 3);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(l, 4), 0);
    cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    struct iot c = iot_make(body_leaf_budget, NULL, 0, -1);
    c.u64 = ntohs(a.sin_port);
    cr_assert_eq(weft_block_on(rt, &c.base), 0);
    weft_future_drop(&c.base);
    cr_assert_eq(c.res, 0, "weft_connect: step %d", c.res);
    cr_assert_lt(c.n, (uint32_t)INT32_MAX, "connect: %d", (int)c.n);
    close(l);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

Test(load, budget_bounds_accepts_per_poll, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(1, &ca);
    struct weft_tcp_listener l;
    int cli[PENDING_CLIENTS];
    struct accept_all *aa = listen_with_pending(&l, cli);
    struct budget b = { 0 };
    struct weft_join jo, ja;
    cr_assert_eq(iot_spawn(rt, body_accept_all, aa, 1, -1, &ja), 0);
    cr_assert_eq(iot_spawn(rt, body_other, &b, 0, -1, &jo), 0);
    wait_accepted(aa);
    atomic_store(&b.stop, 1);
    cr_assert_eq(iot_join(rt, &jo, NULL), 0);
    uint32_t accepted = atomic_load(&aa->accepted);
    if (accepted < PENDING_CLIENTS) {
        weft_join_abort(&ja);
        cr_assert_fail("%u of %d pending connections accepted in 5 s; %d clients saw their "
                       "connection closed by the server", accepted, PENDING_CLIENTS,
                       count_closed_by_peer(cli, PENDING_CLIENTS));
    }
    cr_assert_eq(iot_join(rt, &ja, NULL), 0);
    cr_assert_eq(atomic_load(&aa->err), 0, "accept: %d", atomic_load(&aa->err));
    uint32_t max = 0, polls = 0;
    for (int p = 0; p < PENDING_CLIENTS + 2; p++) {
        if (aa->per_poll[p] > max)
            max = aa->per_poll[p];
        polls += aa->per_poll[p] > 0;
    }
    cr_assert_leq(max, WEFT_COOP_BUDGET, "%u accepts in one poll", max);
    fprintf(stderr, "budget: %d accepts over %u polls, at most %u in one\n", PENDING_CLIENTS,
            polls, max);
    close_pending(aa, cli);
    stop_rt(rt, &ca);
}
